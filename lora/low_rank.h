// The best rank-r approximation of a matrix, for LoftQ's adapter initialisation (lora/loftq.h).
//
// E [N, K] = U Σ Vᵀ (singular values σ1 >= σ2 >= ...). Eckart-Young: E_r = U_r Σ_r V_rᵀ minimises ‖E − X‖_F over
// rank-r X, with ‖E − E_r‖_F² = Σ_{i>r} σ_i². Returned split as PEFT's _low_rank_decomposition splits it:
//   L = U_r Σ_r^½ [N, r],   R = Σ_r^½ V_rᵀ [r, K],   L R = E_r.
//
// Two ways to get U_r, Σ_r, V_r:
//   exact (min(N, K) <= exact_max_dim): the eigen-decomposition of the Gram matrix of the short side in double
//     (E Eᵀ when N <= K; then R = Σ^-½ U_rᵀ E), the same subspace as a full SVD: in double the squared condition
//     number costs nothing for the top r vectors. Cost ~ min² · max + min³.
//   randomized (larger matrices): Halko, Martinsson & Tropp's range finder with subspace iteration. Ω [K, k]
//     Gaussian (seeded), k = min(r + oversample, min(N, K)); Q = orth(E Ω); power_iters times Q = orth(E orth(Eᵀ Q));
//     then the exact decomposition of the small B = Qᵀ E [k, K] (its k x k Gram in double), U = Q Ũ. Cost ~
//     (2·power_iters + 2) · N·K·k. When the spectrum has no gap at r the vectors differ from the exact ones but the
//     error ‖E − L R‖_F stays within a hair of the optimum (tests/test_loftq.cpp measures the ratio).
// Components with σ = 0 (a rank-deficient E) come back as zero rows/columns. Deterministic for a given seed.
#pragma once

#include <cstdint>
#include <vector>

namespace qwenq {

struct LowRankOptions {
  int64_t exact_max_dim = 1024;  // exact when min(N, K) is at most this
  int power_iters = 4;           // randomized: subspace iterations
  int64_t oversample = 16;       // randomized: extra columns of the sketch
  uint64_t seed = 0;             // randomized: Ω
};

struct LowRankFactors {
  int64_t N = 0, K = 0, r = 0;
  std::vector<float> L;      // [N, r] row-major: U_r Σ_r^½
  std::vector<float> R;      // [r, K] row-major: Σ_r^½ V_rᵀ
  std::vector<double> sigma;  // [r] descending
  bool exact = true;         // which of the two ways was taken
};

// Throws when r < 1, r > min(N, K), or E holds a non-finite value ("<what>: ...").
LowRankFactors low_rank_approx(const float* E, int64_t N, int64_t K, int64_t r, const LowRankOptions& opt = {},
                               const char* what = "low_rank_approx");

// ‖E − L R‖_F in double (tests and reports).
double low_rank_error(const float* E, const LowRankFactors& f);

// X = W − s·B A for W, X [N, K], B [N, r], A [r, K] (X may be W): per row, x = w, then x −= (s·B[n, j])·A[j] for
// j = 0..r−1 in fp32, in that order (LoftQ's next X, PiSSA's residual; the bits the tests hold them to).
void subtract_scaled_product(const float* W, const float* B, const float* A, double s, int64_t N, int64_t K, int64_t r,
                             float* X);

}  // namespace qwenq
