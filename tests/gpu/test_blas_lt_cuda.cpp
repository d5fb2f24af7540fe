// cuBLASLt linear layers (kernels/blas_lt.h) against their CPU twins (kernels/gemm.h): forward with and without
// the bias epilogue, backward input, backward weight (accumulating), over real Qwen2.5 shapes (hidden 896 ->
// intermediate 4864 of 0.5B; 3584 -> 18944 of 7B at decode sizes; 8192 -> 1024, the 72B k/v projection; LoRA
// rank-16 A and B) and awkward ones (K = 3, N = 17, M = 1 and 17), for every weight/activation dtype pairing; the
// plan cache; two streams sharing the workspace; the refusals. Guard elements after every output. Skips without
// a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "kernels/blas_lt.h"
#include "kernels/cuda_check.cuh"
#include "kernels/gemm.h"
#include "tests/gpu/gpu_test.h"
#include "tests/support/test_errors.h"

namespace qwenq {
namespace {

using test::DeviceBuffer;
using test::expect_error;

// ---- tolerances ---------------------------------------------------------------------------------------------
// Every output is a sum of K products (M for dW). Both sides multiply exactly what they are given in fp32 (a
// bf16·bf16 or f16·f16 product is exact in fp32) and accumulate in fp32, in different orders (the ref: AVX2 lanes
// or Eigen tiles; cuBLASLt: its tile's k-loop, possibly split-K), so each side is within about sqrt(K) ulps of the
// exact sum for random rounding, relative to the sum of the magnitudes S = Σ_k |x_k·w_k| (not to y, which may
// cancel):                         |Δy| <= kU·(kGemmUlps + 2·sqrt(K))·S
// On top of that, where the GPU rounds an input the ref keeps:
//   * F32 activations against a BF16/F16 weight are rounded to the weight's dtype before the GEMM. That moves y
//     by Σ_k w_k·(x̃_k − x_k), bounded by R = Σ_k |w_k|·|x̃_k − x_k| (computed from the same rounding; R is at
//     most 2^-8·S for bf16, 2^-11·S for f16, typically sqrt(K) times smaller);
//   * a BF16/F16 output is y rounded once: half an ulp, kOutRel(dtype)·|y|;
//   * an F32 bias given to a 16-bit output is rounded to it first: kOutRel·|b|;
//   * with a bias and a 16-bit output, cuBLASLt may round x·wᵀ to the output dtype before it adds the bias (the
//     H200 run of 2026-12-04, CUDA 13.0: K = 3, bf16 in, out and bias, 30 of 289 elements off by up to 18x the
//     single-rounding bound, where y cancels against b): kOutRel·S more, S >= |x·wᵀ|.
// S and R are themselves computed with the CPU GEMM on |x| and |w| (fp32 is ample for a tolerance).
constexpr double kU = 1.0 / 16777216.0;
constexpr double kGemmUlps = 8;

// Half an ulp relative to |y|: the unit roundoff 2^-8 of bf16's 8 significant bits, 2^-11 of f16's 11.
double out_rel(DType t) { return t == DType::BF16 ? 1.0 / 256 : t == DType::F16 ? 1.0 / 2048 : 0.0; }

constexpr size_t kGuard = 32;
constexpr uint8_t kGuardByte = 0xA5;

std::vector<float> uniform(Rng& rng, size_t n, float lo, float hi) {
  std::vector<float> v(n);
  for (auto& f : v) f = rng.uniform(lo, hi);
  return v;
}

// Bytes of `v` in dtype t (F32 as is), followed by kGuard guard bytes.
std::vector<uint8_t> encode(const std::vector<float>& v, DType t, size_t guard = 0) {
  std::vector<uint8_t> out(v.size() * dtype_size(t) + guard, kGuardByte);
  from_f32(t, v.data(), out.data(), v.size());
  return out;
}

std::vector<float> decode(const std::vector<uint8_t>& bytes, DType t, size_t n) {
  std::vector<float> out(n);
  to_f32(t, bytes.data(), out.data(), n);
  return out;
}

// The values a tensor has once stored in dtype t.
std::vector<float> rounded(const std::vector<float>& v, DType t) { return decode(encode(v, t), t, v.size()); }

std::vector<float> abs_of(std::vector<float> v) {
  for (auto& f : v) f = std::fabs(f);
  return v;
}

void expect_guard_intact(const std::vector<uint8_t>& bytes, size_t payload, const std::string& ctx) {
  for (size_t i = payload; i < bytes.size(); ++i)
    if (bytes[i] != kGuardByte) {
      ADD_FAILURE() << ctx << ": guard byte " << i - payload << " after the output was overwritten";
      return;
    }
}

// |got − want| <= tol[i] everywhere; reports the first offenders and the worst ratio.
void expect_close(const std::vector<float>& got, const std::vector<float>& want, const std::vector<double>& tol,
                  const std::string& ctx) {
  ASSERT_EQ(got.size(), want.size()) << ctx;
  size_t bad = 0, worst_i = 0;
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    const bool ok = std::isfinite(got[i]) && e <= tol[i];
    if (!ok && bad++ < 5)
      ADD_FAILURE() << ctx << ": element " << i << " is " << got[i] << ", the ref has " << want[i] << " (tolerance "
                    << tol[i] << ")";
    const double ratio = tol[i] > 0 ? e / tol[i] : (e > 0 ? INFINITY : 0);
    if (ratio > worst) worst = ratio, worst_i = i;
  }
  EXPECT_EQ(bad, 0u) << ctx << ": " << bad << " of " << got.size() << " out of tolerance; worst error/tolerance "
                     << worst << " at " << worst_i;
  std::printf("[ worst    ] %s: error/tolerance %.3f\n", ctx.c_str(), worst);
}

void sync() { QWENQ_CUDA_CHECK(cudaDeviceSynchronize()); }

// ---- the sweep ----------------------------------------------------------------------------------------------

struct Shape {
  int64_t M, K, N;
};
struct Types {
  DType w, act, bias;  // bias F32/BF16/F16, or U8 for none
};

constexpr DType kNoBias = DType::U8;

std::vector<Shape> shapes() {
  std::vector<Shape> s;
  for (int64_t M : {1, 17, 512})
    for (auto kn : {std::pair<int64_t, int64_t>{896, 4864}, {8192, 1024}, {3, 17}}) s.push_back({M, kn.first, kn.second});
  for (int64_t M : {1, 17}) s.push_back({M, 3584, 18944});  // the 7B MLP at decode sizes
  for (int64_t M : {17, 512}) {
    s.push_back({M, 896, 16});   // LoRA A (r = 16)
    s.push_back({M, 16, 4864});  // LoRA B
  }
  return s;
}

const Types kTypes[] = {
    {DType::BF16, DType::F32, DType::BF16},   // a bf16 checkpoint in the fp32 trainer (x rounded to bf16)
    {DType::BF16, DType::BF16, DType::BF16},  // an all-bf16 pipeline (bf16 out)
    {DType::F16, DType::F16, DType::F32},     // f16 with an fp32 bias (rounded to the f16 output)
    {DType::F16, DType::F32, kNoBias},
    {DType::F32, DType::F32, DType::F32},     // true fp32 GEMM
};

using Param = std::tuple<Shape, Types>;

class LinearCuda : public ::testing::TestWithParam<Param> {};

TEST_P(LinearCuda, ForwardAndBackwardInputMatchRef) {
  QWENQ_REQUIRE_GPU();
  const auto [sh, ty] = GetParam();
  const int64_t M = sh.M, K = sh.K, N = sh.N;
  const bool has_bias = ty.bias != kNoBias;
  const uint64_t seed = 7000 + M * 1000003 + K * 131 + N * 7 + static_cast<int>(ty.w) * 3 + static_cast<int>(ty.act);
  std::ostringstream os;
  os << "M=" << M << " K=" << K << " N=" << N << " W " << dtype_name(ty.w) << " act " << dtype_name(ty.act)
     << " bias " << (has_bias ? dtype_name(ty.bias) : "none") << " seed " << seed;
  const std::string ctx = os.str();
  Rng rng(seed);
  // Weights of Qwen's magnitude, activations of both signs; x held in its activation dtype's values.
  const std::vector<float> w = rounded(uniform(rng, N * K, -0.08f, 0.08f), ty.w);
  const std::vector<float> x = rounded(uniform(rng, M * K, -3.f, 3.f), ty.act);
  const std::vector<float> dy = rounded(uniform(rng, M * N, -1.f, 1.f), ty.act);
  const std::vector<float> b = has_bias ? rounded(uniform(rng, N, -0.5f, 0.5f), ty.bias) : std::vector<float>();
  const auto w_bytes = encode(w, ty.w), x_bytes = encode(x, ty.act), dy_bytes = encode(dy, ty.act);
  const auto b_bytes = has_bias ? encode(b, ty.bias) : std::vector<uint8_t>(1);

  // The refs (fp32 activations, the same values).
  std::vector<float> y_ref(M * N), dx_ref(M * K);
  linear_forward_ref(x.data(), M, K, w_bytes.data(), ty.w, N, has_bias ? b_bytes.data() : nullptr,
                     has_bias ? ty.bias : DType::F32, y_ref.data());
  linear_backward_input_ref(dy.data(), M, N, w_bytes.data(), ty.w, K, dx_ref.data());

  // Magnitudes: S = |x|·|w|ᵀ, R = |x̃ − x|·|w|ᵀ (x̃: x in the weight's dtype, what the GPU multiplies).
  const std::vector<float> aw = abs_of(w);
  std::vector<float> S(M * N), R(M * N, 0.f), Sdx(M * K), Rdx(M * K, 0.f);
  linear_forward_ref(abs_of(x).data(), M, K, aw.data(), DType::F32, N, nullptr, DType::F32, S.data());
  linear_backward_input_ref(abs_of(dy).data(), M, N, aw.data(), DType::F32, K, Sdx.data());
  if (ty.act != ty.w) {
    std::vector<float> dxr = rounded(x, ty.w), ddy = rounded(dy, ty.w);
    for (size_t i = 0; i < dxr.size(); ++i) dxr[i] = std::fabs(dxr[i] - x[i]);
    for (size_t i = 0; i < ddy.size(); ++i) ddy[i] = std::fabs(ddy[i] - dy[i]);
    linear_forward_ref(dxr.data(), M, K, aw.data(), DType::F32, N, nullptr, DType::F32, R.data());
    linear_backward_input_ref(ddy.data(), M, N, aw.data(), DType::F32, K, Rdx.data());
  }
  const double acc_k = kU * (kGemmUlps + 2 * std::sqrt(static_cast<double>(K)));
  const double acc_n = kU * (kGemmUlps + 2 * std::sqrt(static_cast<double>(N)));
  const double orel = out_rel(ty.act);
  const double brel = (has_bias && ty.bias != ty.act) ? out_rel(ty.act) : 0.0;
  const double pre_bias_rel = has_bias ? orel : 0.0;  // x·wᵀ rounded before the bias (see the top)
  std::vector<double> tol_y(M * N), tol_dx(M * K);
  for (int64_t i = 0; i < M * N; ++i) {
    const double bias_mag = has_bias ? std::fabs(b[i % N]) : 0.0;
    tol_y[i] = acc_k * (S[i] + bias_mag) + R[i] + brel * bias_mag + orel * (std::fabs(y_ref[i]) + R[i] + acc_k * S[i]) +
               pre_bias_rel * (S[i] + R[i]) + 1e-30;
  }
  for (int64_t i = 0; i < M * K; ++i)
    tol_dx[i] = acc_n * Sdx[i] + Rdx[i] + orel * (std::fabs(dx_ref[i]) + Rdx[i] + acc_n * Sdx[i]) + 1e-30;

  DeviceBuffer<uint8_t> d_w(w_bytes), d_x(x_bytes), d_dy(dy_bytes), d_b(b_bytes);
  const size_t out_size = dtype_size(ty.act);
  DeviceBuffer<uint8_t> d_y(std::vector<uint8_t>(M * N * out_size + kGuard, kGuardByte));
  DeviceBuffer<uint8_t> d_dx(std::vector<uint8_t>(M * K * out_size + kGuard, kGuardByte));
  linear_forward_cuda(d_x.get(), M, K, d_w.get(), ty.w, N, has_bias ? d_b.get() : nullptr,
                      has_bias ? ty.bias : DType::F32, d_y.get(), ty.act);
  linear_backward_input_cuda(d_dy.get(), M, N, d_w.get(), ty.w, K, d_dx.get(), ty.act);
  sync();
  const auto y_bytes = d_y.download(), dx_bytes = d_dx.download();
  expect_close(decode(y_bytes, ty.act, M * N), y_ref, tol_y, "forward " + ctx);
  expect_close(decode(dx_bytes, ty.act, M * K), dx_ref, tol_dx, "backward input " + ctx);
  expect_guard_intact(y_bytes, M * N * out_size, "forward " + ctx);
  expect_guard_intact(dx_bytes, M * K * out_size, "backward input " + ctx);
}

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  const auto& [sh, ty] = info.param;
  return "M" + std::to_string(sh.M) + "_K" + std::to_string(sh.K) + "_N" + std::to_string(sh.N) + "_W" +
         dtype_name(ty.w) + "_x" + dtype_name(ty.act) + "_bias" + (ty.bias == kNoBias ? "none" : dtype_name(ty.bias));
}

