// GGUF reader (mmap + validation) and streaming atomic writer. Format: core/gguf.h.
#include "core/gguf.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "core/error.h"
#include "core/files.h"
#include "core/strings.h"

namespace qwenq {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kDefaultAlignment = 32;
constexpr int kMaxDims = 4;              // GGML_MAX_DIMS
constexpr uint64_t kMaxStringBytes = 1ull << 30;

struct TypeRow {
  uint32_t id;
  GgmlTypeInfo info;
};
// ggml's type traits (block size, bytes per block) for the types we name.
constexpr TypeRow kTypes[] = {
    {0, {"F32", 1, 4}},      {1, {"F16", 1, 2}},      {2, {"Q4_0", 32, 18}},   {3, {"Q4_1", 32, 20}},
    {6, {"Q5_0", 32, 22}},   {7, {"Q5_1", 32, 24}},   {8, {"Q8_0", 32, 34}},   {9, {"Q8_1", 32, 36}},
    {10, {"Q2_K", 256, 84}}, {11, {"Q3_K", 256, 110}}, {12, {"Q4_K", 256, 144}}, {13, {"Q5_K", 256, 176}},
    {14, {"Q6_K", 256, 210}}, {15, {"Q8_K", 256, 292}}, {20, {"IQ4_NL", 32, 18}},
    {23, {"IQ4_XS", 256, 136}}, {30, {"BF16", 1, 2}},
};

size_t scalar_bytes(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    default: return 0;
  }
}

// Bounds-checked little-endian cursor over the mapped file.
class Cursor {
 public:
  Cursor(const std::string& path, const uint8_t* data, size_t size) : path_(path), p_(data), size_(size) {}
  size_t pos() const { return pos_; }
  size_t left() const { return size_ - pos_; }
  void need(uint64_t n, const char* what) const {
    QWENQ_CHECK(n <= size_ - pos_, path_ << ": truncated GGUF file: " << what << " at byte " << pos_ << " needs " << n
                                         << " bytes, " << (size_ - pos_) << " left");
  }
  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string str(const char* what) {
    const uint64_t n = read<uint64_t>(what);
    QWENQ_CHECK(n <= kMaxStringBytes, path_ << ": " << what << " at byte " << pos_ - 8 << " claims a string of " << n
                                             << " bytes (corrupt file?)");
    need(n, what);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), n);
    pos_ += n;
    return s;
  }

 private:
  const std::string& path_;
  const uint8_t* p_;
  size_t size_, pos_ = 0;
};

GgufType checked_type(const std::string& path, uint32_t t, const std::string& key) {
  QWENQ_CHECK(t <= static_cast<uint32_t>(GgufType::F64),
              path << ": metadata '" << key << "' has unknown value type " << t << " (corrupt file?)");
  return static_cast<GgufType>(t);
}

int64_t read_int(Cursor& c, GgufType t) {
  switch (t) {
    case GgufType::U8: return c.read<uint8_t>("value");
    case GgufType::I8: return c.read<int8_t>("value");
    case GgufType::BOOL: return c.read<uint8_t>("value") != 0;
    case GgufType::U16: return c.read<uint16_t>("value");
    case GgufType::I16: return c.read<int16_t>("value");
    case GgufType::U32: return c.read<uint32_t>("value");
    case GgufType::I32: return c.read<int32_t>("value");
    case GgufType::U64: return static_cast<int64_t>(c.read<uint64_t>("value"));
    default: return c.read<int64_t>("value");
  }
}

double read_float(Cursor& c, GgufType t) {
  return t == GgufType::F32 ? static_cast<double>(c.read<float>("value")) : c.read<double>("value");
}

