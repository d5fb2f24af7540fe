// safetensors read and write, and sharded checkpoints through model.safetensors.index.json.
//
// File layout: u64 little-endian header length N, then N bytes of JSON
// {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// then the data section; offsets are relative to the data section, end exclusive. The reader maps the
// file read-only and validates everything before handing out a view: header length within the file and
// <= 100 MB, JSON object, known dtypes, shape product * dtype size == end - begin, offsets inside the data
// section, no overlaps, and the data section fully covered (as the reference reader requires). Every
// error names the file.
//
// A tensor whose data does not start at a multiple of its element size (a writer that does not align, like
// qwenq's before 2026-12-01 with odd-sized U8 tensors before 16-bit ones) is copied into aligned memory owned by
// the file object, so every view can be read through a pointer of its element type.
//
// The writer lays tensors out as the reference (Rust) writer does: by descending dtype rank, then by name,
// the ranks ascending BOOL, U8, I8, I16, F16, BF16, I32, F32, F64, I64 (what safetensors 0.5.3 writes; wider
// dtypes first, so with the header padded with spaces to a multiple of 8 every tensor is aligned to its element
// size), __metadata__ first in the header. For the same tensors and one metadata key its files are
// byte-identical to safetensors' save_file (tests/oracle/test_safetensors_oracle.py). It writes to
// "<path>.tmp.<pid>" before renaming, so a crash never leaves a half-written file under the final name.
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace qwenq {

class MappedFile;

class SafetensorsFile {
 public:
  // Maps and validates `path`. Throws qwenq::Error naming the file on any problem.
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  // View into the mapping; valid while this object lives. Throws if absent.
  const TensorView& get(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::string path_;
  std::unique_ptr<MappedFile> map_;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
  std::vector<std::vector<uint64_t>> aligned_copies_;  // of the tensors stored misaligned in the file
};

// The bytes of n values of a trivially copyable T (for SafetensorsWriter::add_owned), and of a whole vector.
template <typename T>
std::vector<uint8_t> bytes_of(const T* p, size_t n) {
  std::vector<uint8_t> b(n * sizeof(T));
  if (n) std::memcpy(b.data(), p, b.size());
  return b;
}
template <typename T>
std::vector<uint8_t> bytes_of(const std::vector<T>& v) {
  return bytes_of(v.data(), v.size());
}

class SafetensorsWriter {
 public:
  // Copies nothing: `data` must stay valid until write() returns.
  void add(const std::string& name, DType dtype, std::vector<int64_t> shape, const void* data);
  // Owns the bytes (for tensors computed on the fly).
  void add_owned(const std::string& name, DType dtype, std::vector<int64_t> shape, std::vector<uint8_t> bytes);
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  // Sum of tensor payload bytes (the index's total_size).
  uint64_t payload_bytes() const;
  // Writes atomically (temp file + fsync + rename). Throws naming the path on failure (disk full, ...).
  void write(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    const void* data;
    std::shared_ptr<std::vector<uint8_t>> owned;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint directory: either model.safetensors, or model.safetensors.index.json + shards (mapped lazily,
// on the first tensor asked of each shard).
class Checkpoint {
 public:
  explicit Checkpoint(const std::string& dir);
  ~Checkpoint();
  bool has(const std::string& name) const;
  const TensorView& get(const std::string& name) const;  // throws naming the tensor and directory if absent
  std::vector<std::string> names() const;                 // sorted
  // The shard file that holds `name` (for error messages).
  const std::string& file_of(const std::string& name) const;
  const std::string& dir() const { return dir_; }

 private:
  SafetensorsFile& shard(const std::string& file) const;
  std::string dir_;
  std::map<std::string, std::string> weight_map_;  // tensor -> shard file name
  mutable std::map<std::string, std::unique_ptr<SafetensorsFile>> shards_;
};

// The F32, BF16 or F16 tensor `name` of ckpt widened to fp32, every value finite (quantization scales); errors name
// the tensor and its file.
std::vector<float> read_finite_f32(const Checkpoint& ckpt, const std::string& name);

// Writes an index.json for shards (weight_map: tensor -> file; total_size: payload bytes), atomically.
void write_safetensors_index(const std::string& path, const std::map<std::string, std::string>& weight_map,
                             uint64_t total_size);

}  // namespace qwenq
