// GPTQ driver: checks, dead inputs, processing order, the damped inverse factor U, then the rows of W in
// chunks of kRowChunk. Rows are independent in GPTQ (all share U and differ only in their weights), so each
// chunk runs the whole blocked column loop on its own [rows, K] slice; the chunking is fixed, which keeps the
// result independent of the thread count.
//
// Inside a chunk, with columns in processing order and block [p1, p1 + b):
//   column p = p1 + i:  q = round onto the grid;  E[:, i] = (w − ŵ) / U[p,p]
//                       W[:, p+1 : p1+b] −= E[:, i] · U[p, p+1 : p1+b]
//   end of block:       W[:, p1+b :] −= E · U[p1 : p1+b, p1+b :]
// A group opened at p that reaches past the block sees its later columns through the pending update:
//   W[:, c] − E[:, :i] · U[p1 : p, c]  for c ≥ p1 + b.
// The GPTQ grid depends only on the min and max of the group's values, so grid_for_group gets the pair (lo, hi).
#include "quant/gptq.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "core/error.h"
#include "core/threads.h"
#include "quant/chol.h"

namespace qwenq {

void check_gptq_shapes_and_options(int64_t N, int64_t K, const Eigen::MatrixXf& H, const GptqOptions& o) {
  check_gptq_shape_and_options(N, K, o);
  QWENQ_CHECK(H.rows() == K && H.cols() == K,
              "Hessian is " << H.rows() << " x " << H.cols() << " but the weight has K = " << K << " inputs");
}

void check_gptq_shape_and_options(int64_t N, int64_t K, const GptqOptions& o) {
  QWENQ_CHECK(N > 0 && K > 0, "GPTQ needs a non-empty weight, got N = " << N << ", K = " << K);
  QWENQ_CHECK(o.bits >= 2 && o.bits <= 8, "bits must be in 2..8, got " << o.bits);
  QWENQ_CHECK(o.group_size == -1 || o.group_size > 0, "group size must be positive or -1, got " << o.group_size);
  QWENQ_CHECK(o.block_size > 0, "block size must be positive, got " << o.block_size);
  QWENQ_CHECK(std::isfinite(o.damp) && o.damp >= 0, "damp must be finite and >= 0, got " << o.damp);
  QWENQ_CHECK(o.max_damp_retries >= 0, "max_damp_retries must be >= 0, got " << o.max_damp_retries);
}

namespace {

constexpr int64_t kRowChunk = 64;

struct Plan {
  int64_t N = 0, K = 0, G = 0, B = 0;
  int bits = 4;
  bool sym = false;
  bool opens_groups = true;            // false with static_groups: grids are fixed up front
  std::vector<int64_t> order;          // processing position -> original column
  std::vector<int32_t> group_of_pos;   // processing position -> group index
  std::vector<uint8_t> dead;           // original column -> input never active
  Eigen::MatrixXf U;                   // upper factor of the damped H⁻¹, in processing order
};

void check_inputs(const float* W, int64_t N, int64_t K, const Eigen::MatrixXf& H, const GptqOptions& o) {
  check_gptq_shapes_and_options(N, K, H, o);
  for (int64_t i = 0; i < N * K; ++i)
    QWENQ_CHECK(std::isfinite(W[i]), "weight [" << i / K << ", " << i % K << "] is " << W[i]);
}

// Reads the lower triangle, refuses non-finite entries, and makes H symmetric from it.
void symmetrize_checked(Eigen::MatrixXf& H) {
  const int64_t K = H.rows();
  for (int64_t j = 0; j < K; ++j)
    for (int64_t i = j; i < K; ++i)
      QWENQ_CHECK(std::isfinite(H(i, j)), "Hessian entry (" << i << ", " << j << ") is " << H(i, j)
                                              << "; the calibration activations or their accumulation overflowed");
  mirror_triangle(H, /*from_lower=*/true);
}

// A ← A[q, q] in place: rows of each column through a buffer, then columns along the permutation's cycles.
void permute_symmetric(Eigen::MatrixXf& A, const std::vector<int64_t>& q) {
  const int64_t K = A.rows();
  parallel_tiles((K + 63) / 64, 4.0 * K * K, [&](int64_t t) {
    std::vector<float> tmp(K);
    for (int64_t j = t * 64; j < std::min(K, t * 64 + 64); ++j) {
      for (int64_t i = 0; i < K; ++i) tmp[i] = A(q[i], j);
      std::copy(tmp.begin(), tmp.end(), A.col(j).data());
    }
  });
  std::vector<uint8_t> done(K, 0);
  Eigen::VectorXf first(K);
  for (int64_t s = 0; s < K; ++s) {
    if (done[s] || q[s] == s) continue;
    first = A.col(s);
    int64_t i = s;
    while (q[i] != s) {
      A.col(i) = A.col(q[i]);
      done[i] = 1;
      i = q[i];
    }
    A.col(i) = first;
    done[i] = 1;
  }
}

// U from M = J·P·H·Pᵀ·J (q maps rows of M to original columns, for messages). M is consumed.
void inverse_factor(Eigen::MatrixXf& M, const std::vector<int64_t>& q, const GptqOptions& o, GptqResult& r,
                    Eigen::MatrixXf& U) {
  const Eigen::VectorXf diag = M.diagonal();
  const double mean_diag = diag.cast<double>().mean();
  double damp = o.damp;
  std::string last;
  for (int attempt = 0; attempt <= o.max_damp_retries; ++attempt) {
    const double lambda = damp * mean_diag;
    if (attempt > 0) mirror_triangle(M, /*from_lower=*/false);  // the failed factorization wrote only the lower half
    M.diagonal() = diag.array() + static_cast<float>(lambda);
    const CholeskyStatus st = cholesky_lower(M);
    std::ostringstream why;
    if (st.ok) {
      U = invert_lower(M);
      if (U.allFinite()) {
        M = Eigen::MatrixXf();
        U.reverseInPlace();
        r.damp_used = damp;
        r.damp_retries = attempt;
        return;
      }
      why << "the inverse factor overflowed fp32 with damp " << damp << " (lambda " << lambda << ")";
    } else {
      why << "H + lambda*I is not positive definite with damp " << damp << " (lambda " << lambda << "): pivot "
          << st.pivot << " at input column " << q[st.row];
    }
    last = why.str();
    if (attempt < o.max_damp_retries) {
      damp = damp > 0 ? damp * 10 : 0.01;
      r.warnings.push_back(last + "; retrying with damp " + std::to_string(damp));
    }
  }
  QWENQ_FAIL("GPTQ could not factor the Hessian after " << o.max_damp_retries << " damp retries (damp " << o.damp
                                                        << " up to " << damp << "): " << last);
}

// The grids of the group opened at processing position p, for the chunk's rows, from their current values.
void open_group(const Eigen::MatrixXf& Wl, const Eigen::MatrixXf& E, int64_t p1, int64_t b, int64_t i, int64_t n0,
                const Plan& pl, GroupGrid& grid) {
  const int64_t r = Wl.rows(), p = p1 + i, pend = std::min(p + pl.G, pl.K), in_end = std::min(pend, p1 + b);
  Eigen::VectorXf lo = Wl.col(p), hi = Wl.col(p);
  for (int64_t c = p + 1; c < in_end; ++c) {
    lo = lo.cwiseMin(Wl.col(c));
    hi = hi.cwiseMax(Wl.col(c));
  }
  if (pend > in_end) {
    Eigen::MatrixXf ahead = Wl.middleCols(in_end, pend - in_end);
    if (i > 0) ahead.noalias() -= E.leftCols(i) * pl.U.block(p1, in_end, i, pend - in_end);
    for (int64_t c = 0; c < ahead.cols(); ++c) {
      lo = lo.cwiseMin(ahead.col(c));
      hi = hi.cwiseMax(ahead.col(c));
    }
  }
  const int64_t g = p / pl.G;
  for (int64_t ii = 0; ii < r; ++ii) {
    const float range[2] = {lo[ii], hi[ii]};
    grid_for_group(range, 2, 1, pl.bits, pl.sym, GridRule::Gptq, &grid.scale[g * pl.N + n0 + ii],
                   &grid.zero[g * pl.N + n0 + ii]);
  }
}

// GPTQ on rows [n0, n0 + r) of W; writes their codes, grids (when groups open here) and per-row ½-less losses.
void quantize_rows(const float* W, int64_t n0, int64_t r, const Plan& pl, GroupGrid& grid, uint8_t* codes,
                   double* row_loss) {
  const int64_t K = pl.K, N = pl.N;
  const int maxq = (1 << pl.bits) - 1;
  Eigen::MatrixXf Wl(r, K);
  for (int64_t ii = 0; ii < r; ++ii) {
    const float* w = W + (n0 + ii) * K;
    for (int64_t p = 0; p < K; ++p) Wl(ii, p) = pl.dead[pl.order[p]] ? 0.f : w[pl.order[p]];
  }
  Eigen::MatrixXf E(r, pl.B);
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> Ud;
  for (int64_t p1 = 0; p1 < K; p1 += pl.B) {
    const int64_t b = std::min(pl.B, K - p1);
    Ud = pl.U.block(p1, p1, b, b);
    for (int64_t i = 0; i < b; ++i) {
      const int64_t p = p1 + i;
      if (pl.opens_groups && p % pl.G == 0) open_group(Wl, E, p1, b, i, n0, pl, grid);
      const int64_t g = pl.group_of_pos[p];
      const float* scale = &grid.scale[g * N + n0];
      const uint8_t* zero = &grid.zero[g * N + n0];
      const float d = Ud(i, i);
      uint8_t* out = codes + pl.order[p] * N + n0;
      for (int64_t ii = 0; ii < r; ++ii) {
        const float w = Wl(ii, p);
        const uint8_t q = quantize_value(w, scale[ii], zero[ii], maxq);
        const float e = (w - dequantize_value(q, scale[ii], zero[ii])) / d;
        E(ii, i) = e;
        row_loss[ii] += static_cast<double>(e) * e;
        out[ii] = q;
      }
      if (i + 1 < b) Wl.middleCols(p + 1, b - i - 1).noalias() -= E.col(i) * Ud.row(i).segment(i + 1, b - i - 1);
    }
    if (p1 + b < K) Wl.rightCols(K - p1 - b).noalias() -= E.leftCols(b) * pl.U.block(p1, p1 + b, b, K - p1 - b);
  }
}

}  // namespace

GptqResult gptq_quantize(const float* W, int64_t N, int64_t K, Eigen::MatrixXf H, const GptqOptions& o) {
  check_inputs(W, N, K, H, o);
  symmetrize_checked(H);
  GptqResult r;
  Plan pl;
  pl.N = N;
  pl.K = K;
  pl.G = o.group_size == -1 ? K : o.group_size;
  pl.B = o.block_size;
  pl.bits = o.bits;
  pl.sym = o.sym;
  pl.opens_groups = !o.static_groups;

  pl.dead.assign(K, 0);
  for (int64_t k = 0; k < K; ++k) {
    QWENQ_CHECK(H(k, k) >= 0.f, "Hessian diagonal entry " << k << " is " << H(k, k)
                                                         << " < 0: not a sum of squared activations");
    if (H(k, k) == 0.f) pl.dead[k] = 1, H(k, k) = 1.f;
  }

  pl.order.resize(K);
  std::iota(pl.order.begin(), pl.order.end(), int64_t{0});
  if (o.desc_act)
    std::stable_sort(pl.order.begin(), pl.order.end(), [&](int64_t a, int64_t b) { return H(a, a) > H(b, b); });
  std::vector<int64_t> pos(K);
  for (int64_t p = 0; p < K; ++p) pos[pl.order[p]] = p;

  if (o.static_groups) {
    std::vector<float> Wd(W, W + N * K);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k)
        if (pl.dead[k]) Wd[n * K + k] = 0.f;
    r.grid = find_grid(Wd.data(), N, K, o.bits, pl.G, o.sym, GridRule::Gptq);
  } else {
    r.grid.bits = o.bits;
    r.grid.group = pl.G;
    r.grid.K = K;
    r.grid.N = N;
    r.grid.scale.assign(r.grid.num_groups() * N, 0.f);
    r.grid.zero.assign(r.grid.num_groups() * N, 0);
  }
  r.g_idx.resize(K);
  for (int64_t k = 0; k < K; ++k)
    r.g_idx[k] = static_cast<int32_t>((o.desc_act && !o.static_groups ? pos[k] : k) / pl.G);
  pl.group_of_pos.resize(K);
  for (int64_t p = 0; p < K; ++p) pl.group_of_pos[p] = r.g_idx[pl.order[p]];