void read_array(const std::string& path, Cursor& c, const std::string& key, GgufValue& v, int depth) {
  v.elem = checked_type(path, c.read<uint32_t>("array type"), key);
  const uint64_t n = c.read<uint64_t>("array length");
  const size_t w = scalar_bytes(v.elem);
  // Every element takes at least its width (a string 8 bytes, an array 12): a larger count is corrupt.
  const size_t min_bytes = w ? w : v.elem == GgufType::STRING ? 8 : 12;
  QWENQ_CHECK(n <= c.left() / min_bytes, path << ": metadata '" << key << "' claims " << n << " array elements, more than "
                                              << "the " << c.left() << " bytes left hold (truncated or corrupt file)");
  QWENQ_CHECK(depth < 4, path << ": metadata '" << key << "' nests arrays deeper than 4 (corrupt file?)");
  for (uint64_t i = 0; i < n; ++i) {
    if (v.elem == GgufType::STRING) {
      v.strs.push_back(c.str("array string"));
    } else if (v.elem == GgufType::ARRAY) {
      GgufValue inner;
      inner.type = GgufType::ARRAY;
      read_array(path, c, key, inner, depth + 1);
      v.nested = true;
    } else if (v.elem == GgufType::F32 || v.elem == GgufType::F64) {
      v.floats.push_back(read_float(c, v.elem));
    } else {
      v.ints.push_back(read_int(c, v.elem));
    }
  }
}

// Little-endian append helpers for the writer.
template <typename T>
void put(std::vector<uint8_t>& out, T v) {
  const size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}
void put_str(std::vector<uint8_t>& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}
void put_int(std::vector<uint8_t>& out, GgufType t, int64_t v) {
  switch (t) {
    case GgufType::U8: case GgufType::BOOL: put<uint8_t>(out, static_cast<uint8_t>(v)); break;
    case GgufType::I8: put<int8_t>(out, static_cast<int8_t>(v)); break;
    case GgufType::U16: put<uint16_t>(out, static_cast<uint16_t>(v)); break;
    case GgufType::I16: put<int16_t>(out, static_cast<int16_t>(v)); break;
    case GgufType::U32: put<uint32_t>(out, static_cast<uint32_t>(v)); break;
    case GgufType::I32: put<int32_t>(out, static_cast<int32_t>(v)); break;
    case GgufType::U64: put<uint64_t>(out, static_cast<uint64_t>(v)); break;
    default: put<int64_t>(out, v); break;
  }
}
void put_value(std::vector<uint8_t>& out, const GgufValue& v) {
  put<uint32_t>(out, static_cast<uint32_t>(v.type));
  if (v.type == GgufType::STRING) {
    put_str(out, v.s);
  } else if (v.type == GgufType::F32) {
    put<float>(out, static_cast<float>(v.f));
  } else if (v.type == GgufType::F64) {
    put<double>(out, v.f);
  } else if (v.type == GgufType::ARRAY) {
    QWENQ_CHECK(!v.nested && v.elem != GgufType::ARRAY, "GGUF writer: nested arrays are not written");
    put<uint32_t>(out, static_cast<uint32_t>(v.elem));
    put<uint64_t>(out, v.array_size());
    for (const std::string& s : v.strs) put_str(out, s);
    for (double f : v.floats) v.elem == GgufType::F32 ? put<float>(out, static_cast<float>(f)) : put<double>(out, f);
    for (int64_t i : v.ints) put_int(out, v.elem, i);
  } else {
    put_int(out, v.type, v.i);
  }
}

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

}  // namespace

const char* gguf_type_name(GgufType t) {
  static const char* names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64",
                                "i64", "f64"};
  const auto i = static_cast<uint32_t>(t);
  return i < 13 ? names[i] : "?";
}