INSTANTIATE_TEST_SUITE_P(QwenShapes, LinearCuda,
                         ::testing::Combine(::testing::ValuesIn(shapes()), ::testing::ValuesIn(kTypes)), param_name);

// dW += dyᵀ·x in fp32, onto a non-zero dW (it must accumulate), for the same shapes (K·N ≤ 20M entries).
class LinearWeightGradCuda : public ::testing::TestWithParam<Shape> {};

TEST_P(LinearWeightGradCuda, AccumulatesLikeRef) {
  QWENQ_REQUIRE_GPU();
  const Shape sh = GetParam();
  const int64_t M = sh.M, K = sh.K, N = sh.N;
  const uint64_t seed = 9000 + M * 1000003 + K * 131 + N;
  const std::string ctx = "M=" + std::to_string(M) + " K=" + std::to_string(K) + " N=" + std::to_string(N) +
                          " seed " + std::to_string(seed);
  Rng rng(seed);
  const auto dy = uniform(rng, M * N, -1.f, 1.f), x = uniform(rng, M * K, -3.f, 3.f);
  const auto dW0 = uniform(rng, N * K, -0.01f, 0.01f);
  std::vector<float> ref = dW0, S(N * K, 0.f);
  linear_backward_weight_ref(dy.data(), x.data(), M, N, K, ref.data());
  linear_backward_weight_ref(abs_of(dy).data(), abs_of(x).data(), M, N, K, S.data());
  const double acc = kU * (kGemmUlps + 2 * std::sqrt(static_cast<double>(M)));
  std::vector<double> tol(N * K);
  for (int64_t i = 0; i < N * K; ++i) tol[i] = acc * (S[i] + std::fabs(dW0[i])) + 1e-30;

  std::vector<float> dW_guarded = dW0;
  dW_guarded.resize(N * K + kGuard, 1234.5f);
  DeviceBuffer<float> d_dy(dy), d_x(x), d_dW(dW_guarded);
  linear_backward_weight_cuda(d_dy.get(), d_x.get(), M, N, K, d_dW.get());
  sync();
  std::vector<float> got = d_dW.download();
  for (size_t i = N * K; i < got.size(); ++i)
    ASSERT_EQ(got[i], 1234.5f) << ctx << ": guard element " << i - N * K << " overwritten";
  got.resize(N * K);
  expect_close(got, ref, tol, "backward weight " + ctx);
}

