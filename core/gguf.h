// GGUF (llama.cpp's single-file model format, version 3) read and write.
//
// Layout, all little-endian:
//   "GGUF" magic, u32 version (3; 2 is read too), u64 tensor count, u64 metadata count,
//   metadata: per key a string (u64 length + bytes), a u32 value type, the value
//     (scalars at their width, bool as one byte, string as above, array as u32 element type + u64 count +
//     elements),
//   tensor infos: per tensor a name string, u32 n_dims, n_dims x u64 ne (ne[0] is the row length: a torch
//     [N, K] weight is ne = {K, N}), u32 ggml type, u64 offset from the start of the data section,
//   zero padding to `general.alignment` (u32, default 32), then the data section, each tensor starting at an
//   offset that is a multiple of the alignment (the writer pads between tensors and after the last one).
// Split files (llama.cpp's gguf-split): "<prefix>-00001-of-0000N.gguf" .. "-0000N-of-0000N.gguf", the first holding
// every metadata key, each "split.no" (u16, 0-based), "split.count" (u16) and "split.tensors.count" (i32, the total),
// each file's tensors relative to its own data section. Opening the first file opens all of them as one.
// The reader maps the file and checks everything before handing out a tensor (sizes from the ggml type's block
// size and bytes per block, every tensor inside the file, aligned, none overlapping); every error names the file.
// The writer streams: the header goes first (every tensor's size follows from its type and shape), then each
// tensor's bytes as its producer returns them, into "<path>.tmp.<pid>" renamed when complete.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace qwenq {

class MappedFile;

enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9, U64 = 10,
  I64 = 11, F64 = 12
};
const char* gguf_type_name(GgufType t);

// One metadata value. Integers (and bool) are held in `i`, floats in `f`; arrays in `ints`, `floats` or `strs`
// by element type (an array of arrays is read and skipped: `nested` is set, its elements are not kept).
struct GgufValue {
  GgufType type = GgufType::U32;
  GgufType elem = GgufType::U8;  // arrays only
  int64_t i = 0;
  double f = 0;
  std::string s;
  std::vector<int64_t> ints;
  std::vector<double> floats;
  std::vector<std::string> strs;
  bool nested = false;

  static GgufValue u32(uint32_t v);
  static GgufValue i32(int32_t v);
  static GgufValue u16(uint16_t v);
  static GgufValue u64(uint64_t v);
  static GgufValue f32(float v);
  static GgufValue boolean(bool v);
  static GgufValue str(std::string v);
  static GgufValue str_array(std::vector<std::string> v);
  static GgufValue i32_array(std::vector<int64_t> v);
  static GgufValue f32_array(std::vector<double> v);
  bool is_integer() const;  // U8..I64 and BOOL
  bool is_float() const { return type == GgufType::F32 || type == GgufType::F64; }
  size_t array_size() const;
};

// The ggml tensor types: values are ggml's enum. Elements come in blocks of `block` values stored in `bytes`.
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9, Q2_K = 10, Q3_K = 11, Q4_K = 12,
  Q5_K = 13, Q6_K = 14, Q8_K = 15, IQ4_NL = 20, IQ4_XS = 23, BF16 = 30
};
struct GgmlTypeInfo {
  const char* name;  // "Q4_0"
  int64_t block;     // values per block
  int64_t bytes;     // bytes per block
};
// F32, F16 and BF16: values stored as plain floats, no blocks.
inline bool ggml_type_is_float(GgmlType t) { return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16; }
// nullptr for a type id this table does not know.
const GgmlTypeInfo* ggml_type_info(uint32_t type);
// Bytes of `n` values (n a multiple of the block size; throws otherwise).
uint64_t ggml_row_bytes(GgmlType t, int64_t n);

struct GgufTensor {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<int64_t> ne;  // ne[0] = row length
  const uint8_t* data = nullptr;
  uint64_t bytes = 0;
  int64_t numel() const;
  int64_t rows() const { return ne.empty() ? 0 : numel() / ne[0]; }
};

// True when `path` is a regular file that starts with the GGUF magic.
bool is_gguf_file(const std::string& path);
// The name of split `no` (0-based) of `count`: "<prefix>-%05d-of-%05d.gguf" (llama.cpp's llama_split_path).
std::string gguf_split_path(const std::string& prefix, int no, int count);
// `path` without a trailing ".gguf" (the prefix split files are named from).
std::string gguf_path_prefix(const std::string& path);

class GgufFile {
 public:
  // Throws qwenq::Error naming the file. The first file of a split model brings the others (named as above, beside it).
  explicit GgufFile(const std::string& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  const std::vector<std::string>& keys() const { return key_order_; }  // in file order
  bool has(const std::string& key) const { return kv_.count(key) != 0; }
  const GgufValue& get(const std::string& key) const;  // throws naming file and key
  // Typed reads: a missing key or a value of another kind throws naming the file and key.
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;  // integers are accepted too
  const std::string& get_string(const std::string& key) const;
  int64_t get_int_or(const std::string& key, int64_t fallback) const;
  double get_float_or(const std::string& key, double fallback) const;

  const std::vector<GgufTensor>& tensors() const { return tensors_; }  // in file order (all splits, in order)
  int split_count() const { return static_cast<int>(splits_.size()) + 1; }
  bool has_tensor(const std::string& name) const { return index_.count(name) != 0; }
  const GgufTensor& tensor(const std::string& name) const;  // throws naming file and tensor

 private:
  std::string path_;
  std::unique_ptr<MappedFile> map_;
  uint32_t version_ = 0, alignment_ = 32;
  std::vector<std::string> key_order_;
  std::map<std::string, GgufValue> kv_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t> index_;
  std::vector<std::unique_ptr<GgufFile>> splits_;  // the other files of a split model

  GgufFile(const std::string& path, int split_no);  // one file of a split model: its split.no must be split_no
  void parse();
  void open_splits();
};

class GgufWriter {
 public:
  // Keys are written in the order first set; setting a key again replaces its value in place.
  void set(const std::string& key, GgufValue v);
  // A tensor of type `type` and shape `ne` (ne[0] = row length, a multiple of the type's block size). `produce`
  // is called once, in order, while writing, and must return exactly the tensor's byte size.
  void add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> ne,
                  std::function<std::vector<uint8_t>()> produce);
  size_t tensor_count() const { return tensors_.size(); }
  // Writes "<path>.tmp.<pid>", then renames it onto `path`. `on_tensor(i, n)` is called after each tensor.
  void write(const std::string& path, const std::function<void(size_t, size_t)>& on_tensor = {}) const;
  // With max_bytes > 0 and more tensor data than that: split files as gguf-split --split-max-size writes them (a new
  // file when the next tensor, padded, would pass max_bytes; the metadata in the first), named from `path`
  // ("m.gguf" -> "m-00001-of-00003.gguf", ...). Else write(path). Returns the paths written; on a failure the files
  // already written are removed.
  std::vector<std::string> write_split(const std::string& path, uint64_t max_bytes,
                                       const std::function<void(size_t, size_t)>& on_tensor = {}) const;

 private:
  struct Entry {
    std::string name;
    GgmlType type;
    std::vector<int64_t> ne;
    std::function<std::vector<uint8_t>()> produce;
    uint64_t bytes;
  };
  uint32_t alignment() const;  // general.alignment when set, else 32
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<Entry> tensors_;
};

}  // namespace qwenq