GgufValue GgufValue::u32(uint32_t v) { GgufValue x; x.type = GgufType::U32; x.i = v; return x; }
GgufValue GgufValue::i32(int32_t v) { GgufValue x; x.type = GgufType::I32; x.i = v; return x; }
GgufValue GgufValue::u16(uint16_t v) { GgufValue x; x.type = GgufType::U16; x.i = v; return x; }
GgufValue GgufValue::u64(uint64_t v) { GgufValue x; x.type = GgufType::U64; x.i = static_cast<int64_t>(v); return x; }
GgufValue GgufValue::f32(float v) { GgufValue x; x.type = GgufType::F32; x.f = v; return x; }
GgufValue GgufValue::boolean(bool v) { GgufValue x; x.type = GgufType::BOOL; x.i = v; return x; }
GgufValue GgufValue::str(std::string v) { GgufValue x; x.type = GgufType::STRING; x.s = std::move(v); return x; }
GgufValue GgufValue::str_array(std::vector<std::string> v) {
  GgufValue x; x.type = GgufType::ARRAY; x.elem = GgufType::STRING; x.strs = std::move(v); return x;
}
GgufValue GgufValue::i32_array(std::vector<int64_t> v) {
  GgufValue x; x.type = GgufType::ARRAY; x.elem = GgufType::I32; x.ints = std::move(v); return x;
}
GgufValue GgufValue::f32_array(std::vector<double> v) {
  GgufValue x; x.type = GgufType::ARRAY; x.elem = GgufType::F32; x.floats = std::move(v); return x;
}
bool GgufValue::is_integer() const {
  return type != GgufType::F32 && type != GgufType::F64 && type != GgufType::STRING && type != GgufType::ARRAY;
}
size_t GgufValue::array_size() const { return strs.size() + floats.size() + ints.size(); }

const GgmlTypeInfo* ggml_type_info(uint32_t type) {
  for (const TypeRow& r : kTypes)
    if (r.id == type) return &r.info;
  return nullptr;
}

uint64_t ggml_row_bytes(GgmlType t, int64_t n) {
  const GgmlTypeInfo* info = ggml_type_info(static_cast<uint32_t>(t));
  QWENQ_CHECK(info != nullptr, "ggml type " << static_cast<uint32_t>(t) << " is not known");
  QWENQ_CHECK(n >= 0 && n % info->block == 0,
              info->name << " stores blocks of " << info->block << " values; a row of " << n << " is not a multiple");
  return static_cast<uint64_t>(n / info->block) * info->bytes;
}

bool is_gguf_file(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  std::ifstream in(path, std::ios::binary);
  uint32_t magic = 0;
  return in.read(reinterpret_cast<char*>(&magic), 4) && magic == kMagic;
}

int64_t GgufTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

std::string gguf_split_path(const std::string& prefix, int no, int count) {
  char tail[40];
  std::snprintf(tail, sizeof(tail), "-%05d-of-%05d.gguf", no + 1, count);
  return prefix + tail;
}

std::string gguf_path_prefix(const std::string& path) {
  const bool ext = has_proper_suffix(path, ".gguf");
  return ext ? path.substr(0, path.size() - 5) : path;
}

namespace {
constexpr const char* kSplitNo = "split.no";
constexpr const char* kSplitCount = "split.count";
constexpr const char* kSplitTensors = "split.tensors.count";
}  // namespace

GgufFile::GgufFile(const std::string& path) : path_(path) {
  parse();
  open_splits();
}

GgufFile::GgufFile(const std::string& path, int split_no) : path_(path) {
  parse();
  QWENQ_CHECK(has(kSplitNo) && get_int(kSplitNo) == split_no,
              path_ << ": expected split " << split_no + 1 << " of a split model here ("
                    << (has(kSplitNo) ? "its split.no is " + std::to_string(get_int(kSplitNo)) : std::string("no split.no"))
                    << ")");
}

void GgufFile::open_splits() {
  const int64_t count = get_int_or(kSplitCount, 0);
  if (count <= 1) return;
  QWENQ_CHECK(count <= 9999, path_ << ": split.count " << count << " is implausible");
  QWENQ_CHECK(get_int_or(kSplitNo, -1) == 0, path_ << ": this is split " << get_int_or(kSplitNo, -1) + 1 << " of "
                                                  << count << "; open the first file (-00001-of-...)");
  const std::string tail = gguf_split_path("", 0, static_cast<int>(count));
  QWENQ_CHECK(has_proper_suffix(path_, tail),
              path_ << ": the first file of a split model must be named <prefix>" << tail);
  const std::string prefix = path_.substr(0, path_.size() - tail.size());
  for (int i = 1; i < count; ++i) {
    const std::string p = gguf_split_path(prefix, i, static_cast<int>(count));
    QWENQ_CHECK(file_exists(p), path_ << ": split " << i + 1 << " of " << count << " (" << p << ") is missing");
    splits_.push_back(std::unique_ptr<GgufFile>(new GgufFile(p, i)));
    for (const GgufTensor& t : splits_.back()->tensors_) {
      QWENQ_CHECK(!index_.count(t.name), p << ": tensor '" << t.name << "' is also in another split");
      index_[t.name] = tensors_.size();
      tensors_.push_back(t);
    }
  }
  QWENQ_CHECK(!has(kSplitTensors) || get_int(kSplitTensors) == static_cast<int64_t>(tensors_.size()),
              path_ << ": split.tensors.count says " << get_int(kSplitTensors) << " tensors, the " << count
                    << " files hold " << tensors_.size());
}

