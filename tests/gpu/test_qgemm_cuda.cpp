// qgemm_int4_cuda / qgemm_int4_t_cuda against their CPU twins (kernels/qgemm.h), for every source format
// (GPTQ v1, v2 with act-order, AWQ GEMM, NF4 with double quantization, FP4), M in {1, 3, 16, 64}, real
// Qwen2.5 layer shapes and awkward sizes. The same bf16 activations go to both twins (a bf16 value widens to
// fp32 exactly), so the only difference is the summation order of the fp32 products: the GPU splits K (or N)
// into per-thread / per-block partial sums, the CPU adds left to right.
//
// Tolerance (kQgemmGpuSumTol): as in tests/test_qgemm_ref.cpp, |Δ| <= 8·u·sqrt(L)·Σ|a·w| over L terms,
// u = 2^-24: the rounding errors of two orders of the same fp32 sum behave like a random walk of L steps
// of at most u·Σ|a·w| each. Relative to Σ|a·w| and not |y|, which cancels. The GPU also uses FMA (one
// rounding per multiply-add instead of two), which only shrinks its error. Where the inputs make every sum
// exact (integer activations, power-of-two scales) the test requires bit equality.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/bf16_split.h"
#include "kernels/qgemm.h"
#include "tests/gpu/gpu_test.h"
#include "tests/support/scoped_env.h"
#include "tests/support/test_errors.h"
#include "tests/gpu/qgemm_cases.h"

