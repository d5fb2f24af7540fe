// The C++ half of tests/oracle/test_kto_oracle.py: the unpaired preference losses (KTO with its reference point z,
// the unpaired APO-zero) and the policy adapter's gradients through kto_step_objective and lora_loss_and_grad's
// sequence objective (trainer/kto.h) against PyTorch autograd through transformers + PEFT, on a tiny random Qwen2
// with a reference and a policy adapter the script saved with the Python stack. Skipped unless the script points
// QWENQ_ORACLE_KTO_DIR at its fixtures.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "core/safetensors.h"
#include "kernels/loss.h"
#include "lora/peft_io.h"
#include "tests/support/peft_grads.h"
#include "trainer/kto.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

// fp32 on both sides; only summation orders differ (as tests/test_dpo_oracle.cpp). Loss and z: relative; gradients:
// relative to the largest entry of each tensor.
constexpr double kLossRelTol = 1e-5;
constexpr double kGradRelTol = 2e-4;

TEST(KtoOracle, LossesAndGradientsMatchPyTorch) {
  const char* dir_env = std::getenv("QWENQ_ORACLE_KTO_DIR");
  if (!dir_env) GTEST_SKIP() << "QWENQ_ORACLE_KTO_DIR not set (run tests/oracle/test_kto_oracle.py)";
  const std::string dir = dir_env;
  QwenModel model(path_join(dir, "base"));
  const LoraAdapter reference = load_peft_adapter(path_join(dir, "reference"), lora_dims_of(model.config()));
  const LoraAdapter policy = load_peft_adapter(path_join(dir, "policy"), lora_dims_of(model.config()));
  SafetensorsFile expected(path_join(dir, "expected.safetensors"));
  const TensorView& lab = expected.get("labels");
  // The units [example, KL sequence] as one padding-mode micro-batch (one sequence a row), as the trainer gets it.
  std::vector<std::vector<int32_t>> seqs;
  SftBatch micro;
  test::oracle_sequences(expected, &seqs, &micro.targets);
  micro.packed = PackedBatch::from_sequences(seqs);
  micro.cu_rows = micro.packed.cu_seqlens;
  micro.num_examples = static_cast<int64_t>(seqs.size());
  std::vector<uint8_t> labels;
  for (int64_t i = 0; i < lab.numel(); ++i) labels.push_back(lab.as<int32_t>()[i] != 0);
  ASSERT_EQ(2 * labels.size(), seqs.size());
  LoraStepOptions opt;
  opt.bf16_checkpoints = false;  // PyTorch runs the fp32 model
  LoraStepOptions eval = opt;
  eval.train = false;
  const std::vector<double> ref = lora_loss_and_grad(model, reference, micro.packed, micro.targets, nullptr, opt).seq_nll;
  std::vector<int64_t> order(seqs.size());
  std::iota(order.begin(), order.end(), 0);
  const SftBatch examples = select_batch_sequences(micro, 2, 0);

  const nlohmann::json cases = nlohmann::json::parse(read_file(path_join(dir, "cases.json")));
  int checked = 0;
  for (auto it = cases.begin(); it != cases.end(); ++it) {
    SCOPED_TRACE(it.key());
    KtoOptions o;
    o.loss = parse_kto_loss(it.value()["loss"].get<std::string>());
    o.beta = it.value()["beta"].get<double>();
    o.desirable_weight = it.value()["desirable_weight"].get<double>();
    o.undesirable_weight = it.value()["undesirable_weight"].get<double>();
    LoraAdapter grads = policy;
    for (size_t i = 0; i < grads.slots().size(); ++i)
      for (std::vector<float>* v : {&grads.weights(i).A, &grads.weights(i).B}) std::fill(v->begin(), v->end(), 0.f);
    KtoStats stats;
    int forwards = 0;
    opt.sequence_objective = kto_step_objective(
        o, micro, order, ref, labels, static_cast<int64_t>(labels.size()), &stats, [&](const SftBatch& kl) {
          ++forwards;
          return lora_loss_and_grad(model, policy, kl.packed, kl.targets, nullptr, eval);
        });
    EXPECT_EQ(forwards, o.uses_kl() ? 1 : 0);
    lora_loss_and_grad(model, policy, examples.packed, examples.targets, &grads, opt);
    const double want_loss = expected.get(it.key() + ".loss").as<double>()[0];
    const double want_z = expected.get(it.key() + ".z").as<double>()[0];
    EXPECT_NEAR(stats.objective(), want_loss, kLossRelTol * std::fabs(want_loss));
    EXPECT_NEAR(stats.kl, want_z, kLossRelTol * std::max(1.0, std::fabs(want_z)));
    if (o.uses_kl()) {
      EXPECT_GT(stats.kl, 0.0);
    }
    const test::GradComparison cmp = test::expect_peft_grads_close(grads, expected, it.key() + ".", kGradRelTol);
    // Every Linear's A and B get a gradient (B is nonzero, so A's flows too): a test of zeros would prove little.
    EXPECT_EQ(cmp.nonzero, static_cast<int>(2 * policy.slots().size()));
    std::printf("%s: loss %.8g (torch %.8g), z %.8g (torch %.8g), worst max|ours - torch| / max|torch| = %.3g\n",
                it.key().c_str(), stats.objective(), want_loss, stats.kl, want_z, cmp.worst_rel);
    ++checked;
  }
  EXPECT_EQ(checked, 2);
}

}  // namespace
}  // namespace qwenq
