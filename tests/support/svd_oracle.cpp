#include "tests/support/svd_oracle.h"

#include <cmath>

#include "core/rng.h"

namespace qwenq::test {

std::vector<float> spectrum_matrix(int64_t N, int64_t K, int64_t rank_signal, double decay, double noise,
                                   uint64_t seed) {
  Rng rng(seed);
  Eigen::MatrixXd U(N, rank_signal), V(K, rank_signal);
  for (int64_t i = 0; i < U.size(); ++i) U.data()[i] = rng.normal();
  for (int64_t i = 0; i < V.size(); ++i) V.data()[i] = rng.normal();
  Eigen::MatrixXd E = Eigen::MatrixXd::Zero(N, K);
  for (int64_t j = 0; j < rank_signal; ++j)
    E += std::pow(decay, j) * U.col(j) * V.col(j).transpose() / std::sqrt(double(K));
  std::vector<float> out(N * K);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) out[n * K + k] = static_cast<float>(E(n, k) + noise * rng.normal());
  return out;
}

SvdOracle svd_oracle(const std::vector<float>& E, int64_t N, int64_t K, int64_t r) {
  Eigen::MatrixXd M(N, K);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) M(n, k) = E[n * K + k];
  Eigen::BDCSVD<Eigen::MatrixXd> svd(M, Eigen::ComputeThinU | Eigen::ComputeThinV);
  SvdOracle o;
  o.sigma = svd.singularValues();
  o.Er = svd.matrixU().leftCols(r) * o.sigma.head(r).asDiagonal() * svd.matrixV().leftCols(r).transpose();
  for (int64_t i = 0; i < o.sigma.size(); ++i) (i < r ? o.head : o.tail) += o.sigma(i) * o.sigma(i);
  o.tail = std::sqrt(o.tail);
  return o;
}

}  // namespace qwenq::test
