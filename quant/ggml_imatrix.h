// llama.cpp's importance matrix ("imatrix") files: per weight tensor of a model, the statistics of the inputs its
// matrix multiplication saw over calibration text, which llama-quantize --imatrix uses to weight the rounding error
// of each column (quant/ggml_kquants.h).
//
// For a weight W [N, K] (GGUF ne = {K, N}) that multiplies inputs x [K] of T counted tokens:
//   in_sum2[j] = Σ_t x_tj²,   in_sum[j] = Σ_t x_tj,   counts = T;   importance[j] = in_sum2[j] / counts = E[x_j²].
// Two file formats, both read; both written (`qwen-quant imatrix --output-format`):
//   GGUF (llama-imatrix's default since 2025): general.type = "imatrix", imatrix.datasets (string array),
//     imatrix.chunk_count and imatrix.chunk_size (u32); per entry tensors "<name>.in_sum2" (F32, ne {K, n_mat}),
//     "<name>.counts" (F32, ne {1, n_mat}) and optionally "<name>.in_sum" (F32, ne {K, n_mat}). n_mat > 1 only for
//     merged MoE experts (one row per expert); the dense models we write have n_mat = 1.
//   Legacy .dat: i32 entry count; per entry i32 name length, the name, i32 ncall, i32 nval, nval f32 values
//     = E[x²]·ncall (ncall = the chunks, ⌈T / chunk_size⌉ for the most-counted matrix; one ncall for all of an
//     entry's matrices, a matrix never counted stored as 1·ncall; an entry never counted at all left out); then i32
//     chunk count and i32 length + the dataset name. Reading gives importance = value / ncall (the raw values when
//     ncall is 0), as llama-quantize does; a read entry has one count, whatever its number of matrices.
// Every reading error is one qwenq::Error naming the file and what is wrong (truncated, a size that does not match,
// a missing half of a pair, a non-finite or negative sum).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace qwenq {

struct ImatrixEntry {
  std::vector<float> sum2;    // in_sum2 [n_mat * K] (legacy: the stored values, E[x²]·ncall)
  std::vector<float> sum;     // in_sum [n_mat * K]; empty when the file has none (legacy files)
  std::vector<float> counts;  // tokens per matrix [n_mat] (legacy: {ncall})
  int64_t columns() const { return counts.empty() ? 0 : static_cast<int64_t>(sum2.size() / counts.size()); }
};

struct Imatrix {
  std::map<std::string, ImatrixEntry> entries;  // by GGUF weight name, e.g. "blk.0.attn_q.weight"
  std::vector<std::string> datasets;            // the calibration files it was computed on
  uint32_t chunk_count = 0;                     // chunks of chunk_size tokens evaluated
  uint32_t chunk_size = 0;
  bool legacy = false;  // read from a .dat file

  // E[x_j²] of entry `name` (K · n_mat values) as llama-quantize computes it from the file: in_sum2 / counts (a
  // matrix with count 0 gets 1.0 everywhere), legacy value / ncall. Empty when the file has no such entry.
  std::vector<float> importance(const std::string& name) const;
};

// Reads a GGUF or a legacy .dat imatrix file (GGUF when it starts with the GGUF magic).
Imatrix read_imatrix(const std::string& path);

// Adds `from` (read from from_path) into `into`, as llama-imatrix --in-file does: per entry the sums and counts add (an
// entry new to `into` is copied; in_sum is kept only where both have it), chunk counts add, datasets are appended. A
// legacy `from` is first turned into sums as llama-imatrix reads one: sums = value·chunk_size, counts = ncall·chunk_size
// for chunk_size = into->chunk_size; one count against several matrices is broadcast to each, as llama-imatrix does.
// An entry of another width or matrix count is refused naming from_path.
void merge_imatrix(Imatrix* into, const Imatrix& from, const std::string& from_path);
// Writes the GGUF form (entries in name order, as llama-imatrix), to a temporary name renamed when complete.
void write_imatrix_gguf(const Imatrix& m, const std::string& path);
// Writes the legacy form (llama-imatrix --output-format dat), the same way.
void write_imatrix_dat(const Imatrix& m, const std::string& path);

}  // namespace qwenq
