#include "lora/low_rank.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/rng.h"

namespace qwenq {
namespace {

using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatD = Eigen::MatrixXd;
using MapF = Eigen::Map<const MatF>;

// The r largest eigenpairs of the symmetric positive semi-definite G (lower triangle read), descending; rounding's
// negative eigenvalues clipped to 0.
void top_eigen(const MatD& G, int64_t r, Eigen::VectorXd* vals, MatD* vecs, const char* what) {
  Eigen::SelfAdjointEigenSolver<MatD> es(G);
  QWENQ_CHECK(es.info() == Eigen::Success, what << ": the eigen-decomposition of a " << G.rows() << " x " << G.cols()
                                               << " Gram matrix did not converge");
  const int64_t n = G.rows();
  vals->resize(r);
  vecs->resize(n, r);
  for (int64_t i = 0; i < r; ++i) {
    (*vals)(i) = std::max(0.0, es.eigenvalues()(n - 1 - i));  // Eigen sorts ascending
    vecs->col(i) = es.eigenvectors().col(n - 1 - i);
  }
}

// The lower triangle of X Xᵀ.
MatD gram_lower(const MatD& X) {
  MatD G = MatD::Zero(X.rows(), X.rows());
  G.selfadjointView<Eigen::Lower>().rankUpdate(X);
  return G;
}

MatD orth(const MatD& Y) {
  Eigen::HouseholderQR<MatD> qr(Y);
  return qr.householderQ() * MatD::Identity(Y.rows(), Y.cols());
}

// σ_i = √λ_i; components at or below this share of σ1 are treated as zero (rank-deficient E).
constexpr double kZeroSigma = 1e-12;

struct Split {
  Eigen::VectorXd sqrt_sigma, inv_sqrt_sigma;
};
Split split_of(const Eigen::VectorXd& lambda, LowRankFactors* f) {
  const int64_t r = lambda.size();
  Split s{Eigen::VectorXd::Zero(r), Eigen::VectorXd::Zero(r)};
  f->sigma.assign(r, 0.0);
  const double top = std::sqrt(lambda(0));
  for (int64_t i = 0; i < r; ++i) {
    const double sig = std::sqrt(lambda(i));
    if (!(sig > top * kZeroSigma) || sig == 0) continue;
    f->sigma[i] = sig;
    s.sqrt_sigma(i) = std::sqrt(sig);
    s.inv_sqrt_sigma(i) = 1.0 / std::sqrt(sig);
  }
  return s;
}

void store(const MatD& L, const MatD& R, LowRankFactors* f) {
  f->L.resize(f->N * f->r);
  f->R.resize(f->r * f->K);
  for (int64_t n = 0; n < f->N; ++n)
    for (int64_t j = 0; j < f->r; ++j) f->L[n * f->r + j] = static_cast<float>(L(n, j));
  for (int64_t j = 0; j < f->r; ++j)
    for (int64_t k = 0; k < f->K; ++k) f->R[j * f->K + k] = static_cast<float>(R(j, k));
}

void exact(const MapF& E, LowRankFactors* f, const char* what) {
  const MatD Ed = E.cast<double>();
  Eigen::VectorXd lambda;
  MatD vecs;
  if (f->N <= f->K) {  // E Eᵀ = U Σ² Uᵀ; Vᵀ = Σ⁻¹ Uᵀ E, so R = Σ^½ Vᵀ = Σ^-½ Uᵀ E
    top_eigen(gram_lower(Ed), f->r, &lambda, &vecs, what);
    const Split s = split_of(lambda, f);
    const MatD L = vecs * s.sqrt_sigma.asDiagonal();
    const MatD R = s.inv_sqrt_sigma.asDiagonal() * (vecs.transpose() * Ed);
    store(L, R, f);
  } else {  // Eᵀ E = V Σ² Vᵀ;  L = E V Σ^-½
    top_eigen(gram_lower(Ed.transpose()), f->r, &lambda, &vecs, what);
    const Split s = split_of(lambda, f);
    const MatD L = (Ed * vecs) * s.inv_sqrt_sigma.asDiagonal();
    const MatD R = s.sqrt_sigma.asDiagonal() * vecs.transpose();
    store(L, R, f);
  }
}

void randomized(const MapF& E, const LowRankOptions& opt, LowRankFactors* f, const char* what) {
  const int64_t k = std::min(f->r + std::max<int64_t>(opt.oversample, 0), std::min(f->N, f->K));
  MatF omega(f->K, k);
  Rng rng(opt.seed);
  for (int64_t i = 0; i < f->K; ++i)
    for (int64_t j = 0; j < k; ++j) omega(i, j) = static_cast<float>(rng.normal());
  MatF Y = E * omega;  // [N, k]
  MatD Q = orth(Y.cast<double>());
  for (int it = 0; it < opt.power_iters; ++it) {
    const MatF Z = E.transpose() * Q.cast<float>();  // [K, k]
    const MatF Yn = E * orth(Z.cast<double>()).cast<float>();
    Q = orth(Yn.cast<double>());
  }
  const MatD B = (Q.cast<float>().transpose() * E).cast<double>();  // [k, K]
  Eigen::VectorXd lambda;
  MatD W;  // [k, r]
  top_eigen(gram_lower(B), f->r, &lambda, &W, what);
  const Split s = split_of(lambda, f);
  const MatD L = (Q * W) * s.sqrt_sigma.asDiagonal();
  const MatD R = s.inv_sqrt_sigma.asDiagonal() * (W.transpose() * B);
  store(L, R, f);
}

}  // namespace

LowRankFactors low_rank_approx(const float* E, int64_t N, int64_t K, int64_t r, const LowRankOptions& opt,
                               const char* what) {
  QWENQ_CHECK(N >= 1 && K >= 1, what << ": empty matrix " << N << " x " << K);
  QWENQ_CHECK(r >= 1 && r <= std::min(N, K),
              what << ": rank " << r << " must be in 1.." << std::min(N, K) << " for a " << N << " x " << K << " matrix");
  for (int64_t i = 0; i < N * K; ++i)
    QWENQ_CHECK(std::isfinite(E[i]), what << ": value " << i << " (row " << i / K << ") is " << E[i]);
  LowRankFactors f;
  f.N = N;
  f.K = K;
  f.r = r;
  const MapF M(E, N, K);
  f.exact = std::min(N, K) <= opt.exact_max_dim;
  if (f.exact) {
    exact(M, &f, what);
  } else {
    randomized(M, opt, &f, what);
  }
  return f;
}

double low_rank_error(const float* E, const LowRankFactors& f) {
  double sum = 0;
  std::vector<double> row(f.K);
  for (int64_t n = 0; n < f.N; ++n) {
    for (int64_t k = 0; k < f.K; ++k) row[k] = E[n * f.K + k];
    for (int64_t j = 0; j < f.r; ++j) {
      const double l = f.L[n * f.r + j];
      const float* R = f.R.data() + j * f.K;
      for (int64_t k = 0; k < f.K; ++k) row[k] -= l * R[k];
    }
    for (int64_t k = 0; k < f.K; ++k) sum += row[k] * row[k];
  }
  return std::sqrt(sum);
}

void subtract_scaled_product(const float* W, const float* B, const float* A, double s, int64_t N, int64_t K, int64_t r,
                             float* X) {
  const float sf = static_cast<float>(s);
  for (int64_t n = 0; n < N; ++n) {
    float* x = X + n * K;
    const float* w = W + n * K;
    if (x != w) std::copy(w, w + K, x);
    for (int64_t j = 0; j < r; ++j) {
      const float b = sf * B[n * r + j];
      const float* a = A + j * K;
      for (int64_t k = 0; k < K; ++k) x[k] -= b * a[k];
    }
  }
}

}  // namespace qwenq
