// SwiGLU activation of the Qwen MLP: out = silu(gate) ⊙ up, silu(x) = x / (1 + e^-x).
//
// Backward, elementwise with s = σ(gate) = 1 / (1 + e^-gate):
//   dup   = dout · silu(gate)
//   dgate = dout · up · s · (1 + gate · (1 − s))        (d silu / dx = s + x·s·(1 − s))
// dgate and dup are written, not accumulated.
#pragma once

#include <cstdint>

namespace qwenq {

void swiglu_forward_ref(const float* gate, const float* up, int64_t n, float* out);

// All arrays [n] fp32. Each output may alias any input (each element is read before it is written); dgate and
// dup must not alias each other.
void swiglu_backward_ref(const float* dout, const float* gate, const float* up, int64_t n, float* dgate,
                         float* dup);

}  // namespace qwenq

#ifdef QWENQ_HAVE_CUDA
#include "kernels/cuda_check.h"

namespace qwenq {

// CUDA twins (kernels/act.cu): all arrays in device memory, queued on `stream`; the ref's formulas (including
// 1 − s taken as e·s for gate >= 0) and aliasing rules.
void swiglu_forward_cuda(const float* gate, const float* up, int64_t n, float* out, CudaStream stream = nullptr);
void swiglu_backward_cuda(const float* dout, const float* gate, const float* up, int64_t n, float* dgate,
                          float* dup, CudaStream stream = nullptr);

}  // namespace qwenq
#endif  // QWENQ_HAVE_CUDA
