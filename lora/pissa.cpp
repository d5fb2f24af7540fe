#include "lora/pissa.h"

#include <cmath>

#include "core/error.h"

namespace qwenq {
namespace {

// ‖X − q(X)‖_F in double.
double quantization_error(const std::vector<float>& X, const QuantizeDequantize& q, const char* what) {
  const std::vector<float> Q = q(X);
  QWENQ_CHECK(Q.size() == X.size(), what << ": the quantizer returned " << Q.size() << " values, not " << X.size());
  double e2 = 0;
  for (size_t i = 0; i < X.size(); ++i) {
    const double d = static_cast<double>(X[i]) - Q[i];
    e2 += d * d;
  }
  return std::sqrt(e2);
}

}  // namespace

PissaSplit pissa_split(const std::vector<float>& W, int64_t N, int64_t K, int64_t r, double s,
                       const QuantizeDequantize& q, const LowRankOptions& svd, const char* what) {
  QWENQ_CHECK(s > 0 && std::isfinite(s), what << ": the LoRA scaling must be positive, got " << s);
  QWENQ_CHECK(static_cast<int64_t>(W.size()) == N * K,
              what << ": W holds " << W.size() << " values, not " << N << " x " << K);
  const LowRankFactors f = low_rank_approx(W.data(), N, K, r, svd, what);
  PissaSplit out;
  out.exact = f.exact;
  const float inv = static_cast<float>(1.0 / std::sqrt(s));
  out.A.resize(r * K);
  out.B.resize(N * r);
  for (int64_t i = 0; i < r * K; ++i) out.A[i] = f.R[i] * inv;
  for (int64_t i = 0; i < N * r; ++i) out.B[i] = f.L[i] * inv;
  out.residual.resize(N * K);
  subtract_scaled_product(W.data(), out.B.data(), out.A.data(), s, N, K, r, out.residual.data());
  for (float w : W) out.weight_sq += static_cast<double>(w) * w;
  for (double sig : f.sigma) out.principal_sq += sig * sig;
  if (q) {
    out.plain_error = quantization_error(W, q, what);
    out.residual_error = quantization_error(out.residual, q, what);
  }
  return out;
}

}  // namespace qwenq
