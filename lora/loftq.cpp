#include "lora/loftq.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace qwenq {
LoftqFactors loftq_factors(const float* W, const float* Q, int64_t N, int64_t K, int64_t r, double s,
                           const LowRankOptions& svd, const char* what) {
  QWENQ_CHECK(s > 0 && std::isfinite(s), what << ": the LoRA scaling must be positive, got " << s);
  std::vector<float> E(N * K);
  double e2 = 0;
  for (int64_t i = 0; i < N * K; ++i) {
    E[i] = W[i] - Q[i];
    e2 += static_cast<double>(E[i]) * E[i];
  }
  const LowRankFactors f = low_rank_approx(E.data(), N, K, r, svd, what);
  LoftqFactors out;
  out.exact = f.exact;
  out.quant_error = std::sqrt(e2);
  // L R projects E onto the span of its r left (or right) singular vectors, so ‖E − L R‖² = ‖E‖² − Σ σ_i²: no
  // N·K·r pass (a second per 7B MLP Linear); equal to low_rank_error up to the fp32 rounding of L and R.
  double s2 = 0;
  for (double sig : f.sigma) s2 += sig * sig;
  out.corrected_error = std::sqrt(std::max(0.0, e2 - s2));
  const float inv = static_cast<float>(1.0 / std::sqrt(s));
  out.A.resize(r * K);
  out.B.resize(N * r);
  for (int64_t i = 0; i < r * K; ++i) out.A[i] = f.R[i] * inv;
  for (int64_t i = 0; i < N * r; ++i) out.B[i] = f.L[i] * inv;
  return out;
}

LoftqIterResult loftq_iterate(const std::vector<float>& W, int64_t N, int64_t K, int64_t r, double s, int iters,
                              const QuantizeDequantize& q, const LowRankOptions& svd, const char* what) {
  QWENQ_CHECK(iters >= 1, what << ": the number of LoftQ iterations must be at least 1, got " << iters);
  QWENQ_CHECK(static_cast<int64_t>(W.size()) == N * K, what << ": W holds " << W.size() << " values, not " << N << " x " << K);
  LoftqIterResult out;
  std::vector<float> X = W;
  for (int it = 0; it < iters; ++it) {
    const std::vector<float> Q = q(X);
    QWENQ_CHECK(static_cast<int64_t>(Q.size()) == N * K, what << ": the quantizer returned " << Q.size() << " values");
    LoftqFactors f = loftq_factors(W.data(), Q.data(), N, K, r, s, svd, what);
    if (it == 0) out.plain_error = f.quant_error;
    out.to_quantize = X;
    out.factors = std::move(f);
    if (it + 1 < iters) {  // X = W − L R = W − s·B A
      subtract_scaled_product(W.data(), out.factors.B.data(), out.factors.A.data(), s, N, K, r, X.data());
    }
  }
  return out;
}

}  // namespace qwenq
