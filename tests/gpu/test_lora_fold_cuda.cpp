// QWENQ_LORA_FOLD=1's kernels against their CPU twins (tests/test_lora_fold.cpp checks the twins):
//   - f32_to_bf16_strided_cuda bit for bit, on its vector path (cols, ld multiples of 4, aligned) and its element
//     path, zeros in the padding columns, the columns past them kept;
//   - qgemm_int4_dense_lowrank_cuda against qgemm_int4_dense_lowrank_ref on Qwen shapes and awkward ones, rb = ra and
//     rb < ra (the zeroed columns), and with QWENQ_QGEMM_OVERLAP=1 on a weight of 8M values and up (the term joins the
//     last of four pieces). Both sides multiply the same bf16 values exactly in fp32, so only the order of the sums
//     differs: kQgemmGpuSumTol·u·sqrt(L)·Σ|a·w| (tests/gpu/qgemm_cases.h), L = Kp + rb;
//   - qgemm_int4_t_dense_lowrank_cuda (the backward's [dy | g]·[Ŵ ; A]) against its twin the same way, L = N + rb,
//     written and accumulated (then 2u·|dx| more for the last addition on each side), one piece and four.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "kernels/convert.h"
#include "kernels/qgemm.h"
#include "tests/gpu/gpu_test.h"
#include "tests/gpu/qgemm_cases.h"
#include "tests/support/scoped_env.h"