void GgufFile::parse() {
  const std::string& path = path_;
  map_ = std::make_unique<MappedFile>(path);
  Cursor c(path_, map_->data(), map_->size());
  QWENQ_CHECK(map_->size() >= 4 && c.read<uint32_t>("magic") == kMagic,
              path << ": not a GGUF file (the first 4 bytes are not \"GGUF\")");
  version_ = c.read<uint32_t>("version");
  QWENQ_CHECK(version_ == 2 || version_ == 3, path << ": GGUF version " << version_ << " is not supported (2 and 3 are)");
  const uint64_t n_tensors = c.read<uint64_t>("tensor count");
  const uint64_t n_kv = c.read<uint64_t>("metadata count");
  // A key takes at least 12 bytes and a tensor info at least 24: larger counts cannot fit in the file.
  QWENQ_CHECK(n_kv <= map_->size() / 12 && n_tensors <= map_->size() / 24,
              path << ": header claims " << n_tensors << " tensors and " << n_kv << " metadata keys, more than a "
                   << map_->size() << "-byte file holds (corrupt file?)");
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.str("metadata key");
    GgufValue v;
    v.type = checked_type(path_, c.read<uint32_t>("value type"), key);
    if (v.type == GgufType::STRING) {
      v.s = c.str("string value");
    } else if (v.type == GgufType::ARRAY) {
      read_array(path_, c, key, v, 0);
    } else if (v.is_float()) {
      v.f = read_float(c, v.type);
    } else {
      v.i = read_int(c, v.type);
    }
    QWENQ_CHECK(!kv_.count(key), path << ": metadata key '" << key << "' appears twice");
    key_order_.push_back(key);
    kv_.emplace(std::move(key), std::move(v));
  }
  if (has("general.alignment")) {
    const int64_t a = get_int("general.alignment");
    QWENQ_CHECK(a > 0 && a <= 65536 && (a & (a - 1)) == 0,
                path << ": general.alignment " << a << " is not a power of two up to 65536");
    alignment_ = static_cast<uint32_t>(a);
  }
  for (uint64_t t = 0; t < n_tensors; ++t) {
    GgufTensor x;
    x.name = c.str("tensor name");
    const uint32_t nd = c.read<uint32_t>("tensor dims");
    QWENQ_CHECK(nd >= 1 && nd <= kMaxDims, path << ": tensor '" << x.name << "' has " << nd << " dimensions (1.."
                                                 << kMaxDims << " allowed)");
    uint64_t numel = 1;
    for (uint32_t d = 0; d < nd; ++d) {
      const uint64_t e = c.read<uint64_t>("tensor dim");
      QWENQ_CHECK(e >= 1 && numel <= (1ull << 42) / e,
                  path << ": tensor '" << x.name << "' has dimension " << d << " = " << e << " (implausibly large)");
      numel *= e;
      x.ne.push_back(static_cast<int64_t>(e));
    }
    const uint32_t type = c.read<uint32_t>("tensor type");
    const GgmlTypeInfo* info = ggml_type_info(type);
    QWENQ_CHECK(info != nullptr, path << ": tensor '" << x.name << "' has ggml type " << type
                                      << ", which qwenq does not know");
    x.type = static_cast<GgmlType>(type);
    QWENQ_CHECK(x.ne[0] % info->block == 0, path << ": tensor '" << x.name << "' of type " << info->name
                                                 << " has rows of " << x.ne[0] << " values, not a multiple of its block "
                                                 << info->block);
    x.bytes = ggml_row_bytes(x.type, x.ne[0]) * static_cast<uint64_t>(x.rows());
    const uint64_t off = c.read<uint64_t>("tensor offset");
    QWENQ_CHECK(off % alignment_ == 0, path << ": tensor '" << x.name << "' starts at data offset " << off
                                            << ", not a multiple of the alignment " << alignment_);
    x.data = reinterpret_cast<const uint8_t*>(off);  // rebased below, once the data section is known
    QWENQ_CHECK(!index_.count(x.name), path << ": tensor '" << x.name << "' appears twice");
    index_[x.name] = tensors_.size();
    tensors_.push_back(std::move(x));
  }
  const uint64_t data_start = align_up(c.pos(), alignment_);
  QWENQ_CHECK(data_start <= map_->size() || tensors_.empty(), path << ": truncated GGUF file: no data section");
  const uint64_t data_bytes = data_start <= map_->size() ? map_->size() - data_start : 0;
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (GgufTensor& x : tensors_) {
    const uint64_t off = reinterpret_cast<uint64_t>(x.data);
    QWENQ_CHECK(off <= data_bytes && x.bytes <= data_bytes - off,
                path << ": truncated GGUF file: tensor '" << x.name << "' (" << x.bytes << " bytes at data offset "
                     << off << ") ends past the end of the file (" << data_bytes << " data bytes)");
    x.data = map_->data() + data_start + off;
    spans.emplace_back(off, off + x.bytes);
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i)
    QWENQ_CHECK(spans[i].first >= spans[i - 1].second, path << ": two tensors overlap at data offset " << spans[i].first);
}

