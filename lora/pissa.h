// PiSSA (Meng, Wang & Zhang 2024, "PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large Language
// Models"): the adapter starts as W's principal part and the base keeps the rest, instead of B = 0 on all of W.
//
// W [N, K] the original weight, r the adapter rank, s its scaling (alpha / r, or alpha / √r with rsLoRA):
//   W = U Σ Vᵀ;   L R = U_r Σ_r V_rᵀ, L = U_r Σ_r^½, R = Σ_r^½ V_rᵀ        (lora/low_rank.h; PEFT: torch.linalg.svd)
//   A = R / √s [r, K],   B = L / √s [N, r]          (PEFT's pissa_init: Sr /= scaling; A = √Sr Uhr, B = Vr √Sr)
//   W_res = W − s·B A                               (from the fp32 A and B, as PEFT subtracts scaling · B @ A)
// so W_res + s·B A = W to one fp32 rounding per product term: the adapted Linear starts at the original model.
// QPiSSA: the base is stored as q(W_res) (q = the 4-bit quantizer and its dequantization), so the start is off W by
// W_res − q(W_res) alone. W_res lacks W's r largest directions (the outlier-carrying ones), so it quantizes with a
// smaller error than W does: ‖W_res − q(W_res)‖_F < ‖W − q(W)‖_F on trained weights (not a theorem: white noise has
// no such directions, and a quantizer's error depends on the values' range, not on the spectrum).
// PEFT computes the decomposition in fp32 and saves W_res in the model's dtype; the quantizers here take the fp32
// W_res directly (one rounding fewer).
#pragma once

#include <cstdint>
#include <vector>

#include "lora/loftq.h"
#include "lora/low_rank.h"

namespace qwenq {

struct PissaSplit {
  std::vector<float> A, B;      // [r, K], [N, r]
  std::vector<float> residual;  // [N, K]: W_res, what the base is quantized from
  double plain_error = 0;       // ‖W − q(W)‖_F: W quantized as it is, no adapter (0 without q)
  double residual_error = 0;    // ‖W_res − q(W_res)‖_F: how far the stored base + s·B A starts from W (0 without q)
  double weight_sq = 0;         // ‖W‖_F²
  double principal_sq = 0;      // Σ_{i<=r} σ_i²: the part of ‖W‖_F² the adapter holds
  bool exact = true;            // the low-rank step's method (lora/low_rank.h)
};

// q may be empty: no quantization errors then (GPTQ's quantizer needs the Linear's Hessian; its driver quantizes the
// residual itself). Throws (naming `what`) when r < 1, r > min(N, K), s is not positive, W holds a non-finite value,
// or q returns a wrong number of values.
PissaSplit pissa_split(const std::vector<float>& W, int64_t N, int64_t K, int64_t r, double s,
                       const QuantizeDequantize& q, const LowRankOptions& svd = {}, const char* what = "pissa");

}  // namespace qwenq