namespace qwenq {
namespace {

using namespace test::qgemm_cases;

TEST(LoraFoldCuda, StridedConversionIsTheTwinBitForBit) {
  QWENQ_REQUIRE_GPU();
  struct Case { int64_t rows, cols, padded, ld; float scale; };
  for (const Case& c : {Case{2048, 3584, 3584, 3600, 1.0f}, Case{33, 16, 16, 3600, 2.0f},
                        Case{17, 13, 16, 21, 0.5f}, Case{3, 7, 7, 7, 1.0f}}) {
    SCOPED_TRACE(std::to_string(c.rows) + "x" + std::to_string(c.cols) + " ld " + std::to_string(c.ld));
    Rng rng(c.cols);
    std::vector<float> x(static_cast<size_t>(c.rows * c.cols));
    for (float& v : x) v = rng.uniform(-4.0f, 4.0f);
    uint32_t payload_nan = 0x7F812345u;
    std::memcpy(&x[0], &payload_nan, 4);  // a signalling NaN with a payload: the twins keep it (quieted)
    x[x.size() / 2] = 3.4e38f;  // rounds to bf16 Inf
    std::vector<uint16_t> want(static_cast<size_t>(c.rows * c.ld), 0xABCD);
    f32_to_bf16_strided_ref(x.data(), c.rows, c.cols, c.padded, c.scale, want.data(), c.ld);
    test::DeviceBuffer<float> gx(x);
    test::DeviceBuffer<uint16_t> gy(std::vector<uint16_t>(want.size(), 0xABCD));
    f32_to_bf16_strided_cuda(gx.get(), c.rows, c.cols, c.padded, c.scale, gy.get(), c.ld);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(gy.download(), want);
  }
}

std::string case_name(Src src, int64_t K, int64_t N, int64_t M, int64_t ra, int64_t rb) {
  return std::string(src_name(src)) + " K=" + std::to_string(K) + " N=" + std::to_string(N) +
         " M=" + std::to_string(M) + " ra=" + std::to_string(ra) + " rb=" + std::to_string(rb);
}

void expect_lowrank_matches(Src src, int64_t K, int64_t N, int64_t M, int64_t ra, int64_t rb, uint64_t seed) {
  SCOPED_TRACE(case_name(src, K, N, M, ra, rb));
  const Q4Layout q = make_layout(src, K, N, seed);
  ASSERT_EQ(q.view().perm, nullptr);
  const Q4DeviceWeight dw(q);
  const int64_t ld = q.Kp + ra;
  std::vector<uint16_t> xa = random_bf16(M * ld, seed + 1);
  std::vector<float> B(static_cast<size_t>(N * rb));
  Rng rng(seed + 2);
  for (float& v : B) v = rng.uniform(-0.5f, 0.5f);
  std::vector<float> want(static_cast<size_t>(M * N));
  qgemm_int4_dense_lowrank_ref(q.view(), xa.data(), Q4LowRank{ra, B.data(), rb}, M, want.data());
  std::vector<uint16_t> wb(static_cast<size_t>(N * q.Kp));
  q4_dequantize_bf16_ref(q.view(), wb.data());
  test::DeviceBuffer<uint16_t> gx(xa);
  test::DeviceBuffer<float> gB(B), gy(std::vector<float>(static_cast<size_t>(M * N + 64), 12345.f));
  qgemm_int4_dense_lowrank_cuda(dw.view(), gx.get(), Q4LowRank{ra, gB.get(), rb}, M, gy.get());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> got = gy.download();
  int64_t bad = 0;
  for (int64_t i = 0; i < 64; ++i) ASSERT_EQ(got[static_cast<size_t>(M * N + i)], 12345.f) << "wrote past y";
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double mag = 0;
      for (int64_t kk = 0; kk < q.Kp; ++kk)
        mag += std::fabs(static_cast<double>(bf16_to_f32(xa[m * ld + kk])) * bf16_to_f32(wb[n * q.Kp + kk]));
      for (int64_t j = 0; j < rb; ++j)
        mag += std::fabs(static_cast<double>(bf16_to_f32(xa[m * ld + q.Kp + j])) * bf16_round(B[n * rb + j]));
      const double tol = kQgemmGpuSumTol * kU * std::sqrt(static_cast<double>(q.Kp + rb)) * mag + 1e-30;
      const size_t i = static_cast<size_t>(m * N + n);
      if (!(std::fabs(static_cast<double>(got[i]) - want[i]) <= tol) && bad++ < 3)
        ADD_FAILURE() << "y[" << m << ", " << n << "] = " << got[i] << ", CPU " << want[i] << ", tolerance " << tol;
    }
  EXPECT_EQ(bad, 0);
}

TEST(LoraFoldCuda, LowRankProductIsTheTwin) {
  QWENQ_REQUIRE_GPU();
  const test::ScopedEnv one_piece("QWENQ_QGEMM_OVERLAP", nullptr);
  expect_lowrank_matches(Src::GptqV1, 3584, 512, 65, 16, 16, 1);   // 7B k_proj, r = 16
  expect_lowrank_matches(Src::Awq, 896, 4864, 130, 16, 13, 2);     // 0.5B gate_proj, r = 13 (3 zero columns)
  expect_lowrank_matches(Src::Nf4Dq, 1024, 264, 70, 64, 64, 3);    // r = 64
  expect_lowrank_matches(Src::Fp4, 128, 17, 66, 8, 1, 4);          // N = 17, r = 1
}

TEST(LoraFoldCuda, LowRankProductJoinsTheLastOverlapPiece) {
  QWENQ_REQUIRE_GPU();
  const test::ScopedEnv overlap("QWENQ_QGEMM_OVERLAP", "1");
  ASSERT_GT(qgemm_dense_chunks(3584, 3584), 1);
  expect_lowrank_matches(Src::GptqV1, 3584, 3584, 70, 16, 16, 5);  // 7B q_proj: 12.8M values, four pieces
  expect_lowrank_matches(Src::Awq, 3584, 3584, 66, 16, 9, 6);
}

void expect_lowrank_t_matches(Src src, int64_t K, int64_t N, int64_t M, int64_t ra, int64_t rb, uint64_t seed) {
  SCOPED_TRACE(case_name(src, K, N, M, ra, rb));
  const Q4Layout q = make_layout(src, K, N, seed);
  ASSERT_EQ(q.view().perm, nullptr);
  ASSERT_EQ(q.Kp, K);
  const Q4DeviceWeight dw(q);
  const int64_t ld = N + ra;
  const std::vector<uint16_t> dya = random_bf16(M * ld, seed + 1);
  std::vector<float> A(static_cast<size_t>(rb * K)), prior(static_cast<size_t>(M * K));
  Rng rng(seed + 2);
  for (float& v : A) v = rng.uniform(-0.5f, 0.5f);
  for (float& v : prior) v = rng.uniform(-2.0f, 2.0f);
  std::vector<uint16_t> wb(static_cast<size_t>(N * K));
  q4_dequantize_bf16_ref(q.view(), wb.data());
  std::vector<double> mag(static_cast<size_t>(M * K), 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N + rb; ++n) {
      const double a = std::fabs(static_cast<double>(bf16_to_f32(dya[m * ld + n])));
      for (int64_t k = 0; k < K; ++k)
        mag[m * K + k] += a * std::fabs(n < N ? bf16_to_f32(wb[n * K + k]) : bf16_round(A[(n - N) * K + k]));
    }
  test::DeviceBuffer<uint16_t> gd(dya);
  test::DeviceBuffer<float> gA(A);
  for (const bool accumulate : {false, true}) {
    SCOPED_TRACE(accumulate ? "accumulated" : "written");
    std::vector<float> want = prior;
    qgemm_int4_t_dense_lowrank_ref(q.view(), dya.data(), Q4LowRankT{ra, A.data(), rb}, M, want.data(), accumulate);
    std::vector<float> init = prior;
    init.resize(static_cast<size_t>(M * K + 64), 12345.f);
    test::DeviceBuffer<float> gx(init);
    qgemm_int4_t_dense_lowrank_cuda(dw.view(), gd.get(), Q4LowRankT{ra, gA.get(), rb}, M, gx.get(), accumulate);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<float> got = gx.download();
    for (int64_t i = 0; i < 64; ++i) ASSERT_EQ(got[static_cast<size_t>(M * K + i)], 12345.f) << "wrote past dx";
    int64_t bad = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      const double tol = kQgemmGpuSumTol * kU * std::sqrt(static_cast<double>(N + rb)) * mag[i] +
                         (accumulate ? 2 * kU * std::fabs(static_cast<double>(want[i])) : 0.0) + 1e-30;
      if (!(std::fabs(static_cast<double>(got[i]) - want[i]) <= tol) && bad++ < 3)
        ADD_FAILURE() << "dx[" << i / K << ", " << i % K << "] = " << got[i] << ", CPU " << want[i] << ", tolerance "
                      << tol;
    }
    EXPECT_EQ(bad, 0);
  }
}

