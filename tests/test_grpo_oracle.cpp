// The C++ half of tests/oracle/test_grpo_oracle.py: GRPO's loss and the adapter's gradients (the KL term to the base,
// the temperature in the log-probabilities, the dapo and grpo normalisations; off-policy, PPO's clipped ratio per
// token and GSPO's per sequence against the old adapter's log-probabilities) through grpo_normalizers,
// grpo_token_weights and lora_loss_and_grad's token objective (trainer/grpo.h) against PyTorch autograd through
// transformers + PEFT, on a tiny random Qwen2 with an adapter the script saved with the Python stack. Skipped unless
// the script points QWENQ_ORACLE_GRPO_DIR at its fixtures.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "core/safetensors.h"
#include "lora/peft_io.h"
#include "tests/support/peft_grads.h"
#include "trainer/grpo.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

// fp32 on both sides; only summation orders differ (as tests/test_kto_oracle.cpp). Loss: relative to max(1, |loss|)
// (the policy term is about 0 by construction); gradients: relative to the largest entry of each tensor.
constexpr double kLossTol = 1e-5;
constexpr double kGradRelTol = 2e-4;

TEST(GrpoOracle, LossAndGradientsMatchPyTorch) {
  const char* dir_env = std::getenv("QWENQ_ORACLE_GRPO_DIR");
  if (!dir_env) GTEST_SKIP() << "QWENQ_ORACLE_GRPO_DIR not set (run tests/oracle/test_grpo_oracle.py)";
  const std::string dir = dir_env;
  QwenModel model(path_join(dir, "base"));
  const LoraAdapter policy = load_peft_adapter(path_join(dir, "policy"), lora_dims_of(model.config()));
  const LoraAdapter old_policy = load_peft_adapter(path_join(dir, "old"), lora_dims_of(model.config()));
  const LoraAdapter base(lora_dims_of(model.config()), policy.config());  // A = B = 0: the adapter disabled
  SafetensorsFile expected(path_join(dir, "expected.safetensors"));
  std::vector<std::vector<int32_t>> seqs;
  std::vector<int32_t> targets;
  test::oracle_sequences(expected, &seqs, &targets);
  const PackedBatch batch = PackedBatch::from_sequences(seqs);
  const TensorView& a = expected.get("advantages");
  const std::vector<double> adv(a.as<double>(), a.as<double>() + a.numel());
  std::vector<int64_t> len(seqs.size(), 0);
  for (size_t j = 0; j < seqs.size(); ++j)
    for (int32_t t = batch.cu_seqlens[j]; t < batch.cu_seqlens[j + 1]; ++t) len[j] += targets[static_cast<size_t>(t)] != -100;
  const nlohmann::json cases = nlohmann::json::parse(read_file(path_join(dir, "cases.json")));
  int checked = 0;
  for (auto it = cases.begin(); it != cases.end(); ++it) {
    SCOPED_TRACE(it.key());
    const double beta = it.value()["beta"].get<double>(), T = it.value()["temperature"].get<double>();
    const GrpoLoss loss_type = parse_grpo_loss(it.value()["loss"].get<std::string>());
    LoraStepOptions opt;
    opt.bf16_checkpoints = false;  // PyTorch runs the fp32 model
    opt.logit_scale = 1.0 / T;
    LoraStepOptions ref_opt = opt;
    ref_opt.train = false;
    const std::vector<float> ref = lora_loss_and_grad(model, base, batch, targets, nullptr, ref_opt).row_nll;
    const std::vector<double> c = grpo_normalizers(loss_type, len, std::vector<int64_t>(len.size(), 0), 1, 1);
    GrpoOptions go;
    go.beta = beta;
    std::vector<float> old;  // off-policy cases: the old adapter's NLLs (the sampling policy's)
    const bool off_policy = it.value().value("old", false);
    if (off_policy) {
      go.num_iterations = 2;
      go.epsilon = it.value()["epsilon"].get<double>();
      go.epsilon_high = it.value()["epsilon_high"].get<double>();
      go.delta = it.value().value("delta", 0.0);
      go.importance = parse_grpo_importance(it.value()["level"].get<std::string>());
      old = lora_loss_and_grad(model, old_policy, batch, targets, nullptr, ref_opt).row_nll;
    }
    GrpoTokenTerms terms;
    opt.token_objective = [&](const std::vector<float>& nll) {
      return grpo_token_weights(go, c, adv, len, nll, off_policy ? &old : nullptr, &ref, &terms);
    };
    LoraAdapter grads = policy;
    for (size_t i = 0; i < grads.slots().size(); ++i)
      for (std::vector<float>* v : {&grads.weights(i).A, &grads.weights(i).B}) std::fill(v->begin(), v->end(), 0.f);
    lora_loss_and_grad(model, policy, batch, targets, &grads, opt);
    const double loss = terms.policy + beta * terms.weighted_kl;
    const double want = expected.get(it.key() + ".loss").as<double>()[0];
    EXPECT_NEAR(loss, want, kLossTol * std::max(1.0, std::fabs(want)));
    if (!off_policy) {
      EXPECT_NEAR(terms.policy, grpo_loss_value(c, adv, len), 1e-12);
    }
    if (beta > 0) {
      EXPECT_GT(terms.kl_sum, 0.0);  // the adapter moves the policy off the base
    }
    const double clipped = terms.clipped_low + terms.clipped_high;
    if (off_policy) {  // the clip binds for some tokens and not for others: both branches of the min are checked
      EXPECT_GT(clipped, 0.0);
      EXPECT_LT(clipped, terms.tokens);
    }
    std::printf("%s: %.0f of %.0f tokens clipped (%.0f below, %.0f above)\n", it.key().c_str(), clipped, terms.tokens,
                terms.clipped_low, terms.clipped_high);
    const test::GradComparison cmp = test::expect_peft_grads_close(grads, expected, it.key() + ".", kGradRelTol);
    EXPECT_EQ(cmp.nonzero, static_cast<int>(2 * policy.slots().size()));
    std::printf("%s: loss %.8g (torch %.8g), worst max|ours - torch| / max|torch| = %.3g\n", it.key().c_str(), loss,
                want, cmp.worst_rel);
    ++checked;
  }
  EXPECT_EQ(checked, 5);
}

}  // namespace
}  // namespace qwenq
