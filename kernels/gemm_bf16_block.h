// Products of small blocks on bf16 operands, computed in the calling thread (for callers that divide the work
// themselves: the CPU attention's blocks under --cpu-matmul bf16, kernels/attention.h):
//
//   C[m, n] (+)= Σ_r bf16(A[m, r]) · bf16(B[r, n])      m < M, n < N, r < R; fp32 sums
//
// A [M, R] (row-major, row stride lda) is rounded and packed once (Bf16Block::pack_a) and may then meet several B
// blocks. B is fp32, given either as its transpose (Bf16BLayout::Transposed: B[r, n] = b[n·ldb + r], as in S = Q·Kᵀ
// with b = K) or as it is (Bf16BLayout::Rows: B[r, n] = b[r·ldb + n], as in O = P·V with b = V).
//
// With AVX512_BF16 (bf16_gemm_uses_avx512(), read when A is packed): kernels/gemm_bf16_tile.h's micro-kernel, the
// reduction in slices of kBf16SliceR values from its start, each output's pairs in increasing order within a slice
// (the order depends on the shapes alone, as linear_forward_bf16's); the instruction flushes denormals. Elsewhere: the
// rounded operands through Eigen's fp32 product, denormals kept. Either path multiplies exactly (a product of two
// bf16 values is exact in fp32) and sums in fp32, so the two agree to fp32 summation error
// (tests/test_gemm_bf16_block.cpp bounds both against double sums of the rounded operands).
#pragma once

#include <cstdint>
#include <vector>

namespace qwenq {

enum class Bf16BLayout { Transposed, Rows };

class Bf16Block {
 public:
  // Rounds and packs A [M, R] (row stride lda >= R; M, R > 0).
  void pack_a(const float* A, int64_t lda, int64_t M, int64_t R);
  // The same for A = Xᵀ, X [R, M] (row stride ldx >= M): A[m, r] = X[r, m], packed without a transposed copy (the
  // attention's Pᵀ·dO and dSᵀ·Q); the words pack_a writes for the explicit transpose.
  void pack_a_transposed(const float* X, int64_t ldx, int64_t M, int64_t R);

  // C[M, N] (row stride ldc >= N) = A·B, or += with `accumulate`; B as `layout` says (row stride ldb), read panel by
  // panel while C is written, so C must not overlap b (A's source may be overwritten: A is packed).
  void multiply(const float* b, int64_t ldb, Bf16BLayout layout, int64_t N, float* C, int64_t ldc, bool accumulate);

  int64_t rows() const { return M_; }
  int64_t depth() const { return R_; }

 private:
  // A [M, R] from src: A[m, r] = src[m·ld + r], or src[r·ld + m] when transposed.
  void pack(const float* src, int64_t ld, int64_t M, int64_t R, bool transposed);

  bool avx_ = false;
  int64_t M_ = 0, R_ = 0;
  std::vector<uint32_t> a_words_, b_panel_;  // AVX512_BF16: packed A, one B panel
  std::vector<float> a_rounded_, b_rounded_;  // elsewhere: A [M, R] and B [R, N] rounded to bf16 values
};

}  // namespace qwenq
