// kernels/moe_combine_backward.h's CPU twins against two oracles:
//   - the header's formulas written out: dy, ds one float product each and the scatter add's plain adds in j order
//     (bit for bit); dw and dg against their sums in long double (products of floats exact, the sum within C·2⁻⁶⁴
//     relative), over shapes T 1..37, C 1..300, k 1..4, with and without the shared expert, and rows of y that no
//     choice names (R > T·k) left as they were;
//   - the definition of a gradient: with L = Σ_{t,c} dout[t,c]·out[t,c] and out the forward of kernels/moe_combine.h
//     computed in double from its formula (sw = σ(g)), central differences in double of L with respect to w, y, s
//     and the gate's logit g must give dw, dy, ds and dg;
// and the refusals (a row index outside [0, R), the shared pointers half given, bad shapes), with the function's name.
// tests/gpu/test_moe_combine_backward_cuda.cpp holds the CUDA twins to these.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <utility>
#include <vector>

#include "core/rng.h"
#include "kernels/moe_combine_backward.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_random.h"

namespace qwenq {
namespace {

// The ref's dw against the exact sum: its double sum in column order is within (C − 1)·2⁻⁵³·Σ|terms| of the exact
// one (bounded by C·2⁻⁵² below, room for the long double's own C·2⁻⁶⁴), then the rounding to float, within one
// float ulp of the result.
constexpr double kSumTolPerColumn = 0x1p-52;
// dg = ((float) dot · sw) · (1 − sw): four float roundings (the conversion, 1 − sw, two products), each within 2⁻²⁴
// relative; 5·2⁻²⁴ bounds their compound with room.
constexpr double kDgRelTol = 5 * 0x1p-24;
// Central differences against the ref's float gradients: the gradients' own float roundings (a few 2⁻²⁴ relative),
// the second-order truncation of the σ(g) difference (h² ~ 1e-8 relative) and the double roundoff of L / h
// (~1e-12): all under 1e-6 of the scale (Σ|terms| of the derivative).
constexpr double kFdStep = 1e-4;
constexpr double kFdRelTol = 1e-6;
// A value the backward must not write: rows of y no choice names keep it.
constexpr float kSentinel = -12345.5f;

double ulp_of(float x) {
  const float a = std::fabs(x);
  return static_cast<double>(std::nextafter(a, INFINITY)) - a;
}

// The first n values of a random permutation of [0, R) (Fisher-Yates): distinct row indices, n <= R.
std::vector<int32_t> distinct_rows(int64_t n, int64_t R, uint64_t seed) {
  std::vector<int32_t> p(static_cast<size_t>(R));
  std::iota(p.begin(), p.end(), 0);
  Rng rng(seed);
  for (int64_t i = R - 1; i > 0; --i) std::swap(p[i], p[rng.below(static_cast<uint64_t>(i + 1))]);
  p.resize(static_cast<size_t>(n));
  return p;
}

struct Inputs {
  int64_t T, C, k, R;
  std::vector<float> dout, y, w, s, sw;
  std::vector<int32_t> rows;
};

Inputs make_inputs(int64_t T, int64_t C, int64_t k, int64_t R, uint64_t seed) {
  Inputs in{T, C, k, R, {}, {}, {}, {}, {}, {}};
  in.dout = test::normal_vector(T * C, seed);
  in.y = test::normal_vector(R * C, seed + 1);
  in.s = test::normal_vector(T * C, seed + 2);
  in.rows = distinct_rows(T * k, R, seed + 3);
  Rng rng(seed + 4);
  in.w.resize(static_cast<size_t>(T * k));
  in.sw.resize(static_cast<size_t>(T));
  for (float& x : in.w) x = rng.uniform();
  for (float& x : in.sw) x = rng.uniform(0.01f, 0.99f);
  return in;
}

TEST(MoeCombineBackward, RefIsTheFormula) {
  struct Case {
    int64_t T, C, k, extra;  // R = T·k + extra
  };
  const Case cases[] = {{1, 1, 1, 0},   {1, 300, 4, 0}, {2, 3, 2, 0},    {3, 7, 2, 0},  {5, 64, 3, 0},
                        {17, 257, 4, 0}, {37, 1, 4, 0},  {37, 300, 1, 0}, {37, 96, 2, 0}, {6, 33, 3, 13}};
  for (const Case& cs : cases) {
    for (bool shared : {false, true}) {
      const int64_t T = cs.T, C = cs.C, k = cs.k, R = T * k + cs.extra;
      SCOPED_TRACE(::testing::Message() << "T " << T << " C " << C << " k " << k << " R " << R << " shared " << shared);
      const Inputs in = make_inputs(T, C, k, R, 10 * T + C + k);
      std::vector<float> dy(R * C, kSentinel), dw(T * k, kSentinel), ds(T * C, kSentinel), dg(T, kSentinel);
      moe_combine_backward_ref(in.dout.data(), in.y.data(), R, C, in.rows.data(), in.w.data(), T, k,
                               shared ? in.s.data() : nullptr, shared ? in.sw.data() : nullptr, dy.data(), dw.data(),
                               shared ? ds.data() : nullptr, shared ? dg.data() : nullptr);
      std::vector<bool> named(static_cast<size_t>(R), false);
      int64_t dy_bad = 0, dw_bad = 0;
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t j = 0; j < k; ++j) {
          const int64_t r = in.rows[t * k + j];
          named[r] = true;
          const float wj = in.w[t * k + j];
          long double exact = 0, mass = 0;
          for (int64_t c = 0; c < C; ++c) {
            const float d = in.dout[t * C + c];
            const float want = wj * d;  // one rounding (this file's float products are not contracted: no fma here)
            if (std::memcmp(&dy[r * C + c], &want, sizeof want) != 0 && ++dy_bad <= 5)
              ADD_FAILURE() << "dy row " << r << " col " << c << ": " << dy[r * C + c] << " != " << want;
            const long double term = static_cast<long double>(d) * in.y[r * C + c];
            exact += term;
            mass += std::fabs(term);
          }
          const float got = dw[t * k + j];
          const double tol = ulp_of(got) + C * kSumTolPerColumn * static_cast<double>(mass);
          if (!(std::fabs(static_cast<long double>(got) - exact) <= tol) && ++dw_bad <= 5)
            ADD_FAILURE() << "dw token " << t << " choice " << j << ": " << got << " vs " << static_cast<double>(exact)
                          << " (tolerance " << tol << ")";
        }
      }
      EXPECT_EQ(dy_bad, 0);
      EXPECT_EQ(dw_bad, 0);
      int64_t untouched = 0;
      for (int64_t r = 0; r < R; ++r) {
        if (named[r]) continue;
        for (int64_t c = 0; c < C; ++c) EXPECT_EQ(dy[r * C + c], kSentinel) << "unnamed row " << r << " written";
        ++untouched;
      }
      EXPECT_EQ(untouched, cs.extra);
      if (!shared) {  // ds, dg were not given: untouched
        for (float x : ds) ASSERT_EQ(x, kSentinel);
        for (float x : dg) ASSERT_EQ(x, kSentinel);
        continue;
      }
      for (int64_t t = 0; t < T; ++t) {
        const float g = in.sw[t];
        long double exact = 0, mass = 0;
        for (int64_t c = 0; c < C; ++c) {
          const float d = in.dout[t * C + c];
          const float want = g * d;
          ASSERT_EQ(std::memcmp(&ds[t * C + c], &want, sizeof want), 0) << "ds " << t << " " << c;
          const long double term = static_cast<long double>(d) * in.s[t * C + c];
          exact += term;
          mass += std::fabs(term);
        }
        const long double factor = static_cast<long double>(g) * (1.0L - g);
        const long double want = exact * factor;
        const double tol = kDgRelTol * std::fabs(static_cast<double>(want)) +
                           C * kSumTolPerColumn * static_cast<double>(mass * factor);
        EXPECT_LE(std::fabs(static_cast<double>(dg[t] - want)), tol) << "dg token " << t;
      }
    }
  }
}

