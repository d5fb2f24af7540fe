// What the sequence-classifier tests share (tests/test_reward.cpp, tests/test_classify.cpp): an adapter with a score
// head (SEQ_CLS), and its gradient check: the gradients from lora_loss_and_grad with `opt`'s score rows and objective
// against central differences of loss(scores) along the gradient and two random unit directions over every A, B and
// the head (directional_fd.h, fp32 losses of about 1).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "lora/lora_adapter.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_model.h"

namespace qwenq::test {

constexpr double kScoreHeadFdStep = 2e-3;
constexpr double kScoreHeadFdRelTol = 5e-3;
constexpr double kScoreHeadFdAbsTol = 1e-4;

// Returns the gradient's score-head part (grads->score()) after the checks, so that callers can look at it.
std::vector<float> expect_score_head_gradients(const QwenModel& m, const LoraAdapter& a, const PackedBatch& b,
                                               const LoraStepOptions& opt,
                                               const std::function<double(const std::vector<double>&)>& loss_of_scores,
                                               uint64_t seed);

// A SEQ_CLS adapter of `labels` labels on all seven Linears (r 4, alpha 16): PEFT's initialisation from `seed`, the
// head normal(0, 0.5) from `seed`, then every B 0.3·N(0, 1) from Rng(seed + 1), so that the adapter changes the model.
LoraAdapter seq_cls_adapter(const QwenModel& m, int64_t labels, uint64_t seed);

}  // namespace qwenq::test
