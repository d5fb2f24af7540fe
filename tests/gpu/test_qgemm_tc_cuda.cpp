// The tensor-core W4A16 kernels (qgemm_int4_tc_cuda / qgemm_int4_t_tc_cuda, kernels/qgemm_tc.cu; the wgmma ones,
// kernels/qgemm_wgmma.cu; and the dense path, kernels/qgemm_dense.cu) against the
// CPU twins (kernels/qgemm.h) for every source format (GPTQ v1, v2 with act-order, AWQ GEMM, NF4 with double
// quantization, FP4), forward and transposed, M in {65, 512, 1000, 2048} on Qwen2.5 shapes and awkward
// tails (M = 65, 129, 257; N = 17; K = 172), plus the dispatch of qgemm_int4_cuda and rejected arguments.
//
// The same bf16 activations go to both twins. Tensor-core products of two bf16 values are exact in fp32, but
// the kernel feeds bf16(ŵ) (the fp32 ŵ rounded to nearest even), not ŵ: (q - z)·s has up to 15 significant
// bits and NF4/FP4 code values 24, bf16 holds 8. So the GPU differs from the CPU twin by
//   (a) the weight rounding, at most Σ|a|·|ŵ - bf16(ŵ)| over the reduction (computed exactly, per output),
//   (b) the summation order of two fp32 sums: the rule of tests/gpu/test_qgemm_cuda.cpp, kQgemmGpuSumTol·u·
//       sqrt(L)·Σ|a·ŵ|, u = 2^-24, L terms (a random walk of L roundings of at most u·Σ|a·ŵ| each).
// Tolerance per output = (a) + (b), both relative to Σ|a·w|-type sums, never |y| (which cancels). Where the
// inputs make everything exact (power-of-two scales, so ŵ is bf16-exact, and small integer activations) the
// test requires bit equality over all rows: that catches indexing errors too small for the bound.
//
// Host cost: the CPU twin and the bounds are O(rows·K·N); for M > 80 they run on a sample of rows that hits
// every 16-row MMA fragment edge, the 128-row block edges and the last (partial) tile; the GPU output is
// computed for all M rows and guard values after it catch overruns.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/threads.h"
#include "kernels/qgemm.h"
#include "tests/gpu/gpu_test.h"
#include "tests/support/scoped_env.h"
#include "tests/support/test_errors.h"
#include "tests/gpu/qgemm_cases.h"

