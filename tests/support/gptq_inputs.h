// Seeded inputs for the GPTQ tests on the CPU (tests/test_quant_gptq.cpp) and the GPU (tests/gpu/test_gptq_cuda.cpp):
// correlated activations (an ill-conditioned Hessian, as real activations give), weights, and the Hessian the CPU
// accumulator makes of them.
#pragma once

#include <Eigen/Dense>
#include <cstdint>
#include <vector>

#include "core/dtype.h"

namespace qwenq::test {

// X [rows, K] = (Z·L)·diag(s): Z standard normal, L dense with entries N(0, 1/K), s_k = e^(0.75·N(0, 1)) (spread
// over ~e^±1.5), all from Rng(seed): strongly correlated inputs whose Hessian is ill-conditioned. O(rows·K²).
std::vector<float> correlated_inputs(int64_t rows, int64_t K, uint64_t seed);

// The same idea at a cost linear in K (for K in the thousands, where the dense mix is too slow on a CPU):
// X = (Z + Z_r·L_r)·diag(s) with a rank-64 shared component L_r (entries N(0, 0.25)).
std::vector<float> correlated_inputs_lowrank(int64_t rows, int64_t K, uint64_t seed);

// W [N, K] with entries N(0, 0.05²) from Rng(seed).
std::vector<float> random_weights(int64_t N, int64_t K, uint64_t seed);

// H = (2/rows)·XᵀX of x [rows, K] by HessianAccumulator in two uneven batches (rows/3, then the rest), which
// exercises its running rescale; input_dtype BF16: of x rounded to bf16 (HessianAccumulator's BF16).
Eigen::MatrixXf hessian_of(const std::vector<float>& x, int64_t K, DType input_dtype = DType::F32);

}  // namespace qwenq::test
