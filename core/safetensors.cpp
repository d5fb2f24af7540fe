// safetensors reader (mmap + full header validation), streaming atomic writer, sharded checkpoints and the
// model.safetensors.index.json writer. Format notes: /work/shared/REFERENCE.md section A5.
//
// Validation follows the reference (Rust) reader: a header that lies about sizes or offsets is rejected here,
// with the file named, instead of surfacing later as garbage weights or a segfault.
#include "core/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/files.h"
#include "core/json_file.h"

namespace qwenq {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100000000;  // the reference reader's limit
constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

using Json = nlohmann::json;

// One tensor's byte range inside the data section, for the overlap/coverage check.
struct Span {
  uint64_t begin, end;
  const std::string* name;
};

bool is_u64(const Json& j) { return j.is_number_unsigned(); }

// Parses one "name": {dtype, shape, data_offsets} entry into `view` (data pointer relative: begin offset).
void parse_entry(const std::string& file, const std::string& name, const Json& e, uint64_t data_size,
                 TensorView* view, Span* span) {
  QWENQ_CHECK(e.is_object(), file << ": header entry for tensor '" << name << "' is not a JSON object");
  auto dt = e.find("dtype");
  QWENQ_CHECK(dt != e.end() && dt->is_string(), file << ": tensor '" << name << "' has no string 'dtype'");
  const std::string dtype = dt->get<std::string>();
  QWENQ_CHECK(dtype_from_name(dtype, &view->dtype),
              file << ": tensor '" << name << "' has dtype " << dtype << ", which qwenq does not support");

  auto sh = e.find("shape");
  QWENQ_CHECK(sh != e.end() && sh->is_array(),
              file << ": tensor '" << name << "' has no 'shape' array");
  uint64_t numel = 1;
  bool overflow = false;
  for (const Json& d : *sh) {
    QWENQ_CHECK(is_u64(d) && d.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
                file << ": tensor '" << name << "' has shape " << sh->dump()
                     << "; dimensions must be non-negative integers");
    view->shape.push_back(static_cast<int64_t>(d.get<uint64_t>()));
    overflow |= __builtin_mul_overflow(numel, d.get<uint64_t>(), &numel);
  }
  uint64_t nbytes = 0;
  overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(view->dtype)), &nbytes);
  QWENQ_CHECK(!overflow, file << ": tensor '" << name << "' has shape " << sh->dump()
                              << ", whose size overflows 64 bits");

  auto off = e.find("data_offsets");
  QWENQ_CHECK(off != e.end() && off->is_array() && off->size() == 2 && is_u64((*off)[0]) && is_u64((*off)[1]) &&
                  (*off)[0].get<uint64_t>() <= (*off)[1].get<uint64_t>(),
              file << ": tensor '" << name << "' has data_offsets "
                   << (off == e.end() ? std::string("(missing)") : off->dump())
                   << "; expected [begin, end] with 0 <= begin <= end");
  span->begin = (*off)[0].get<uint64_t>();
  span->end = (*off)[1].get<uint64_t>();
  span->name = &name;
  QWENQ_CHECK(span->end - span->begin == nbytes,
              file << ": tensor '" << name << "' has shape " << shape_str(view->shape) << " and dtype " << dtype
                   << " (" << nbytes << " bytes) but its data_offsets [" << span->begin << ", " << span->end
                   << "] span " << (span->end - span->begin) << " bytes");
  QWENQ_CHECK(span->end <= data_size, file << ": truncated: tensor '" << name << "' ends at byte " << span->end
                                          << " of the data section, which has only " << data_size << " bytes");
}

