// The calibration batch of GPTQ and AWQ, cut for the block-by-block forwards, and the host memory it needs.
//
// split_calibration: whole windows, in order, gathered into chunks of at most max_tokens tokens (at least one
// window each, so a window longer than max_tokens is a chunk of its own). Each chunk is a PackedBatch whose
// positions restart per window, so a decoder block computes the same function chunk by chunk as over the whole
// batch, and a driver keeps only one chunk's activations while the residual stream of every window stays whole.
// offsets[c] is the first token of chunk c in the whole batch (the windows back to back).
//
// check_host_memory: the CPU drivers' refusal, before any work, of a calibration that cannot fit: the named parts
// (each a lower bound of what the driver will hold at once) are summed and compared with available_memory_bytes();
// the error lists every part, the total, what is available and where that figure comes from, and the flags that
// lower it. Where the available memory is unknown nothing is refused.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "trainer/qwen_config.h"
#include "trainer/qwen_model.h"

namespace qwenq {

struct CalibChunks {
  std::vector<PackedBatch> batches;
  std::vector<int64_t> offsets;  // first token of each chunk in the whole batch
  int64_t total_tokens = 0;
  int64_t largest = 0;  // tokens of the largest chunk
};

CalibChunks split_calibration(const std::vector<std::vector<int32_t>>& windows, int64_t max_tokens);

struct MemoryPart {
  std::string what;  // "the residual stream (128 windows x 2048 tokens x hidden 3584, fp32)"
  uint64_t bytes;
};

// Lower bounds of what the CPU drivers hold at once for `windows` windows of `seq_len` tokens (fp32 activations;
// chunk: the tokens of the largest chunk, whole windows of at most chunk_tokens, at least one window):
//   both: the token ids (the windows and their packed copy: 8 bytes a token) and the residual stream [T, C];
//         one chunk through a block: QwenModel's block scratch (C + 2·q_dim + 2·kv_dim + 2·I floats a token);
//   gptq: plus the chunk's copy of the stream [chunk, C] and the widest Hessian [K, K], K = max(C, q_dim, I), held
//         twice while a group is solved (the accumulated one and the solver's copy);
//   awq:  plus the captured group inputs [T, 2·C + q_dim + I], the reference module output and one candidate's
//         output [T, C] each.
// Sizes are computed in double and saturate, so absurd flag values give a huge figure, not an overflow.
std::vector<MemoryPart> gptq_cpu_memory_parts(const QwenConfig& cfg, int64_t windows, int64_t seq_len,
                                              int64_t chunk_tokens);
std::vector<MemoryPart> awq_cpu_memory_parts(const QwenConfig& cfg, int64_t windows, int64_t seq_len,
                                             int64_t chunk_tokens);

// Throws qwenq::Error "<method>: the calibration needs at least X of host memory (...), but Y is available (...):
// <advice>" when the parts exceed `available` bytes; nothing when available == 0 (unknown).
void check_host_memory(const std::string& method, const std::vector<MemoryPart>& parts, uint64_t available,
                       const std::string& available_source, const std::string& advice);

}  // namespace qwenq