GgufFile::~GgufFile() = default;

const GgufValue& GgufFile::get(const std::string& key) const {
  auto it = kv_.find(key);
  QWENQ_CHECK(it != kv_.end(), path_ << ": metadata key '" << key << "' is missing");
  return it->second;
}

int64_t GgufFile::get_int(const std::string& key) const {
  const GgufValue& v = get(key);
  QWENQ_CHECK(v.is_integer(), path_ << ": metadata '" << key << "' is " << gguf_type_name(v.type)
                                    << ", expected an integer");
  return v.i;
}

double GgufFile::get_float(const std::string& key) const {
  const GgufValue& v = get(key);
  if (v.is_integer()) return static_cast<double>(v.i);
  QWENQ_CHECK(v.is_float(), path_ << ": metadata '" << key << "' is " << gguf_type_name(v.type) << ", expected a number");
  return v.f;
}

const std::string& GgufFile::get_string(const std::string& key) const {
  const GgufValue& v = get(key);
  QWENQ_CHECK(v.type == GgufType::STRING, path_ << ": metadata '" << key << "' is " << gguf_type_name(v.type)
                                                << ", expected a string");
  return v.s;
}

int64_t GgufFile::get_int_or(const std::string& key, int64_t fallback) const {
  return has(key) ? get_int(key) : fallback;
}
double GgufFile::get_float_or(const std::string& key, double fallback) const {
  return has(key) ? get_float(key) : fallback;
}

const GgufTensor& GgufFile::tensor(const std::string& name) const {
  auto it = index_.find(name);
  QWENQ_CHECK(it != index_.end(), path_ << ": tensor '" << name << "' not found");
  return tensors_[it->second];
}

void GgufWriter::set(const std::string& key, GgufValue v) {
  for (auto& kv : kv_) {
    if (kv.first == key) {
      kv.second = std::move(v);
      return;
    }
  }
  kv_.emplace_back(key, std::move(v));
}

void GgufWriter::add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> ne,
                            std::function<std::vector<uint8_t>()> produce) {
  QWENQ_CHECK(!ne.empty() && ne.size() <= kMaxDims, "GGUF writer: tensor '" << name << "' has " << ne.size() << " dims");
  for (const Entry& e : tensors_) QWENQ_CHECK(e.name != name, "GGUF writer: tensor '" << name << "' added twice");
  int64_t rows = 1;
  for (size_t d = 1; d < ne.size(); ++d) rows *= ne[d];
  const uint64_t bytes = ggml_row_bytes(type, ne[0]) * static_cast<uint64_t>(rows);
  tensors_.push_back({name, type, std::move(ne), std::move(produce), bytes});
}