// Tensors must tile the data section exactly: sorted by offset, no overlap, no hole, nothing left over.
void check_coverage(const std::string& file, std::vector<Span> spans, uint64_t data_size) {
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t pos = 0;
  const Span* prev = nullptr;
  for (const Span& s : spans) {
    QWENQ_CHECK(s.begin >= pos, file << ": tensors '" << *prev->name << "' [" << prev->begin << ", " << prev->end
                                     << ") and '" << *s.name << "' [" << s.begin << ", " << s.end
                                     << ") overlap in the data section");
    QWENQ_CHECK(s.begin == pos, file << ": data section bytes [" << pos << ", " << s.begin << ") before tensor '"
                                     << *s.name << "' belong to no tensor");
    pos = s.end;
    prev = &s;
  }
  QWENQ_CHECK(pos == data_size, file << ": data section is " << data_size << " bytes but the tensors end at byte "
                                     << pos << " (" << (data_size - pos) << " trailing bytes belong to no tensor)");
}

// Parses the header JSON, rejecting duplicate top-level names (nlohmann would silently keep the last one).
Json parse_header(const std::string& file, const char* begin, const char* end) {
  std::set<std::string> seen;
  std::string duplicate;
  auto on_event = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::key && depth == 1 && !seen.insert(parsed.get<std::string>()).second &&
        duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  Json header;
  try {
    header = Json::parse(begin, end, on_event);
  } catch (const Json::exception& e) {
    QWENQ_FAIL(file << ": header is not valid JSON: " << e.what());
  }
  QWENQ_CHECK(header.is_object(), file << ": header is not a JSON object (it is a " << header.type_name() << ")");
  QWENQ_CHECK(duplicate.empty(), file << ": header lists '" << duplicate << "' more than once");
  return header;
}


// The reference writer's order of dtypes (ascending; it writes the highest first): measured with safetensors
// 0.5.3's save_file on one tensor of each dtype.
int layout_rank(DType t) {
  switch (t) {
    case DType::BOOL: return 0;
    case DType::U8: return 1;
    case DType::I8: return 2;
    case DType::F8_E4M3: return 3;  // safetensors' Dtype enum: ..., I8, F8_E5M2, F8_E4M3, I16, ...
    case DType::I16: return 4;
    case DType::F16: return 5;
    case DType::BF16: return 6;
    case DType::I32: return 7;
    case DType::F32: return 8;
    case DType::F64: return 9;
    case DType::I64: return 10;
  }
  return 0;
}

// Shards are opened lazily from const accessors; one lock for all checkpoints is plenty (opening is rare).
std::mutex& shard_mutex() {
  static std::mutex m;
  return m;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  map_ = std::make_unique<MappedFile>(path);
  const uint8_t* base = map_->data();
  const uint64_t size = map_->size();
  QWENQ_CHECK(size >= 8, path << ": truncated: file is " << size
                              << " bytes, too short to hold the 8-byte header length (not a safetensors file?)");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base[i];
  QWENQ_CHECK(n <= kMaxHeaderBytes, path << ": header length " << n << " exceeds the " << kMaxHeaderBytes
                                         << "-byte limit (corrupt, or not a safetensors file)");
  QWENQ_CHECK(8 + n <= size, path << ": truncated: header length " << n << " points past the end of the file ("
                                  << size << " bytes)");
  const char* text = reinterpret_cast<const char*>(base + 8);
  Json header = parse_header(path, text, text + n);

  const uint8_t* data = base + 8 + n;
  const uint64_t data_size = size - 8 - n;
  std::vector<Span> spans;
  spans.reserve(header.size());
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (it->is_null()) continue;
      QWENQ_CHECK(it->is_object(), path << ": __metadata__ must be an object of strings, not a "
                                        << it->type_name());
      for (auto m = it->begin(); m != it->end(); ++m) {
        QWENQ_CHECK(m->is_string(), path << ": __metadata__ value for key '" << m.key()
                                         << "' is not a string (it is " << m->dump() << ")");
        metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    TensorView& view = tensors_[it.key()];
    Span span;
    parse_entry(path, it.key(), *it, data_size, &view, &span);
    view.data = data + span.begin;
    spans.push_back(span);
  }
  // Span names point at the keys of `header`, which lives until the end of this constructor.
  check_coverage(path, std::move(spans), data_size);
  for (auto& kv : tensors_) {
    TensorView& view = kv.second;
    const size_t nbytes = view.nbytes();
    if (nbytes == 0 || reinterpret_cast<uintptr_t>(view.data) % dtype_size(view.dtype) == 0) continue;
    std::vector<uint64_t>& copy = aligned_copies_.emplace_back((nbytes + 7) / 8);
    std::memcpy(copy.data(), view.data, nbytes);
    view.data = copy.data();
  }
}

