// The CPU twins of the fused dequant-matmul (kernels/qgemm.h) against the dense reference linear layer
// (kernels/gemm.h) on the weights the source format's reader dequantizes: y = x·Ŵᵀ against
// linear_forward_ref, dx = dy·Ŵ against linear_backward_input_ref, for every source format, act-order and
// awkward sizes; exactly equal where the inputs make every fp32 sum exact.
//
// Tolerance (kQgemmSumTol): both sides add the same K (or N) fp32 products in different orders (plain loop
// vs Eigen's blocked, vectorized one), so each result differs from the exact sum by rounding errors that
// are at most u·|partial sum| per addition, u = 2^-24, and behave like a random walk: |Δ| ≈ u·sqrt(L)·Σ|x·w|
// for L terms. We allow 8 of those (8σ), relative to Σ|x·w| (not |y|, which can cancel to ~0). The
// worst-case bound L·u·Σ|x·w| would be ~170x looser at L = 29568 and would hide a single wrong group.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "kernels/gemm.h"
#include "kernels/qgemm.h"
#include "quant/int_checkpoint.h"
#include "quant/nf4.h"

namespace qwenq {
namespace {

constexpr double kQgemmSumTol = 8.0;  // multiples of u·sqrt(L)·Σ|x·w|
constexpr double kU = 1.0 / 16777216.0;

enum class Src { GptqV1, GptqV2, GptqActOrder, Awq, Nf4Dq, Fp4 };
const char* src_name(Src s) {
  switch (s) {
    case Src::GptqV1: return "gptq";
    case Src::GptqV2: return "gptq_v2";
    case Src::GptqActOrder: return "gptq_v2-act-order";
    case Src::Awq: return "awq";
    case Src::Nf4Dq: return "nf4-dq";
    default: return "fp4";
  }
}

Q4Layout make_layout(Src s, int64_t K, int64_t N, uint64_t seed, bool exact = false) {
  switch (s) {
    case Src::GptqV1: return q4_from_int_linear(q4_synthetic_int_linear(IntLayout::GptqV1, K, N, 128, false, seed, exact));
    case Src::GptqV2: return q4_from_int_linear(q4_synthetic_int_linear(IntLayout::GptqV2, K, N, 64, false, seed, exact));
    case Src::GptqActOrder:
      return q4_from_int_linear(q4_synthetic_int_linear(IntLayout::GptqV2, K, N, 128, true, seed, exact));
    case Src::Awq: return q4_from_int_linear(q4_synthetic_int_linear(IntLayout::AwqGemm, K, N, 64, false, seed, exact));
    case Src::Nf4Dq: return q4_from_nf4(q4_synthetic_nf4(N, K, false, 64, true, seed), N, K);
    default: return q4_from_nf4(q4_synthetic_nf4(N, K, true, 64, false, seed), N, K);
  }
}

std::vector<float> random_act(int64_t n, uint64_t seed, bool integer = false) {
  Rng rng(seed);
  std::vector<float> a(n);
  for (auto& v : a) v = integer ? static_cast<float>(static_cast<int>(rng.below(9)) - 4) : rng.uniform(-1.0f, 1.0f);
  return a;
}

// |got - want| <= kQgemmSumTol·u·sqrt(L)·Σ|a·w| for every output, with Σ|a·w| from the dense weights.
void expect_close(const std::vector<float>& got, const std::vector<float>& want, const std::vector<float>& abs_sum,
                  int64_t L, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    const double tol = kQgemmSumTol * kU * std::sqrt(static_cast<double>(L)) * abs_sum[i] + 1e-30;
    if (!(std::fabs(static_cast<double>(got[i]) - want[i]) <= tol)) {
      FAIL() << what << ": output " << i << " is " << got[i] << ", dense reference " << want[i] << ", tolerance "
             << tol << " (Σ|a·w| = " << abs_sum[i] << ")";
    }
  }
}

// Σ_k |x[m,k]·W[n,k]| ([M, N]) and Σ_n |dy[m,n]·W[n,k]| ([M, K]).
std::vector<float> abs_fwd(const std::vector<float>& x, const std::vector<float>& W, int64_t M, int64_t K, int64_t N) {
  std::vector<float> s(M * N);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double a = 0;
      for (int64_t k = 0; k < K; ++k) a += std::fabs(static_cast<double>(x[m * K + k]) * W[n * K + k]);
      s[m * N + n] = static_cast<float>(a);
    }
  return s;
}
std::vector<float> abs_t(const std::vector<float>& dy, const std::vector<float>& W, int64_t M, int64_t K, int64_t N) {
  std::vector<float> s(M * K, 0.0f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) {
      double a = 0;
      for (int64_t n = 0; n < N; ++n) a += std::fabs(static_cast<double>(dy[m * N + n]) * W[n * K + k]);
      s[m * K + k] = static_cast<float>(a);
    }
  return s;
}

