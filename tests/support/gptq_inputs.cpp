#include "tests/support/gptq_inputs.h"

#include <cmath>

#include "core/rng.h"
#include "quant/hessian.h"

namespace qwenq::test {

std::vector<float> correlated_inputs(int64_t rows, int64_t K, uint64_t seed) {
  Rng rng(seed);
  Eigen::MatrixXd L(K, K);
  for (int64_t i = 0; i < K * K; ++i) L.data()[i] = rng.normal() / std::sqrt(static_cast<double>(K));
  Eigen::VectorXd scale(K);
  for (int64_t k = 0; k < K; ++k) scale[k] = std::exp(0.75 * rng.normal());
  Eigen::MatrixXd Z(rows, K);
  for (int64_t i = 0; i < rows * K; ++i) Z.data()[i] = rng.normal();
  const Eigen::MatrixXd X = (Z * L) * scale.asDiagonal();
  std::vector<float> x(rows * K);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < K; ++k) x[r * K + k] = static_cast<float>(X(r, k));
  return x;
}

std::vector<float> correlated_inputs_lowrank(int64_t rows, int64_t K, uint64_t seed) {
  constexpr int64_t r = 64;
  Rng rng(seed);
  using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  RowMat Lr(r, K), Zr(rows, r), X(rows, K);
  for (int64_t i = 0; i < r * K; ++i) Lr.data()[i] = static_cast<float>(rng.normal() * 0.5);
  std::vector<float> scale(K);
  for (auto& s : scale) s = static_cast<float>(std::exp(0.75 * rng.normal()));
  for (int64_t i = 0; i < rows * r; ++i) Zr.data()[i] = static_cast<float>(rng.normal());
  for (int64_t i = 0; i < rows * K; ++i) X.data()[i] = static_cast<float>(rng.normal());
  X.noalias() += Zr * Lr;
  std::vector<float> x(rows * K);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t k = 0; k < K; ++k) x[i * K + k] = X(i, k) * scale[k];
  return x;
}

std::vector<float> random_weights(int64_t N, int64_t K, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> w(N * K);
  for (auto& v : w) v = static_cast<float>(0.05 * rng.normal());
  return w;
}

Eigen::MatrixXf hessian_of(const std::vector<float>& x, int64_t K, DType input_dtype) {
  const int64_t rows = static_cast<int64_t>(x.size()) / K;
  HessianAccumulator acc(K, input_dtype);
  const int64_t half = rows / 3;
  acc.add_batch(x.data(), half);
  acc.add_batch(x.data() + half * K, rows - half);
  return acc.release();
}

}  // namespace qwenq::test