SafetensorsFile::~SafetensorsFile() = default;

const TensorView& SafetensorsFile::get(const std::string& name) const {
  auto it = tensors_.find(name);
  QWENQ_CHECK(it != tensors_.end(), path_ << ": tensor '" << name << "' not found");
  return it->second;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& kv : tensors_) out.push_back(kv.first);
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// SafetensorsWriter

void SafetensorsWriter::add(const std::string& name, DType dtype, std::vector<int64_t> shape, const void* data) {
  for (int64_t d : shape)
    QWENQ_CHECK(d >= 0, "safetensors writer: tensor '" << name << "' has negative dimension in shape "
                                                       << shape_str(shape));
  const size_t nbytes = TensorView{data, dtype, shape}.nbytes();
  QWENQ_CHECK(data != nullptr || nbytes == 0,
              "safetensors writer: tensor '" << name << "' has " << nbytes << " bytes but no data pointer");
  entries_.push_back(Entry{name, dtype, std::move(shape), data, nullptr});
}

void SafetensorsWriter::add_owned(const std::string& name, DType dtype, std::vector<int64_t> shape,
                                  std::vector<uint8_t> bytes) {
  TensorView v{nullptr, dtype, shape};
  QWENQ_CHECK(v.nbytes() == bytes.size(), "safetensors writer: tensor '"
                                              << name << "' of shape " << shape_str(shape) << " and dtype "
                                              << dtype_name(dtype) << " needs " << v.nbytes() << " bytes, got "
                                              << bytes.size());
  auto owned = std::make_shared<std::vector<uint8_t>>(std::move(bytes));
  add(name, dtype, std::move(shape), owned->data());
  entries_.back().owned = std::move(owned);
}

uint64_t SafetensorsWriter::payload_bytes() const {
  uint64_t total = 0;
  for (const Entry& e : entries_) total += TensorView{e.data, e.dtype, e.shape}.nbytes();
  return total;
}

void SafetensorsWriter::write(const std::string& path) const {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) {
    header["__metadata__"] = nlohmann::ordered_json::object();
    for (const auto& kv : metadata_) header["__metadata__"][kv.first] = kv.second;
  }
  // The reference writer's layout: descending dtype rank, then name (safetensors.h).
  std::vector<const Entry*> order;
  order.reserve(entries_.size());
  for (const Entry& e : entries_) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    const int ra = layout_rank(a->dtype), rb = layout_rank(b->dtype);
    return ra != rb ? ra > rb : a->name < b->name;
  });
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const Entry* ep : order) {
    const Entry& e = *ep;
    QWENQ_CHECK(e.name != "__metadata__" && !e.name.empty(),
                "cannot write " << path << ": '" << e.name << "' is not a valid tensor name");
    QWENQ_CHECK(seen.insert(e.name).second, "cannot write " << path << ": tensor '" << e.name << "' added twice");
    const uint64_t nbytes = TensorView{e.data, e.dtype, e.shape}.nbytes();
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = dtype_name(e.dtype);
    entry["shape"] = e.shape;
    entry["data_offsets"] = {offset, offset + nbytes};
    header[e.name] = std::move(entry);
    offset += nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& ex) {
    QWENQ_FAIL("cannot write " << path << ": header cannot be serialized: " << ex.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // data section starts 8-byte aligned
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));

  AtomicFileWriter out(path);
  out.append(len, 8);
  out.append(text.data(), text.size());
  for (const Entry* e : order) {
    const size_t nbytes = TensorView{e->data, e->dtype, e->shape}.nbytes();
    if (nbytes) out.append(e->data, nbytes);
  }
  out.commit();
}

