// Small bf16 block products in the calling thread (kernels/gemm_bf16_block.h).
#include "kernels/gemm_bf16_block.h"

#include <Eigen/Core>
#include <algorithm>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/gemm_bf16.h"
#include "kernels/gemm_bf16_tile.h"

namespace qwenq {

namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Map = Eigen::Map<RowMat, 0, Eigen::OuterStride<>>;

#ifdef QWENQ_HAVE_BF16_KERNEL
using namespace bf16_tile;

QWENQ_BF16_FN void pack_a_avx(const float* A, int64_t lda, int64_t M, int64_t R, std::vector<uint32_t>* out) {
  const int64_t pairs = (R + 1) / 2, panels = (M + kMr - 1) / kMr;
  out->resize(static_cast<size_t>(panels * pairs * kMr));
  pack_a_panels(A, lda, M, R, 0, panels, out->data());
}

QWENQ_BF16_FN void pack_a_t_avx(const float* X, int64_t ldx, int64_t M, int64_t R, std::vector<uint32_t>* out) {
  const int64_t pairs = (R + 1) / 2, panels = (M + kMr - 1) / kMr;
  out->resize(static_cast<size_t>(panels * pairs * kMr));
  for (int64_t i = 0; i < panels; ++i)
    pack_a_panel_t(X + i * kMr, ldx, R, std::min(kMr, M - i * kMr), pairs, out->data() + i * pairs * kMr);
}

QWENQ_BF16_FN void multiply_avx(const std::vector<uint32_t>& a, int64_t M, int64_t R, const float* b, int64_t ldb,
                                Bf16BLayout layout, int64_t N, float* C, int64_t ldc, bool accumulate,
                                std::vector<uint32_t>* panel) {
  const int64_t pairs = (R + 1) / 2;
  panel->resize(static_cast<size_t>(kSlicePairs * kNr));
  for (int64_t j0 = 0; j0 < N; j0 += kNr) {
    const int64_t cols = std::min(kNr, N - j0);
    for (int64_t s0 = 0; s0 < pairs; s0 += kSlicePairs) {
      const int64_t np = std::min(kSlicePairs, pairs - s0);
      if (layout == Bf16BLayout::Transposed) {
        pack_b_rows(b, DType::F32, R, ldb, j0, cols, s0, np, panel->data());
      } else {
        pack_b_cols(b, DType::F32, R, ldb, j0, cols, s0, np, panel->data());
      }
      multiply_b_panel(a.data(), M, pairs, s0, panel->data(), np, C + j0, ldc, cols, !accumulate && s0 == 0);
    }
  }
}
#endif

}  // namespace

void Bf16Block::pack_a(const float* A, int64_t lda, int64_t M, int64_t R) {
  QWENQ_CHECK(A != nullptr && M > 0 && R > 0 && lda >= R,
              "Bf16Block::pack_a: bad operand M=" << M << " R=" << R << " lda=" << lda);
  pack(A, lda, M, R, false);
}

void Bf16Block::pack_a_transposed(const float* X, int64_t ldx, int64_t M, int64_t R) {
  QWENQ_CHECK(X != nullptr && M > 0 && R > 0 && ldx >= M,
              "Bf16Block::pack_a_transposed: bad operand M=" << M << " R=" << R << " ldx=" << ldx);
  pack(X, ldx, M, R, true);
}

void Bf16Block::pack(const float* src, int64_t ld, int64_t M, int64_t R, bool transposed) {
  M_ = M;
  R_ = R;
#ifdef QWENQ_HAVE_BF16_KERNEL
  avx_ = bf16_gemm_uses_avx512();
  if (avx_) {
    (transposed ? pack_a_t_avx : pack_a_avx)(src, ld, M, R, &a_words_);
    return;
  }
#endif
  a_rounded_.resize(static_cast<size_t>(M * R));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t r = 0; r < R; ++r) a_rounded_[m * R + r] = bf16_round(transposed ? src[r * ld + m] : src[m * ld + r]);
}

void Bf16Block::multiply(const float* b, int64_t ldb, Bf16BLayout layout, int64_t N, float* C, int64_t ldc,
                         bool accumulate) {
  const bool transposed = layout == Bf16BLayout::Transposed;
  QWENQ_CHECK(M_ > 0, "Bf16Block::multiply: no A packed");
  QWENQ_CHECK(b != nullptr && C != nullptr && N > 0 && ldc >= N && ldb >= (transposed ? R_ : N),
              "Bf16Block::multiply: bad operand N=" << N << " ldb=" << ldb << " ldc=" << ldc << " (M=" << M_
                                                    << " R=" << R_ << ")");
#ifdef QWENQ_HAVE_BF16_KERNEL
  if (avx_) {
    multiply_avx(a_words_, M_, R_, b, ldb, layout, N, C, ldc, accumulate, &b_panel_);
    return;
  }
#endif
  b_rounded_.resize(static_cast<size_t>(R_ * N));
  for (int64_t r = 0; r < R_; ++r)
    for (int64_t n = 0; n < N; ++n) b_rounded_[r * N + n] = bf16_round(transposed ? b[n * ldb + r] : b[r * ldb + n]);
  const Eigen::Map<const RowMat> A(a_rounded_.data(), M_, R_), B(b_rounded_.data(), R_, N);
  Map c(C, M_, N, Eigen::OuterStride<>(ldc));
  if (accumulate) {
    c.noalias() += A * B;
  } else {
    c.noalias() = A * B;
  }
}

}  // namespace qwenq