  std::vector<int64_t> q(K);  // row i of J·P·H·Pᵀ·J is original column order[K-1-i]
  for (int64_t i = 0; i < K; ++i) q[i] = pl.order[K - 1 - i];
  permute_symmetric(H, q);
  inverse_factor(H, q, o, r, pl.U);

  r.codes.assign(K * N, 0);
  std::vector<double> row_loss(N, 0.0);
  const int64_t chunks = (N + kRowChunk - 1) / kRowChunk;
  parallel_tiles(chunks, 0.5 * N * K * K, [&](int64_t c) {
    const int64_t n0 = c * kRowChunk;
    quantize_rows(W, n0, std::min(kRowChunk, N - n0), pl, r.grid, r.codes.data(), row_loss.data() + n0);
  });
  r.loss = 0.5 * std::accumulate(row_loss.begin(), row_loss.end(), 0.0);
  QWENQ_CHECK(std::isfinite(r.loss), "GPTQ loss is " << r.loss << " (damp " << r.damp_used
                                                     << "): the Hessian is too ill-conditioned for fp32");
  for (size_t i = 0; i < r.grid.scale.size(); ++i)
    QWENQ_CHECK(std::isfinite(r.grid.scale[i]) && r.grid.scale[i] > 0,
                "GPTQ produced scale " << r.grid.scale[i] << " for group " << i / N << ", column " << i % N
                                       << " (damp " << r.damp_used << "): the Hessian is too ill-conditioned for fp32");
  r.order = std::move(pl.order);
  return r;
}

}  // namespace qwenq
