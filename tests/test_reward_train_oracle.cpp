// The C++ half of tests/oracle/test_reward_train_oracle.py: reward modelling's Bradley-Terry loss and the gradients of
// a SEQ_CLS adapter (LoRA A, B, DoRA's magnitudes and the score head) through lora_loss_and_grad's score head (trainer/reward.h) against
// PyTorch autograd through transformers' Qwen2ForSequenceClassification + PEFT, on a tiny random Qwen2 whose adapter
// PEFT saved; then the adapter saved by qwenq (head changed) with its scores, for the script to load into PEFT.
// Skipped unless the script points QWENQ_ORACLE_REWARD_DIR at its fixtures.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "core/safetensors.h"
#include "lora/peft_io.h"
#include "tests/support/peft_grads.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_model.h"
#include "trainer/reward.h"

namespace qwenq {
namespace {

// fp32 on both sides; only summation orders differ. Scores and loss: relative; gradients: relative to the largest
// entry of each tensor (the DPO oracle's rule).
constexpr double kScoreRelTol = 1e-5;
constexpr double kLossRelTol = 1e-5;
constexpr double kGradRelTol = 2e-4;

TEST(RewardTrainOracle, LossAndGradientsMatchPyTorch) {
  const char* dir_env = std::getenv("QWENQ_ORACLE_REWARD_DIR");
  if (!dir_env) GTEST_SKIP() << "QWENQ_ORACLE_REWARD_DIR not set (run tests/oracle/test_reward_train_oracle.py)";
  const std::string dir = dir_env;
  QwenModel model(path_join(dir, "base"));
  const LoraAdapter policy = load_peft_adapter(path_join(dir, "policy"), lora_dims_of(model.config()));
  const LoraAdapter policy_dora = load_peft_adapter(path_join(dir, "policy_dora"), lora_dims_of(model.config()));
  ASSERT_TRUE(policy.config().seq_cls() && policy_dora.config().seq_cls() && policy_dora.use_dora());
  ASSERT_EQ(policy.config().num_labels, 1);
  SafetensorsFile expected(path_join(dir, "expected.safetensors"));
  std::vector<std::vector<int32_t>> seqs;
  std::vector<int32_t> targets;
  test::oracle_sequences(expected, &seqs, &targets);
  const PackedBatch batch = PackedBatch::from_sequences(seqs);
  const nlohmann::json fixture = nlohmann::json::parse(read_file(path_join(dir, "cases.json")));
  const int32_t pad = fixture["pad_token_id"].get<int32_t>();
  LoraStepOptions opt;
  opt.bf16_checkpoints = false;  // PyTorch runs the fp32 model
  opt.score_rows = reward_pooled_rows(batch, pad);
  // Two sequences end in two pads each: pooled two rows before their ends.
  int pooled_before_end = 0;
  for (size_t j = 0; j < seqs.size(); ++j) pooled_before_end += opt.score_rows[j] != batch.cu_seqlens[j + 1] - 1;
  EXPECT_EQ(pooled_before_end, 2);

  int checked = 0;
  for (auto it = fixture["cases"].begin(); it != fixture["cases"].end(); ++it) {
    SCOPED_TRACE(it.key());
    RewardOptions o;
    o.center_coefficient = it.value()["center"].get<double>();
    const std::vector<double> margins = it.value()["margins"].get<std::vector<double>>();
    const LoraAdapter& adapter = it.value()["adapter"] == "policy_dora" ? policy_dora : policy;
    LoraAdapter grads = adapter;
    for (size_t i = 0; i < grads.slots().size(); ++i)
      for (std::vector<float>* v : {&grads.weights(i).A, &grads.weights(i).B, &grads.weights(i).m})
        std::fill(v->begin(), v->end(), 0.f);
    std::fill(grads.score().begin(), grads.score().end(), 0.f);
    RewardStats stats;
    opt.score_objective = reward_objective(o, margins, static_cast<int64_t>(seqs.size() / 2), &stats);
    const LoraStepResult res = lora_loss_and_grad(model, adapter, batch, targets, &grads, opt);
    const TensorView& sv = expected.get(it.key() + ".scores");
    const std::vector<double> want_scores(sv.as<double>(), sv.as<double>() + sv.numel());
    ASSERT_EQ(res.scores.size(), want_scores.size());
    for (size_t j = 0; j < want_scores.size(); ++j)
      EXPECT_NEAR(res.scores[j], want_scores[j], kScoreRelTol * std::max(1.0, std::fabs(want_scores[j]))) << "sequence " << j;
    const double want_loss = expected.get(it.key() + ".loss").as<double>()[0];
    EXPECT_NEAR(stats.objective(), want_loss, kLossRelTol * std::fabs(want_loss));
    const test::GradComparison cmp = test::expect_peft_grads_close(grads, expected, it.key() + ".", kGradRelTol);
    EXPECT_EQ(cmp.nonzero, static_cast<int>((adapter.use_dora() ? 3 : 2) * adapter.slots().size()));
    // The score head's gradient [1, C].
    const TensorView& hv = expected.get(it.key() + "." + kPeftScoreName + ".grad");
    const std::vector<float> want_head(hv.as<float>(), hv.as<float>() + hv.numel());
    ASSERT_EQ(want_head.size(), grads.score().size());
    double head_max = 0, head_err = 0;
    for (size_t k = 0; k < want_head.size(); ++k) {
      head_max = std::max(head_max, std::fabs(static_cast<double>(want_head[k])));
      head_err = std::max(head_err, std::fabs(static_cast<double>(grads.score()[k]) - want_head[k]));
    }
    ASSERT_GT(head_max, 0.0);
    EXPECT_LE(head_err, kGradRelTol * head_max);
    std::printf("%s: loss %.8g (torch %.8g), worst LoRA gradient %.3g, head gradient %.3g (relative to the largest "
                "entry)\n", it.key().c_str(), stats.objective(), want_loss, cmp.worst_rel, head_err / head_max);
    ++checked;
  }
  EXPECT_EQ(checked, 3);

  // Our save of the adapter with another head, and its scores, for PEFT to reproduce.
  LoraAdapter ours = policy;
  for (float& v : ours.score()) v = -1.5f * v + 0.01f;
  PeftSaveOptions so;
  so.overwrite = true;
  save_peft_adapter(path_join(dir, "ours"), ours, so);
  LoraStepOptions eval;
  eval.bf16_checkpoints = false;
  eval.score_rows = opt.score_rows;
  const std::vector<double> s = lora_loss_and_grad(model, ours, batch, targets, nullptr, eval).scores;
  write_file_atomic(path_join(dir, "ours_scores.json"), nlohmann::json(s).dump() + "\n");
}

}  // namespace
}  // namespace qwenq