namespace qwenq {
namespace {

using test::expect_error;
using namespace test::qgemm_cases;  // Src, make_layout, random_bf16, kU, ... (tests/gpu/qgemm_cases.h)

// Σ|a·w| per output: forward over k (y [M, N]), transposed over n (dx [M, K]); W is ŵ [N, K].
std::vector<double> abs_sums(const std::vector<uint16_t>& a, const std::vector<float>& W, int64_t M, int64_t K,
                             int64_t N, bool transposed) {
  std::vector<double> s(transposed ? M * K : M * N, 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        const double w = std::fabs(static_cast<double>(W[n * K + k]));
        if (transposed) s[m * K + k] += std::fabs(bf16_to_f32(a[m * N + n])) * w;
        else s[m * N + n] += std::fabs(bf16_to_f32(a[m * K + k])) * w;
      }
  return s;
}

void expect_close(const std::vector<float>& gpu, const std::vector<float>& cpu, const std::vector<double>& abs_sum,
                  int64_t L, const std::string& what) {
  ASSERT_EQ(gpu.size(), cpu.size()) << what;
  int64_t bad = 0;
  for (size_t i = 0; i < gpu.size(); ++i) {
    const double tol = kQgemmGpuSumTol * kU * std::sqrt(static_cast<double>(L)) * abs_sum[i] + 1e-30;
    if (!(std::fabs(static_cast<double>(gpu[i]) - cpu[i]) <= tol)) {
      if (bad++ < 3)
        ADD_FAILURE() << what << ": output " << i << " GPU " << gpu[i] << " CPU " << cpu[i] << " tolerance " << tol;
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << gpu.size() << " outputs outside tolerance";
}

// One case: forward and transposed, GPU vs CPU twin, guard values after each output to catch overruns.
void run_case(Src src, int64_t M, int64_t K, int64_t N, uint64_t seed) {
  const std::string what = std::string(src_name(src)) + " M=" + std::to_string(M) + " K=" + std::to_string(K) +
                           " N=" + std::to_string(N) + " seed=" + std::to_string(seed);
  SCOPED_TRACE(what);
  const Q4Layout q = make_layout(src, K, N, seed);
  const Q4DeviceWeight dw(q);
  const std::vector<uint16_t> x = random_bf16(M * K, seed + 1), dy = random_bf16(M * N, seed + 2);

  std::vector<float> y_cpu(M * N), dx_cpu(M * K);
  qgemm_int4_ref(q.view(), x.data(), DType::BF16, M, y_cpu.data());
  qgemm_int4_t_ref(q.view(), dy.data(), DType::BF16, M, dx_cpu.data());

  std::vector<float> y_gpu, dx_gpu;
  ASSERT_NO_FATAL_FAILURE(run_guarded(
      x, dy, M, K, N, [&](const uint16_t* a, float* y) { qgemm_int4_decode_cuda(dw.view(), a, DType::BF16, M, y); },
      [&](const uint16_t* a, float* dx) { qgemm_int4_t_decode_cuda(dw.view(), a, DType::BF16, M, dx); }, &y_gpu,
      &dx_gpu));
  const std::vector<float> W = q4_unpack(q.view());
  expect_close(y_gpu, y_cpu, abs_sums(x, W, M, K, N, false), K, "forward " + what);
  expect_close(dx_gpu, dx_cpu, abs_sums(dy, W, M, K, N, true), N, "transposed " + what);
}

// Qwen2.5 Linear shapes (K = in, N = out): 0.5B gate/up, down; 7B k/v, gate/up, down; 72B q/o, k/v,
// gate/up, down; then awkward ones.
const std::vector<KN> kRealShapes = {{896, 4864},  {4864, 896},  {3584, 512},  {3584, 18944}, {18944, 3584},
                                     {8192, 8192}, {8192, 1024}, {8192, 29568}, {29568, 8192}};
const std::vector<KN> kAwkwardShapes = {{172, 8}, {176, 8}, {200, 16}, {64, 17}, {128, 8}, {136, 24}, {8, 8}};

class QgemmCuda : public ::testing::TestWithParam<Src> {};

TEST_P(QgemmCuda, MatchesTheCpuTwinOnQwenShapes) {
  QWENQ_REQUIRE_GPU();
  const Src src = GetParam();
  uint64_t seed = 7000 + 1000 * static_cast<uint64_t>(src);
  for (const KN& s : kRealShapes) {
    // The CPU twin and the Σ|a·w| reference are O(M·K·N) on the host: shapes over 50M weights (7B gate/up and
    // down, 72B q/o, gate/up and down) run M = 1 and 3 only (M = 64 at 8192 x 29568 would take minutes of host
    // time per format); every M runs on the others.
    const bool huge = s.K * s.N > 50'000'000;
    for (int64_t M : {1, 3, 16, 64}) {
      if (huge && M > 3) continue;
      run_case(src, M, s.K, s.N, ++seed);
      if (HasFatalFailure()) return;
    }
  }
}

TEST_P(QgemmCuda, MatchesTheCpuTwinOnAwkwardSizes) {
  QWENQ_REQUIRE_GPU();
  const Src src = GetParam();
  uint64_t seed = 9000 + 1000 * static_cast<uint64_t>(src);
  for (const KN& s : kAwkwardShapes) {
    if (!holds(src, s.K, s.N)) continue;
    for (int64_t M : {1, 2, 3, 5, 16, 17, 64, 65}) {
      run_case(src, M, s.K, s.N, ++seed);
      if (HasFatalFailure()) return;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllSources, QgemmCuda,
                         ::testing::Values(Src::GptqV1, Src::GptqV2ActOrder, Src::Awq, Src::Nf4Dq, Src::Fp4),
                         [](const ::testing::TestParamInfo<Src>& i) { return std::string(src_name(i.param)); });

TEST(QgemmCudaExact, IntegerInputsGiveTheCpuBitsExactly) {
  QWENQ_REQUIRE_GPU();
  for (Src src : {Src::GptqV1, Src::GptqV2ActOrder, Src::Awq}) {
    const int64_t M = 16, K = 3584, N = 512;
    const Q4Layout q = make_layout(src, K, N, 31, /*exact=*/true);
    const Q4DeviceWeight dw(q);
    const std::vector<uint16_t> x = random_bf16(M * K, 32, true), dy = random_bf16(M * N, 33, true);
    std::vector<float> y(M * N), dx(M * K);
    qgemm_int4_ref(q.view(), x.data(), DType::BF16, M, y.data());
    qgemm_int4_t_ref(q.view(), dy.data(), DType::BF16, M, dx.data());
    test::DeviceBuffer<uint16_t> gx(x), gdy(dy);
    test::DeviceBuffer<float> gy(M * N), gdx(M * K);
    qgemm_int4_cuda(dw.view(), gx.get(), DType::BF16, M, gy.get());
    qgemm_int4_t_cuda(dw.view(), gdy.get(), DType::BF16, M, gdx.get());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(gy.download(), y) << src_name(src);
    EXPECT_EQ(gdx.download(), dx) << src_name(src);
  }
}

// The FMA decode kernel gives the same bits for bf16 activations and their fp32 widening, run to run; the
// dispatcher sends F32 activations to it (BF16 ones go to the tensor-core decode product by default, whose bits
// differ within the summation-order tolerance: the H200 run of 2026-12-04 failed the dispatcher-level version).
TEST(QgemmCudaExact, Fp32ActivationsAndDeterminism) {
  QWENQ_REQUIRE_GPU();
  const test::ScopedEnv f32("QWENQ_DECODE_MMA_F32", nullptr);  // the default: F32 on the FMA kernel
  const int64_t M = 3, K = 4864, N = 896;
  const Q4Layout q = make_layout(Src::Nf4Dq, K, N, 41);
  const Q4DeviceWeight dw(q);
  const std::vector<uint16_t> xb = random_bf16(M * K, 42);
  std::vector<float> xf(xb.size());
  for (size_t i = 0; i < xb.size(); ++i) xf[i] = bf16_to_f32(xb[i]);
  test::DeviceBuffer<uint16_t> gxb(xb);
  test::DeviceBuffer<float> gxf(xf), y1(M * N), y2(M * N), y3(M * N), y4(M * N);
  qgemm_int4_decode_cuda(dw.view(), gxb.get(), DType::BF16, M, y1.get());
  qgemm_int4_decode_cuda(dw.view(), gxf.get(), DType::F32, M, y2.get());
  qgemm_int4_decode_cuda(dw.view(), gxb.get(), DType::BF16, M, y3.get());
  qgemm_int4_cuda(dw.view(), gxf.get(), DType::F32, M, y4.get());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(y1.download(), y2.download()) << "bf16 and its fp32 widening must give the same bits";
  EXPECT_EQ(y1.download(), y3.download()) << "two runs must give the same bits (no atomics)";
  EXPECT_EQ(y4.download(), y2.download()) << "the dispatcher must send F32 activations to the FMA decode kernel";
}

// ---- the decode product on tensor cores (kernels/qgemm_decode_mma.cu) ------------------------------------------
// Same oracle and tolerance as above: q − z and x are exact in bf16 (a code book value is three exact bf16 pieces,
// one MMA each), so every product is exact in the MMA's fp32 accumulator and only the order of the sums (and the
// group scale applied to a partial sum instead of to each weight) differs from the CPU twin. Forward only: the
// transposed decode product stays on the FMA kernel.

// y of the mma kernel against the CPU twin for one weight (q, its device copy dw and ŵ = q4_unpack, made once
// per weight by the caller), M rows of seeded bf16 activations.
void run_mma_case(const Q4Layout& q, const Q4DeviceWeight& dw, const std::vector<float>& W, int64_t M, uint64_t seed,
                  const std::string& what) {
  SCOPED_TRACE(what + " M=" + std::to_string(M));
  ASSERT_TRUE(qgemm_decode_mma_supports(q.view()));
  const int64_t K = q.K, N = q.N;
  const std::vector<uint16_t> x = random_bf16(M * K, seed), dy(static_cast<size_t>(M * N), 0);
  std::vector<float> y_cpu(M * N);
  qgemm_int4_ref(q.view(), x.data(), DType::BF16, M, y_cpu.data());
  std::vector<float> y_gpu, unused;
  ASSERT_NO_FATAL_FAILURE(run_guarded(
      x, dy, M, K, N, [&](const uint16_t* a, float* y) { qgemm_int4_decode_mma_cuda(dw.view(), a, DType::BF16, M, y); },
      [](const uint16_t*, float*) {}, &y_gpu, &unused));
  expect_close(y_gpu, y_cpu, abs_sums(x, W, M, K, N, false), K,
               "decode mma " + what + " M=" + std::to_string(M));
}

class QgemmDecodeMmaCuda : public ::testing::TestWithParam<Src> {};

// Every source on every real shape, M = 1, 17 and 33: the kernel's 1, 2 and 4 row tiles of 16 (the awkward sizes
// below run every M; the host reference, single-threaded Σ|a·w| included, is the cost here).
TEST_P(QgemmDecodeMmaCuda, MatchesTheCpuTwinOnQwenShapes) {
  QWENQ_REQUIRE_GPU();
  const Src src = GetParam();
  uint64_t seed = 17000 + 1000 * static_cast<uint64_t>(src);
  for (const KN& s : kRealShapes) {
    const bool huge = s.K * s.N > 50'000'000;  // the CPU twin's cost, as in QgemmCuda above
    const Q4Layout q = make_layout(src, s.K, s.N, ++seed);
    const Q4DeviceWeight dw(q);
    const std::vector<float> W = q4_unpack(q.view());
    for (int64_t M : {1, 17, 33}) {
      if (huge && M > 1) continue;
      run_mma_case(q, dw, W, M, ++seed, std::string(src_name(src)) + " K=" + std::to_string(s.K) + " N=" + std::to_string(s.N));
      if (HasFatalFailure()) return;
    }
  }
}

// Groups of 32 and 128 (act-order), one group over all of K, K not a multiple of 32 (a tail iteration past the
// last word-row), K not a multiple of 8 (AWQ), N not a multiple of 32 or 128 (a partial warp and block), M = 65 (two row tiles, the second of 1).
// The book kinds' layout group is gcd(K, 64): K = 160 gives groups of 32, K = 4864 and 1024 of 64.
TEST_P(QgemmDecodeMmaCuda, MatchesTheCpuTwinOnAwkwardSizes) {
  QWENQ_REQUIRE_GPU();
  const Src src = GetParam();
  const bool book = src == Src::Nf4Dq || src == Src::Fp4;
  const IntLayout layout = src == Src::Awq ? IntLayout::AwqGemm : (src == Src::GptqV1 ? IntLayout::GptqV1 : IntLayout::GptqV2);
  const bool act_order = src == Src::GptqV2ActOrder;
  uint64_t seed = 19000 + 1000 * static_cast<uint64_t>(src);
  struct Shape { int64_t K, N, group; };
  std::vector<Shape> int_shapes = {{64, 8, 32},      {200, 24, -1},   {136, 40, -1}, {264, 136, 32},
                                   {1032, 264, 128}, {4864, 72, 32}, {896, 4864, -1}};
  // AWQ packs along N, so K = 172 exists there: Kp = 176, x staged zero-padded past K, and a last group of 44.
  if (src == Src::Awq) int_shapes.push_back({172, 16, 64});
  const std::vector<Shape> book_shapes = {{64, 17, 0}, {160, 40, 0}, {1024, 260, 0}, {4864, 72, 0}, {896, 4864, 0}};
  for (const Shape& s : book ? book_shapes : int_shapes) {
    if (act_order && s.group < 0) continue;  // act-order needs groups
    const Q4Layout q = book ? make_layout(src, s.K, s.N, ++seed)
                            : q4_from_int_linear(q4_synthetic_int_linear(layout, s.K, s.N, s.group, act_order, ++seed));
    const Q4DeviceWeight dw(q);
    const std::vector<float> W = q4_unpack(q.view());
    for (int64_t M : {1, 2, 5, 12, 16, 17, 33, 64, 65}) {
      run_mma_case(q, dw, W, M, ++seed, std::string(src_name(src)) + " K=" + std::to_string(s.K) + " N=" +
                                     std::to_string(s.N) + " group=" + std::to_string(s.group));
      if (HasFatalFailure()) return;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllSources, QgemmDecodeMmaCuda,
                         ::testing::Values(Src::GptqV1, Src::GptqV2ActOrder, Src::Awq, Src::Nf4Dq, Src::Fp4),
                         [](const ::testing::TestParamInfo<Src>& i) { return std::string(src_name(i.param)); });

// Integer activations and power-of-two scales make every sum exact: the CPU's bits, in every M regime, and the
// same bits twice (no atomics); the dispatcher takes this kernel unless QWENQ_DECODE_MMA=0 (then the FMA one).
TEST(QgemmDecodeMmaCudaExact, IntegerInputsGiveTheCpuBitsAndTheSwitchWorks) {
  QWENQ_REQUIRE_GPU();
  for (Src src : {Src::GptqV1, Src::GptqV2ActOrder, Src::Awq}) {
    const int64_t K = 3584, N = 512;
    const Q4Layout q = make_layout(src, K, N, 51, /*exact=*/true);
    const Q4DeviceWeight dw(q);
    for (int64_t M : {1, 16, 40}) {
      const std::vector<uint16_t> x = random_bf16(M * K, 52 + M, true);
      std::vector<float> want(M * N);
      qgemm_int4_ref(q.view(), x.data(), DType::BF16, M, want.data());
      test::DeviceBuffer<uint16_t> gx(x);
      test::DeviceBuffer<float> y1(M * N), y2(M * N);
      qgemm_int4_decode_mma_cuda(dw.view(), gx.get(), DType::BF16, M, y1.get());
      qgemm_int4_decode_mma_cuda(dw.view(), gx.get(), DType::BF16, M, y2.get());
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      EXPECT_EQ(y1.download(), want) << src_name(src) << " M=" << M;
      EXPECT_EQ(y2.download(), y1.download()) << src_name(src) << " M=" << M << ": two runs differ";
    }
  }
  {  // scoped: a run with the switch exported (gpu_check.sh's rerun) keeps it for the tests after this one
    const test::ScopedEnv off("QWENQ_DECODE_MMA", "0");
    EXPECT_FALSE(qgemm_decode_mma_enabled());
  }
  const test::ScopedEnv unset("QWENQ_DECODE_MMA", nullptr);
  EXPECT_TRUE(qgemm_decode_mma_enabled());
}

// A lane whose two rows of a tile are past M reads row pair 0 (and 8) instead of zeros (the kernel's top): its
// products land in rows the epilogue drops. Row 0 holds an Inf and a NaN here, so a product of those rows that
// leaked into another row, or a dropped row that was written, shows. M = 3: lanes g = 3..7 read rows 0 and 8; M =
// 12: rows 8..11 share slots with rows 0..3, rows 12..15 are zeros; M = 20: the second tile's lanes g = 4..7.
TEST(QgemmDecodeMmaCudaExact, RowsPastMNeverReachTheOutput) {
  QWENQ_REQUIRE_GPU();
  for (Src src : {Src::GptqV1, Src::Nf4Dq}) {
    const int64_t K = 1024, N = 264;
    const Q4Layout q = make_layout(src, K, N, 61, /*exact=*/src != Src::Nf4Dq);
    const Q4DeviceWeight dw(q);
    const std::vector<float> W = q4_unpack(q.view());
    for (int64_t M : {3, 12, 20}) {
      SCOPED_TRACE(std::string(src_name(src)) + " M=" + std::to_string(M));
      std::vector<uint16_t> x = random_bf16(M * K, 62 + M);
      x[5] = 0x7F80;    // +Inf in row 0
      x[700] = 0x7FC0;  // NaN in row 0
      std::vector<float> want(M * N);
      qgemm_int4_ref(q.view(), x.data(), DType::BF16, M, want.data());
      test::DeviceBuffer<uint16_t> gx(x);
      // One row of guard values past y: a dropped row written by mistake would overwrite them.
      std::vector<float> guard((M + 1) * N, 12345.f);
      test::DeviceBuffer<float> y(guard);
      qgemm_int4_decode_mma_cuda(dw.view(), gx.get(), DType::BF16, M, y.get());
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      const std::vector<float> got = y.download();
      const std::vector<double> sums = abs_sums(x, W, M, K, N, false);
      int bad = 0;
      for (int64_t m = 1; m < M; ++m) {
        for (int64_t n = 0; n < N; ++n) {
          const size_t i = static_cast<size_t>(m * N + n);
          const double tol = kQgemmGpuSumTol * kU * std::sqrt(static_cast<double>(K)) * sums[i] + 1e-30;
          if (!(std::fabs(static_cast<double>(got[i]) - want[i]) <= tol) && bad++ < 5)
            ADD_FAILURE() << "row " << m << " col " << n << ": " << got[i] << ", CPU " << want[i];
        }
      }
      for (int64_t n = 0; n < N; ++n) {
        if (std::isfinite(got[static_cast<size_t>(n)]) && bad++ < 5)
          ADD_FAILURE() << "row 0 col " << n << " is finite (" << got[static_cast<size_t>(n)] << ") with an Inf and a NaN in x";
        if (got[static_cast<size_t>(M * N + n)] != 12345.f && bad++ < 5)
          ADD_FAILURE() << "the guard row past y was written at col " << n;
      }
    }
  }
}

// Layout groups that are neither a multiple of 32 nor all of K (GPTQ groups of 16; NF4 with K = 200, gcd 8) and
// F16 activations are refused with a message naming the way out.
TEST(QgemmDecodeMmaCudaExact, RefusesWhatItCannotRun) {
  QWENQ_REQUIRE_GPU();
  const Q4Layout g16 = q4_from_int_linear(q4_synthetic_int_linear(IntLayout::GptqV1, 64, 8, 16, false, 2));
  const Q4Layout nf4_g8 = make_layout(Src::Nf4Dq, 200, 8, 1), awq = make_layout(Src::Awq, 64, 8, 1);
  EXPECT_FALSE(qgemm_decode_mma_supports(g16.view()));
  EXPECT_FALSE(qgemm_decode_mma_supports(nf4_g8.view()));
  EXPECT_TRUE(qgemm_decode_mma_supports(make_layout(Src::Nf4Dq, 256, 8, 1).view()));
  const Q4DeviceWeight dg(g16), da(awq);
  test::DeviceBuffer<uint16_t> x(64);
  test::DeviceBuffer<float> xf(64), y(8);
  expect_error([&] { qgemm_int4_decode_mma_cuda(dg.view(), x.get(), DType::BF16, 1, y.get()); },
               {"qgemm_int4_decode_mma_cuda", "needs a layout group that is a multiple of 32 or spans K, not 16",
                "qgemm_int4_decode_cuda takes every weight"});
  expect_error([&] { qgemm_int4_decode_mma_cuda(da.view(), xf.get(), DType::F16, 1, y.get()); },
               {"qgemm_int4_decode_mma_cuda", "must be F32 or BF16, not F16"});
}

// ---- F32 activations on the tensor cores: three bf16 pieces per value (kernels/bf16_split.h) -------------------
// Oracle: the CPU twin on the same fp32 x (random fp32 values, most with bits past bf16's 8), the same tolerance:
// the pieces sum to x exactly and each piece's product is exact, so only the order of the sums differs.

std::vector<float> random_f32(int64_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> a(static_cast<size_t>(n));
  for (float& v : a) v = rng.uniform(-1.0f, 1.0f);
  return a;
}

std::vector<double> abs_sums_f32(const std::vector<float>& x, const std::vector<float>& W, int64_t M, int64_t K,
                                 int64_t N) {
  std::vector<double> s(static_cast<size_t>(M * N), 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) s[m * N + n] += std::fabs(static_cast<double>(x[m * K + k]) * W[n * K + k]);
  return s;
}

// y of the mma kernel on F32 x against the CPU twin, with guard values past y.
void run_mma_f32_case(const Q4Layout& q, const Q4DeviceWeight& dw, const std::vector<float>& W, int64_t M,
                      uint64_t seed, const std::string& what) {
  SCOPED_TRACE(what + " M=" + std::to_string(M) + " F32");
  const int64_t K = q.K, N = q.N;
  const std::vector<float> x = random_f32(M * K, seed);
  std::vector<float> want(static_cast<size_t>(M * N));
  qgemm_int4_ref(q.view(), x.data(), DType::F32, M, want.data());
  constexpr float kGuard = 12345.0f;
  test::DeviceBuffer<float> gx(x), gy(std::vector<float>(static_cast<size_t>(M * N + 64), kGuard));
  qgemm_int4_decode_mma_cuda(dw.view(), gx.get(), DType::F32, M, gy.get());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> got = gy.download();
  for (int64_t i = 0; i < 64; ++i) ASSERT_EQ(got[static_cast<size_t>(M * N + i)], kGuard) << "wrote past y";
  got.resize(static_cast<size_t>(M * N));
  expect_close(got, want, abs_sums_f32(x, W, M, K, N), K, "decode mma F32 " + what + " M=" + std::to_string(M));
}

class QgemmDecodeMmaF32Cuda : public ::testing::TestWithParam<Src> {};

// M = 1 and 5 (3 and 15 kernel rows: one 16-row tile), 6 (18: two tiles), 21 and 22 (63 and 66 rows: four tiles,
// then a second row block), 64 (192 rows); every real shape at M = 1 (and 5 below 50M weights), the awkward ones of
// QgemmDecodeMmaCuda at every M.
TEST_P(QgemmDecodeMmaF32Cuda, MatchesTheCpuTwin) {
  QWENQ_REQUIRE_GPU();
  const Src src = GetParam();
  uint64_t seed = 23000 + 1000 * static_cast<uint64_t>(src);
  for (const KN& s : kRealShapes) {
    const bool huge = s.K * s.N > 50'000'000;
    const Q4Layout q = make_layout(src, s.K, s.N, ++seed);
    const Q4DeviceWeight dw(q);
    const std::vector<float> W = q4_unpack(q.view());
    for (int64_t M : {1, 5}) {
      if (huge && M > 1) continue;
      run_mma_f32_case(q, dw, W, M, ++seed,
                       std::string(src_name(src)) + " K=" + std::to_string(s.K) + " N=" + std::to_string(s.N));
      if (HasFatalFailure()) return;
    }
  }
  for (const KN& s : std::vector<KN>{{64, 8}, {200, 24}, {1032, 264}, {4864, 72}}) {
    if (!holds(src, s.K, s.N)) continue;
    const Q4Layout q = make_layout(src, s.K, s.N, ++seed);
    if (!qgemm_decode_mma_supports(q.view())) continue;  // NF4 at K = 200: blocks of 8
    const Q4DeviceWeight dw(q);
    const std::vector<float> W = q4_unpack(q.view());
    for (int64_t M : {1, 2, 5, 6, 21, 22, 64}) {
      run_mma_f32_case(q, dw, W, M, ++seed,
                       std::string(src_name(src)) + " K=" + std::to_string(s.K) + " N=" + std::to_string(s.N));
      if (HasFatalFailure()) return;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllSources, QgemmDecodeMmaF32Cuda,
                         ::testing::Values(Src::GptqV1, Src::GptqV2ActOrder, Src::Awq, Src::Nf4Dq, Src::Fp4),
                         [](const ::testing::TestParamInfo<Src>& i) { return std::string(src_name(i.param)); });

// Whole numbers of up to 9 bits (two nonzero pieces) against scales 2^-2..2^1 and |q − z| <= 15: over K = 256 every
// partial sum is a multiple of 2^-2 below 2^22 (256·512·15·2 < 2^22), so every sum is exact and gives the CPU's
// bits, whichever split, row tile and piece each partial sum came from (a piece added to the wrong row shows), run
// to run. Then the dispatcher: with QWENQ_DECODE_MMA_F32=1 it gives this kernel's bits for random fp32 x, without it
// the FMA kernel's, and the two differ there.
TEST(QgemmDecodeMmaCudaExact, Fp32IntegersGiveTheCpuBitsAndTheSwitchPicksTheKernel) {
  QWENQ_REQUIRE_GPU();
  const int64_t K = 256, N = 520;  // act-order: two groups, a real permutation
  for (Src src : {Src::GptqV1, Src::GptqV2ActOrder, Src::Awq}) {
    const Q4Layout q = make_layout(src, K, N, 71, /*exact=*/true);
    const Q4DeviceWeight dw(q);
    for (int64_t M : {1, 5, 6, 22}) {
      SCOPED_TRACE(std::string(src_name(src)) + " M=" + std::to_string(M));
      Rng rng(72 + M);
      std::vector<float> x(static_cast<size_t>(M * K));
      for (float& v : x) v = static_cast<float>(static_cast<int>(rng.below(1023)) - 511);
      std::vector<float> want(static_cast<size_t>(M * N));
      qgemm_int4_ref(q.view(), x.data(), DType::F32, M, want.data());
      test::DeviceBuffer<float> gx(x), y1(M * N), y2(M * N);
      qgemm_int4_decode_mma_cuda(dw.view(), gx.get(), DType::F32, M, y1.get());
      qgemm_int4_decode_mma_cuda(dw.view(), gx.get(), DType::F32, M, y2.get());
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      EXPECT_EQ(y1.download(), want);
      EXPECT_EQ(y2.download(), y1.download()) << "two runs differ";
    }
  }
  const test::ScopedEnv mma_on("QWENQ_DECODE_MMA", nullptr);  // the F32 switch needs the decode product on
  const int64_t M = 3, Kr = 3584, Nr = 512;
  const Q4Layout q = make_layout(Src::Awq, Kr, Nr, 81);
  const Q4DeviceWeight dw(q);
  test::DeviceBuffer<float> gx(random_f32(M * Kr, 82)), mma(M * Nr), fma(M * Nr), picked(M * Nr);
  qgemm_int4_decode_mma_cuda(dw.view(), gx.get(), DType::F32, M, mma.get());
  qgemm_int4_decode_cuda(dw.view(), gx.get(), DType::F32, M, fma.get());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_NE(mma.download(), fma.download()) << "the two kernels agree bit for bit: the switch test cannot tell";
  {
    const test::ScopedEnv on("QWENQ_DECODE_MMA_F32", "1");
    qgemm_int4_cuda(dw.view(), gx.get(), DType::F32, M, picked.get());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(picked.download(), mma.download()) << "QWENQ_DECODE_MMA_F32=1: not the tensor-core kernel";
  }
  const test::ScopedEnv off("QWENQ_DECODE_MMA_F32", nullptr);
  qgemm_int4_cuda(dw.view(), gx.get(), DType::F32, M, picked.get());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(picked.download(), fma.download()) << "by default F32 goes to the FMA kernel";
}

// The third piece (l) is below any summation-order tolerance, so only an exact case sees it: one nonzero activation
// per row, x = ±(2^19 + 2^11 + 2^3 + 1) (h = 2^19 + 2^12, m = −2040, l = 1: all three pieces nonzero), at a column
// that moves with the row across the K splits (and, act-order, through the permutation). Each output is then one
// product of at most 20 + 4 + 1 bits, exact on both sides, and each piece's partial sum is exact: the CPU's bits, or a
// dropped, doubled or misplaced piece shows.
TEST(QgemmDecodeMmaCudaExact, Fp32ThirdPieceReachesTheOutput) {
  QWENQ_REQUIRE_GPU();
  const int64_t K = 1024, N = 264;
  const float big = 526345.0f;  // 2^19 + 2^11 + 2^3 + 1
  uint16_t pieces[3];
  split_bf16x3(big, pieces);
  ASSERT_NE(pieces[2], 0) << "the value must need its third piece";
  for (Src src : {Src::GptqV1, Src::GptqV2ActOrder, Src::Awq}) {
    const Q4Layout q = make_layout(src, K, N, 95, /*exact=*/true);
    const Q4DeviceWeight dw(q);
    for (int64_t M : {1, 5, 22}) {
      SCOPED_TRACE(std::string(src_name(src)) + " M=" + std::to_string(M));
      std::vector<float> x(static_cast<size_t>(M * K), 0.0f);
      for (int64_t m = 0; m < M; ++m) x[m * K + (m * 397 + 11) % K] = m % 2 ? -big : big;
      std::vector<float> want(static_cast<size_t>(M * N));
      qgemm_int4_ref(q.view(), x.data(), DType::F32, M, want.data());
      test::DeviceBuffer<float> gx(x), gy(M * N);
      qgemm_int4_decode_mma_cuda(dw.view(), gx.get(), DType::F32, M, gy.get());
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      EXPECT_EQ(gy.download(), want);
    }
  }
}

// The tolerance sees a lost second piece: on a 7B k_proj shape, x rounded to bf16 (the h piece alone) puts outputs outside
// the bound that the three pieces meet.
TEST(QgemmDecodeMmaCudaExact, Fp32PiecesAreNotRoundedAway) {
  QWENQ_REQUIRE_GPU();
  const int64_t M = 1, K = 3584, N = 512;
  const Q4Layout q = make_layout(Src::GptqV1, K, N, 91);
  const Q4DeviceWeight dw(q);
  const std::vector<float> W = q4_unpack(q.view()), x = random_f32(M * K, 92);
  std::vector<float> want(N), rounded(N), xr(x);
  for (float& v : xr) v = bf16_round(v);
  qgemm_int4_ref(q.view(), x.data(), DType::F32, M, want.data());
  qgemm_int4_ref(q.view(), xr.data(), DType::F32, M, rounded.data());
  test::DeviceBuffer<float> gx(x), gy(N);
  qgemm_int4_decode_mma_cuda(dw.view(), gx.get(), DType::F32, M, gy.get());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> got = gy.download();
  const std::vector<double> sums = abs_sums_f32(x, W, M, K, N);
  int outside_rounded = 0;
  for (int64_t n = 0; n < N; ++n) {
    const double tol = kQgemmGpuSumTol * kU * std::sqrt(static_cast<double>(K)) * sums[n];
    outside_rounded += std::fabs(static_cast<double>(rounded[n]) - want[n]) > tol;
  }
  EXPECT_GT(outside_rounded, N / 4) << "bf16-rounded x stays within the tolerance: it cannot see a lost piece";
  expect_close(got, want, sums, K, "decode mma F32 pieces");
}

// qgemm_split_x3_cuda is its CPU twin bit for bit: perm, padding, the edges (Inf, NaN, past bf16's range, tiny).
TEST(QgemmSplitX3Cuda, IsTheCpuTwinBitForBit) {
  QWENQ_REQUIRE_GPU();
  struct Case { int64_t M, K, width; bool perm; };
  for (const Case& c : {Case{1, 3584, 3584, false}, Case{5, 13, 16, true}, Case{64, 4864, 4864, true},
                        Case{3, 200, 208, false}}) {
    SCOPED_TRACE("M=" + std::to_string(c.M) + " K=" + std::to_string(c.K) + " width=" + std::to_string(c.width));
    std::vector<float> x = random_f32(c.M * c.K, 100 + c.K);
    const float edges[] = {INFINITY, -INFINITY, NAN, 3.4e38f, -3.4e38f, 1e-40f, -2.5e-35f, 0.0f, -0.0f};
    for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]) && i < x.size(); ++i) x[i * 7 % x.size()] = edges[i];
    std::vector<int32_t> perm(static_cast<size_t>(c.K));
    for (int64_t k = 0; k < c.K; ++k) perm[k] = static_cast<int32_t>(c.K - 1 - k);
    std::vector<uint16_t> want(static_cast<size_t>(3 * c.M * c.width));
    qgemm_split_x3_ref(x.data(), c.M, c.K, c.perm ? perm.data() : nullptr, c.width, want.data());
    test::DeviceBuffer<float> gx(x);
    test::DeviceBuffer<int32_t> gp(perm);
    test::DeviceBuffer<uint16_t> out(std::vector<uint16_t>(want.size() + 32, 0xABCD));
    qgemm_split_x3_cuda(gx.get(), c.M, c.K, c.perm ? gp.get() : nullptr, c.width, out.get());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<uint16_t> got = out.download();
    for (size_t i = want.size(); i < got.size(); ++i) ASSERT_EQ(got[i], 0xABCD) << "wrote past the output";
    got.resize(want.size());
    EXPECT_EQ(got, want);
  }
}

TEST(QgemmCudaExact, RejectsBadArguments) {
  QWENQ_REQUIRE_GPU();
  const Q4Layout q = make_layout(Src::Awq, 64, 8, 1);
  const Q4DeviceWeight dw(q);
  test::DeviceBuffer<float> x(64), y(8);
  expect_error([&] { qgemm_int4_cuda(dw.view(), x.get(), DType::F16, 1, y.get()); }, "must be F32 or BF16, not F16");
  expect_error([&] { qgemm_int4_cuda(dw.view(), x.get(), DType::F32, 0, y.get()); }, "M=0");
  expect_error([&] { qgemm_int4_t_cuda(q.view(), x.get(), DType::F32, 1, y.get()); }, "must be device memory");
}

}  // namespace
}  // namespace qwenq
