#include "tests/support/score_head_fd.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/rng.h"

namespace qwenq::test {

std::vector<float> expect_score_head_gradients(const QwenModel& m, const LoraAdapter& a, const PackedBatch& b,
                                               const LoraStepOptions& opt,
                                               const std::function<double(const std::vector<double>&)>& loss_of_scores,
                                               uint64_t seed) {
  const std::vector<int32_t> targets = next_token_targets(b);
  LoraAdapter g = a;
  for (size_t i = 0; i < g.slots().size(); ++i)
    for (auto* v : {&g.weights(i).A, &g.weights(i).B}) std::fill(v->begin(), v->end(), 0.f);
  std::fill(g.score().begin(), g.score().end(), 0.f);
  const LoraStepResult res = lora_loss_and_grad(m, a, b, targets, &g, opt);
  // The scores alone (no gradients, no objective) are the same numbers.
  LoraStepOptions eval = opt;
  eval.score_objective = nullptr;
  EXPECT_EQ(lora_loss_and_grad(m, a, b, targets, nullptr, eval).scores, res.scores);
  const auto values = [](LoraAdapter& x, auto&& f) {
    for (size_t i = 0; i < x.slots().size(); ++i) {
      for (auto& v : x.weights(i).A) f(v);
      for (auto& v : x.weights(i).B) f(v);
    }
    for (auto& v : x.score()) f(v);
  };
  std::vector<float> grad;
  values(g, [&](float& v) { grad.push_back(v); });
  const auto loss_at = [&](const std::vector<float>& d, double h) {
    LoraAdapter p = a;
    size_t i = 0;
    values(p, [&](float& v) { v += static_cast<float>(h * d[i++]); });
    return loss_of_scores(lora_loss_and_grad(m, p, b, targets, nullptr, eval).scores);
  };
  Rng rng(seed);
  for (int trial = 0; trial < 3; ++trial) {
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
    const double fd = (4 * central(kScoreHeadFdStep / 2) - central(kScoreHeadFdStep)) / 3;
    EXPECT_NEAR(fd, analytic, kScoreHeadFdRelTol * std::fabs(analytic) + kScoreHeadFdAbsTol)
        << "direction " << trial << " (0: the gradient)";
  }
  return g.score();
}

}  // namespace qwenq::test
