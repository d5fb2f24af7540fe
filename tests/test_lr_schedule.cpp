// Learning-rate schedules (trainer/lr_schedule.h). The expected rates are transformers 4.51.3's: get_scheduler(name,
// AdamW(lr=1e-3), num_warmup_steps, num_training_steps=24, scheduler_specific_kwargs) stepped as its Trainer steps it
// (tests/oracle/test_lr_schedule_oracle.py runs the same and more through `qwen-qlora train`).
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "tests/support/test_paths.h"
#include "trainer/lr_schedule.h"

namespace qwenq {
namespace {

constexpr double kTol = 1e-18;  // of rates about 1e-3 (the formulas are transformers' own, in its order)

void expect_rates(const LrSchedule& s, const std::vector<std::pair<int64_t, double>>& want) {
  for (const auto& [step, rate] : want) EXPECT_NEAR(lr_at(s, step), rate, kTol) << s.name << " step " << step;
}

TEST(LrSchedule, CosineWithRestartsIsTransformers) {
  expect_rates(make_lr_schedule("cosine_with_restarts", {{"num_cycles", 3}}, 1e-3, 0, 2, 24),
               {{0, 0.0}, {1, 0.0005}, {2, 0.001}, {9, 5.089279059533658e-06}, {10, 0.0009797464868072487},
                {17, 0.0009949107209404665}, {23, 4.518400232274078e-05}});
}

TEST(LrSchedule, PolynomialIsTransformers) {
  expect_rates(make_lr_schedule("polynomial", {{"power", 2.0}, {"lr_end", 1e-5}}, 1e-3, 0, 4, 24),
               {{3, 0.00075}, {4, 0.001}, {13, 0.0003094750000000001}, {23, 1.2475000000000005e-05}});
}

TEST(LrSchedule, InverseSqrtIsTransformers) {
  expect_rates(make_lr_schedule("inverse_sqrt", nullptr, 1e-3, 0, 4, 24),
               {{4, 0.001}, {10, 0.0006324555320336759}, {23, 0.0004170288281141495}});
}

TEST(LrSchedule, WarmupStableDecayIsTransformers) {
  const nlohmann::json kw = {{"num_decay_steps", 6}, {"warmup_type", "cosine"}, {"decay_type", "1-sqrt"},
                             {"min_lr_ratio", 0.1}};
  expect_rates(make_lr_schedule("warmup_stable_decay", kw, 1e-3, 0, 5, 24),
               {{0, 0.0001}, {2, 0.0004109423525312737}, {5, 0.001}, {17, 0.001}, {18, 0.001},
                {20, 0.0004803847577293369}, {23, 0.00017841616374225078}});
}

TEST(LrSchedule, RefusesWhatTransformersWouldNotTake) {
  const auto refused = [](const std::string& name, const nlohmann::json& kw, double min_ratio, int64_t warmup,
                          int64_t total, const std::vector<std::string>& parts) {
    test::expect_error([&] { make_lr_schedule(name, kw, 1e-3, min_ratio, warmup, total); }, parts);
  };
  refused("cosine", {{"power", 2}}, 0, 0, 10, {"--scheduler-kwargs", "takes num_cycles", "\"power\""});
  refused("linear", {{"num_cycles", 2}}, 0, 0, 10, {"takes no keyword arguments"});
  refused("cosine_with_restarts", {{"num_cycles", 1.5}}, 0, 0, 10, {"num_cycles", "an integer"});
  refused("polynomial", {{"lr_end", 1e-2}}, 0, 0, 10, {"lr_end", "smaller than --lr"});
  refused("cosine_with_min_lr", nullptr, 0, 0, 10, {"exactly one of --min-lr-ratio"});
  refused("cosine_with_min_lr", {{"min_lr", 1e-5}}, 0.1, 0, 10, {"exactly one", "2 given"});
  refused("warmup_stable_decay", nullptr, 0, 0, 10, {"num_decay_steps"});
  refused("warmup_stable_decay", {{"num_decay_steps", 8}}, 0, 4, 10, {"exceed the run's 10 steps"});
  refused("warmup_stable_decay", {{"num_decay_steps", 2}, {"decay_type", "exp"}}, 0, 0, 10, {"linear, cosine or 1-sqrt"});
  refused("constant", nullptr, 0.1, 0, 10, {"--min-lr-ratio applies to"});
  refused("cosine", nlohmann::json::array({1}), 0, 0, 10, {"JSON object"});
  refused("step", nullptr, 0, 0, 10, {"--scheduler must be"});
  // Before the step count is known (total 0) the run-length check waits.
  EXPECT_NO_THROW(make_lr_schedule("warmup_stable_decay", {{"num_decay_steps", 8}}, 1e-3, 0, 4, 0));
}

}  // namespace
}  // namespace qwenq
