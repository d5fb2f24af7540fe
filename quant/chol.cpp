// Tile sizes: 128 columns for the rank updates (GEMM-sized panels), 256 rows for the panel solve of the
// Cholesky, 64 columns for the inverse (its tiles shrink quadratically, so more of them balance better).
#include "quant/chol.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>

#include "core/threads.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace qwenq {

namespace {

constexpr int64_t kUpdateTile = 128;
constexpr int64_t kCholBlock = 128;
constexpr int64_t kSolveRows = 256;
constexpr int64_t kInverseTile = 64;
constexpr double kMinParallelWork = 4e6;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Keeps Eigen's own GEMM threading off while tiles run on the calling thread: Eigen parallelizes a product when
// omp_get_max_threads() > 1 outside a parallel region, and for the small products here the fork/join costs more
// than it saves (and a different blocking would change the rounding). omp_set_num_threads changes only the
// calling thread's setting, restored on exit.
class SerialEigenScope {
 public:
  SerialEigenScope() {
#ifdef _OPENMP
    saved_ = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
  }
  ~SerialEigenScope() {
#ifdef _OPENMP
    omp_set_num_threads(saved_);
#endif
  }
  SerialEigenScope(const SerialEigenScope&) = delete;
  SerialEigenScope& operator=(const SerialEigenScope&) = delete;

 private:
  int saved_ = 1;
};

// Left-looking unblocked Cholesky of a small diagonal block: column j takes the updates of columns < j, then
// is scaled by its pivot's square root.
CholeskyStatus cholesky_unblocked(Eigen::Ref<Eigen::MatrixXf> D) {
  const int64_t n = D.rows();
  for (int64_t j = 0; j < n; ++j) {
    if (j > 0) D.col(j).tail(n - j).noalias() -= D.block(j, 0, n - j, j) * D.row(j).head(j).transpose();
    const float pivot = D(j, j);
    if (!(pivot > 0.f)) return {false, j, pivot};
    const float l = std::sqrt(pivot);
    D(j, j) = l;
    D.col(j).tail(n - j - 1) /= l;
  }
  return {};
}

}  // namespace

void mirror_triangle(Eigen::Ref<Eigen::MatrixXf> A, bool from_lower) {
  const int64_t n = A.rows(), T = 64;
  for (int64_t j0 = 0; j0 < n; j0 += T)
    for (int64_t i0 = 0; i0 <= j0; i0 += T)
      for (int64_t j = j0; j < std::min(n, j0 + T); ++j)
        for (int64_t i = i0; i < std::min(j, i0 + T); ++i) {
          if (from_lower) A(i, j) = A(j, i);
          else A(j, i) = A(i, j);
        }
}

void parallel_tiles(int64_t tiles, double work, const std::function<void(int64_t)>& fn) {
  const int64_t T = work < kMinParallelWork ? 1 : std::min<int64_t>(num_threads(), tiles);
  if (T <= 1) {
    SerialEigenScope serial;
    for (int64_t t = 0; t < tiles; ++t) fn(t);
    return;
  }
  parallel_for(T, 1, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s)
      for (int64_t t = s; t < tiles; t += T) fn(t);
  });
}

void rank_update_lower(Eigen::Ref<Eigen::MatrixXf> C, const Eigen::Ref<const Eigen::MatrixXf>& A, float alpha,
                       float beta) {
  const int64_t m = C.rows();
  parallel_tiles(ceil_div(m, kUpdateTile), 0.5 * m * m * A.cols(), [&](int64_t t) {
    const int64_t c0 = t * kUpdateTile, w = std::min(kUpdateTile, m - c0), below = m - c0 - w;
    auto diag = C.block(c0, c0, w, w);
    if (beta != 1.f) diag.triangularView<Eigen::Lower>() *= beta;
    if (A.cols() > 0) diag.selfadjointView<Eigen::Lower>().rankUpdate(A.middleRows(c0, w), alpha);
    if (below == 0) return;
    auto panel = C.block(c0 + w, c0, below, w);
    if (beta != 1.f) panel *= beta;
    if (A.cols() > 0) panel.noalias() += alpha * A.middleRows(c0 + w, below) * A.middleRows(c0, w).transpose();
  });
}

CholeskyStatus cholesky_lower(Eigen::Ref<Eigen::MatrixXf> A) {
  const int64_t n = A.rows();
  for (int64_t j0 = 0; j0 < n; j0 += kCholBlock) {
    const int64_t jb = std::min(kCholBlock, n - j0), m = n - j0 - jb;
    CholeskyStatus st = cholesky_unblocked(A.block(j0, j0, jb, jb));
    if (!st.ok) {
      st.row += j0;
      return st;
    }
    if (m == 0) break;
    auto L11 = A.block(j0, j0, jb, jb);
    auto A21 = A.block(j0 + jb, j0, m, jb);
    parallel_tiles(ceil_div(m, kSolveRows), 0.5 * m * jb * jb, [&](int64_t t) {
      const int64_t r0 = t * kSolveRows;
      auto rows = A21.middleRows(r0, std::min(kSolveRows, m - r0));
      L11.transpose().triangularView<Eigen::Upper>().solveInPlace<Eigen::OnTheRight>(rows);  // rows·L11⁻ᵀ
    });
    rank_update_lower(A.block(j0 + jb, j0 + jb, m, m), A21, -1.f, 1.f);
  }
  return {};
}

Eigen::MatrixXf invert_lower(const Eigen::Ref<const Eigen::MatrixXf>& L) {
  const int64_t n = L.rows();
  Eigen::MatrixXf X = Eigen::MatrixXf::Zero(n, n);
  parallel_tiles(ceil_div(n, kInverseTile), n * n * (n / 6.0), [&](int64_t t) {
    const int64_t c0 = t * kInverseTile, w = std::min(kInverseTile, n - c0);
    auto cols = X.block(c0, c0, n - c0, w);
    cols.topRows(w).setIdentity();
    L.block(c0, c0, n - c0, n - c0).triangularView<Eigen::Lower>().solveInPlace(cols);
  });
  return X;
}

}  // namespace qwenq
