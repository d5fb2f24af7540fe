// The C++ half of tests/oracle/test_dpo_oracle.py: the preference losses and the policy adapter's gradients through
// lora_loss_and_grad's sequence objective (trainer/dpo.h) against PyTorch autograd through transformers + PEFT, on a
// tiny random Qwen2 with a reference and a policy adapter the script saved with the Python stack. Skipped unless the
// script points QWENQ_ORACLE_DPO_DIR at its fixtures.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "core/safetensors.h"
#include "kernels/loss.h"
#include "lora/peft_io.h"
#include "tests/support/peft_grads.h"
#include "trainer/dpo.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

// fp32 on both sides; only summation orders differ (the loss goes through sums of ~10 log-probabilities, the
// gradients through exp and log-sigmoid in double here, float there). Loss: relative; gradients: relative to the
// largest entry of each tensor.
constexpr double kLossRelTol = 1e-5;
constexpr double kGradRelTol = 2e-4;

TEST(DpoOracle, LossesAndGradientsMatchPyTorch) {
  const char* dir_env = std::getenv("QWENQ_ORACLE_DPO_DIR");
  if (!dir_env) GTEST_SKIP() << "QWENQ_ORACLE_DPO_DIR not set (run tests/oracle/test_dpo_oracle.py)";
  const std::string dir = dir_env;
  QwenModel model(path_join(dir, "base"));
  const LoraAdapter reference = load_peft_adapter(path_join(dir, "reference"), lora_dims_of(model.config()));
  const LoraAdapter policy = load_peft_adapter(path_join(dir, "policy"), lora_dims_of(model.config()));
  SafetensorsFile expected(path_join(dir, "expected.safetensors"));
  std::vector<std::vector<int32_t>> seqs;
  std::vector<int32_t> targets;  // the completions' tokens are the scored ones
  test::oracle_sequences(expected, &seqs, &targets);
  const PackedBatch batch = PackedBatch::from_sequences(seqs);
  const std::vector<int64_t> counts = sequence_target_counts(batch, targets);
  LoraStepOptions opt;
  opt.bf16_checkpoints = false;  // PyTorch runs the fp32 model
  const std::vector<double> ref = lora_loss_and_grad(model, reference, batch, targets, nullptr, opt).seq_nll;
  ASSERT_EQ(ref.size(), seqs.size());
  int64_t chosen_tokens = 0;
  for (size_t j = 0; j < counts.size(); j += 2) chosen_tokens += counts[j];

  const nlohmann::json cases = nlohmann::json::parse(read_file(path_join(dir, "cases.json")));
  int checked = 0;
  for (auto it = cases.begin(); it != cases.end(); ++it) {
    SCOPED_TRACE(it.key());
    DpoOptions o;
    o.loss = parse_dpo_loss(it.value()["loss"].get<std::string>());
    o.beta = it.value()["beta"].get<double>();
    o.label_smoothing = it.value()["label_smoothing"].get<double>();
    o.rpo_alpha = it.value()["rpo_alpha"].get<double>();
    if (it.value().contains("simpo_gamma")) o.simpo_gamma = it.value()["simpo_gamma"].get<double>();
    LoraAdapter grads = policy;
    for (size_t i = 0; i < grads.slots().size(); ++i)
      for (std::vector<float>* v : {&grads.weights(i).A, &grads.weights(i).B}) std::fill(v->begin(), v->end(), 0.f);
    DpoStats stats;
    opt.sequence_objective = dpo_objective(o, ref, counts, static_cast<int64_t>(seqs.size() / 2), chosen_tokens, &stats);
    lora_loss_and_grad(model, policy, batch, targets, &grads, opt);
    const double want_loss = expected.get(it.key() + ".loss").as<double>()[0];
    EXPECT_NEAR(stats.objective(o), want_loss, kLossRelTol * std::fabs(want_loss));
    const test::GradComparison cmp = test::expect_peft_grads_close(grads, expected, it.key() + ".", kGradRelTol);
    // Every Linear's A and B get a gradient (B is nonzero, so A's flows too): a test of zeros would prove little.
    EXPECT_EQ(cmp.nonzero, static_cast<int>(2 * policy.slots().size()));
    std::printf("%s: loss %.8g (torch %.8g), worst max|ours - torch| / max|torch| = %.3g\n", it.key().c_str(),
                stats.objective(o), want_loss, cmp.worst_rel);
    ++checked;
  }
  EXPECT_EQ(checked, 5);
}

}  // namespace
}  // namespace qwenq
