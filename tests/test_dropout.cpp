// Counter-based dropout (kernels/dropout_mask.h, kernels/dropout.h) on the CPU:
//   - the generator is SplitMix64 as published (its reference outputs for seed 0 are golden values here) and the
//     key derivation is the documented formula;
//   - statistics: the drop fraction of each p within a binomial bound, a chi-square test of the uniforms, and the
//     correlation of the keep indicators between neighbouring indices and between the keys of neighbouring
//     (seed, layer, target) within a bound of a few standard errors;
//   - distinct (layer, target) give distinct keys; the same key gives the same mask (any thread count);
//   - the forward and backward are exactly the documented per-element formulas (bit for bit), the backward is
//     the forward's adjoint, and bad arguments are refused with the function's name.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/threads.h"
#include "kernels/dropout.h"
#include "kernels/dropout_mask.h"
#include "tests/support/test_paths.h"

namespace qwenq {
namespace {

using test::error_of;

// ---- bounds ---------------------------------------------------------------------------------------------------
// Counts over n independent draws: a drop count is Binomial(n, p') with p' = ceil(p·2^24)/2^24 (the exact drop
// probability of the 24-bit uniform), std sqrt(n p'(1−p')); a correlation coefficient of independent indicators
// has std 1/sqrt(n). kSigmas standard deviations: a false failure has probability ~1e-9 per check.
constexpr double kSigmas = 6.0;
constexpr int64_t kStatN = int64_t{1} << 22;  // 4 Mi draws per statistic
// Chi-square over kBins equal bins of u with kBins − 1 degrees of freedom: mean kBins − 1, std sqrt(2(kBins − 1)).
constexpr int kBins = 256;

constexpr double kTwo24 = 16777216.0;

double exact_drop_probability(float p) { return std::ceil(static_cast<double>(p) * kTwo24) / kTwo24; }

// Pearson correlation of two 0/1 sequences given as functions of i.
template <typename F, typename G>
double indicator_correlation(int64_t n, F&& a, G&& b) {
  double sa = 0, sb = 0, sab = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double x = a(i), y = b(i);
    sa += x, sb += y, sab += x * y;
  }
  const double ma = sa / n, mb = sb / n;
  const double cov = sab / n - ma * mb, va = ma * (1 - ma), vb = mb * (1 - mb);
  return cov / std::sqrt(va * vb);
}

TEST(DropoutMask, IsSplitMix64AndTheDocumentedKey) {
  // SplitMix64 seeded with 0 (Vigna's splitmix64.c) outputs 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4,
  // 0x06c45d188009454f: the stream of key 0 at i = 0, 1, 2.
  EXPECT_EQ(dropout_mix64(1 * kDropoutGolden), 0xe220a8397b1dcdafull);
  EXPECT_EQ(dropout_mix64(2 * kDropoutGolden), 0x6e789e6aa1b965f4ull);
  EXPECT_EQ(dropout_mix64(3 * kDropoutGolden), 0x06c45d188009454full);
  EXPECT_EQ(dropout_uniform(0, 0), static_cast<float>(0xe220a8) / 16777216.0f);
  EXPECT_EQ(dropout_uniform(0, 1), static_cast<float>(0x6e789e) / 16777216.0f);
  EXPECT_EQ(dropout_uniform(0, 2), static_cast<float>(0x06c45d) / 16777216.0f);
  // key = mix64(mix64(seed + G) + (8·layer + target + 1)·G), written out for one case.
  const uint64_t seed = 1234, h = dropout_mix64(seed + kDropoutGolden);
  EXPECT_EQ(dropout_key(seed, 5, 3), dropout_mix64(h + (8 * 5 + 3 + 1) * kDropoutGolden));
  // A uniform is a multiple of 2^-24 in [0, 1).
  for (int64_t i = 0; i < 4096; ++i) {
    const float u = dropout_uniform(0x0123456789abcdefull, i);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    ASSERT_EQ(static_cast<double>(u) * kTwo24, std::floor(static_cast<double>(u) * kTwo24)) << i;
  }
  // The factor is exactly scale or 0: u(0, 0) = 0xe220a8 / 2^24 = 0.8833.
  EXPECT_EQ(dropout_factor(0, 0, 0.9f, 10.f), 0.0f);
  EXPECT_EQ(dropout_factor(0, 0, 0.8833f, 2.5f), 2.5f);
}

TEST(DropoutMask, KeysOfDistinctLinearsAreDistinct) {
  std::set<uint64_t> keys;
  for (uint64_t seed : std::vector<uint64_t>{0, 1, 42, 42 * 1000003ull}) {
    for (int64_t l = 0; l < 128; ++l) {
      for (int t = 0; t < 8; ++t) keys.insert(dropout_key(seed, l, t));
    }
  }
  EXPECT_EQ(keys.size(), 4u * 128u * 8u);
}

TEST(DropoutMask, DropFractionIsBinomial) {
  for (float p : {0.01f, 0.05f, 0.1f, 0.25f, 0.5f, 0.9f}) {
    const uint64_t key = dropout_key(7, 2, 6);
    int64_t dropped = 0;
    for (int64_t i = 0; i < kStatN; ++i) dropped += dropout_uniform(key, i) < p;
    const double q = exact_drop_probability(p), mean = kStatN * q, sd = std::sqrt(kStatN * q * (1 - q));
    EXPECT_LE(std::fabs(dropped - mean), kSigmas * sd)
        << "p " << p << ": " << dropped << " of " << kStatN << " dropped, expected " << mean << " ± " << sd;
  }
}

TEST(DropoutMask, UniformsPassChiSquare) {
  for (uint64_t key : {dropout_key(0, 0, 0), dropout_key(99, 27, 4)}) {
    std::vector<int64_t> bins(kBins, 0);
    for (int64_t i = 0; i < kStatN; ++i) ++bins[static_cast<size_t>(dropout_uniform(key, i) * kBins)];
    const double expect = static_cast<double>(kStatN) / kBins;
    double chi2 = 0;
    for (int64_t b : bins) chi2 += (b - expect) * (b - expect) / expect;
    const double dof = kBins - 1;
    EXPECT_LE(std::fabs(chi2 - dof), kSigmas * std::sqrt(2 * dof)) << "key " << key << ": chi2 " << chi2;
  }
}

TEST(DropoutMask, NeighboursAndKeysAreUncorrelated) {
  const float p = 0.1f;
  const uint64_t seed = 42 * 1000003ull + 5 * 64;  // a train-loop step seed
  const uint64_t k = dropout_key(seed, 3, 2);
  const double bound = kSigmas / std::sqrt(static_cast<double>(kStatN));
  const auto drop = [&](uint64_t key) {
    return [key, p](int64_t i) { return dropout_uniform(key, i) < p ? 1.0 : 0.0; };
  };
  // Neighbouring indices of one mask: i vs i + 1 (along a row), i vs i + 896 (the next row of a [T, 896] input).
  for (int64_t lag : {1, 2, 896}) {
    const double c = indicator_correlation(kStatN, drop(k), [&](int64_t i) { return drop(k)(i + lag); });
    EXPECT_LE(std::fabs(c), bound) << "lag " << lag;
  }
  // The same index under the keys of neighbouring seeds, layers and targets (q/k/v share one input).
  const uint64_t others[] = {dropout_key(seed + 1, 3, 2), dropout_key(seed + 64, 3, 2), dropout_key(seed, 4, 2),
                             dropout_key(seed, 3, 3), dropout_key(seed, 3, 1)};
  for (uint64_t o : others) {
    const double c = indicator_correlation(kStatN, drop(k), drop(o));
    EXPECT_LE(std::fabs(c), bound) << "key " << o;
  }
  // And the uniforms themselves, i vs i + 1: Pearson correlation of u.
  double s1 = 0, s2 = 0, s12 = 0, q1 = 0, q2 = 0;
  for (int64_t i = 0; i < kStatN; ++i) {
    const double a = dropout_uniform(k, i), b = dropout_uniform(k, i + 1);
    s1 += a, s2 += b, s12 += a * b, q1 += a * a, q2 += b * b;
  }
  const double n = kStatN;
  const double r = (s12 / n - s1 / n * s2 / n) /
                   std::sqrt((q1 / n - s1 / n * s1 / n) * (q2 / n - s2 / n * s2 / n));
  EXPECT_LE(std::fabs(r), bound);
}

TEST(Dropout, ForwardAndBackwardAreTheFormulas) {
  const uint64_t key = dropout_key(5, 1, 4);
  for (float p : {0.0f, 0.1f, 0.5f, 0.95f}) {
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{4097}, int64_t{3} * 896 + 5}) {
      Rng rng(static_cast<uint64_t>(n) * 31 + 1);
      std::vector<float> x(n), g(n), dx0(n);
      for (auto& v : x) v = static_cast<float>(rng.normal());
      for (auto& v : g) v = static_cast<float>(rng.normal());
      for (auto& v : dx0) v = static_cast<float>(rng.normal());
      const float scale = 1.0f / (1.0f - p);
      std::vector<float> xd(n), dx = dx0;
      dropout_forward_ref(x.data(), n, p, key, xd.data());
      dropout_backward_ref(g.data(), n, p, key, dx.data());
      int64_t kept = 0;
      for (int64_t i = 0; i < n; ++i) {
        const bool keep = dropout_uniform(key, i) >= p;
        kept += keep;
        ASSERT_EQ(xd[i], keep ? x[i] * scale : 0.0f) << "p " << p << " n " << n << " i " << i;
        ASSERT_EQ(dx[i], keep ? std::fma(scale, g[i], dx0[i]) : dx0[i]) << "p " << p << " n " << n << " i " << i;
      }
      if (p == 0.0f) {
        EXPECT_EQ(xd, x);
        EXPECT_EQ(kept, n);
      }
      // Adjoint: <g, drop(x)> = <drop_backward(g), x> (in double, from a zero dx).
      std::vector<float> gx(n, 0.0f);
      dropout_backward_ref(g.data(), n, p, key, gx.data());
      double lhs = 0, rhs = 0, mag = 0;
      for (int64_t i = 0; i < n; ++i) {
        lhs += static_cast<double>(g[i]) * xd[i];
        rhs += static_cast<double>(gx[i]) * x[i];
        mag += std::fabs(static_cast<double>(g[i]) * x[i]) * scale;
      }
      EXPECT_NEAR(lhs, rhs, 1e-6 * mag) << "p " << p << " n " << n;
    }
  }
}