// L(w, y, s, g) in double: Σ_{t,c} dout · (Σ_j w[t,j]·y[rows[t,j],c] + σ(g_t)·s[t,c]).
double loss(const Inputs& in, const std::vector<double>& w, const std::vector<double>& y,
            const std::vector<double>& s, const std::vector<double>& g) {
  double L = 0;
  for (int64_t t = 0; t < in.T; ++t) {
    const double sig = 1.0 / (1.0 + std::exp(-g[t]));
    for (int64_t c = 0; c < in.C; ++c) {
      double out = sig * s[t * in.C + c];
      for (int64_t j = 0; j < in.k; ++j) out += w[t * in.k + j] * y[in.rows[t * in.k + j] * in.C + c];
      L += static_cast<double>(in.dout[t * in.C + c]) * out;
    }
  }
  return L;
}

// dL/dv[i] by central differences, each perturbed in place.
double central_difference(const std::function<double()>& L, double& v) {
  const double v0 = v;
  v = v0 + kFdStep;
  const double up = L();
  v = v0 - kFdStep;
  const double down = L();
  v = v0;
  return (up - down) / (2 * kFdStep);
}

TEST(MoeCombineBackward, RefIsTheGradientOfTheCombine) {
  const int64_t T = 4, C = 6, k = 2, R = T * k + 1;  // one row of y no choice names: its gradient is zero (unwritten)
  Inputs in = make_inputs(T, C, k, R, 77);
  // The gate's logits g, with sw = σ(g) exactly a float: gates drawn as σ(N(0, 2²)) rounded to float, then g taken
  // as their logit in double (so the FD's σ(g) and the ref's sw agree to double precision, also near saturation).
  const std::vector<float> raw = test::normal_vector(T, 78, 2.f);
  std::vector<double> g(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    in.sw[t] = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(raw[t]))));
    g[t] = std::log(static_cast<double>(in.sw[t]) / (1.0 - in.sw[t]));
  }
  std::vector<float> dy(R * C, 0.f), dw(T * k), ds(T * C), dg(T);
  moe_combine_backward_ref(in.dout.data(), in.y.data(), R, C, in.rows.data(), in.w.data(), T, k, in.s.data(),
                           in.sw.data(), dy.data(), dw.data(), ds.data(), dg.data());

  std::vector<double> w(in.w.begin(), in.w.end()), y(in.y.begin(), in.y.end()), s(in.s.begin(), in.s.end());
  const auto L = [&] { return loss(in, w, y, s, g); };
  // The scale of each derivative: Σ|terms| of its sum (at least the term itself).
  double dout_abs_max = 0;
  for (float x : in.dout) dout_abs_max = std::max(dout_abs_max, static_cast<double>(std::fabs(x)));
  for (int64_t i = 0; i < T * k; ++i) {
    const int64_t t = i / k, r = in.rows[i];
    double scale = 0;
    for (int64_t c = 0; c < C; ++c) scale += std::fabs(static_cast<double>(in.dout[t * C + c]) * y[r * C + c]);
    EXPECT_NEAR(dw[i], central_difference(L, w[i]), kFdRelTol * scale) << "dw choice " << i;
  }
  for (int64_t i = 0; i < R * C; ++i) {
    EXPECT_NEAR(dy[i], central_difference(L, y[i]), kFdRelTol * dout_abs_max) << "dy element " << i;
  }
  for (int64_t i = 0; i < T * C; ++i) {
    EXPECT_NEAR(ds[i], central_difference(L, s[i]), kFdRelTol * dout_abs_max) << "ds element " << i;
  }
  for (int64_t t = 0; t < T; ++t) {
    double scale = 0;
    for (int64_t c = 0; c < C; ++c) scale += std::fabs(static_cast<double>(in.dout[t * C + c]) * s[t * C + c]);
    scale *= static_cast<double>(in.sw[t]) * (1.0 - in.sw[t]);  // σ'(g)
    EXPECT_NEAR(dg[t], central_difference(L, g[t]), kFdRelTol * scale) << "dg token " << t;
  }
}

