// Rotary position embedding, rotate-half ("NeoX") convention used by Hugging Face Qwen2/Qwen3/Llama:
//   inv_freq[i], s = rope_table(spec, D) (kernels/rope_table.h: default 1 / θ^(2i/D), linear, yarn, llama3),
//   angle = pos · inv_freq[i] (fp32, as transformers computes it), cos = s·cos(angle), sin = s·sin(angle)
//   x'[i]       = x[i]·cos - x[i+D/2]·sin
//   x'[i+D/2]   = x[i+D/2]·cos + x[i]·sin
// Backward: x' = s·R·x with R orthogonal, so dx = s·Rᵀ·dx' is the same scaled cos/sin with sin negated:
//   dx[i]       = dx'[i]·cos + dx'[i+D/2]·sin
//   dx[i+D/2]   = dx'[i+D/2]·cos - dx'[i]·sin
#pragma once

#include <cstdint>

#include "kernels/rope_table.h"

namespace qwenq {

// x: [T, H, D] fp32, rotated in place; pos: [T] positions of the tokens.
void rope_forward_ref(float* x, int64_t T, int64_t H, int64_t D, const int32_t* pos, const RopeSpec& rope);

// dx: [T, H, D] fp32, on entry the gradient of the rotated x', on return that of x (in place).
void rope_backward_ref(float* dx, int64_t T, int64_t H, int64_t D, const int32_t* pos, const RopeSpec& rope);

// Largest head dim of the CUDA twins (declared here in every build: the host asks it before an upload).
constexpr int64_t kRopeMaxHeadDim = 512;

}  // namespace qwenq

#ifdef QWENQ_HAVE_CUDA
#include "kernels/cuda_check.h"

namespace qwenq {

// CUDA twins (kernels/rope.cu): x/dx and pos in device memory, queued on `stream`. inv_freq is computed on the
// host by the ref's very code (rope_table) and passed to the kernel with the scaling, the angle is the same single
// fp32 product, cos and sin are taken in double, rounded to fp32 and multiplied by the scaling in fp32: the same
// rotation as the ref up to the last bit of cos/sin.
// D at most kRopeMaxHeadDim.
void rope_forward_cuda(float* x, int64_t T, int64_t H, int64_t D, const int32_t* pos, const RopeSpec& rope,
                       CudaStream stream = nullptr);
void rope_backward_cuda(float* dx, int64_t T, int64_t H, int64_t D, const int32_t* pos, const RopeSpec& rope,
                        CudaStream stream = nullptr);

}  // namespace qwenq
#endif  // QWENQ_HAVE_CUDA