std::vector<Shape> weight_grad_shapes() {
  std::vector<Shape> out;
  for (const Shape& s : shapes())
    if (s.K * s.N <= 20'000'000) out.push_back(s);
  return out;
}

INSTANTIATE_TEST_SUITE_P(QwenShapes, LinearWeightGradCuda, ::testing::ValuesIn(weight_grad_shapes()),
                         [](const ::testing::TestParamInfo<Shape>& info) {
                           return "M" + std::to_string(info.param.M) + "_K" + std::to_string(info.param.K) + "_N" +
                                  std::to_string(info.param.N);
                         });

// ---- the plan cache, streams, refusals ------------------------------------------------------------------------

TEST(BlasLt, PlansAreBuiltOncePerShape) {
  QWENQ_REQUIRE_GPU();
  const int64_t M = 33, K = 640, N = 320;  // a shape no other test uses
  Rng rng(42);
  DeviceBuffer<uint8_t> d_w(encode(uniform(rng, N * K, -0.1f, 0.1f), DType::BF16));
  DeviceBuffer<float> d_x(uniform(rng, M * K, -1.f, 1.f)), d_y(M * N);
  BlasLt& lt = BlasLt::current();
  const size_t before = lt.plan_count();
  linear_forward_cuda(d_x.get(), M, K, d_w.get(), DType::BF16, N, nullptr, DType::F32, d_y.get());
  sync();
  const std::vector<float> first = d_y.download();
  EXPECT_EQ(lt.plan_count(), before + 1);
  for (int i = 0; i < 5; ++i)
    linear_forward_cuda(d_x.get(), M, K, d_w.get(), DType::BF16, N, nullptr, DType::F32, d_y.get());
  sync();
  EXPECT_EQ(lt.plan_count(), before + 1) << "a repeated shape must reuse its plan";
  EXPECT_EQ(lt.heuristic_calls(), lt.plan_count());
  EXPECT_EQ(d_y.download(), first) << "the same plan must give the same bits";
  linear_forward_cuda(d_x.get(), M - 1, K, d_w.get(), DType::BF16, N, nullptr, DType::F32, d_y.get());
  sync();
  EXPECT_EQ(lt.plan_count(), before + 2);
}