struct Shape {
  int64_t M, K, N;
};

class QgemmRef : public ::testing::TestWithParam<Src> {};

TEST_P(QgemmRef, MatchesDenseLinearOnTheDequantizedWeights) {
  const Src src = GetParam();
  const bool nf4 = src == Src::Nf4Dq || src == Src::Fp4;
  // Real Qwen2.5-0.5B shapes (q/o 896x896, k/v 896->128, gate/up 896->4864, down 4864->896) and awkward ones.
  std::vector<Shape> shapes = {{1, 896, 128}, {3, 896, 896}, {16, 896, 4864}, {5, 4864, 896}, {1, 256, 8}, {7, 384, 24}};
  if (src == Src::Awq) shapes.push_back({3, 172, 8});  // K not a multiple of 8: only AWQ holds it unpadded
  if (nf4) shapes.push_back({2, 128, 17});             // N = 17: only bnb holds it
  uint64_t seed = 500 + static_cast<uint64_t>(src) * 100;
  for (const Shape& s : shapes) {
    const std::string what = std::string(src_name(src)) + " M=" + std::to_string(s.M) + " K=" + std::to_string(s.K) +
                             " N=" + std::to_string(s.N) + " seed=" + std::to_string(seed + 1);
    const Q4Layout q = make_layout(src, s.K, s.N, ++seed);
    const std::vector<float> W = q4_unpack(q.view());
    const std::vector<float> x = random_act(s.M * s.K, ++seed), dy = random_act(s.M * s.N, ++seed);

    std::vector<float> y(s.M * s.N), y_dense(s.M * s.N);
    qgemm_int4_ref(q.view(), x.data(), DType::F32, s.M, y.data());
    linear_forward_ref(x.data(), s.M, s.K, W.data(), DType::F32, s.N, nullptr, DType::F32, y_dense.data());
    expect_close(y, y_dense, abs_fwd(x, W, s.M, s.K, s.N), s.K, "forward " + what);

    std::vector<float> dx(s.M * s.K), dx_dense(s.M * s.K);
    qgemm_int4_t_ref(q.view(), dy.data(), DType::F32, s.M, dx.data());
    linear_backward_input_ref(dy.data(), s.M, s.N, W.data(), DType::F32, s.K, dx_dense.data());
    expect_close(dx, dx_dense, abs_t(dy, W, s.M, s.K, s.N), s.N, "transposed " + what);
  }
}