TEST(LoraFoldCuda, TransposedLowRankProductIsTheTwin) {
  QWENQ_REQUIRE_GPU();
  const test::ScopedEnv one_piece("QWENQ_QGEMM_OVERLAP", nullptr);
  expect_lowrank_t_matches(Src::GptqV1, 3584, 512, 65, 16, 16, 11);  // 7B k_proj's dx, r = 16
  expect_lowrank_t_matches(Src::Awq, 4864, 896, 130, 16, 13, 12);    // 0.5B down_proj's dx, r = 13
  expect_lowrank_t_matches(Src::Nf4Dq, 1024, 264, 70, 64, 64, 13);   // r = 64
  expect_lowrank_t_matches(Src::Fp4, 128, 17, 66, 8, 1, 14);         // N = 17 (odd row stride 25), r = 1
}

TEST(LoraFoldCuda, TransposedLowRankProductJoinsTheLastOverlapPiece) {
  QWENQ_REQUIRE_GPU();
  const test::ScopedEnv overlap("QWENQ_QGEMM_OVERLAP", "1");
  ASSERT_GT(qgemm_dense_chunks(3584, 3584), 1);
  expect_lowrank_t_matches(Src::GptqV1, 3584, 3584, 70, 16, 16, 15);  // 7B o_proj's dx: four pieces of 896 rows
  expect_lowrank_t_matches(Src::Awq, 3584, 3000, 66, 16, 9, 16);       // the last piece shorter (3000 = 3 x 768 + 696)
}

}  // namespace
}  // namespace qwenq