uint32_t GgufWriter::alignment() const {
  for (const auto& kv : kv_)
    if (kv.first == "general.alignment") return static_cast<uint32_t>(kv.second.i);
  return kDefaultAlignment;
}

std::vector<std::string> GgufWriter::write_split(const std::string& path, uint64_t max_bytes,
                                                 const std::function<void(size_t, size_t)>& on_tensor) const {
  const uint32_t alignment = this->alignment();
  // Which file each tensor goes to: a new one when the next padded tensor would pass max_bytes.
  std::vector<size_t> first = {0};
  uint64_t cur = 0;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const uint64_t b = align_up(tensors_[i].bytes, alignment);
    if (max_bytes > 0 && cur > 0 && cur + b > max_bytes) {
      first.push_back(i);
      cur = 0;
    }
    cur += b;
  }
  if (first.size() == 1) {
    write(path, on_tensor);
    return {path};
  }
  const int count = static_cast<int>(first.size());
  QWENQ_CHECK(count <= 9999, "GGUF writer: " << count << " split files for " << path << "; raise the split size");
  const std::string prefix = gguf_path_prefix(path);
  first.push_back(tensors_.size());
  std::vector<std::string> written;
  try {
    size_t done = 0;
    for (int k = 0; k < count; ++k) {
      GgufWriter part;
      if (k == 0) part.kv_ = kv_;
      part.set(kSplitNo, GgufValue::u16(static_cast<uint16_t>(k)));
      part.set(kSplitCount, GgufValue::u16(static_cast<uint16_t>(count)));
      part.set(kSplitTensors, GgufValue::i32(static_cast<int32_t>(tensors_.size())));
      if (k > 0 && alignment != kDefaultAlignment) part.set("general.alignment", GgufValue::u32(alignment));
      for (size_t i = first[k]; i < first[k + 1]; ++i) part.tensors_.push_back(tensors_[i]);
      const std::string p = gguf_split_path(prefix, k, count);
      part.write(p, [&](size_t, size_t) {
        if (on_tensor) on_tensor(++done, tensors_.size());
      });
      written.push_back(p);
    }
  } catch (...) {
    for (const std::string& p : written) std::remove(p.c_str());
    throw;
  }
  return written;
}

void GgufWriter::write(const std::string& path, const std::function<void(size_t, size_t)>& on_tensor) const {
  const uint32_t alignment = this->alignment();
  std::vector<uint8_t> head;
  put<uint32_t>(head, kMagic);
  put<uint32_t>(head, 3);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, kv_.size());
  for (const auto& kv : kv_) {
    put_str(head, kv.first);
    put_value(head, kv.second);
  }
  uint64_t off = 0;
  for (const Entry& e : tensors_) {
    put_str(head, e.name);
    put<uint32_t>(head, static_cast<uint32_t>(e.ne.size()));
    for (int64_t d : e.ne) put<uint64_t>(head, static_cast<uint64_t>(d));
    put<uint32_t>(head, static_cast<uint32_t>(e.type));
    put<uint64_t>(head, off);
    off = align_up(off + e.bytes, alignment);
  }
  head.resize(align_up(head.size(), alignment), 0);
  AtomicFileWriter out(path);
  out.append(head.data(), head.size());
  const std::vector<uint8_t> zeros(alignment, 0);
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const Entry& e = tensors_[i];
    const std::vector<uint8_t> bytes = e.produce();
    QWENQ_CHECK(bytes.size() == e.bytes, "GGUF writer: tensor '" << e.name << "' produced " << bytes.size()
                                                                 << " bytes, expected " << e.bytes);
    out.append(bytes.data(), bytes.size());
    const uint64_t pad = align_up(e.bytes, alignment) - e.bytes;
    if (pad) out.append(zeros.data(), pad);
    if (on_tensor) on_tensor(i + 1, tensors_.size());
  }
  out.commit();
}

}  // namespace qwenq
