// PiSSA's numerics (lora/pissa.h): the adapter against Eigen's BDCSVD of W in double (the oracle: s·B A is W's rank-r
// truncation for any scaling, A and B split as PEFT's pissa_init splits them), the residual (W_res + s·B A = W to fp32
// rounding, its largest singular value W's (r+1)-th), the quantization errors against the real NF4 quantizer, and the
// refusals. PEFT's own pissa_init is checked against ours in tests/oracle/test_pissa_oracle.py.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "core/rng.h"
#include "lora/low_rank.h"
#include "lora/pissa.h"
#include "quant/nf4.h"
#include "tests/support/svd_oracle.h"
#include "tests/support/test_errors.h"

namespace qwenq {
namespace {

// s·B A against the double SVD's truncation: the factors are a double eigen-decomposition rounded to fp32 (as
// tests/test_loftq.cpp's kExactProductTol), relative to max |W|.
constexpr double kProductTol = 2e-6;
// W_res + s·B A against W: each product term and the subtraction round once in fp32, relative to max |W|.
constexpr double kReconstructTol = 4 * std::numeric_limits<float>::epsilon();
constexpr double kSigmaTol = 1e-5;  // the residual's singular values against W's, relative to σ_1 (fp32 residual)

// NF4 with double quantization at blocksize 64, as `qwen-quant nf4` stores it by default.
std::vector<float> nf4_round_trip(const std::vector<float>& X) {
  Nf4Options o;
  o.double_quant = true;
  return nf4_dequantize(nf4_quantize(X.data(), static_cast<int64_t>(X.size()), o));
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, std::fabs(double(x)));
  return m;
}

double distance(const std::vector<float>& a, const std::vector<float>& b) {
  double d2 = 0;
  for (size_t i = 0; i < a.size(); ++i) d2 += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return std::sqrt(d2);
}

TEST(Pissa, AdapterIsThePrincipalPartForAnyScaling) {
  const int64_t N = 48, K = 80, r = 6;
  const std::vector<float> W = test::spectrum_matrix(N, K, 12, 0.7, 0.01, 21);
  const test::SvdOracle o = test::svd_oracle(W, N, K, r);
  const LowRankFactors lr = low_rank_approx(W.data(), N, K, r);
  const double scale = max_abs(W);
  for (const double s : {1.0, 2.0, 0.25}) {
    SCOPED_TRACE(s);
    const PissaSplit p = pissa_split(W, N, K, r, s, nf4_round_trip);
    ASSERT_EQ(static_cast<int64_t>(p.A.size()), r * K);
    ASSERT_EQ(static_cast<int64_t>(p.B.size()), N * r);
    // PEFT's split: A = √(Σ/s) Vᵀ, B = U √(Σ/s); at s = 1 exactly the low-rank factors.
    for (int64_t i = 0; i < r * K; ++i) EXPECT_NEAR(p.A[i] * std::sqrt(s), lr.R[i], 1e-6 * std::fabs(lr.R[i]) + 1e-12);
    for (int64_t i = 0; i < N * r; ++i) EXPECT_NEAR(p.B[i] * std::sqrt(s), lr.L[i], 1e-6 * std::fabs(lr.L[i]) + 1e-12);
    if (s == 1.0) {
      EXPECT_EQ(p.A, lr.R);
      EXPECT_EQ(p.B, lr.L);
    }
    double worst_product = 0, worst_sum = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        double sba = 0;
        for (int64_t j = 0; j < r; ++j) sba += s * double(p.B[n * r + j]) * p.A[j * K + k];
        worst_product = std::max(worst_product, std::fabs(sba - o.Er(n, k)));
        worst_sum = std::max(worst_sum, std::fabs(p.residual[n * K + k] + sba - W[n * K + k]));
      }
    EXPECT_LE(worst_product, kProductTol * scale);
    EXPECT_LE(worst_sum, kReconstructTol * scale);
    // The residual keeps the rest of the spectrum: its singular values are W's from the (r+1)-th on.
    const test::SvdOracle res = test::svd_oracle(p.residual, N, K, 1);
    for (int64_t i = 0; i + r < o.sigma.size(); ++i) EXPECT_NEAR(res.sigma(i), o.sigma(i + r), kSigmaTol * o.sigma(0));
    // The bits of the residual are the documented fp32 order (subtract_scaled_product), which LoftQ shares.
    std::vector<float> again(N * K);
    subtract_scaled_product(W.data(), p.B.data(), p.A.data(), s, N, K, r, again.data());
    EXPECT_EQ(again, p.residual);
    double w2 = 0;
    for (float w : W) w2 += double(w) * w;
    EXPECT_NEAR(p.weight_sq, w2, 1e-12 * w2);
    EXPECT_NEAR(p.principal_sq, o.head, 1e-9 * o.head);
    EXPECT_TRUE(p.exact);
  }
}

