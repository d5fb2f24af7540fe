// Rotary position embedding, rotate-half ("NeoX") convention used by Hugging Face Qwen2/Qwen3/Llama:
//   inv_freq[i] = 1 / θ^(2i/D), i = 0..D/2-1, angle = pos · inv_freq[i] (fp32, as transformers computes it)
//   x'[i]       = x[i]·cos - x[i+D/2]·sin
//   x'[i+D/2]   = x[i+D/2]·cos + x[i]·sin
// Backward: the rotation is orthogonal, so dx = Rᵀ·dx' is the rotation by -angle:
//   dx[i]       = dx'[i]·cos + dx'[i+D/2]·sin
//   dx[i+D/2]   = dx'[i+D/2]·cos - dx'[i]·sin
#pragma once

#include <cstdint>

namespace qwenq {

// x: [T, H, D] fp32, rotated in place; pos: [T] positions of the tokens.
void rope_forward_ref(float* x, int64_t T, int64_t H, int64_t D, const int32_t* pos, float theta);

// dx: [T, H, D] fp32, on entry the gradient of the rotated x', on return that of x (in place).
void rope_backward_ref(float* dx, int64_t T, int64_t H, int64_t D, const int32_t* pos, float theta);

}  // namespace qwenq

#ifdef QWENQ_HAVE_CUDA
#include "kernels/cuda_check.h"

namespace qwenq {

// CUDA twins (kernels/rope.cu): x/dx and pos in device memory, queued on `stream`. inv_freq is computed on the
// host by the ref's very code and passed to the kernel, the angle is the same single fp32 product, cos and sin
// are taken in double and rounded to fp32: the same rotation as the ref up to the last bit of cos/sin.
// D at most kRopeMaxHeadDim.
constexpr int64_t kRopeMaxHeadDim = 512;
void rope_forward_cuda(float* x, int64_t T, int64_t H, int64_t D, const int32_t* pos, float theta,
                       CudaStream stream = nullptr);
void rope_backward_cuda(float* dx, int64_t T, int64_t H, int64_t D, const int32_t* pos, float theta,
                        CudaStream stream = nullptr);

}  // namespace qwenq
#endif  // QWENQ_HAVE_CUDA
