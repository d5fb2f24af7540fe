// Dense symmetric positive-definite kernels the quantizers share, in fp32, parallel over fixed tiles.
//
//   rank_update_lower:   C ← β·C + α·A·Aᵀ on the lower triangle of C (the SYRK of the Hessian accumulation and
//                        of the Cholesky trailing update). Half the flops of a full GEMM.
//   cholesky_lower:      A = L·Lᵀ, right-looking blocked: factor the diagonal block (unblocked, left-looking),
//                        A21 ← A21·L11⁻ᵀ, A22 ← A22 − A21·A21ᵀ. A pivot ≤ 0 (or NaN) stops it and reports
//                        the failing row and pivot; nothing is thrown, so a caller can damp and retry.
//   invert_lower:        L⁻¹ column tile by column tile: L[c0:, c0:]·X = [I; 0] (columns left of c0 are 0).
//
// All three read and write only the lower triangle (diagonal included): the strict upper triangle is left as
// it was, so a caller can keep the original symmetric matrix there and restore the lower half after a failed
// factorization. Work is cut into tiles whose content does not depend on the thread count, and each tile is
// computed by one thread, so results are the same for any number of threads.
#pragma once

#include <cstdint>
#include <functional>

#include "core/eigen_core.h"

namespace qwenq {

// Copies one triangle of the square A onto the other (from_lower: lower -> upper), in cache-sized tiles.
void mirror_triangle(Eigen::Ref<Eigen::MatrixXf> A, bool from_lower);

// Calls fn(t) for t in [0, tiles), tile t on thread t mod T (cyclic: balances tiles of decreasing cost). `work`
// (about the multiply-adds of all tiles) below ~4M runs everything on the caller: a parallel region costs more.
void parallel_tiles(int64_t tiles, double work, const std::function<void(int64_t)>& fn);

// C [m, m] ← β·C + α·A·Aᵀ, lower triangle only. A [m, k].
void rank_update_lower(Eigen::Ref<Eigen::MatrixXf> C, const Eigen::Ref<const Eigen::MatrixXf>& A, float alpha,
                       float beta);

struct CholeskyStatus {
  bool ok = true;
  int64_t row = -1;    // first row whose pivot was not positive
  double pivot = 0.0;  // its value (possibly NaN)
};

// In place: the lower triangle of A becomes L.
CholeskyStatus cholesky_lower(Eigen::Ref<Eigen::MatrixXf> A);

// L⁻¹ (lower triangular, zero strict upper) of the lower triangle of L.
Eigen::MatrixXf invert_lower(const Eigen::Ref<const Eigen::MatrixXf>& L);

}  // namespace qwenq