// The errors are the quantizer's on W and on W_res; on a weight whose outlier input channels carry its largest
// directions (what PiSSA's paper builds QPiSSA on) the residual quantizes with less error, on white noise it need not.
TEST(Pissa, ResidualQuantizesBetterWhereOutliersLead) {
  const int64_t N = 64, K = 192, r = 8;
  Rng rng(5);
  std::vector<float> noise(N * K), outliers(N * K);
  for (int64_t i = 0; i < N * K; ++i) noise[i] = outliers[i] = static_cast<float>(0.02 * rng.normal());
  for (const int64_t k : {3, 50, 51, 120, 177})  // five input channels 30x the rest, as activation outliers make them
    for (int64_t n = 0; n < N; ++n) outliers[n * K + k] *= 30.f;
  for (const auto& [name, W] : {std::make_pair("outliers", outliers), std::make_pair("noise", noise)}) {
    SCOPED_TRACE(name);
    const PissaSplit p = pissa_split(W, N, K, r, 2.0, nf4_round_trip);
    EXPECT_DOUBLE_EQ(p.plain_error, distance(W, nf4_round_trip(W)));
    EXPECT_DOUBLE_EQ(p.residual_error, distance(p.residual, nf4_round_trip(p.residual)));
    std::printf("%s: ||W - q(W)|| %.5f, ||W_res - q(W_res)|| %.5f (%.1f%% of ||W||^2 in the adapter)\n", name,
                p.plain_error, p.residual_error, 100 * p.principal_sq / p.weight_sq);
    // Measured: outliers 1.644 -> 0.182 (the adapter holds 97 % of ||W||^2), noise 0.205 -> 0.177 (25 %: on white
    // noise the residual keeps most of the values' range, so its error barely moves).
    if (std::string(name) == "outliers") {
      EXPECT_LT(p.residual_error, 0.5 * p.plain_error);
    }
  }
}

TEST(Pissa, Refusals) {
  const std::vector<float> W = test::spectrum_matrix(6, 4, 4, 0.5, 0.01, 3);
  const auto q = [](const std::vector<float>& X) { return X; };
  test::expect_error([&] { pissa_split(W, 6, 4, 5, 1.0, q); }, "rank 5 must be in 1..4 for a 6 x 4 matrix");
  test::expect_error([&] { pissa_split(W, 6, 4, 2, 0.0, q); }, "the LoRA scaling must be positive");
  test::expect_error([&] { pissa_split(W, 4, 4, 2, 1.0, q); }, "W holds 24 values, not 4 x 4");
  std::vector<float> bad = W;
  bad[9] = std::numeric_limits<float>::infinity();
  test::expect_error([&] { pissa_split(bad, 6, 4, 2, 1.0, q, {}, "pissa: layer 3 q_proj"); },
                     "pissa: layer 3 q_proj: value 9 (row 2) is inf");
  const auto short_q = [](const std::vector<float>&) { return std::vector<float>(3); };
  test::expect_error([&] { pissa_split(W, 6, 4, 2, 1.0, short_q); }, "the quantizer returned 3 values, not 24");
}

}  // namespace
}  // namespace qwenq
