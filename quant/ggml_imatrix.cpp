// llama.cpp's imatrix files, GGUF and legacy .dat (formats: quant/ggml_imatrix.h).
#include "quant/ggml_imatrix.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/files.h"
#include "core/gguf.h"
#include "core/strings.h"

namespace qwenq {

namespace {

const char* const kSum2 = ".in_sum2";
const char* const kSum = ".in_sum";
const char* const kCounts = ".counts";

bool strip_suffix(std::string* s, const char* suffix) {
  if (!has_proper_suffix(*s, suffix)) return false;
  s->resize(s->size() - std::strlen(suffix));
  return true;
}

std::vector<float> f32_values(const std::string& path, const GgufTensor& t) {
  QWENQ_CHECK(t.type == GgmlType::F32, path << ": imatrix tensor " << t.name << " is "
                                            << ggml_type_info(uint32_t(t.type))->name << ", expected F32");
  std::vector<float> v(static_cast<size_t>(t.numel()));
  std::memcpy(v.data(), t.data, v.size() * 4);
  return v;
}

void check_entry(const std::string& path, const std::string& name, const ImatrixEntry& e) {
  QWENQ_CHECK(!e.counts.empty() && !e.sum2.empty() && e.sum2.size() % e.counts.size() == 0,
              path << ": imatrix entry " << name << " has " << e.sum2.size() << " sums for " << e.counts.size()
                   << " counts");
  QWENQ_CHECK(e.sum.empty() || e.sum.size() == e.sum2.size(),
              path << ": imatrix entry " << name << " has " << e.sum.size() << " in_sum values but " << e.sum2.size()
                   << " in_sum2 values");
  for (float c : e.counts)
    QWENQ_CHECK(std::isfinite(c) && c >= 0, path << ": imatrix entry " << name << " has a count of " << c);
  for (float v : e.sum2)
    QWENQ_CHECK(std::isfinite(v) && v >= 0, path << ": imatrix entry " << name << " has a sum of squares of " << v);
}

Imatrix read_gguf(const std::string& path) {
  GgufFile f(path);
  Imatrix m;
  if (f.has("general.type")) {
    const std::string& type = f.get_string("general.type");
    QWENQ_CHECK(type == "imatrix", path << ": general.type is \"" << type << "\", not an imatrix file");
  }
  QWENQ_CHECK(f.has("imatrix.chunk_count") || f.has("imatrix.datasets"),
              path << ": a GGUF file without imatrix metadata (imatrix.chunk_count, imatrix.datasets); is it a model?");
  if (f.has("imatrix.datasets")) m.datasets = f.get("imatrix.datasets").strs;
  m.chunk_count = static_cast<uint32_t>(f.get_int_or("imatrix.chunk_count", 0));
  m.chunk_size = static_cast<uint32_t>(f.get_int_or("imatrix.chunk_size", 0));
  struct Parts {
    const GgufTensor *sum2 = nullptr, *sum = nullptr, *counts = nullptr;
  };
  std::map<std::string, Parts> parts;
  for (const GgufTensor& t : f.tensors()) {
    std::string name = t.name;
    if (strip_suffix(&name, kSum2)) parts[name].sum2 = &t;
    else if (strip_suffix(&name, kCounts)) parts[name].counts = &t;
    else if (strip_suffix(&name, kSum)) parts[name].sum = &t;
  }
  QWENQ_CHECK(!parts.empty(), path << ": no imatrix entries (tensors named <weight>.in_sum2 and <weight>.counts)");
  for (const auto& [name, p] : parts) {
    QWENQ_CHECK(p.sum2 && p.counts, path << ": imatrix entry " << name << " lacks its "
                                         << (p.sum2 ? "counts" : "in_sum2") << " tensor");
    ImatrixEntry e;
    e.sum2 = f32_values(path, *p.sum2);
    e.counts = f32_values(path, *p.counts);
    if (p.sum) e.sum = f32_values(path, *p.sum);
    QWENQ_CHECK(p.sum2->rows() == static_cast<int64_t>(e.counts.size()),
                path << ": imatrix entry " << name << " has " << p.sum2->rows() << " rows of sums for "
                     << e.counts.size() << " counts");
    check_entry(path, name, e);
    m.entries.emplace(name, std::move(e));
  }
  return m;
}

// A cursor over the bytes of a legacy file; every read past the end is one error naming the file and what was read.
struct Reader {
  const std::string& path;
  const std::string& bytes;
  size_t pos = 0;
  bool left(size_t n) const { return bytes.size() - pos >= n; }
  int32_t i32(const char* what) {
    QWENQ_CHECK(left(4), path << ": truncated legacy imatrix file (ends in " << what << " at byte " << pos << ")");
    int32_t v;
    std::memcpy(&v, bytes.data() + pos, 4);
    pos += 4;
    return v;
  }
  std::string str(int32_t n, const char* what) {
    QWENQ_CHECK(n >= 0 && left(static_cast<size_t>(n)),
                path << ": truncated legacy imatrix file (" << what << " of " << n << " bytes at byte " << pos << ")");
    std::string s = bytes.substr(pos, static_cast<size_t>(n));
    pos += static_cast<size_t>(n);
    return s;
  }
};

Imatrix read_dat(const std::string& path) {
  const std::string bytes = read_file(path);
  Reader r{path, bytes};
  Imatrix m;
  m.legacy = true;
  const int32_t n = r.i32("the entry count");
  QWENQ_CHECK(n > 0 && n < (1 << 24), path << ": not an imatrix file (" << n << " entries; expected GGUF or the "
                                            "legacy .dat layout of llama-imatrix)");
  for (int32_t i = 0; i < n; ++i) {
    const int32_t len = r.i32("a name length");
    QWENQ_CHECK(len > 0 && len < 4096, path << ": entry " << i << " has a name of " << len << " bytes");
    const std::string name = r.str(len, "a name");
    const int32_t ncall = r.i32("a call count");
    const int32_t nval = r.i32("a value count");
    QWENQ_CHECK(nval > 0 && ncall >= 0, path << ": imatrix entry " << name << " has " << nval << " values and "
                                             << ncall << " calls");
    QWENQ_CHECK(r.left(static_cast<size_t>(nval) * 4),
                path << ": truncated legacy imatrix file (entry " << name << " needs " << nval << " values)");
    ImatrixEntry e;
    e.sum2.resize(static_cast<size_t>(nval));
    std::memcpy(e.sum2.data(), bytes.data() + r.pos, e.sum2.size() * 4);
    r.pos += e.sum2.size() * 4;
    e.counts = {static_cast<float>(ncall)};
    check_entry(path, name, e);
    QWENQ_CHECK(m.entries.emplace(name, std::move(e)).second, path << ": imatrix entry " << name << " appears twice");
  }
  if (r.left(4)) m.chunk_count = static_cast<uint32_t>(std::max(0, r.i32("the chunk count")));
  if (r.left(4)) {
    const int32_t len = r.i32("the dataset name length");
    if (len > 0 && r.left(static_cast<size_t>(len))) m.datasets.push_back(r.str(len, "the dataset name"));
  }
  return m;
}

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

}  // namespace

std::vector<float> Imatrix::importance(const std::string& name) const {
  const auto it = entries.find(name);
  if (it == entries.end()) return {};
  const ImatrixEntry& e = it->second;
  const size_t K = static_cast<size_t>(e.columns());
  std::vector<float> v(e.sum2.size());
  for (size_t m = 0; m < e.counts.size(); ++m) {
    const float c = e.counts[m];
    for (size_t j = 0; j < K; ++j) {
      const float s = e.sum2[m * K + j];
      v[m * K + j] = legacy ? (c > 0 ? s / c : s) : (c > 0 ? s / c : 1.0f);
    }
  }
  return v;
}

void merge_imatrix(Imatrix* into, const Imatrix& from, const std::string& from_path) {
  QWENQ_CHECK(!into->legacy, "merge_imatrix: the destination must hold sums (not a legacy file's values)");
  const float chunk = static_cast<float>(into->chunk_size > 0 ? into->chunk_size : 512);
  for (const auto& kv : from.entries) {
    ImatrixEntry e = kv.second;
    if (from.legacy) {  // stored E[x²]·ncall over ncall chunks: sums over ncall·chunk tokens
      for (float& v : e.sum2) v *= chunk;
      for (float& c : e.counts) c *= chunk;
    }
    auto it = into->entries.find(kv.first);
    if (it == into->entries.end()) {
      into->entries.emplace(kv.first, std::move(e));
      continue;
    }
    ImatrixEntry& d = it->second;
    // One count for several matrices (a legacy file's entry, which keeps one ncall for all experts) is every matrix's
    // count, as llama-imatrix broadcasts it.
    if (d.sum2.size() == e.sum2.size() && d.counts.size() != e.counts.size()) {
      if (e.counts.size() == 1) e.counts.assign(d.counts.size(), e.counts[0]);
      if (d.counts.size() == 1) d.counts.assign(e.counts.size(), d.counts[0]);
    }
    QWENQ_CHECK(d.sum2.size() == e.sum2.size() && d.counts.size() == e.counts.size(),
                from_path << ": imatrix entry " << kv.first << " has " << e.sum2.size() << " values in "
                          << e.counts.size() << " matrices, the others " << d.sum2.size() << " in " << d.counts.size()
                          << " (an imatrix of another model?)");
    for (size_t i = 0; i < d.sum2.size(); ++i) d.sum2[i] += e.sum2[i];
    if (!d.sum.empty() && !e.sum.empty()) {
      for (size_t i = 0; i < d.sum.size(); ++i) d.sum[i] += e.sum[i];
    } else {
      d.sum.clear();
    }
    for (size_t i = 0; i < d.counts.size(); ++i) d.counts[i] += e.counts[i];
  }
  into->chunk_count += from.chunk_count;
  into->datasets.insert(into->datasets.end(), from.datasets.begin(), from.datasets.end());
}

Imatrix read_imatrix(const std::string& path) {
  QWENQ_CHECK(file_exists(path), path << ": no such imatrix file");
  return is_gguf_file(path) ? read_gguf(path) : read_dat(path);
}

void write_imatrix_gguf(const Imatrix& m, const std::string& path) {
  GgufWriter w;
  w.set("general.type", GgufValue::str("imatrix"));
  w.set("imatrix.datasets", GgufValue::str_array(m.datasets));
  w.set("imatrix.chunk_count", GgufValue::u32(m.chunk_count));
  w.set("imatrix.chunk_size", GgufValue::u32(m.chunk_size));
  for (const auto& kv : m.entries) {  // std::map: name order, as llama-imatrix sorts them
    const std::string& name = kv.first;
    const ImatrixEntry& e = kv.second;
    const int64_t nmat = static_cast<int64_t>(e.counts.size()), K = e.columns();
    w.add_tensor(name + kSum2, GgmlType::F32, {K, nmat}, [&e] { return f32_bytes(e.sum2); });
    w.add_tensor(name + kCounts, GgmlType::F32, {1, nmat}, [&e] { return f32_bytes(e.counts); });
    if (!e.sum.empty()) w.add_tensor(name + kSum, GgmlType::F32, {K, nmat}, [&e] { return f32_bytes(e.sum); });
  }
  w.write(path);
}

void write_imatrix_dat(const Imatrix& m, const std::string& path) {
  std::string out;
  auto put_i32 = [&out](int32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); };
  // llama-imatrix's legacy writer leaves out an entry no token reached (every matrix counted 0).
  auto counted = [](const ImatrixEntry& e) { return std::any_of(e.counts.begin(), e.counts.end(), [](float c) { return c > 0; }); };
  int32_t stored = 0;
  for (const auto& kv : m.entries) stored += m.legacy || counted(kv.second) ? 1 : 0;
  put_i32(stored);
  const float chunk = m.chunk_size > 0 ? static_cast<float>(m.chunk_size) : 1.0f;
  for (const auto& [name, e] : m.entries) {
    if (!m.legacy && !counted(e)) continue;
    put_i32(static_cast<int32_t>(name.size()));
    out += name;
    float most = 0;
    for (float c : e.counts) most = std::max(most, c);
    // llama-imatrix's legacy writer: ncall = ⌈most tokens of a matrix / chunk_size⌉, values E[x²]·ncall; a matrix never
    // counted (an expert no token was routed to) stores 1·ncall, which reads back as 1.0 as in the GGUF form.
    const int32_t ncall = m.legacy ? static_cast<int32_t>(most) : static_cast<int32_t>(std::ceil(most / chunk));
    put_i32(ncall);
    put_i32(static_cast<int32_t>(e.sum2.size()));
    const size_t K = static_cast<size_t>(e.columns());
    for (size_t i = 0; i < e.sum2.size(); ++i) {
      const float c = e.counts[i / K];
      const float v = m.legacy ? e.sum2[i] : (c > 0 ? e.sum2[i] / c : 1.0f) * static_cast<float>(ncall);
      out.append(reinterpret_cast<const char*>(&v), 4);
    }
  }
  put_i32(static_cast<int32_t>(m.chunk_count));
  const std::string dataset = m.datasets.empty() ? std::string() : m.datasets.back();
  put_i32(static_cast<int32_t>(dataset.size()));
  out += dataset;
  write_file_atomic(path, out);
}

}  // namespace qwenq
