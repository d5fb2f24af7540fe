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
// Dropout (PEFT's lora_dropout) acts on the LoRA branch's input only: x̃ = keep ⊙ x, where keep is 0 with
// probability p and 1/(1-p) otherwise (inverted dropout, as torch.nn.Dropout). The caller runs the forward and
// backward above on x̃ and maps the branch's input gradient back with dx += keep ⊙ dx̃
// (lora_dropout_backward_ref). The base path always sees the undropped x.
#pragma once

#include <cstdint>

namespace qwenq {

class Rng;

// x [M, K], A [r, K], B [N, r]; y [M, N] accumulates s·(x Aᵀ) Bᵀ; u [M, r] is written with x Aᵀ.
void lora_forward_ref(const float* x, int64_t M, int64_t K, const float* A, const float* B, int64_t r, int64_t N,
                      float s, float* y, float* u);

// dy [M, N], x [M, K] and u [M, r] as in the forward. dA [r, K], dB [N, r] and dx [M, K] accumulate; dx may be
// null (no input gradient wanted). Outputs must not overlap the inputs.
void lora_backward_ref(const float* dy, const float* x, const float* u, int64_t M, int64_t K, int64_t N, int64_t r,
                       const float* A, const float* B, float s, float* dA, float* dB, float* dx);

// x_drop[i] = keep[i]·x[i] over n values, keep[i] = 0 when rng.uniform() < p, else 1/(1-p); one uniform is drawn
// per element in order. p = 0 draws nothing (x_drop = x, keep = 1). p must be in [0, 1). x_drop may alias x.
void lora_dropout_ref(const float* x, int64_t n, float p, Rng& rng, float* x_drop, float* keep);

// dx[i] += keep[i]·dx_drop[i]: the branch's input gradient back through the dropout.
void lora_dropout_backward_ref(const float* keep, const float* dx_drop, int64_t n, float* dx);

}  // namespace qwenq
