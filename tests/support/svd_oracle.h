// The low-rank tests' oracle and inputs (tests/test_loftq.cpp, tests/test_pissa.cpp): Eigen's BDCSVD of a matrix in
// double, and seeded matrices with a chosen spectrum.
#pragma once

#include <Eigen/Dense>
#include <cstdint>
#include <vector>

namespace qwenq::test {

// E = U diag(σ) Vᵀ + noise, with σ_i = decay^i over rank_signal directions (Gaussian U, V, scaled by 1/√K): a few
// strong directions above a flat floor when decay < 1 (a quantization residual's spectrum, or a trained weight's);
// pure noise when rank_signal = 0. Seeded: the same values on every platform.
std::vector<float> spectrum_matrix(int64_t N, int64_t K, int64_t rank_signal, double decay, double noise,
                                   uint64_t seed);

struct SvdOracle {
  Eigen::VectorXd sigma;  // every singular value, descending
  Eigen::MatrixXd Er;     // the rank-r truncation U_r Σ_r V_rᵀ
  double tail = 0;        // √Σ_{i>r} σ²: the Eckart-Young error of the truncation
  double head = 0;        // Σ_{i<=r} σ²
};
SvdOracle svd_oracle(const std::vector<float>& E, int64_t N, int64_t K, int64_t r);

}  // namespace qwenq::test