namespace qwenq {
namespace {

using test::expect_error;
using namespace test::qgemm_cases;  // Src, make_layout, random_bf16, kU, ... (tests/gpu/qgemm_cases.h)

// Rows checked against the CPU twin: all of them up to 80, else the fragment/tile edges and the tail.
std::vector<int64_t> checked_rows(int64_t M) {
  std::vector<int64_t> rows;
  if (M <= 80) {
    for (int64_t m = 0; m < M; ++m) rows.push_back(m);
    return rows;
  }
  std::set<int64_t> s = {0, 1, 7, 8, 15, 16, 63, 64, 127, 128, 129, M / 2, M - 129, M - 128, M - 65, M - 17, M - 2, M - 1};
  for (int64_t m : s)
    if (m >= 0 && m < M) rows.push_back(m);
  return rows;
}

// Per output of the checked rows: Σ|a·w| and Σ|a|·|w - bf16(w)| over the reduction. W is ŵ [N, K].
// Forward: a = x rows [R, K], outputs [R, N]; transposed: a = dy rows [R, N], outputs [R, K]. Both walk W
// row by row (contiguous), parallel over blocks of outputs.
void bounds(const std::vector<uint16_t>& a, const std::vector<float>& W, int64_t R, int64_t K, int64_t N,
            bool transposed, std::vector<double>* abs_sum, std::vector<double>* round_sum) {
  const int64_t outs = transposed ? K : N, L = transposed ? N : K;
  abs_sum->assign(R * outs, 0.0);
  round_sum->assign(R * outs, 0.0);
  std::vector<double> av(R * L);
  for (int64_t i = 0; i < R * L; ++i) av[i] = std::fabs(static_cast<double>(bf16_to_f32(a[i])));
  parallel_for(outs, 64, [&](int64_t o0, int64_t o1) {
    std::vector<double> s(R * (o1 - o0), 0.0), e(R * (o1 - o0), 0.0);
    for (int64_t l = 0; l < L; ++l)
      for (int64_t o = o0; o < o1; ++o) {
        const float w = transposed ? W[l * K + o] : W[o * K + l];
        const double wa = std::fabs(static_cast<double>(w));
        const double wr = std::fabs(static_cast<double>(w) - static_cast<double>(bf16_round(w)));
        for (int64_t r = 0; r < R; ++r) {
          s[r * (o1 - o0) + (o - o0)] += av[r * L + l] * wa;
          e[r * (o1 - o0) + (o - o0)] += av[r * L + l] * wr;
        }
      }
    for (int64_t r = 0; r < R; ++r)
      for (int64_t o = o0; o < o1; ++o) {
        (*abs_sum)[r * outs + o] = s[r * (o1 - o0) + (o - o0)];
        (*round_sum)[r * outs + o] = e[r * (o1 - o0) + (o - o0)];
      }
  });
}

void expect_close(const std::vector<float>& gpu, const std::vector<float>& cpu, const std::vector<double>& abs_sum,
                  const std::vector<double>& round_sum, int64_t L, const std::string& what) {
  ASSERT_EQ(gpu.size(), cpu.size()) << what;
  int64_t bad = 0;
  for (size_t i = 0; i < gpu.size(); ++i) {
    const double tol = round_sum[i] + kQgemmGpuSumTol * kU * std::sqrt(static_cast<double>(L)) * abs_sum[i] + 1e-30;
    if (!(std::fabs(static_cast<double>(gpu[i]) - cpu[i]) <= tol)) {
      if (bad++ < 3)
        ADD_FAILURE() << what << ": output " << i << " GPU " << gpu[i] << " CPU " << cpu[i] << " tolerance " << tol;
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << gpu.size() << " checked outputs outside tolerance";
}

std::vector<uint16_t> gather_rows(const std::vector<uint16_t>& a, const std::vector<int64_t>& rows, int64_t width) {
  std::vector<uint16_t> out(rows.size() * width);
  for (size_t r = 0; r < rows.size(); ++r)
    std::copy(a.begin() + rows[r] * width, a.begin() + (rows[r] + 1) * width, out.begin() + r * width);
  return out;
}

std::vector<float> gather_rows(const std::vector<float>& a, const std::vector<int64_t>& rows, int64_t width) {
  std::vector<float> out(rows.size() * width);
  for (size_t r = 0; r < rows.size(); ++r)
    std::copy(a.begin() + rows[r] * width, a.begin() + (rows[r] + 1) * width, out.begin() + r * width);
  return out;
}

// The three implementations of the prefill products, all with bf16(ŵ) and fp32 sums: the mma.sync kernels
// (qgemm_tc.cu), the Hopper wgmma kernels (qgemm_wgmma.cu) and the dense path (qgemm_dense.cu: Ŵ dequantized to
// bf16, then cuBLASLt).
enum class TcPath { MmaSync, Wgmma, Dense };
const char* path_name(TcPath p) { return p == TcPath::MmaSync ? "" : (p == TcPath::Wgmma ? "wgmma " : "dense "); }
void tc_forward(TcPath p, const Q4View& w, const void* x, int64_t M, float* y) {
  if (p == TcPath::Wgmma) qgemm_int4_wgmma_cuda(w, x, DType::BF16, M, y);
  else if (p == TcPath::Dense) qgemm_int4_dense_cuda(w, x, DType::BF16, M, y);
  else qgemm_int4_tc_cuda(w, x, DType::BF16, M, y);
}
void tc_transposed(TcPath p, const Q4View& w, const void* dy, int64_t M, float* dx) {
  if (p == TcPath::Wgmma) qgemm_int4_t_wgmma_cuda(w, dy, DType::BF16, M, dx);
  else if (p == TcPath::Dense) qgemm_int4_t_dense_cuda(w, dy, DType::BF16, M, dx);
  else qgemm_int4_t_tc_cuda(w, dy, DType::BF16, M, dx);
}

// One case: forward and transposed products of `path` vs the CPU twin on the checked rows.
void run_case(Src src, const Q4Layout& q, const Q4DeviceWeight& dw, const std::vector<float>& W, int64_t M,
              uint64_t seed, TcPath path = TcPath::MmaSync) {
  const int64_t K = q.K, N = q.N;
  const std::string what = std::string(path_name(path)) + src_name(src) + " M=" + std::to_string(M) + " K=" + std::to_string(K) +
                           " N=" + std::to_string(N) + " seed=" + std::to_string(seed);
  SCOPED_TRACE(what);
  const std::vector<uint16_t> x = random_bf16(M * K, seed + 1), dy = random_bf16(M * N, seed + 2);
  std::vector<float> y_gpu, dx_gpu;
  ASSERT_NO_FATAL_FAILURE(run_guarded(
      x, dy, M, K, N,
      [&](const uint16_t* a, float* y) { tc_forward(path, dw.view(), a, M, y); },
      [&](const uint16_t* a, float* dx) { tc_transposed(path, dw.view(), a, M, dx); },
      &y_gpu, &dx_gpu));

  const std::vector<int64_t> rows = checked_rows(M);
  const int64_t R = static_cast<int64_t>(rows.size());
  const std::vector<uint16_t> xr = gather_rows(x, rows, K), dyr = gather_rows(dy, rows, N);
  std::vector<float> y_cpu(R * N), dx_cpu(R * K);
  qgemm_int4_ref(q.view(), xr.data(), DType::BF16, R, y_cpu.data());
  qgemm_int4_t_ref(q.view(), dyr.data(), DType::BF16, R, dx_cpu.data());
  std::vector<double> abs_sum, round_sum;
  bounds(xr, W, R, K, N, false, &abs_sum, &round_sum);
  expect_close(gather_rows(y_gpu, rows, N), y_cpu, abs_sum, round_sum, K, "forward " + what);
  bounds(dyr, W, R, K, N, true, &abs_sum, &round_sum);
  expect_close(gather_rows(dx_gpu, rows, K), dx_cpu, abs_sum, round_sum, N, "transposed " + what);
}

// The sweep of one source: for each shape the source holds, a layout (seed + 1, + 2, ...), then run_case at each
// M that keep(shape, M) accepts (the next seed each); stops at the first fatal failure.
void run_sweep(Src src, const std::vector<KN>& shapes, const std::vector<int64_t>& Ms, uint64_t seed, TcPath path,
               const std::function<bool(const KN&, int64_t)>& keep = [](const KN&, int64_t) { return true; }) {
  for (const KN& s : shapes) {
    if (!holds(src, s.K, s.N)) continue;
    const Q4Layout q = make_layout(src, s.K, s.N, ++seed);
    const Q4DeviceWeight dw(q);
    const std::vector<float> W = q4_unpack(q.view());
    for (int64_t M : Ms) {
      if (!keep(s, M)) continue;
      run_case(src, q, dw, W, M, ++seed, path);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
}

class QgemmTcCuda : public ::testing::TestWithParam<Src> {};

// Qwen2.5-0.5B gate/up (896 -> 4864) and down (4864 -> 896), 72B k/v (8192 -> 1024) at every M; 7B gate/up
// (3584 -> 18944) at M = 512 only (68M weights: the host reference is the cost).
TEST_P(QgemmTcCuda, MatchesTheCpuTwinOnQwenShapes) {
  QWENQ_REQUIRE_GPU();
  const Src src = GetParam();
  run_sweep(src, {{896, 4864}, {4864, 896}, {8192, 1024}, {3584, 18944}}, {65, 512, 1000, 2048},
            17000 + 1000 * static_cast<uint64_t>(src), TcPath::MmaSync,
            [](const KN& s, int64_t M) { return s.N != 18944 || M == 512; });
}

// Tails: N = 17 (Np = 20: a partial 16-byte chunk of columns), K = 172 (Kp = 176: K % 8 != 0, staged x),
// K = 200 / 136 (partial 32-deep stage), N < 32 (one partial stage in the transposed reduction), and M not a
// multiple of 16 or 128. All rows checked.
TEST_P(QgemmTcCuda, MatchesTheCpuTwinOnAwkwardSizes) {
  QWENQ_REQUIRE_GPU();
  const Src src = GetParam();
  run_sweep(src, {{64, 17}, {200, 16}, {136, 24}, {172, 8}, {8, 8}, {264, 136}}, {1, 17, 65, 129, 257},
            19000 + 1000 * static_cast<uint64_t>(src), TcPath::MmaSync);
}

INSTANTIATE_TEST_SUITE_P(AllSources, QgemmTcCuda,
                         ::testing::Values(Src::GptqV1, Src::GptqV2ActOrder, Src::Awq, Src::Nf4Dq, Src::Fp4),
                         [](const ::testing::TestParamInfo<Src>& i) { return std::string(src_name(i.param)); });

// The Hopper kernels (qgemm_int4_wgmma_cuda / qgemm_int4_t_wgmma_cuda) under the same bounds: Qwen shapes (7B
// gate/up at M = 512 and 2048), and the tails (N = 17 / 260, K = 172 staged, K = 200 / 136 / 520 a partial
// 64-deep stage, K = 8 one word-row, M not a multiple of 64 or 128). Skipped unless the device is sm_90 running
// the sm_90a build.
class QgemmWgmmaCuda : public ::testing::TestWithParam<Src> {};

// The sweeps of the wgmma and dense paths (each with its own seeds): Qwen shapes at M = 65 / 512 / 2048 (7B
// gate/up only at 512 and 2048), and the tails at M = 1 .. 257.
void qwen_shape_sweep(Src src, uint64_t seed, TcPath path) {
  run_sweep(src, {{896, 4864}, {4864, 896}, {3584, 18944}}, {65, 512, 2048}, seed, path,
            [](const KN& s, int64_t M) { return s.N != 18944 || M != 65; });
}
void awkward_sweep(Src src, uint64_t seed, TcPath path) {
  run_sweep(src, {{64, 17}, {200, 16}, {136, 24}, {172, 8}, {8, 8}, {264, 136}, {520, 260}}, {1, 17, 65, 129, 257},
            seed, path);
}

TEST_P(QgemmWgmmaCuda, MatchesTheCpuTwinOnQwenShapes) {
  QWENQ_REQUIRE_WGMMA();
  const Src src = GetParam();
  qwen_shape_sweep(src, 23000 + 1000 * static_cast<uint64_t>(src), TcPath::Wgmma);
}

TEST_P(QgemmWgmmaCuda, MatchesTheCpuTwinOnAwkwardSizes) {
  QWENQ_REQUIRE_WGMMA();
  const Src src = GetParam();
  awkward_sweep(src, 29000 + 1000 * static_cast<uint64_t>(src), TcPath::Wgmma);
}

INSTANTIATE_TEST_SUITE_P(AllSources, QgemmWgmmaCuda,
                         ::testing::Values(Src::GptqV1, Src::GptqV2ActOrder, Src::Awq, Src::Nf4Dq, Src::Fp4),
                         [](const ::testing::TestParamInfo<Src>& i) { return std::string(src_name(i.param)); });

// The dense path (Ŵ dequantized to bf16, then cuBLASLt) under the same bounds: Qwen shapes (7B gate/up at M = 512
// and 2048), the tails (act-order, K = 172 staged, N = 17 / 260, M = 1 and not a multiple of 16), and the
// dequantization itself bit for bit against its CPU twin.
class QgemmDenseCuda : public ::testing::TestWithParam<Src> {};

TEST_P(QgemmDenseCuda, MatchesTheCpuTwinOnQwenShapes) {
  QWENQ_REQUIRE_GPU();
  const Src src = GetParam();
  qwen_shape_sweep(src, 31000 + 1000 * static_cast<uint64_t>(src), TcPath::Dense);
}

TEST_P(QgemmDenseCuda, MatchesTheCpuTwinOnAwkwardSizes) {
  QWENQ_REQUIRE_GPU();
  const Src src = GetParam();
  awkward_sweep(src, 37000 + 1000 * static_cast<uint64_t>(src), TcPath::Dense);
}

// The overlap's pieces (kernels/qgemm_dense.cu, QWENQ_QGEMM_OVERLAP=1) under the same bounds: 7B gate/up / down
// (4 whole pieces both ways) and an awkward weight just over the 8M-value threshold, K = 4104 (513 word-rows: pieces
// of 160, the last 33) x N = 2056 (pieces of 576 columns, the last 328), at M = 1 .. 512 (the Qwen shapes at 512).
TEST_P(QgemmDenseCuda, OverlappedPiecesMatchTheCpuTwin) {
  QWENQ_REQUIRE_GPU();
  const test::ScopedEnv overlap("QWENQ_QGEMM_OVERLAP", "1");
  ASSERT_EQ(qgemm_dense_chunks(2056, 4104), kQgemmOverlapChunks);
  ASSERT_EQ(qgemm_dense_chunk(513, kQgemmOverlapChunks, kQgemmDqWordRows), 160);
  ASSERT_EQ(qgemm_dense_chunk(2056, kQgemmOverlapChunks, kQgemmDqCols), 576);
  const Src src = GetParam();
  run_sweep(src, {{4104, 2056}, {3584, 18944}, {18944, 3584}}, {1, 17, 129, 512},
            43000 + 1000 * static_cast<uint64_t>(src), TcPath::Dense,
            [](const KN& s, int64_t M) { return s.K == 4104 || M == 512; });
}

TEST_P(QgemmDenseCuda, DequantizationIsTheCpuTwinBitForBit) {
  QWENQ_REQUIRE_GPU();
  const Src src = GetParam();
  uint64_t seed = 41000 + 1000 * static_cast<uint64_t>(src);
  // Tiles of 64 columns x 32 word-rows (kernels/qgemm_dense.cu): {1000, 104} ends in a partial tile both ways.
  for (const KN& s : std::vector<KN>{{3584, 512}, {4864, 896}, {172, 8}, {200, 17}, {8192, 1024}, {1000, 104}}) {
    if (!holds(src, s.K, s.N)) continue;
    SCOPED_TRACE(std::string(src_name(src)) + " K=" + std::to_string(s.K) + " N=" + std::to_string(s.N));
    const Q4Layout q = make_layout(src, s.K, s.N, ++seed);
    const Q4DeviceWeight dw(q);
    std::vector<uint16_t> want(static_cast<size_t>(s.N * q.Kp));
    q4_dequantize_bf16_ref(q.view(), want.data());
    test::DeviceBuffer<uint16_t> got(std::vector<uint16_t>(want.size() + 64, 0xABCD));  // + guards
    q4_dequantize_bf16_cuda(dw.view(), got.get());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<uint16_t> g = got.download();
    for (size_t i = want.size(); i < g.size(); ++i) ASSERT_EQ(g[i], 0xABCD) << "wrote past the output";
    g.resize(want.size());
    EXPECT_EQ(g, want);
  }
}

INSTANTIATE_TEST_SUITE_P(AllSources, QgemmDenseCuda,
                         ::testing::Values(Src::GptqV1, Src::GptqV2ActOrder, Src::Awq, Src::Nf4Dq, Src::Fp4),
                         [](const ::testing::TestParamInfo<Src>& i) { return std::string(src_name(i.param)); });

// Exact inputs: the wgmma kernels must give the CPU's bits on every row and column, and the same bits run to run.
TEST(QgemmWgmmaCudaExact, IntegerInputsGiveTheCpuBitsExactly) {
  QWENQ_REQUIRE_WGMMA();
  const std::vector<KN> shapes = {{3584, 512}, {136, 24}, {200, 16}, {4864, 136}};
  for (Src src : {Src::GptqV1, Src::GptqV2ActOrder, Src::Awq}) {
    for (const KN& s : shapes) {
      if (!holds(src, s.K, s.N)) continue;
      for (int64_t M : {65, 130, 300}) {
        SCOPED_TRACE(std::string(src_name(src)) + " M=" + std::to_string(M) + " K=" + std::to_string(s.K) +
                     " N=" + std::to_string(s.N));
        const Q4Layout q = make_layout(src, s.K, s.N, 41 + M, /*exact=*/true);
        const Q4DeviceWeight dw(q);
        const std::vector<uint16_t> x = random_bf16(M * s.K, 42 + M, true), dy = random_bf16(M * s.N, 43 + M, true);
        std::vector<float> y(M * s.N), dx(M * s.K);
        qgemm_int4_ref(q.view(), x.data(), DType::BF16, M, y.data());
        qgemm_int4_t_ref(q.view(), dy.data(), DType::BF16, M, dx.data());
        test::DeviceBuffer<uint16_t> gx(x), gdy(dy);
        test::DeviceBuffer<float> gy(M * s.N), gy2(M * s.N), gdx(M * s.K), gdx2(M * s.K);
        for (int run = 0; run < 2; ++run) {
          qgemm_int4_wgmma_cuda(dw.view(), gx.get(), DType::BF16, M, (run ? gy2 : gy).get());
          qgemm_int4_t_wgmma_cuda(dw.view(), gdy.get(), DType::BF16, M, (run ? gdx2 : gdx).get());
        }
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        EXPECT_EQ(gy.download(), y) << "forward";
        EXPECT_EQ(gy2.download(), y) << "forward, second run";
        EXPECT_EQ(gdx.download(), dx) << "transposed";
        EXPECT_EQ(gdx2.download(), dx) << "transposed, second run";
      }
    }
  }
}

TEST(QgemmWgmmaCudaExact, RejectsBadArguments) {
  QWENQ_REQUIRE_GPU();
  const Q4Layout q = make_layout(Src::Awq, 64, 8, 1);
  const Q4DeviceWeight dw(q);
  test::DeviceBuffer<float> x(64 * 128), y(8 * 128);
  expect_error([&] { qgemm_int4_wgmma_cuda(dw.view(), x.get(), DType::F32, 128, y.get()); },
               "qgemm_int4_wgmma_cuda: the tensor-core kernel takes BF16 activations, not F32 (M=128 K=64 N=8");
  expect_error([&] { qgemm_int4_wgmma_cuda(q.view(), x.get(), DType::BF16, 128, y.get()); }, "must be device memory");
  expect_error([&] { qgemm_int4_t_wgmma_cuda(dw.view(), x.get(), DType::BF16, 0, y.get()); },
               "qgemm_int4_t_wgmma_cuda: M=0");
  if (!cuda_wgmma_supported()) {
    expect_error([&] { qgemm_int4_wgmma_cuda(dw.view(), x.get(), DType::BF16, 128, y.get()); },
                 "needs an sm_90 GPU (H100/H200) and a build with the sm_90a target");
  }
}

// Power-of-two scales make ŵ = (q - z)·2^e exact in bf16 and integer activations make every product and
// partial sum exact in fp32: GPU and CPU must agree bit for bit on every row and column.
TEST(QgemmTcCudaExact, IntegerInputsGiveTheCpuBitsExactly) {
  QWENQ_REQUIRE_GPU();
  const std::vector<KN> shapes = {{3584, 512}, {136, 24}, {200, 16}};
  for (Src src : {Src::GptqV1, Src::GptqV2ActOrder, Src::Awq}) {
    for (const KN& s : shapes) {
      if (!holds(src, s.K, s.N)) continue;
      for (int64_t M : {65, 130}) {
        SCOPED_TRACE(std::string(src_name(src)) + " M=" + std::to_string(M) + " K=" + std::to_string(s.K) +
                     " N=" + std::to_string(s.N));
        const Q4Layout q = make_layout(src, s.K, s.N, 31 + M, /*exact=*/true);
        const Q4DeviceWeight dw(q);
        const std::vector<uint16_t> x = random_bf16(M * s.K, 32 + M, true), dy = random_bf16(M * s.N, 33 + M, true);
        std::vector<float> y(M * s.N), dx(M * s.K);
        qgemm_int4_ref(q.view(), x.data(), DType::BF16, M, y.data());
        qgemm_int4_t_ref(q.view(), dy.data(), DType::BF16, M, dx.data());
        test::DeviceBuffer<uint16_t> gx(x), gdy(dy);
        test::DeviceBuffer<float> gy(M * s.N), gdx(M * s.K);
        for (TcPath path : {TcPath::MmaSync, TcPath::Dense}) {
          tc_forward(path, dw.view(), gx.get(), M, gy.get());
          tc_transposed(path, dw.view(), gdy.get(), M, gdx.get());
          ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
          EXPECT_EQ(gy.download(), y) << path_name(path) << "forward";
          EXPECT_EQ(gdx.download(), dx) << path_name(path) << "transposed";
        }
      }
    }
  }
}

// qgemm_int4_cuda / qgemm_int4_t_cuda: M <= 64 or F32 -> decode kernels (the forward on tensor cores unless
// QWENQ_DECODE_MMA=0), M > 64 with BF16 -> the dense path from M = 512 (any M > 64 with QWENQ_QGEMM_DENSE=1,
// none with 0), else tensor cores (the wgmma kernels on a device that supports them, unless QWENQ_WGMMA=0).
// Each path is deterministic, so the dispatcher's bits equal the chosen path's bits.
TEST(QgemmTcCudaDispatch, PicksTheKernelByMAndDtype) {
  QWENQ_REQUIRE_GPU();
  EXPECT_FALSE(qgemm_cuda_uses_tensor_cores(64, DType::BF16));
  EXPECT_TRUE(qgemm_cuda_uses_tensor_cores(65, DType::BF16));
  EXPECT_FALSE(qgemm_cuda_uses_tensor_cores(4096, DType::F32));
  const int64_t K = 896, N = 4864;
  const Q4Layout q = make_layout(Src::GptqV2ActOrder, K, N, 51);
  const Q4DeviceWeight dw(q);
  for (int64_t M : {int64_t{64}, int64_t{65}, kQgemmDenseMinM}) {
    const std::vector<uint16_t> x = random_bf16(M * K, 52), dy = random_bf16(M * N, 53);
    test::DeviceBuffer<uint16_t> gx(x), gdy(dy);
    test::DeviceBuffer<float> y_auto(M * N), y_path(M * N), dx_auto(M * K), dx_path(M * K);
    qgemm_int4_cuda(dw.view(), gx.get(), DType::BF16, M, y_auto.get());
    qgemm_int4_t_cuda(dw.view(), gdy.get(), DType::BF16, M, dx_auto.get());
    if (M > kQgemmDecodeMaxM) {
      if (qgemm_dense_for(M)) {
        qgemm_int4_dense_cuda(dw.view(), gx.get(), DType::BF16, M, y_path.get());
        qgemm_int4_t_dense_cuda(dw.view(), gdy.get(), DType::BF16, M, dx_path.get());
      } else if (cuda_wgmma_enabled()) {
        qgemm_int4_wgmma_cuda(dw.view(), gx.get(), DType::BF16, M, y_path.get());
        qgemm_int4_t_wgmma_cuda(dw.view(), gdy.get(), DType::BF16, M, dx_path.get());
      } else {
        qgemm_int4_tc_cuda(dw.view(), gx.get(), DType::BF16, M, y_path.get());
        qgemm_int4_t_tc_cuda(dw.view(), gdy.get(), DType::BF16, M, dx_path.get());
      }
    } else {
      if (qgemm_decode_mma_enabled()) qgemm_int4_decode_mma_cuda(dw.view(), gx.get(), DType::BF16, M, y_path.get());
      else qgemm_int4_decode_cuda(dw.view(), gx.get(), DType::BF16, M, y_path.get());
      qgemm_int4_t_decode_cuda(dw.view(), gdy.get(), DType::BF16, M, dx_path.get());
    }
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(y_auto.download(), y_path.download()) << "forward M=" << M;
    EXPECT_EQ(dx_auto.download(), dx_path.download()) << "transposed M=" << M;
  }
  // F32 activations at M > 64 stay on the decode kernel (fp32 ŵ, exact fp32 inputs).
  const int64_t M = 65;
  std::vector<float> xf(M * K);
  const std::vector<uint16_t> xb = random_bf16(M * K, 54);
  for (size_t i = 0; i < xf.size(); ++i) xf[i] = bf16_to_f32(xb[i]);
  test::DeviceBuffer<float> gxf(xf), y_auto(M * N), y_dec(M * N);
  qgemm_int4_cuda(dw.view(), gxf.get(), DType::F32, M, y_auto.get());
  qgemm_int4_decode_cuda(dw.view(), gxf.get(), DType::F32, M, y_dec.get());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(y_auto.download(), y_dec.download());
}

TEST(QgemmTcCudaExact, DeterministicAcrossRuns) {
  QWENQ_REQUIRE_GPU();
  const int64_t M = 1000, K = 4864, N = 896;
  const Q4Layout q = make_layout(Src::Nf4Dq, K, N, 61);
  const Q4DeviceWeight dw(q);
  test::DeviceBuffer<uint16_t> gx(random_bf16(M * K, 62)), gdy(random_bf16(M * N, 63));
  test::DeviceBuffer<float> y1(M * N), y2(M * N), dx1(M * K), dx2(M * K);
  qgemm_int4_tc_cuda(dw.view(), gx.get(), DType::BF16, M, y1.get());
  qgemm_int4_tc_cuda(dw.view(), gx.get(), DType::BF16, M, y2.get());
  qgemm_int4_t_tc_cuda(dw.view(), gdy.get(), DType::BF16, M, dx1.get());
  qgemm_int4_t_tc_cuda(dw.view(), gdy.get(), DType::BF16, M, dx2.get());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(y1.download(), y2.download());
  EXPECT_EQ(dx1.download(), dx2.download());
}

TEST(QgemmTcCudaExact, RejectsBadArguments) {
  QWENQ_REQUIRE_GPU();
  const Q4Layout q = make_layout(Src::Awq, 64, 8, 1);
  const Q4DeviceWeight dw(q);
  test::DeviceBuffer<float> x(64 * 128), y(8 * 128);
  expect_error([&] { qgemm_int4_tc_cuda(dw.view(), x.get(), DType::F32, 128, y.get()); },
               "takes BF16 activations, not F32 (M=128 K=64 N=8");
  expect_error([&] { qgemm_int4_t_tc_cuda(dw.view(), x.get(), DType::BF16, 0, y.get()); }, "M=0");
  expect_error([&] { qgemm_int4_tc_cuda(q.view(), x.get(), DType::BF16, 128, y.get()); }, "must be device memory");
}

}  // namespace
}  // namespace qwenq
