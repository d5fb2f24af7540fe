// Bf16Block (kernels/gemm_bf16_block.h), the CPU attention's bf16 block products, on both paths (the portable one
// always, AVX512_BF16 where the CPU has it):
//   - against double sums of the bf16-rounded operands, both B layouts, written and accumulated, row strides wider
//     than the rows, and shapes around the 12 x 32 tile and the 256-value slice (R = 1, 7, 64, 255, 256, 257, 600);
//     the bound is fp32 summation's worst case, kSumUlps · R · 2^-24 · Σ|a·b| per output;
//   - the padding columns of C past N (inside ldc) are never written;
//   - one packed A meets several B blocks, each as if packed for it alone;
//   - A packed from its transpose (pack_a_transposed: the attention's Pᵀ and dSᵀ) gives the products of A packed from
//     an explicit transpose, bit for bit;
//   - on AVX512_BF16 the products are linear_forward_bf16's (Transposed) and linear_backward_input_bf16's (Rows)
//     bits: the same micro-kernel, slices and order;
//   - argument errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "kernels/gemm_bf16.h"
#include "kernels/gemm_bf16_block.h"
#include "tests/support/bf16_paths.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_random.h"

namespace qwenq {
namespace {

constexpr double kSumUlps = 1.0;  // |fp32 sum − exact| <= R · 2^-24 · Σ|terms| (worst case of any order)
constexpr float kGuard = -12345.f;

// A [M, lda] (or, with a_t, X = Aᵀ [R, M + 3] through pack_a_transposed), B stored as `layout` with row stride ldb;
// C [M, ldc] = (C0 when accumulating) + A·B, each output checked against the double sum of the rounded operands.
void check_case(bool portable, int64_t M, int64_t R, int64_t N, Bf16BLayout layout, bool accumulate,
                bool a_t = false) {
  SCOPED_TRACE(testing::Message() << (portable ? "portable" : "avx512_bf16") << " M=" << M << " R=" << R << " N=" << N
                                  << (layout == Bf16BLayout::Rows ? " rows" : " transposed")
                                  << (accumulate ? " accumulate" : "") << (a_t ? " A packed from Aᵀ" : ""));
  const test::PortableScope scope(portable);
  const int64_t lda = a_t ? M + 3 : R + 3, ldc = N + 5;
  const bool tr = layout == Bf16BLayout::Transposed;
  const int64_t ldb = (tr ? R : N) + 2;
  const std::vector<float> A = test::normal_vector((a_t ? R : M) * lda, 100 + M * 7 + R),
                           B = test::normal_vector((tr ? N : R) * ldb, 200 + N * 3 + R);
  auto a_at = [&](int64_t m, int64_t r) { return a_t ? A[r * lda + m] : A[m * lda + r]; };
  std::vector<float> C = test::normal_vector(M * ldc, 300 + M + N);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = N; n < ldc; ++n) C[m * ldc + n] = kGuard;
  const std::vector<float> C0 = C;
  Bf16Block blk;
  if (a_t) {
    blk.pack_a_transposed(A.data(), lda, M, R);
  } else {
    blk.pack_a(A.data(), lda, M, R);
  }
  blk.multiply(B.data(), ldb, layout, N, C.data(), ldc, accumulate);
  int64_t bad = 0;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double sum = 0, mag = 0;
      for (int64_t r = 0; r < R; ++r) {
        const double t = static_cast<double>(bf16_round(a_at(m, r))) *
                         bf16_round(tr ? B[n * ldb + r] : B[r * ldb + n]);
        sum += t;
        mag += std::fabs(t);
      }
      const double want = (accumulate ? C0[m * ldc + n] : 0.0) + sum;
      const double tol = kSumUlps * static_cast<double>(R + 1) * std::ldexp(mag + std::fabs(want), -24) + 1e-30;
      if (std::fabs(C[m * ldc + n] - want) > tol && ++bad <= 3)
        ADD_FAILURE() << "C[" << m << ", " << n << "] = " << C[m * ldc + n] << ", want " << want << " within " << tol;
    }
    for (int64_t n = N; n < ldc; ++n)
      if (C[m * ldc + n] != kGuard && ++bad <= 3) ADD_FAILURE() << "padding C[" << m << ", " << n << "] written";
  }
  EXPECT_EQ(bad, 0);
}

TEST(GemmBf16Block, MatchesDoubleSumsOfTheRoundedOperands) {
  for (bool portable : test::bf16_gemm_paths())
    for (int64_t M : {1, 5, 12, 13, 40})
      for (int64_t R : {1, 7, 64, 255, 256, 257, 600})
        for (int64_t N : {1, 31, 32, 33, 70})
          for (Bf16BLayout layout : {Bf16BLayout::Transposed, Bf16BLayout::Rows})
            check_case(portable, M, R, N, layout, /*accumulate=*/(M + R + N) % 2 == 0, /*a_t=*/(M + N) % 3 == 0);
}

TEST(GemmBf16Block, WritesAndAccumulatesAtQwenAttentionShapes) {
  // S = Q·Kᵀ of the 0.5B and 7B/72B heads (7 and 8 query heads x 32 rows, D 64 and 128, 128 keys) and O += P·V.
  for (bool portable : test::bf16_gemm_paths()) {
    check_case(portable, 224, 64, 128, Bf16BLayout::Transposed, false);
    check_case(portable, 256, 128, 128, Bf16BLayout::Transposed, false);
    check_case(portable, 224, 128, 64, Bf16BLayout::Rows, true);
    check_case(portable, 256, 128, 128, Bf16BLayout::Rows, true);
    // dV += Pᵀ·dO and dK += dSᵀ·Q of the backward: 64 keys, 7 heads x 32 rows, D 64 and 128.
    check_case(portable, 64, 224, 64, Bf16BLayout::Rows, true, /*a_t=*/true);
    check_case(portable, 64, 256, 128, Bf16BLayout::Rows, true, /*a_t=*/true);
  }
}

