// kernels/exp_rows.h: the cross-entropy's exponentials.
//   - exp_f32 against exp in double, in ulps of the fp32 result, over every 97th float of [−104, 89] (subnormal
//     results in units of the smallest subnormal), and the special values (0, ±inf, NaN with its payload, the
//     underflow and overflow edges);
//   - exp_sum_row / exp_scale_row: every path this CPU has gives the portable loop's bits, over lengths around the
//     16 lanes and a Qwen vocabulary, rows holding −inf, a NaN, huge negative gaps, and in place;
//   - the sum against a double sum of exp in double, within kExpMaxUlp · 2^-24 relative (each term's bound) plus the
//     double additions'.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/exp_rows.h"

namespace qwenq {
namespace {

constexpr uint64_t kSeed = 20261206;

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// |got − e^x| in units of the last place of e^x rounded to fp32 (the smallest subnormal below FLT_MIN).
double ulp_error(float x, float got) {
  const double want = std::exp(static_cast<double>(x));
  const float w = static_cast<float>(want);
  if (std::isinf(w)) return std::isinf(got) ? 0.0 : INFINITY;
  const double ulp = std::max(static_cast<double>(std::nextafter(w, INFINITY)) - w,
                              static_cast<double>(std::numeric_limits<float>::denorm_min()));
  return std::fabs(static_cast<double>(got) - want) / ulp;
}

struct PathGuard {
  explicit PathGuard(int p) { set_exp_rows_path_for_testing(p); }
  ~PathGuard() { set_exp_rows_path_for_testing(-1); }
};

TEST(ExpRows, ExpF32IsWithinItsUlpBound) {
  double worst = 0;
  float worst_x = 0;
  int64_t count = 0;
  for (uint32_t u = 0; u < 0xFFFFFFFFu - 97; u += 97) {
    const float x = from_bits(u);
    if (!(x >= -104.f && x <= 89.f)) continue;
    const double e = ulp_error(x, exp_f32(x));
    ++count;
    if (e > worst) worst = e, worst_x = x;
  }
  EXPECT_GT(count, 10000000);
  EXPECT_LE(worst, kExpMaxUlp) << "at x = " << worst_x;
  std::printf("[ exp_f32 ] %lld arguments, worst %.3f ulp at x = %.9g\n", static_cast<long long>(count), worst,
              worst_x);
}

TEST(ExpRows, SpecialValues) {
  EXPECT_EQ(exp_f32(0.f), 1.f);
  EXPECT_EQ(exp_f32(-0.f), 1.f);
  EXPECT_EQ(exp_f32(-INFINITY), 0.f);
  EXPECT_EQ(exp_f32(INFINITY), INFINITY);
  EXPECT_EQ(exp_f32(-104.f), 0.f);          // e^-104 = 6.8e-46, below half the smallest subnormal
  EXPECT_EQ(exp_f32(-1000.f), 0.f);
  EXPECT_EQ(exp_f32(89.f), INFINITY);       // e^89 = 4.5e38 > FLT_MAX
  EXPECT_LE(ulp_error(88.72f, exp_f32(88.72f)), kExpMaxUlp);  // just below the overflow, finite
  EXPECT_TRUE(std::isfinite(exp_f32(88.72f)));
  // Subnormal results, rounded once: e^-103.2 = 1.08 · 2^-149, e^-90 = 8.2e-40.
  for (float x : {-103.2f, -100.f, -90.f, -87.5f})
    EXPECT_EQ(exp_f32(x), static_cast<float>(std::exp(static_cast<double>(x)))) << "x = " << x;
  const float nan = from_bits(0x7FC01234u), neg_nan = from_bits(0xFFC00042u);
  EXPECT_EQ(bits(exp_f32(nan)), bits(nan));
  EXPECT_EQ(bits(exp_f32(neg_nan)), bits(neg_nan));
}

// Rows: random logits (a spread like a language model's, σ 3), with specials in some rows.
std::vector<float> row(int64_t n, uint64_t seed, int kind) {
  Rng rng(seed);
  std::vector<float> l(static_cast<size_t>(n));
  for (auto& x : l) x = static_cast<float>(rng.normal() * 3.0);
  if (n > 3 && kind == 1) {
    l[1] = -INFINITY;
    l[n - 1] = -200.f;  // a gap past the underflow
  }
  if (n > 5 && kind == 2) l[n / 2] = NAN;
  return l;
}

float row_max(const std::vector<float>& l) {
  float m = -INFINITY;
  for (float x : l)
    if (x > m) m = x;
  return m;
}

const int64_t kLengths[] = {0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 1007, 151936};

TEST(ExpRows, EveryPathGivesThePortableBits) {
  const int best = exp_rows_best_path();
  std::printf("[ exp_rows ] this CPU's best path: %s\n", best == 2 ? "AVX-512" : best == 1 ? "AVX2 + FMA" : "portable");
  if (best == 0) GTEST_SKIP() << "this CPU has no vector path (AVX2 + FMA or AVX-512): only the portable loop runs";
  uint64_t seed = kSeed;
  for (int64_t n : kLengths) {
    for (int kind = 0; kind < 3; ++kind) {
      const std::vector<float> l = row(n, ++seed, kind);
      const float m = n > 0 ? row_max(l) : 0.f;
      const float c = 0.37f;
      double want_sum;
      std::vector<float> want(l.size());
      {
        const PathGuard portable(0);
        want_sum = exp_sum_row(l.data(), n, m);
        exp_scale_row(l.data(), n, m, c, want.data());
      }
      for (int p = 1; p <= best; ++p) {
        const PathGuard path(p);
        SCOPED_TRACE("path " + std::to_string(p) + " n=" + std::to_string(n) + " kind " + std::to_string(kind));
        const double got_sum = exp_sum_row(l.data(), n, m);
        if (std::isnan(want_sum)) EXPECT_TRUE(std::isnan(got_sum));
        else EXPECT_EQ(got_sum, want_sum);
        std::vector<float> got(l.size()), inplace = l;
        exp_scale_row(l.data(), n, m, c, got.data());
        exp_scale_row(inplace.data(), n, m, c, inplace.data());
        for (size_t i = 0; i < want.size(); ++i) {
          ASSERT_EQ(bits(got[i]), bits(want[i])) << "element " << i;
          ASSERT_EQ(bits(inplace[i]), bits(want[i])) << "element " << i << " in place";
        }
      }
    }
  }
}

TEST(ExpRows, SumIsTheDoubleSumWithinEachTermsBound) {
  uint64_t seed = kSeed + 100;
  for (int64_t n : kLengths) {
    if (n == 0) continue;
    for (int kind = 0; kind < 2; ++kind) {
      const std::vector<float> l = row(n, ++seed, kind);
      const float m = row_max(l);
      double want = 0, abs = 0;
      for (float x : l) {
        const double e = std::exp(static_cast<double>(x - m));
        want += e;
        abs += e;
      }
      const double got = exp_sum_row(l.data(), n, m);
      // Each term within kExpMaxUlp ulp (<= 2^-23 relative per ulp) plus n double additions.
      const double tol = abs * (kExpMaxUlp * std::ldexp(1.0, -23) + static_cast<double>(n) * std::ldexp(1.0, -52));
      EXPECT_NEAR(got, want, tol) << "n=" << n << " kind " << kind;
      std::vector<float> scaled(l.size());
      exp_scale_row(l.data(), n, m, 1.f, scaled.data());
      for (int64_t i = 0; i < n; ++i)
        ASSERT_LE(ulp_error(l[i] - m, scaled[i]), kExpMaxUlp) << "element " << i << " of n=" << n;
    }
  }
}

TEST(ExpRows, TestingPathsAreChecked) {
  EXPECT_THROW(set_exp_rows_path_for_testing(exp_rows_best_path() + 1), Error);
  EXPECT_THROW(set_exp_rows_path_for_testing(-2), Error);
  set_exp_rows_path_for_testing(-1);
  EXPECT_EQ(exp_rows_path(), exp_rows_best_path());
}

}  // namespace
}  // namespace qwenq
