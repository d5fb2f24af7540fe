// kernels/moe_combine_backward.h: the CUDA twins against the CPU twins (tests/test_moe_combine_backward.cpp holds
// those to the formulas and to finite differences). dy, ds and the scatter add bit for bit (one float operation per
// term in the same order); dw and dg within the header's bound (kSumTolPerColumn below), since only the order of
// their double sums differs; dw and dg the same bits from two launches. Tokens 1 .. 2048 (the scatter add also 70000,
// past the grid's 65535-row limit that it slices at), widths from 1 to Qwen MoE hidden sizes (2048: Qwen3-30B-A3B and
// Qwen1.5-MoE; 3584: Qwen2-57B-A14B; 4096: Qwen3-235B-A22B), k 1..8, with and without the shared expert, rows a
// random permutation (one case with rows of y no choice names: left as they were); the refusal of a row index
// outside the experts' rows, with the ref's message.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "core/rng.h"
#include "kernels/cuda_check.cuh"
#include "kernels/moe_combine_backward.h"
#include "tests/gpu/gpu_test.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_random.h"

namespace qwenq {
namespace {

using test::DeviceBuffer;

// Two double sums of the same C exact products in different orders each lie within (C − 1)·2⁻⁵³·Σ|terms| of the
// exact sum, so within C·2⁻⁵² of each other; converted to float they differ by that plus one ulp of the result.
constexpr double kSumTolPerColumn = 0x1p-52;
// dg = fl(fl(F·sw)·(1 − sw)) with F the converted dot: the two F differ by the sums' difference plus 2⁻²³ of |F|,
// and each twin's two products round within 2⁻²⁴ relative, so |dg₁ − dg₂| <= (sums' difference)·sw·(1 − sw) +
// 3·2⁻²³·|dg| (to first order); 2⁻²¹ relative leaves room for the second-order terms.
constexpr double kDgRelTol = 0x1p-21;
constexpr float kSentinel = -12345.5f;

double ulp_of(float a, float b) {
  const float m = std::max(std::fabs(a), std::fabs(b));
  return static_cast<double>(std::nextafter(m, INFINITY)) - m;
}

// The first n values of a random permutation of [0, R) (Fisher-Yates).
std::vector<int32_t> distinct_rows(int64_t n, int64_t R, uint64_t seed) {
  std::vector<int32_t> p(static_cast<size_t>(R));
  std::iota(p.begin(), p.end(), 0);
  Rng rng(seed);
  for (int64_t i = R - 1; i > 0; --i) std::swap(p[i], p[rng.below(static_cast<uint64_t>(i + 1))]);
  p.resize(static_cast<size_t>(n));
  return p;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(MoeCombineBackwardCuda, MatchesTheTwin) {
  QWENQ_REQUIRE_GPU();
  struct Case {
    int64_t T, C, k, extra;  // R = T·k + extra
  };
  const Case cases[] = {{1, 1, 1, 0},    {3, 7, 2, 0},   {37, 64, 2, 9},  {37, 2048, 8, 0}, {512, 2048, 8, 0},
                        {129, 3584, 8, 0}, {64, 4096, 8, 0}, {2048, 896, 4, 0}, {2048, 7, 1, 0}};
  for (const Case& cs : cases) {
    for (bool shared : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "T " << cs.T << " C " << cs.C << " k " << cs.k << " extra " << cs.extra
                                        << " shared " << shared);
      const int64_t T = cs.T, C = cs.C, k = cs.k, R = T * k + cs.extra;
      const std::vector<float> dout = test::normal_vector(T * C, 3 + C), y = test::normal_vector(R * C, 4 + C),
                               s = test::normal_vector(T * C, 5 + C);
      const std::vector<int32_t> rows = distinct_rows(T * k, R, 6 + T);
      std::vector<float> w(static_cast<size_t>(T * k)), sw(static_cast<size_t>(T));
      Rng rng(7 + T);
      for (float& x : w) x = rng.uniform();
      for (float& x : sw) x = rng.uniform(0.01f, 0.99f);

      std::vector<float> dy(R * C, kSentinel), dw(T * k), ds(T * C), dg(T);
      moe_combine_backward_ref(dout.data(), y.data(), R, C, rows.data(), w.data(), T, k, shared ? s.data() : nullptr,
                               shared ? sw.data() : nullptr, dy.data(), dw.data(), shared ? ds.data() : nullptr,
                               shared ? dg.data() : nullptr);
      DeviceBuffer<float> d_dout(dout), d_y(y), d_s(s), d_w(w), d_sw(sw);
      DeviceBuffer<float> d_dy(std::vector<float>(R * C, kSentinel)), d_dw(dw.size()), d_ds(ds.size()), d_dg(dg.size());
      DeviceBuffer<int32_t> d_rows(rows);
      const auto launch = [&] {
        moe_combine_backward_cuda(d_dout.get(), d_y.get(), R, C, d_rows.get(), d_w.get(), T, k,
                                  shared ? d_s.get() : nullptr, shared ? d_sw.get() : nullptr, d_dy.get(), d_dw.get(),
                                  shared ? d_ds.get() : nullptr, shared ? d_dg.get() : nullptr);
        QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
      };
      launch();
      const std::vector<float> got_dy = d_dy.download(), got_dw = d_dw.download(), got_ds = d_ds.download(),
                               got_dg = d_dg.download();
      EXPECT_TRUE(same_bits(got_dy, dy)) << "dy (the unnamed rows included: still the sentinel)";
      if (shared) {
        EXPECT_TRUE(same_bits(got_ds, ds)) << "ds";
      }

      int64_t bad = 0;
      for (int64_t i = 0; i < T * k; ++i) {
        const int64_t t = i / k, r = rows[i];
        double mass = 0;
        for (int64_t c = 0; c < C; ++c) mass += std::fabs(static_cast<double>(dout[t * C + c]) * y[r * C + c]);
        const double tol = ulp_of(got_dw[i], dw[i]) + C * kSumTolPerColumn * mass;
        if (!(std::fabs(static_cast<double>(got_dw[i]) - dw[i]) <= tol) && ++bad <= 5)
          ADD_FAILURE() << "dw token " << t << " choice " << i % k << ": " << got_dw[i] << " vs " << dw[i]
                        << " (tolerance " << tol << ")";
      }
      if (shared) {
        for (int64_t t = 0; t < T; ++t) {
          double mass = 0;
          for (int64_t c = 0; c < C; ++c) mass += std::fabs(static_cast<double>(dout[t * C + c]) * s[t * C + c]);
          const double factor = static_cast<double>(sw[t]) * (1.0 - sw[t]);
          const double big = std::max(std::fabs(static_cast<double>(got_dg[t])), std::fabs(static_cast<double>(dg[t])));
          const double tol = kDgRelTol * big + C * kSumTolPerColumn * mass * factor * (1 + 0x1p-20);
          if (!(std::fabs(static_cast<double>(got_dg[t]) - dg[t]) <= tol) && ++bad <= 5)
            ADD_FAILURE() << "dg token " << t << ": " << got_dg[t] << " vs " << dg[t] << " (tolerance " << tol << ")";
        }
      }
      EXPECT_EQ(bad, 0);

      launch();  // run to run: the same bits (fixed-order block sums, no atomics)
      EXPECT_TRUE(same_bits(d_dw.download(), got_dw)) << "dw changed between two launches";
      if (shared) {
        EXPECT_TRUE(same_bits(d_dg.download(), got_dg)) << "dg changed between two launches";
      }
      EXPECT_TRUE(same_bits(d_dy.download(), got_dy)) << "dy changed between two launches";
    }
  }
}

TEST(MoeCombineBackwardCuda, ScatterAddMatchesTheTwinBitForBit) {
  QWENQ_REQUIRE_GPU();
  struct Case {
    int64_t T, C, k;
  };
  const Case cases[] = {{1, 1, 1},       {3, 7, 2},      {37, 64, 2},  {37, 2048, 8}, {512, 2048, 8},
                        {129, 3584, 8},  {64, 4096, 8},  {2048, 896, 4}, {70000, 8, 1}, {70000, 3, 2}};
  for (const Case& cs : cases) {
    SCOPED_TRACE(::testing::Message() << "T " << cs.T << " C " << cs.C << " k " << cs.k);
    const int64_t T = cs.T, C = cs.C, k = cs.k, R = T * k;
    const std::vector<float> dx = test::normal_vector(R * C, 8 + C), dn0 = test::normal_vector(T * C, 9 + C);
    const std::vector<int32_t> rows = distinct_rows(R, R, 10 + T);
    std::vector<float> want = dn0;  // accumulated into: nonzero before
    moe_scatter_add_ref(dx.data(), R, C, rows.data(), T, k, want.data());
    DeviceBuffer<float> d_dx(dx), d_dn(dn0);
    DeviceBuffer<int32_t> d_rows(rows);
    moe_scatter_add_cuda(d_dx.get(), R, C, d_rows.get(), T, k, d_dn.get());
    QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(same_bits(d_dn.download(), want));
  }
}

TEST(MoeCombineBackwardCuda, RefusesRowsOutsideTheExpertsOutput) {
  QWENQ_REQUIRE_GPU();
  DeviceBuffer<float> dout(std::vector<float>(4, 1.f)), y(std::vector<float>(6, 1.f)), w(std::vector<float>(4, 0.5f)),
      dy(6), dw(4), dn(4), s(std::vector<float>(4, 1.f)), sw(std::vector<float>(2, 0.5f));
  DeviceBuffer<int32_t> rows(std::vector<int32_t>{0, 1, 2, 3});
  test::expect_error(
      [&] {
        moe_combine_backward_cuda(dout.get(), y.get(), 3, 2, rows.get(), w.get(), 2, 2, nullptr, nullptr, dy.get(),
                                  dw.get(), nullptr, nullptr);
      },
      {"moe_combine_backward_cuda", "row 3 of choice 1 of token 1", "the experts' 3 rows"});
  test::expect_error([&] { moe_scatter_add_cuda(y.get(), 3, 2, rows.get(), 2, 2, dn.get()); },
                     {"moe_scatter_add_cuda", "row 3 of choice 1 of token 1", "the experts' 3 rows"});
  test::expect_error(
      [&] {
        moe_combine_backward_cuda(dout.get(), y.get(), 4, 2, rows.get(), w.get(), 2, 2, s.get(), sw.get(), dy.get(),
                                  dw.get(), nullptr, nullptr);
      },
      {"moe_combine_backward_cuda", "go together"});
  // The caller's host copy is what is checked (here bad on the host only).
  DeviceBuffer<int32_t> good(std::vector<int32_t>{0, 1, 2, 2});
  const std::vector<int32_t> bad = {0, 1, 2, 3};
  test::expect_error(
      [&] {
        moe_combine_backward_cuda(dout.get(), y.get(), 3, 2, good.get(), w.get(), 2, 2, nullptr, nullptr, dy.get(),
                                  dw.get(), nullptr, nullptr, nullptr, bad.data());
      },
      {"moe_combine_backward_cuda", "row 3 of choice 1 of token 1"});
  test::expect_error([&] { moe_scatter_add_cuda(y.get(), 3, 2, good.get(), 2, 2, dn.get(), nullptr, bad.data()); },
                     {"moe_scatter_add_cuda", "row 3 of choice 1 of token 1"});
  // No tokens: no launch, nothing read.
  moe_combine_backward_cuda(nullptr, nullptr, 0, 2, nullptr, nullptr, 0, 2, nullptr, nullptr, nullptr, nullptr, nullptr,
                            nullptr);
  moe_scatter_add_cuda(nullptr, 0, 2, nullptr, 0, 2, nullptr);
}

}  // namespace
}  // namespace qwenq
