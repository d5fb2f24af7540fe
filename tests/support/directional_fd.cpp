#include "tests/support/directional_fd.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"

namespace qwenq::test {

void expect_directional_derivatives(const std::vector<float>& grad,
                                    const std::function<double(const std::vector<float>& d, double h)>& loss_at,
                                    const DirectionalFdOptions& o) {
  Rng rng(o.seed);
  for (int trial = 0; trial < o.trials; ++trial) {
    std::vector<float> d(grad.size());
    double norm = 0;
    for (size_t i = 0; i < d.size(); ++i) {
      d[i] = trial == 0 ? grad[i] : static_cast<float>(rng.normal());
      norm += static_cast<double>(d[i]) * d[i];
    }
    for (auto& v : d) v = static_cast<float>(v / std::sqrt(norm));
    double analytic = 0;
    for (size_t i = 0; i < d.size(); ++i) analytic += static_cast<double>(grad[i]) * d[i];
    const auto central = [&](double h) { return (loss_at(d, h) - loss_at(d, -h)) / (2 * h); };
    const double h = o.step(trial);
    const double fd = (4 * central(h / 2) - central(h)) / 3;
    EXPECT_NEAR(fd, analytic, o.rel_tol * std::fabs(analytic) + o.abs_tol) << "direction " << trial
                                                                            << " (0: the gradient itself)";
  }
}

}  // namespace qwenq::test