TEST(BlasLt, TwoStreamsShareTheWorkspaceSafely) {
  QWENQ_REQUIRE_GPU();
  // Large-K shapes, where cuBLASLt's heuristic tends to pick split-K algorithms that use the workspace.
  const int64_t M = 64, K = 8192, N = 1024;
  Rng rng(43);
  DeviceBuffer<uint8_t> d_w(encode(uniform(rng, N * K, -0.1f, 0.1f), DType::BF16));
  DeviceBuffer<float> d_x1(uniform(rng, M * K, -1.f, 1.f)), d_x2(uniform(rng, M * K, -1.f, 1.f));
  DeviceBuffer<float> y1(M * N), y2(M * N), y1s(M * N), y2s(M * N);
  linear_forward_cuda(d_x1.get(), M, K, d_w.get(), DType::BF16, N, nullptr, DType::F32, y1s.get());
  linear_forward_cuda(d_x2.get(), M, K, d_w.get(), DType::BF16, N, nullptr, DType::F32, y2s.get());
  sync();
  cudaStream_t s1, s2;
  QWENQ_CUDA_CHECK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  QWENQ_CUDA_CHECK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  for (int i = 0; i < 8; ++i) {
    linear_forward_cuda(d_x1.get(), M, K, d_w.get(), DType::BF16, N, nullptr, DType::F32, y1.get(), DType::F32, s1);
    linear_forward_cuda(d_x2.get(), M, K, d_w.get(), DType::BF16, N, nullptr, DType::F32, y2.get(), DType::F32, s2);
  }
  sync();
  cudaStreamDestroy(s1);
  cudaStreamDestroy(s2);
  EXPECT_EQ(y1.download(), y1s.download());
  EXPECT_EQ(y2.download(), y2s.download());
}