TEST(MoeCombineBackward, ScatterAddIsTheFormula) {
  struct Case {
    int64_t T, C, k, R;
  };
  // Distinct rows, more rows than choices, and rows named twice (the formula allows it).
  const Case cases[] = {{1, 1, 1, 1}, {3, 7, 2, 6}, {37, 300, 4, 148}, {17, 65, 3, 60}, {5, 9, 4, 3}};
  for (const Case& cs : cases) {
    SCOPED_TRACE(::testing::Message() << "T " << cs.T << " C " << cs.C << " k " << cs.k << " R " << cs.R);
    const int64_t T = cs.T, C = cs.C, k = cs.k, R = cs.R;
    const std::vector<float> dx = test::normal_vector(R * C, 20 + C), dn0 = test::normal_vector(T * C, 21 + C);
    std::vector<int32_t> rows;
    if (R >= T * k) {
      rows = distinct_rows(T * k, R, 22 + T);
    } else {
      Rng rng(23);
      for (int64_t i = 0; i < T * k; ++i) rows.push_back(static_cast<int32_t>(rng.below(static_cast<uint64_t>(R))));
    }
    std::vector<float> dn = dn0;
    moe_scatter_add_ref(dx.data(), R, C, rows.data(), T, k, dn.data());
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t c = 0; c < C; ++c) {
        float want = dn0[t * C + c];  // accumulated into: the prior value first
        for (int64_t j = 0; j < k; ++j) want = want + dx[rows[t * k + j] * C + c];
        ASSERT_EQ(std::memcmp(&dn[t * C + c], &want, sizeof want), 0)
            << "token " << t << " col " << c << ": " << dn[t * C + c] << " != " << want;
      }
    }
  }
  moe_scatter_add_ref(nullptr, 0, 4, nullptr, 0, 2, nullptr);  // no tokens: nothing read or written
}

