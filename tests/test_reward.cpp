// Reward modelling (trainer/reward.h): the Bradley-Terry loss's derivatives against central differences, the pooled
// rows, a SEQ_CLS adapter through PEFT's files (its score head, the refusals), and the score head's step through
// lora_loss_and_grad against central differences of the loss on a tiny model (every LoRA tensor and the head).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "lora/lora_config.h"
#include "lora/peft_io.h"
#include "tests/support/score_head_fd.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/lora_model.h"
#include "trainer/reward.h"

namespace qwenq {
namespace {

// Central differences of the double loss at step 1e-5: truncation ~1e-10 (the loss's third derivatives are O(1)),
// rounding ~1e-16 / 1e-5.
constexpr double kMathFdStep = 1e-5;
constexpr double kMathFdTol = 1e-8;

TEST(RewardMath, DerivativesAreTheLossDerivative) {
  Rng rng(11);
  std::vector<double> r(8), margins = {0.5, -1.0, 0.0, 2.0};
  for (double& v : r) v = 3.0 * rng.normal();
  r[4] = r[5] = 0.7;  // a tie: not counted correct
  for (double center : {0.0, 0.05}) {
    for (bool with_margins : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "center " << center << ", margins " << with_margins);
      RewardOptions o;
      o.center_coefficient = center;
      const std::vector<double> mu = with_margins ? margins : std::vector<double>();
      const int64_t step_pairs = 6;  // the step holds more pairs than this micro-batch
      RewardStats stats;
      const std::vector<double> d = reward_objective(o, mu, step_pairs, &stats)(r);
      EXPECT_EQ(stats.pairs, 4);
      int correct = 0;
      for (size_t k = 0; k < 4; ++k) correct += r[2 * k] > r[2 * k + 1];
      EXPECT_EQ(stats.correct, correct);
      const auto loss = [&](const std::vector<double>& x) { return reward_batch_stats(o, x, mu).loss / step_pairs; };
      for (size_t j = 0; j < r.size(); ++j) {
        std::vector<double> p = r, m = r;
        p[j] += kMathFdStep;
        m[j] -= kMathFdStep;
        EXPECT_NEAR(d[j], (loss(p) - loss(m)) / (2 * kMathFdStep), kMathFdTol) << "score " << j;
      }
    }
  }
  // The loss itself: softplus(r_r − r_c + μ) + η(r_c + r_r)², exact for large margins (no overflow).
  RewardOptions o;
  EXPECT_NEAR(reward_batch_stats(o, {0.0, 0.0}, {}).loss, std::log(2.0), 1e-15);
  EXPECT_NEAR(reward_batch_stats(o, {-400.0, 400.0}, {}).loss, 800.0, 1e-9);
  EXPECT_NEAR(reward_batch_stats(o, {400.0, -400.0}, {}).loss, 0.0, 1e-300);
  o.center_coefficient = 0.5;
  EXPECT_NEAR(reward_batch_stats(o, {1.0, 2.0}, {0.5}).loss, std::log1p(std::exp(1.5)) + 4.5, 1e-12);
}

TEST(RewardMath, PooledRowsSkipTrailingPads) {
  const PackedBatch b = PackedBatch::from_sequences({{5, 6, 7}, {5, 0, 0}, {0, 0}, {9}});
  EXPECT_EQ(reward_pooled_rows(b, 0), (std::vector<int64_t>{2, 3, 6, 8}));  // all pads: the first token
  EXPECT_EQ(reward_pooled_rows(b, -1), (std::vector<int64_t>{2, 5, 7, 8}));  // no pad id: the last token
}

TEST(RewardAdapter, SeqClsAdapterRoundTripsThroughPeftFiles) {
  const std::string scratch = test::scratch_dir();  // (each call makes a fresh one)
  const std::string dir = test::make_tiny_model(scratch + "/m", 31);
  QwenModel m(dir);
  const int64_t C = m.config().hidden_size;
  LoraConfig cfg;
  cfg.num_labels = 1;
  LoraAdapter a(lora_dims_of(m.config()), cfg);
  a.init_peft(5);
  a.init_score_head(5, 0.02);
  ASSERT_EQ(static_cast<int64_t>(a.score().size()), C);
  EXPECT_EQ(a.num_parameters(), LoraAdapter(lora_dims_of(m.config()), LoraConfig()).num_parameters() + C);
  double ss = 0;
  for (float v : a.score()) ss += static_cast<double>(v) * v;
  EXPECT_NEAR(std::sqrt(ss / static_cast<double>(C)), 0.02, 0.006);  // C values of normal(0, 0.02)
  LoraAdapter again(lora_dims_of(m.config()), cfg);
  again.init_score_head(5, 0.02);
  EXPECT_EQ(again.score(), a.score());  // seeded
  const std::string out = scratch + "/seqcls";
  save_peft_adapter(out, a);
  const nlohmann::json j = nlohmann::json::parse(read_file(out + "/adapter_config.json"));
  EXPECT_EQ(j["task_type"], "SEQ_CLS");
  EXPECT_EQ(j["modules_to_save"], nlohmann::json({"classifier", "score"}));
  const LoraAdapter back = load_peft_adapter(out, lora_dims_of(m.config()));
  ASSERT_TRUE(back.config().seq_cls());
  EXPECT_EQ(back.score(), a.score());
  EXPECT_EQ(back.weights(0).A, a.weights(0).A);
  // A causal LM's adapter file with a score tensor, a SEQ_CLS one without it, other modules saved: refused by name.
  LoraAdapter causal(lora_dims_of(m.config()), LoraConfig());
  save_peft_adapter(scratch + "/causal", causal);
  {
    SafetensorsFile f(out + "/adapter_model.safetensors");
    SafetensorsWriter w;
    const auto copy = [&](SafetensorsWriter& to, const std::string& name) {
      const TensorView& t = f.get(name);
      to.add(name, t.dtype, t.shape, t.data);
    };
    for (const std::string& name : f.names()) copy(w, name);
    write_peft_adapter_dir(scratch + "/extra", LoraConfig(), w, true);
    SafetensorsWriter lora_only;
    for (const std::string& name : f.names())
      if (name != kPeftScoreName) copy(lora_only, name);
    write_peft_adapter_dir(scratch + "/nohead", cfg, lora_only, true);
  }
  EXPECT_NE(test::error_of([&] { load_peft_adapter(scratch + "/extra", lora_dims_of(m.config())); })
                .find("unexpected tensor base_model.model.score.weight"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { load_peft_adapter(scratch + "/nohead", lora_dims_of(m.config())); })
                .find("base_model.model.score.weight is missing (adapter_config.json has task_type SEQ_CLS"),
            std::string::npos);
  nlohmann::json bad = j;
  bad["modules_to_save"] = {"score", "lm_head"};
  EXPECT_NE(test::error_of([&] { parse_lora_config_json(bad.dump(), "/x/adapter_config.json"); })
                .find("/x/adapter_config.json: modules_to_save entry \"lm_head\" is not supported"),
            std::string::npos);
  bad["modules_to_save"] = nullptr;  // PEFT's SEQ_CLS default
  EXPECT_EQ(parse_lora_config_json(bad.dump(), "f").num_labels, 1);
}

TEST(RewardModelStep, GradientsMatchFiniteDifferences) {
  const std::string dir = test::make_tiny_model(test::scratch_dir() + "/m", 32);
  QwenModel m(dir);
  const LoraAdapter a = test::seq_cls_adapter(m, 1, 7);
  const PackedBatch b = PackedBatch::from_sequences({{1, 5, 9, 200, 3}, {1, 5, 9, 17, 0, 0}, {42, 17, 99}, {42, 7}});
  RewardOptions o;
  o.center_coefficient = 0.05;
  const std::vector<double> margins = {0.3, -0.2};
  LoraStepOptions opt;
  opt.bf16_checkpoints = false;  // the exact fp32 model
  opt.score_rows = reward_pooled_rows(b, 0);
  EXPECT_EQ(opt.score_rows[1], 8);  // sequence 1 is pooled before its two pads
  RewardStats stats;
  opt.score_objective = reward_objective(o, margins, 2, &stats);
  const std::vector<float> head_grad = test::expect_score_head_gradients(
      m, a, b, opt, [&](const std::vector<double>& scores) { return reward_batch_stats(o, scores, margins).loss / 2; },
      13);
  double head_norm = 0;
  for (float v : head_grad) head_norm += static_cast<double>(v) * v;
  EXPECT_GT(head_norm, 0.0);
  EXPECT_EQ(stats.pairs, 2);
}

}  // namespace
}  // namespace qwenq