TEST(GemmBf16Block, PackingFromTheTransposeIsPackingTheTranspose) {
  for (bool portable : test::bf16_gemm_paths()) {
    const test::PortableScope scope(portable);
    for (int64_t M : {1, 11, 12, 13, 64})
      for (int64_t R : {1, 2, 7, 224, 300}) {
        const int64_t ldx = M + 5, N = 37;
        const std::vector<float> X = test::normal_vector(R * ldx, 31 + M + R);
        const std::vector<float> B = test::normal_vector(R * N, 32 + R);
        std::vector<float> At(static_cast<size_t>(M * R));
        for (int64_t m = 0; m < M; ++m)
          for (int64_t r = 0; r < R; ++r) At[m * R + r] = X[r * ldx + m];
        Bf16Block from_x, from_copy;
        from_x.pack_a_transposed(X.data(), ldx, M, R);
        from_copy.pack_a(At.data(), R, M, R);
        std::vector<float> c1(M * N), c2(M * N);
        from_x.multiply(B.data(), N, Bf16BLayout::Rows, N, c1.data(), N, false);
        from_copy.multiply(B.data(), N, Bf16BLayout::Rows, N, c2.data(), N, false);
        EXPECT_EQ(0, std::memcmp(c1.data(), c2.data(), c1.size() * sizeof(float)))
            << (portable ? "portable" : "avx512_bf16") << " M=" << M << " R=" << R;
      }
  }
}

TEST(GemmBf16Block, OnePackedAMeetsSeveralBBlocks) {
  for (bool portable : test::bf16_gemm_paths()) {
    const test::PortableScope scope(portable);
    const int64_t M = 30, R = 96, N = 40;
    const std::vector<float> A = test::normal_vector(M * R, 11), B1 = test::normal_vector(N * R, 12),
                             B2 = test::normal_vector(N * R, 13);
    Bf16Block shared, alone;
    shared.pack_a(A.data(), R, M, R);
    std::vector<float> c1(M * N), c2(M * N), want(M * N);
    shared.multiply(B1.data(), R, Bf16BLayout::Transposed, N, c1.data(), N, false);
    shared.multiply(B2.data(), R, Bf16BLayout::Transposed, N, c2.data(), N, false);
    alone.pack_a(A.data(), R, M, R);
    alone.multiply(B2.data(), R, Bf16BLayout::Transposed, N, want.data(), N, false);
    EXPECT_EQ(c2, want) << (portable ? "portable" : "avx512_bf16");
    EXPECT_NE(c1, c2);
  }
}

TEST(GemmBf16Block, HasTheLinearProductsBitsOnAvx512Bf16) {
  if (!cpu_has_avx512_bf16()) GTEST_SKIP() << "this CPU has no AVX512_BF16: the block products take the portable path";
  const test::PortableScope scope(false);
  for (int64_t K : {64, 300, 600}) {
    const int64_t M = 37, N = 45;
    const std::vector<float> x = test::normal_vector(M * K, 21 + K), w = test::normal_vector(N * K, 22 + K),
                             dy = test::normal_vector(M * N, 23 + K);
    std::vector<float> y(M * N), y_blk(M * N), dx(M * K), dx_blk(M * K);
    linear_forward_bf16(x.data(), M, K, w.data(), DType::F32, N, nullptr, DType::F32, y.data());
    linear_backward_input_bf16(dy.data(), M, N, w.data(), DType::F32, K, dx.data());
    Bf16Block a;
    a.pack_a(x.data(), K, M, K);
    a.multiply(w.data(), K, Bf16BLayout::Transposed, N, y_blk.data(), N, false);
    a.pack_a(dy.data(), N, M, N);
    a.multiply(w.data(), K, Bf16BLayout::Rows, K, dx_blk.data(), K, false);
    EXPECT_EQ(0, std::memcmp(y.data(), y_blk.data(), y.size() * sizeof(float))) << "forward, K=" << K;
    EXPECT_EQ(0, std::memcmp(dx.data(), dx_blk.data(), dx.size() * sizeof(float))) << "input gradient, K=" << K;
  }
}

TEST(GemmBf16Block, RefusesBadOperands) {
  const std::vector<float> a(64, 1.f);
  std::vector<float> c(64);
  Bf16Block blk;
  test::expect_error([&] { blk.multiply(a.data(), 8, Bf16BLayout::Rows, 8, c.data(), 8, false); },
                     "Bf16Block::multiply: no A packed");
  test::expect_error([&] { blk.pack_a(a.data(), 4, 2, 8); }, {"Bf16Block::pack_a: bad operand", "R=8 lda=4"});
  test::expect_error([&] { blk.pack_a_transposed(a.data(), 4, 8, 2); },
                     {"Bf16Block::pack_a_transposed: bad operand", "M=8", "ldx=4"});
  blk.pack_a(a.data(), 8, 2, 8);
  test::expect_error([&] { blk.multiply(a.data(), 4, Bf16BLayout::Transposed, 2, c.data(), 8, false); },
                     {"Bf16Block::multiply: bad operand", "ldb=4", "R=8"});
  test::expect_error([&] { blk.multiply(a.data(), 8, Bf16BLayout::Rows, 8, c.data(), 4, false); },
                     {"Bf16Block::multiply: bad operand", "ldc=4"});
}

}  // namespace
}  // namespace qwenq
