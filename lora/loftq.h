// LoftQ (Li et al. 2023, "LoftQ: LoRA-Fine-Tuning-Aware Quantization for Large Language Models"): start the adapter
// where the quantized base falls short of the original weights, instead of at B = 0.
//
// W [N, K] the original weight, q(X) the 4-bit quantizer followed by its dequantization (what the stored base
// computes), r the adapter rank, s its scaling (alpha / r, or alpha / √r with rsLoRA):
//   one-shot, on a base already quantized (PEFT's replace_lora_weights_loftq):
//     Q = q(W) as stored;   L R = rank-r(W − Q)                                   (lora/low_rank.h)
//   iterative, choosing the base too (PEFT's init_lora_weights = "loftq", loftq_iter = T):
//     X = W;  T times: Q = q(X);  L R = rank-r(W − Q);  X = W − L R    (the last X is what gets stored, as q(X) = Q)
// Then the adapted Linear y = x Qᵀ + s·x Aᵀ Bᵀ starts at x (Q + L R)ᵀ, the best a rank-r correction of Q can do:
//   A = R / √s [r, K],   B = L / √s [N, r],   so s·B A = L R.
// PEFT assigns A = R and B = L whatever the scaling, which is exact only at s = 1 (lora_alpha = r, as its LoftQ
// examples set); there the two agree. Both leave ‖W − Q − s·B A‖_F = (Σ_{i>r} σ_i(W − Q)²)^½.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "lora/low_rank.h"

namespace qwenq {

struct LoftqFactors {
  std::vector<float> A, B;     // [r, K], [N, r]
  double quant_error = 0;      // ‖W − Q‖_F of the stored Q
  double corrected_error = 0;  // ‖W − Q − s·B A‖_F, as (‖W − Q‖² − Σ_{i<=r} σ_i²)^½
  bool exact = true;           // the low-rank step's method (lora/low_rank.h)
};

// The one-shot step: W and Q [N, K].
LoftqFactors loftq_factors(const float* W, const float* Q, int64_t N, int64_t K, int64_t r, double s,
                           const LowRankOptions& svd = {}, const char* what = "loftq");

// The dequantized values q(X) of X [N, K] under the quantizer the base will be stored with.
using QuantizeDequantize = std::function<std::vector<float>(const std::vector<float>& X)>;

struct LoftqIterResult {
  std::vector<float> to_quantize;  // [N, K]: the X whose quantization is the base (q(X) = the Q of the factors)
  LoftqFactors factors;
  double plain_error = 0;          // ‖W − q(W)‖_F: plain quantization, no adapter
};

// The iterative form, iters >= 1 (1 = one-shot on q(W)).
LoftqIterResult loftq_iterate(const std::vector<float>& W, int64_t N, int64_t K, int64_t r, double s, int iters,
                              const QuantizeDequantize& q, const LowRankOptions& svd = {}, const char* what = "loftq");

}  // namespace qwenq
