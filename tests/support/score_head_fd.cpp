#include "tests/support/score_head_fd.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "core/rng.h"
#include "tests/support/directional_fd.h"

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
  DirectionalFdOptions fd;
  fd.seed = seed;
  fd.step = [](int) { return kScoreHeadFdStep; };
  fd.rel_tol = kScoreHeadFdRelTol;
  fd.abs_tol = kScoreHeadFdAbsTol;
  expect_directional_derivatives(grad, loss_at, fd);
  return g.score();
}

LoraAdapter seq_cls_adapter(const QwenModel& m, int64_t labels, uint64_t seed) {
  LoraConfig cfg;
  cfg.r = 4;
  cfg.alpha = 16;
  cfg.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  cfg.num_labels = labels;
  LoraAdapter a(lora_dims_of(m.config()), cfg);
  a.init_peft(seed);
  a.init_score_head(seed, 0.5);
  Rng rng(seed + 1);
  for (size_t i = 0; i < a.slots().size(); ++i)
    for (auto& v : a.weights(i).B) v = 0.3f * static_cast<float>(rng.normal());
  return a;
}

}  // namespace qwenq::test