TEST(MoeCombineBackward, RefusesBadInput) {
  const int64_t R = 6, C = 3, T = 3, k = 2;
  const Inputs in = make_inputs(T, C, k, R, 5);
  std::vector<float> dy(R * C), dw(T * k), ds(T * C), dg(T), dn(T * C);
  const std::vector<int32_t> outside = {0, 1, 2, 6, 4, 5}, negative = {0, 1, 2, 3, -1, 5};
  const auto backward = [&](const std::vector<int32_t>& rows, int64_t Rr, int64_t Cc, int64_t kk, const float* s,
                            const float* sw, float* dsp, float* dgp) {
    moe_combine_backward_ref(in.dout.data(), in.y.data(), Rr, Cc, rows.data(), in.w.data(), T, kk, s, sw, dy.data(),
                             dw.data(), dsp, dgp);
  };
  test::expect_error([&] { backward(outside, R, C, k, nullptr, nullptr, nullptr, nullptr); },
                     {"moe_combine_backward_ref", "row 6 of choice 1 of token 1", "the experts' 6 rows"});
  test::expect_error([&] { backward(negative, R, C, k, nullptr, nullptr, nullptr, nullptr); },
                     {"moe_combine_backward_ref", "row -1 of choice 0 of token 2"});
  test::expect_error([&] { backward(in.rows, R, C, k, in.s.data(), in.sw.data(), nullptr, nullptr); },
                     {"moe_combine_backward_ref", "go together"});
  test::expect_error([&] { backward(in.rows, R, C, k, nullptr, nullptr, ds.data(), dg.data()); },
                     {"moe_combine_backward_ref", "go together"});
  test::expect_error([&] { backward(in.rows, R, C, k, in.s.data(), in.sw.data(), ds.data(), nullptr); },
                     {"moe_combine_backward_ref", "go together"});
  test::expect_error([&] { backward(in.rows, R, 0, k, nullptr, nullptr, nullptr, nullptr); },
                     {"moe_combine_backward_ref", "bad shape", "C=0"});
  test::expect_error([&] { backward(in.rows, R, C, 0, nullptr, nullptr, nullptr, nullptr); },
                     {"moe_combine_backward_ref", "bad shape", "k=0"});
  test::expect_error([&] { backward(in.rows, -1, C, k, nullptr, nullptr, nullptr, nullptr); },
                     {"moe_combine_backward_ref", "bad shape", "R=-1"});
  test::expect_error(
      [&] {
        moe_combine_backward_ref(nullptr, in.y.data(), R, C, in.rows.data(), in.w.data(), T, k, nullptr, nullptr,
                                 dy.data(), dw.data(), nullptr, nullptr);
      },
      {"moe_combine_backward_ref", "null pointer"});
  test::expect_error([&] { moe_scatter_add_ref(in.y.data(), R, C, outside.data(), T, k, dn.data()); },
                     {"moe_scatter_add_ref", "row 6 of choice 1 of token 1", "the experts' 6 rows"});
  test::expect_error([&] { moe_scatter_add_ref(in.y.data(), R, 0, in.rows.data(), T, k, dn.data()); },
                     {"moe_scatter_add_ref", "bad shape"});
  test::expect_error([&] { moe_scatter_add_ref(in.y.data(), R, C, in.rows.data(), T, k, nullptr); },
                     {"moe_scatter_add_ref", "null pointer"});
  // The check alone, as the CUDA launchers call it on their host copy of the indices.
  test::expect_error([&] { moe_combine_backward_check("caller", R, C, outside.data(), T, k, nullptr, nullptr, nullptr,
                                                      nullptr); },
                     {"caller: row 6 of choice 1 of token 1"});
  // No tokens: nothing read, the pointers may be null.
  moe_combine_backward_ref(nullptr, nullptr, 0, C, nullptr, nullptr, 0, k, nullptr, nullptr, nullptr, nullptr, nullptr,
                           nullptr);
}

}  // namespace
}  // namespace qwenq
