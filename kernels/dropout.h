// Inverted dropout with counter-based masks (kernels/dropout_mask.h): the LoRA branch's input dropout (PEFT's
// lora_dropout, torch.nn.Dropout semantics). With m_i = dropout_factor(key, i, p, 1/(1 − p)) ∈ {0, 1/(1 − p)}:
//   forward   x̃_i = m_i · x_i                                  written
//   backward  dx_i = fma(m_i, dx̃_i, dx_i)                      accumulates (one rounding: the same on CPU and GPU)
// The mask is regenerated from (key, i), never stored: the backward and a checkpoint recomputation take the same
// key. i is the flat index into the caller's row-major array (for a Linear: its [T, K] input). p in [0, 1);
// p = 0 keeps everything (m_i = 1). Both twins give bit-identical results (integer mask, one product, one fma).
//
// Uniform noise from the same generator (NEFTune's embedding noise, Jain et al. 2023, as transformers adds it:
// uniform in [−a, a)), with u_i = dropout_uniform(key, i) and half-width a:
//   x_i = fma(a, 2·u_i − 1, x_i)                                  in place; 2·u_i − 1 is exact in fp32
// so both twins give the same bits in any order.
#pragma once

#include <cstdint>

namespace qwenq {

// x [n] -> x_drop [n]; x_drop may alias x.
void dropout_forward_ref(const float* x, int64_t n, float p, uint64_t key, float* x_drop);

// dx [n] += mask ⊙ dx_drop [n] (fused multiply-add per element); dx may alias dx_drop.
void dropout_backward_ref(const float* dx_drop, int64_t n, float p, uint64_t key, float* dx);

// x [n] += U[−half_width, half_width) noise (above); half_width >= 0 and finite.
void uniform_noise_add_ref(float* x, int64_t n, float half_width, uint64_t key);

}  // namespace qwenq

#ifdef QWENQ_HAVE_CUDA
#include "kernels/cuda_check.h"

namespace qwenq {

// CUDA twins (kernels/dropout.cu): arrays in device memory, queued on `stream`; the ref's checks, messages,
// aliasing rules and bits.
void dropout_forward_cuda(const float* x, int64_t n, float p, uint64_t key, float* x_drop,
                          CudaStream stream = nullptr);
void dropout_backward_cuda(const float* dx_drop, int64_t n, float p, uint64_t key, float* dx,
                           CudaStream stream = nullptr);
void uniform_noise_add_cuda(float* x, int64_t n, float half_width, uint64_t key, CudaStream stream = nullptr);

}  // namespace qwenq
#endif  // QWENQ_HAVE_CUDA
