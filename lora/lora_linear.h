// The LoRA half of an adapted Linear layer, CPU reference, fp32.
//
// The layer computes y = x Wᵀ + s·(x Aᵀ) Bᵀ with x [M, K], W [N, K] (frozen base, kernels/gemm.h), A [r, K],
// B [N, r] and s the scaling (alpha / r, or alpha / √r with rsLoRA). Only the adapter half is here:
//
//   forward:   u = x Aᵀ                  [M, r]   written (saved for backward)
//              y += s · u Bᵀ             [M, N]   accumulates onto the base output
//   backward, given dy = ∂L/∂y [M, N], with g = s · dy B [M, r]:
//              dB += s · dyᵀ u           [N, r]   accumulates
//              dA += gᵀ x                [r, K]   accumulates   (= s·(dy B)ᵀ x)
//              dx += g A                 [M, K]   accumulates onto dx = dy W from the base (may be null)
//
// Dropout (PEFT's lora_dropout) acts on the LoRA branch's input only: x̃ = m ⊙ x, where m is 0 with probability
// p and 1/(1-p) otherwise (inverted dropout, as torch.nn.Dropout), from kernels/dropout.h with a counter-based
// mask keyed by (step seed, layer, target) (kernels/dropout_mask.h). The caller runs the forward and backward
// above on x̃ and maps the branch's input gradient back with dx += m ⊙ dx̃ (dropout_backward_ref, which
// regenerates m from the key). The base path always sees the undropped x.
//
// lora_project_ref / lora_project_cuda: u = x Aᵀ alone, for a recomputation that needs the saved u but not y.
//
// lora_forward_cuda is the forward on the GPU (CUDA builds, lora/lora_linear_cuda.cpp), same arguments in device
// memory plus a stream: two fp32 cuBLASLt matmuls (kernels/blas_lt.h, no TF32), u = x Aᵀ written by
// linear_forward_cuda, then y += s · u Bᵀ as one matmul with alpha = s and beta = 1 (the scaling and the
// accumulation cost no extra pass). The GPU trainer (trainer/lora_model_cuda.cpp) and inference with an unmerged
// adapter (trainer/lora_inference_cuda.h) both call it. Asynchronous on `stream`; the argument checks throw before
// anything is queued.
#pragma once

#include <cstdint>

#ifdef QWENQ_HAVE_CUDA
#include "kernels/cuda_check.h"
#endif

namespace qwenq {

// u [M, r] = x Aᵀ (x [M, K], A [r, K]), written: the forward's first product alone, the same call and bits as
// lora_forward_ref's. A recomputation whose y is not needed (the trainers' last Linear of a block) runs only this.
void lora_project_ref(const float* x, int64_t M, int64_t K, const float* A, int64_t r, float* u);

// x [M, K], A [r, K], B [N, r]; y [M, N] accumulates s·(x Aᵀ) Bᵀ; u [M, r] is written with x Aᵀ.
void lora_forward_ref(const float* x, int64_t M, int64_t K, const float* A, const float* B, int64_t r, int64_t N,
                      float s, float* y, float* u);

// dy [M, N], x [M, K] and u [M, r] as in the forward. dA [r, K], dB [N, r] and dx [M, K] accumulate; dx may be
// null (no input gradient wanted). Outputs must not overlap the inputs.
void lora_backward_ref(const float* dy, const float* x, const float* u, int64_t M, int64_t K, int64_t N, int64_t r,
                       const float* A, const float* B, float s, float* dA, float* dB, float* dx);

#ifdef QWENQ_HAVE_CUDA
// lora_project_ref's contract on the device (fp32 in and out, one cuBLASLt matmul: lora_forward_cuda's u).
void lora_project_cuda(const float* x, int64_t M, int64_t K, const float* A, int64_t r, float* u, CudaStream stream);

// lora_forward_ref's contract on the device: x [M, K], A [r, K], B [N, r] fp32; y [M, N] fp32 accumulates
// s·(x Aᵀ) Bᵀ; u [M, r] fp32 is written with x Aᵀ. u must not overlap x or y. M = 0 queues nothing.
void lora_forward_cuda(const float* x, int64_t M, int64_t K, const float* A, const float* B, int64_t r, int64_t N,
                       float s, float* y, float* u, CudaStream stream);
#endif

}  // namespace qwenq
