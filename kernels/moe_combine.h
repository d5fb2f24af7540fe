// The last step of a sparse mixture-of-experts MLP (trainer/moe_block.h): every token's output as the weighted sum of
// the rows its experts computed for it, plus Qwen2-MoE's gated shared expert. With y [R, C] the experts' output rows
// (one per (token, chosen expert), grouped by expert), rows [T, k] the rows of token t in ascending expert order,
// w [T, k] their routing weights, and optionally s [T, C] the shared expert's output with its gate sw [T] = σ(g_t):
//
//   out[t, c] = fma(sw[t], s[t, c], fma(w[t, k−1], y[rows[t, k−1], c], … fma(w[t, 0], y[rows[t, 0], c], 0) …))
//
// i.e. the CPU block's order (experts ascending, then the shared expert), each step one fused multiply-add, so the
// twins agree bit for bit. Forward only (the GPU path that uses it is evaluation).
#pragma once

#include <cstdint>

namespace qwenq {

// The shape checks and every host-side row index in [0, R) (each error starting with `name`): both twins'.
void moe_combine_check(const char* name, int64_t R, int64_t C, const int32_t* rows, int64_t T, int64_t k,
                       const float* s, const float* sw);

// y [R, C], rows [T, k] (each in [0, R)), w [T, k], s [T, C] and sw [T] (both null: no shared expert), out [T, C]
// (written; must not overlap the inputs). Throws naming the first row index outside [0, R).
void moe_combine_ref(const float* y, int64_t R, int64_t C, const int32_t* rows, const float* w, int64_t T, int64_t k,
                     const float* s, const float* sw, float* out);

}  // namespace qwenq

#ifdef QWENQ_HAVE_CUDA
#include "kernels/cuda_check.h"

namespace qwenq {

// The CUDA twin (kernels/moe_combine.cu): every array in device memory. The launcher copies rows to the host to
// check them with the ref's message, so it waits for the work already queued on `stream`; host_rows (may be null),
// the host's copy of what rows holds (a caller that just uploaded them), is checked instead, without the wait. One
// block row per token, the C columns across its threads.
void moe_combine_cuda(const float* y, int64_t R, int64_t C, const int32_t* rows, const float* w, int64_t T, int64_t k,
                      const float* s, const float* sw, float* out, CudaStream stream = nullptr,
                      const int32_t* host_rows = nullptr);

}  // namespace qwenq
#endif  // QWENQ_HAVE_CUDA
