// The best model and early stopping (trainer/best_model.h) against transformers 4.51.3: every expected row below is
// what its EarlyStoppingCallback.on_evaluate followed by Trainer._determine_best_metric gave for the same sequence of
// evaluations (patience counter, best metric, best step, stop), and every rotation what Trainer._rotate_checkpoints
// left of the same checkpoint directories (run with the oracle environment's transformers; the script is
// tests/oracle/test_best_model_oracle.py's `hf_decisions` / `hf_rotation`, which also checks whole training runs).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "core/files.h"
#include "lora/lora_adapter.h"
#include "tests/support/test_paths.h"
#include "trainer/best_model.h"
#include "trainer/train_checkpoint.h"

namespace qwenq {
namespace {

struct Eval {
  int64_t step;
  double value;
  // transformers' state after it:
  int64_t counter;
  double best;
  int64_t best_step;
  bool stop;
  bool new_best;
};

void expect_decisions(BestModelTracker t, const std::vector<Eval>& evals) {
  for (const Eval& e : evals) {
    SCOPED_TRACE("step " + std::to_string(e.step));
    const BestModelTracker::Decision d = t.observe(e.step, e.value);
    EXPECT_EQ(t.counter(), e.counter);
    EXPECT_EQ(t.best(), e.best);
    EXPECT_EQ(t.best_step(), e.best_step);
    EXPECT_EQ(d.stop, e.stop);
    EXPECT_EQ(d.new_best, e.new_best);
    EXPECT_EQ(t.last_step(), e.step);
  }
}

TEST(BestModel, LossWithPatienceIsTransformersDecision) {
  expect_decisions(BestModelTracker("eval_loss", false, 2, 0.0),
                   {{1, 3.0, 0, 3.0, 1, false, true},
                    {2, 2.5, 0, 2.5, 2, false, true},
                    {3, 2.6, 1, 2.5, 2, false, false},
                    {4, 2.4, 0, 2.4, 4, false, true},
                    {5, 2.45, 1, 2.4, 4, false, false},
                    {6, 2.41, 2, 2.4, 4, true, false}});
}

// The threshold holds back the patience counter, not the best: a smaller improvement is still the new best.
TEST(BestModel, ThresholdCountsSmallImprovementsAsNone) {
  expect_decisions(BestModelTracker("eval_loss", false, 2, 0.02),
                   {{1, 3.0, 0, 3.0, 1, false, true},
                    {2, 2.95, 0, 2.95, 2, false, true},
                    {3, 2.94, 1, 2.94, 3, false, true},
                    {4, 2.9, 0, 2.9, 4, false, true},
                    {5, 2.5, 0, 2.5, 5, false, true},
                    {6, 2.45, 0, 2.45, 6, false, true}});
}

TEST(BestModel, GreaterIsBetterAndTiesAreNoImprovement) {
  expect_decisions(BestModelTracker("eval_rewards_accuracy", true, 3, 0.0),
                   {{2, 0.5, 0, 0.5, 2, false, true},
                    {4, 0.6, 0, 0.6, 4, false, true},
                    {6, 0.6, 1, 0.6, 4, false, false},
                    {8, 0.55, 2, 0.6, 4, false, false},
                    {10, 0.7, 0, 0.7, 10, false, true}});
  expect_decisions(BestModelTracker("eval_loss", false, 2, 0.0),
                   {{1, 1.0, 0, 1.0, 1, false, true}, {2, 1.0, 1, 1.0, 1, false, false}, {3, 0.5, 0, 0.5, 3, false, true}});
}

TEST(BestModel, NamesAndDefaultDirectionAreTrainingArguments) {
  EXPECT_EQ(eval_metric_key("loss"), "eval_loss");
  EXPECT_EQ(eval_metric_key("eval_loss"), "eval_loss");
  EXPECT_EQ(eval_metric_key("rewards_accuracy"), "eval_rewards_accuracy");
  EXPECT_FALSE(default_greater_is_better("loss"));
  EXPECT_FALSE(default_greater_is_better("eval_loss"));
  EXPECT_TRUE(default_greater_is_better("rewards_accuracy"));
  EXPECT_TRUE(default_greater_is_better("reward"));
  EXPECT_TRUE(default_greater_is_better("kl"));  // the Trainer's rule, name only
}

// A resumed run decides as the uninterrupted one: the state round-trips, and another metric is refused by name.
TEST(BestModel, StateRoundTripsAndRefusesAnotherMetric) {
  BestModelTracker a("eval_loss", false, 3, 0.0);
  a.observe(1, 2.0);
  a.observe(2, 1.5);
  a.observe(3, 1.7);
  BestModelTracker b("eval_loss", false, 3, 0.0);
  b.restore(nlohmann::json::parse(a.state().dump()), "ck/trainer_state.json");
  EXPECT_EQ(b.best(), 1.5);
  EXPECT_EQ(b.best_step(), 2);
  EXPECT_EQ(b.counter(), 1);
  EXPECT_EQ(b.last_step(), 3);
  for (BestModelTracker* t : {&a, &b}) {
    const BestModelTracker::Decision d = t->observe(4, 1.6);
    EXPECT_FALSE(d.new_best);
    EXPECT_FALSE(d.stop);
    EXPECT_TRUE(t->observe(5, 1.55).stop);
  }
  BestModelTracker fresh("eval_loss", false, 1, 0.0);
  fresh.restore(fresh.state(), "x");  // no best yet: null best_metric
  EXPECT_FALSE(fresh.has_best());
  BestModelTracker other("eval_rewards_accuracy", true, 3, 0.0);
  test::expect_error([&] { other.restore(a.state(), "ck/trainer_state.json"); },
                     {"ck/trainer_state.json", "eval_loss", "--metric-for-best-model"});
  test::expect_error([&] { b.restore(nlohmann::json::object(), "ck/trainer_state.json"); },
                     {"ck/trainer_state.json", "malformed"});
  test::expect_error([&] { b.observe(6, std::nan("")); }, {"eval_loss", "step 6"});
}

TEST(BestModel, RotationKeepsWhatTransformersKeeps) {
  struct Case {
    std::vector<int64_t> steps;
    int64_t keep, best;
    std::vector<int64_t> kept;
  };
  const std::vector<Case> cases = {
      {{1, 2, 3, 4, 5}, 2, -1, {4, 5}}, {{1, 2, 3, 4, 5}, 2, 1, {1, 5}}, {{1, 2, 3, 4, 5}, 2, 4, {4, 5}},
      {{1, 2, 3, 4, 5}, 2, 5, {4, 5}},  {{1, 2, 3, 4, 5}, 1, 2, {2, 5}}, {{1, 2, 3, 4, 5}, 1, 5, {5}},
      {{1, 2, 3, 4, 5}, 3, 2, {2, 4, 5}}, {{1, 2, 3, 4, 5}, 0, 2, {1, 2, 3, 4, 5}}, {{1, 2}, 3, 1, {1, 2}},
      {{2, 4, 6, 8}, 1, -1, {8}},        {{2, 4, 6, 8}, 3, 7, {4, 6, 8}}};
  for (const Case& c : cases) {
    std::vector<int64_t> got = checkpoints_to_keep(c.steps, c.keep, c.best);
    std::sort(got.begin(), got.end());
    EXPECT_EQ(got, c.kept) << "keep " << c.keep << " best " << c.best;
  }
}

// save_train_checkpoint removes what the rotation drops and keeps the best on disk, with its state: with keep 2 and
// the best at step 2, saves at steps 1..5 leave the best and the newest.
TEST(BestModel, CheckpointsOnDiskKeepTheBest) {
  const std::string out = test::scratch_dir();
  LoraConfig cfg;
  cfg.r = 2;
  cfg.alpha = 4;
  cfg.target_modules = parse_lora_targets("q_proj");
  LoraAdapter a(LoraDims{16, 32, 16, 8, 1}, cfg);
  a.init_peft(1);
  const LoraAdapter m = a, v = a;
  TrainState st;
  st.options = {{"r", 2}};
  for (int64_t step = 1; step <= 5; ++step) {
    st.step = step;
    st.best_model = {{"best_step", 2}};
    save_train_checkpoint(out, a, m, v, st, /*keep=*/2, /*best_step=*/step >= 2 ? 2 : -1);
  }
  for (int64_t step = 1; step <= 5; ++step)
    EXPECT_EQ(dir_exists(checkpoint_dir(out, step)), step == 2 || step == 5) << "checkpoint-" << step;
  EXPECT_EQ(latest_checkpoint(out), checkpoint_dir(out, 5));
  LoraAdapter a2 = a, m2 = a, v2 = a;
  TrainState back;
  load_train_checkpoint(checkpoint_dir(out, 2), a.dims(), &a2, &m2, &v2, &back);
  EXPECT_EQ(back.step, 2);
  EXPECT_EQ(back.best_model["best_step"].get<int64_t>(), 2);
}

}  // namespace
}  // namespace qwenq
