// Dense linear layer on the CPU: y[M,N] = x[M,K] · W[N,K]ᵀ (+ bias[N]).
//
// x and y are fp32 row-major; W is a PyTorch nn.Linear weight ([out, in], row = output channel) kept in its
// stored dtype (F32, BF16 or F16) and widened to fp32 one block of rows at a time, so a bf16 model is never
// held twice in memory. Accumulation is fp32. bias may be null; its dtype is given separately because
// checkpoints store it like the weight.
//
// Backward, given dy[M,N] = ∂L/∂y:
//   dx[M,K] = dy · W           (linear_backward_input_ref: W in its stored dtype; dx is written)
//   dW[N,K] += dyᵀ · x         (linear_backward_weight_ref: fp32 W, e.g. LoRA A and B; dW accumulates)
// The bias gradient (Σ_m dy) is not provided: biases are frozen. For a LoRA adapter y = x Wᵀ + s·(x Aᵀ) Bᵀ the
// trainer composes these: dB += s·dyᵀ(xAᵀ), dA += (s·dy B)ᵀ x, dx = dy W + (s·dy B) A.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace qwenq {

void linear_forward_ref(const float* x, int64_t M, int64_t K, const void* w, DType w_dtype, int64_t N,
                        const void* bias, DType bias_dtype, float* y);

// dy: [M, N] fp32; w: [N, K] in w_dtype (F32, BF16 or F16); dx: [M, K] fp32, written, must not overlap dy.
void linear_backward_input_ref(const float* dy, int64_t M, int64_t N, const void* w, DType w_dtype, int64_t K,
                               float* dx);

// dy: [M, N], x: [M, K], dW: [N, K], all fp32; dW += dyᵀ·x (zero it first for a plain gradient). dW must not
// overlap dy or x.
void linear_backward_weight_ref(const float* dy, const float* x, int64_t M, int64_t N, int64_t K, float* dW);

}  // namespace qwenq
