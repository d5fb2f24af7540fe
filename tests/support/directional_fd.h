// The gradient check of the model-step tests (tests/test_lora_model.cpp, test_dora_model.cpp, and through
// score_head_fd.h the sequence classifiers'): the analytic directional derivative g·d against central differences of
// the loss along d, extrapolated (Richardson over h and h/2: (4·c(h/2) − c(h)) / 3 cancels the h² term), for d the
// normalised gradient (trial 0) and `trials` − 1 random unit directions, each drawn from N(0, 1) entries of Rng(seed)
// in turn.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace qwenq::test {

struct DirectionalFdOptions {
  int trials = 3;
  uint64_t seed = 9;
  std::function<double(int trial)> step;  // h of each trial
  double rel_tol = 5e-3, abs_tol = 1e-4;  // |fd − g·d| <= rel_tol·|g·d| + abs_tol
};

// loss_at(d, h): the loss with every parameter moved by h·d (in the order of `grad`).
void expect_directional_derivatives(const std::vector<float>& grad,
                                    const std::function<double(const std::vector<float>& d, double h)>& loss_at,
                                    const DirectionalFdOptions& o);

}  // namespace qwenq::test