TEST(Dropout, SameKeySameMaskAnyThreadCountAndInPlace) {
  const int64_t n = (int64_t{1} << 17) + 3;  // several parallel_for chunks
  const uint64_t key = dropout_key(11, 0, 0);
  Rng rng(2);
  std::vector<float> x(n);
  for (auto& v : x) v = rng.uniform(-1.f, 1.f);
  const int threads = num_threads();
  std::vector<float> a(n), b(n), c = x;
  dropout_forward_ref(x.data(), n, 0.3f, key, a.data());
  set_num_threads(1);
  dropout_forward_ref(x.data(), n, 0.3f, key, b.data());
  set_num_threads(threads);
  EXPECT_EQ(a, b);
  dropout_forward_ref(c.data(), n, 0.3f, key, c.data());  // x_drop may alias x
  EXPECT_EQ(a, c);
  std::vector<float> other(n);
  dropout_forward_ref(x.data(), n, 0.3f, dropout_key(11, 0, 1), other.data());
  EXPECT_NE(a, other);
}

// NEFTune's noise: x + a·(2u − 1) exactly (fma), every value in [x − a, x + a), mean 0 and variance a²/3 (a uniform
// on [−a, a)) within kSigmas standard errors, a key of its own (not any dropout key of the seed), the same bits for
// any thread count, and a = 0 changes nothing.
TEST(UniformNoise, IsTheDocumentedUniformAndKeyedApart) {
  const int64_t n = kStatN;
  const float a = 0.25f;
  const uint64_t key = noise_key(99);
  std::vector<float> x(n, 0.f);
  uniform_noise_add_ref(x.data(), n, a, key);
  double s = 0, s2 = 0;
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(x[i], std::fma(a, 2.0f * dropout_uniform(key, i) - 1.0f, 0.0f)) << i;
    ASSERT_GE(x[i], -a);
    ASSERT_LT(x[i], a);
    s += x[i], s2 += static_cast<double>(x[i]) * x[i];
  }
  const double var = a * a / 3.0, mean = s / n;
  EXPECT_LT(std::fabs(mean), kSigmas * std::sqrt(var / n)) << "mean " << mean;
  // Var(noise²) for U[−a, a): E[x⁴] − E[x²]² = a⁴/5 − a⁴/9.
  const double var4 = std::pow(a, 4) * (1.0 / 5 - 1.0 / 9);
  EXPECT_LT(std::fabs(s2 / n - var), kSigmas * std::sqrt(var4 / n)) << "variance " << s2 / n << ", want " << var;
  for (int64_t layer = 0; layer < 4; ++layer)
    for (int t = 0; t < 8; ++t) EXPECT_NE(key, dropout_key(99, layer, t)) << layer << " " << t;
  std::vector<float> y(n, 1.f), z(n, 1.f);
  uniform_noise_add_ref(y.data(), n, a, key);
  const int threads = num_threads();
  set_num_threads(1);
  uniform_noise_add_ref(z.data(), n, a, key);
  set_num_threads(threads);
  EXPECT_EQ(y, z);
  std::vector<float> w(17, 3.f);
  uniform_noise_add_ref(w.data(), 17, 0.f, key);
  EXPECT_EQ(w, std::vector<float>(17, 3.f));
  EXPECT_NE(error_of([&] { uniform_noise_add_ref(w.data(), 1, -1.f, key); })
                .find("uniform_noise_add_ref: the half-width must be finite and >= 0, got -1"),
            std::string::npos);
  EXPECT_NE(error_of([&] { uniform_noise_add_ref(nullptr, 2, 1.f, key); }).find("null pointer"), std::string::npos);
}

TEST(Dropout, RefusesBadArguments) {
  float v = 1.f;
  EXPECT_NE(error_of([&] { dropout_forward_ref(&v, 1, 1.0f, 0, &v); })
                .find("dropout_forward_ref: dropout probability must be in [0, 1), got 1"),
            std::string::npos);
  EXPECT_NE(error_of([&] { dropout_backward_ref(&v, 1, -0.5f, 0, &v); })
                .find("dropout_backward_ref: dropout probability must be in [0, 1), got -0.5"),
            std::string::npos);
  EXPECT_NE(error_of([&] { dropout_forward_ref(&v, -2, 0.1f, 0, &v); }).find("negative size -2"), std::string::npos);
  EXPECT_NE(error_of([&] { dropout_backward_ref(nullptr, 3, 0.1f, 0, &v); }).find("null pointer"),
            std::string::npos);
  EXPECT_NE(error_of([&] { dropout_forward_ref(&v, 1, NAN, 0, &v); }).find("[0, 1)"), std::string::npos);
  dropout_forward_ref(nullptr, 0, 0.1f, 0, nullptr);  // n = 0: nothing to do
}

}  // namespace
}  // namespace qwenq