// ---------------------------------------------------------------------------------------------------------
// Checkpoint

Checkpoint::Checkpoint(const std::string& dir) : dir_(dir) {
  QWENQ_CHECK(dir_exists(dir), "checkpoint directory " << dir << " does not exist (or is not a directory)");
  const std::string single = path_join(dir, kSingleName);
  const std::string index = path_join(dir, kIndexName);
  if (file_exists(single)) {  // transformers prefers the single file when both are present
    auto f = std::make_unique<SafetensorsFile>(single);
    for (const std::string& name : f->names()) weight_map_[name] = kSingleName;
    shards_[kSingleName] = std::move(f);
    return;
  }
  QWENQ_CHECK(file_exists(index), "checkpoint directory " << dir << " has neither " << kSingleName << " nor "
                                                          << kIndexName);
  const Json j = read_json_file(index);
  QWENQ_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
              index << ": no \"weight_map\" object (not a safetensors index?)");
  std::set<std::string> files;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    QWENQ_CHECK(it->is_string() && !it->get<std::string>().empty(),
                index << ": weight_map entry for '" << it.key() << "' is not a file name (it is " << it->dump()
                      << ")");
    weight_map_[it.key()] = it->get<std::string>();
    files.insert(it->get<std::string>());
  }
  for (const std::string& f : files)
    QWENQ_CHECK(file_exists(path_join(dir, f)),
                index << " lists shard " << f << ", which is missing from " << dir);
}

Checkpoint::~Checkpoint() = default;

bool Checkpoint::has(const std::string& name) const { return weight_map_.count(name) != 0; }

const std::string& Checkpoint::file_of(const std::string& name) const {
  auto it = weight_map_.find(name);
  QWENQ_CHECK(it != weight_map_.end(), "tensor '" << name << "' not found in checkpoint " << dir_);
  return it->second;
}

SafetensorsFile& Checkpoint::shard(const std::string& file) const {
  std::lock_guard<std::mutex> lock(shard_mutex());
  auto it = shards_.find(file);
  if (it == shards_.end()) it = shards_.emplace(file, std::make_unique<SafetensorsFile>(path_join(dir_, file))).first;
  return *it->second;
}

const TensorView& Checkpoint::get(const std::string& name) const {
  const std::string& file = file_of(name);
  const SafetensorsFile& f = shard(file);
  QWENQ_CHECK(f.has(name), f.path() << ": tensor '" << name << "' is listed in " << kIndexName
                                    << " but missing from this shard");
  return f.get(name);
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(weight_map_.size());
  for (const auto& kv : weight_map_) out.push_back(kv.first);
  return out;
}

void write_safetensors_index(const std::string& path, const std::map<std::string, std::string>& weight_map,
                             uint64_t total_size) {
  Json j = Json::object();
  j["metadata"] = {{"total_size", total_size}};
  j["weight_map"] = Json::object();
  for (const auto& kv : weight_map) j["weight_map"][kv.first] = kv.second;
  std::string text;
  try {
    text = j.dump(2) + "\n";
  } catch (const Json::exception& e) {
    QWENQ_FAIL("cannot write " << path << ": " << e.what());
  }
  write_file_atomic(path, text);
}

std::vector<float> read_finite_f32(const Checkpoint& ckpt, const std::string& name) {
  const TensorView& t = ckpt.get(name);
  QWENQ_CHECK(t.dtype == DType::F32 || t.dtype == DType::BF16 || t.dtype == DType::F16,
              ckpt.file_of(name) << ": tensor '" << name << "' has dtype " << dtype_name(t.dtype)
                                 << ", expected F32, BF16 or F16");
  std::vector<float> v(static_cast<size_t>(t.numel()));
  to_f32(t.dtype, t.data, v.data(), v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    QWENQ_CHECK(std::isfinite(v[i]), ckpt.file_of(name) << ": tensor '" << name << "' holds " << v[i] << " at index "
                                                        << i << " (corrupt file?)");
  }
  return v;
}

}  // namespace qwenq
