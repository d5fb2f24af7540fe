// The standard error of an accuracy: the mean p of n 0/1 scores, its sample standard deviation over √n,
// √(p(1 − p)/(n − 1)) (lm-eval's mean_stderr of such scores; 0 for one score). Shared by the evaluations that report
// a fraction: multiple-choice acc, gsm8k exact match, KL divergence's top-1 agreement.
#pragma once

#include <cmath>
#include <cstdint>

namespace qwenq {

inline double binomial_stderr(double p, int64_t n) {
  return n > 1 ? std::sqrt(p * (1 - p) / static_cast<double>(n - 1)) : 0.0;
}

}  // namespace qwenq