INSTANTIATE_TEST_SUITE_P(AllSources, QgemmRef,
                         ::testing::Values(Src::GptqV1, Src::GptqV2, Src::GptqActOrder, Src::Awq, Src::Nf4Dq, Src::Fp4),
                         [](const ::testing::TestParamInfo<Src>& i) {
                           std::string n = src_name(i.param);
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

TEST(QgemmRefExact, IntegerInputsGiveExactlyTheDenseResult) {
  // Power-of-two scales and small integer activations: every product and partial sum is exact in fp32, so
  // any summation order gives the same bits.
  for (Src src : {Src::GptqV1, Src::GptqActOrder, Src::Awq}) {
    const int64_t M = 3, K = 3584, N = 512;
    const Q4Layout q = make_layout(src, K, N, 77, /*exact=*/true);
    const std::vector<float> W = q4_unpack(q.view());
    const std::vector<float> x = random_act(M * K, 78, true), dy = random_act(M * N, 79, true);
    std::vector<float> y(M * N), yd(M * N), dx(M * K), dxd(M * K);
    qgemm_int4_ref(q.view(), x.data(), DType::F32, M, y.data());
    linear_forward_ref(x.data(), M, K, W.data(), DType::F32, N, nullptr, DType::F32, yd.data());
    EXPECT_EQ(y, yd) << src_name(src);
    qgemm_int4_t_ref(q.view(), dy.data(), DType::F32, M, dx.data());
    linear_backward_input_ref(dy.data(), M, N, W.data(), DType::F32, K, dxd.data());
    EXPECT_EQ(dx, dxd) << src_name(src);
  }
}

TEST(QgemmRefExact, Bf16ActivationsEqualTheirFp32Widening) {
  const int64_t M = 4, K = 512, N = 64;
  const Q4Layout q = make_layout(Src::GptqActOrder, K, N, 90);
  std::vector<float> x = random_act(M * K, 91), dy = random_act(M * N, 92);
  std::vector<uint16_t> xb(x.size()), dyb(dy.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = bf16_to_f32(xb[i] = f32_to_bf16(x[i]));
  for (size_t i = 0; i < dy.size(); ++i) dy[i] = bf16_to_f32(dyb[i] = f32_to_bf16(dy[i]));
  std::vector<float> a(M * N), b(M * N), c(M * K), d(M * K);
  qgemm_int4_ref(q.view(), x.data(), DType::F32, M, a.data());
  qgemm_int4_ref(q.view(), xb.data(), DType::BF16, M, b.data());
  EXPECT_EQ(a, b);
  qgemm_int4_t_ref(q.view(), dy.data(), DType::F32, M, c.data());
  qgemm_int4_t_ref(q.view(), dyb.data(), DType::BF16, M, d.data());
  EXPECT_EQ(c, d);
}

// q4_dequantize_bf16_ref (the dense prefill path's Ŵ) against q4_unpack, the layout's own fp32 reader in the
// original K order: row n, layout row kk holds bf16(ŵ[n, perm[kk]]) rounded to nearest even, the padding rows
// K..Kp-1 hold +0. Every source, act-order, NF4 with gcd(K, 64) = 8 and N % 4 != 0.
TEST(QgemmRefExact, Bf16DequantizationIsTheUnpackedWeightRounded) {
  struct Case { Src src; int64_t K, N; };
  for (const Case& c : {Case{Src::GptqV1, 256, 24}, Case{Src::GptqActOrder, 384, 16}, Case{Src::Awq, 192, 40},
                        Case{Src::Nf4Dq, 200, 17}, Case{Src::Fp4, 128, 6}}) {
    SCOPED_TRACE(std::string(src_name(c.src)) + " K=" + std::to_string(c.K) + " N=" + std::to_string(c.N));
    const Q4Layout q = make_layout(c.src, c.K, c.N, 5 + c.K);
    const std::vector<float> W = q4_unpack(q.view());
    std::vector<uint16_t> out(static_cast<size_t>(c.N * q.Kp), 0xFFFF);
    q4_dequantize_bf16_ref(q.view(), out.data());
    int64_t bad = 0, rounded = 0;
    for (int64_t n = 0; n < c.N; ++n)
      for (int64_t kk = 0; kk < q.Kp; ++kk) {
        const float w = kk < c.K ? W[n * c.K + (q.perm.empty() ? kk : q.perm[kk])] : 0.0f;
        bad += out[n * q.Kp + kk] != f32_to_bf16(w);
        rounded += bf16_round(w) != w;
      }
    EXPECT_EQ(bad, 0);
    EXPECT_GT(rounded, 0) << "no weight needed rounding: the test would not see a truncation";
  }
}

TEST(QgemmRefExact, RejectsBadArguments) {
  const Q4Layout q = make_layout(Src::Awq, 64, 8, 1);
  std::vector<float> x(64), y(8);
  try {
    qgemm_int4_ref(q.view(), x.data(), DType::F16, 1, y.data());
    ADD_FAILURE() << "F16 activations accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("must be F32 or BF16, not F16"), std::string::npos) << e.what();
  }
  try {
    qgemm_int4_t_ref(q.view(), x.data(), DType::F32, 0, y.data());
    ADD_FAILURE() << "M = 0 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("M=0"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qwenq