TEST(BlasLt, RefusesBadArguments) {
  QWENQ_REQUIRE_GPU();
  DeviceBuffer<float> a(64), b(64), c(64);
  expect_error([&] { linear_forward_cuda(a.get(), 2, 4, b.get(), DType::F16, 4, nullptr, DType::F32, c.get(), DType::BF16); },
               "x dtype BF16 does not go with weight dtype F16");
  expect_error([&] { linear_forward_cuda(a.get(), 2, 4, b.get(), DType::F32, 4, nullptr, DType::F32, c.get(), DType::BF16); },
               "x dtype BF16 does not go with weight dtype F32");
  expect_error([&] { linear_forward_cuda(a.get(), 2, 4, b.get(), DType::I8, 4, nullptr, DType::F32, c.get()); },
               "weight dtype I8 is not supported");
  expect_error([&] { linear_forward_cuda(a.get(), 0, 4, b.get(), DType::F32, 4, nullptr, DType::F32, c.get()); },
               "shapes must be positive, got M=0 K=4 N=4");
  expect_error([&] { linear_forward_cuda(a.get(), 2, 4, b.get(), DType::F32, 4, nullptr, DType::F32, a.get()); },
               "overlaps input x");
  expect_error([&] { linear_forward_cuda(a.get(), 2, 4, b.get(), DType::F32, 4, c.get(), DType::I32, b.get() + 32); },
               "bias dtype I32 is not supported");
  expect_error([&] { linear_backward_input_cuda(a.get(), 2, 4, b.get(), DType::BF16, 4, c.get(), DType::F16); },
               "dy dtype F16 does not go with weight dtype BF16");
  expect_error([&] { linear_backward_weight_cuda(a.get(), b.get(), 2, 4, 4, a.get()); }, "overlaps input dy or x");
}

}  // namespace
}  // namespace qwenq
