// RMSNorm as Qwen2/Llama compute it: y = x · rsqrt(mean(x²) + eps) · w, statistics in fp32 per row.
//
// Backward (w frozen, so only dx), per row with r = rsqrt(mean(x²) + eps) and g = dy ⊙ w:
//   dx = r · g − r³ · x · (Σ_c g_c x_c) / C
// dx is written, not accumulated.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace qwenq {

// x, y: [rows, C] fp32 (may alias); weight: [C] in w_dtype.
void rmsnorm_forward_ref(const float* x, int64_t rows, int64_t C, const void* weight, DType w_dtype, float eps,
                         float* y);

// dy, x, dx: [rows, C] fp32; dx may alias dy or x. weight and eps as in the forward.
void rmsnorm_backward_ref(const float* dy, const float* x, int64_t rows, int64_t C, const void* weight,
                          DType w_dtype, float eps, float* dx);

}  // namespace qwenq

#ifdef QWENQ_HAVE_CUDA
#include "kernels/cuda_check.h"

namespace qwenq {

// CUDA twins (kernels/norm.cu): the arguments of the _ref functions, x, y, dy, dx and weight in device memory,
// queued on `stream` (asynchronous; the argument checks are the ref's and throw before anything is queued).
// One block per row, fp32 statistics as the ref; same aliasing rules.
void rmsnorm_forward_cuda(const float* x, int64_t rows, int64_t C, const void* weight, DType w_dtype, float eps,
                          float* y, CudaStream stream = nullptr);
void rmsnorm_backward_cuda(const float* dy, const float* x, int64_t rows, int64_t C, const void* weight,
                           DType w_dtype, float eps, float* dx, CudaStream stream = nullptr);

}  // namespace qwenq
#endif  // QWENQ_HAVE_CUDA
