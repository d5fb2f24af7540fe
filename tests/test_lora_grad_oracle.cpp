// The C++ half of tests/oracle/test_lora_grad_oracle.py: loss and every LoRA gradient of our hand-written
// backward against PyTorch autograd through transformers + PEFT, on a tiny random Qwen2 whose base and adapter the
// script saved with the Python stack (so this also reads PEFT's own adapter files). Skipped unless the script
// points QWENQ_ORACLE_LORA_DIR at its fixtures. A DoRA case (use_dora in its adapter_config.json) also compares
// the magnitudes' gradients.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>

#include "core/files.h"
#include "core/safetensors.h"
#include "lora/peft_io.h"
#include "tests/support/peft_grads.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

// fp32 on both sides; only summation orders differ. Loss: relative; gradients: relative to the largest entry of
// each tensor (entries near zero carry the absolute rounding of the large ones).
constexpr double kLossRelTol = 1e-5;
constexpr double kGradRelTol = 1e-4;

void check_case(const std::string& dir) {
  QwenModel model(path_join(dir, "base"));
  const LoraAdapter adapter = load_peft_adapter(path_join(dir, "adapter"), lora_dims_of(model.config()));
  SafetensorsFile expected(path_join(dir, "expected.safetensors"));
  const TensorView& ids = expected.get("input_ids");
  const TensorView& lens = expected.get("lengths");
  std::vector<std::vector<int32_t>> seqs;
  int64_t off = 0;
  for (int64_t i = 0; i < lens.numel(); ++i) {
    const int32_t n = lens.as<int32_t>()[i];
    seqs.emplace_back(ids.as<int32_t>() + off, ids.as<int32_t>() + off + n);
    off += n;
  }
  const PackedBatch batch = PackedBatch::from_sequences(seqs);
  const std::vector<int32_t> targets = next_token_targets(batch);
  int64_t counted = 0;
  for (int32_t t : targets) counted += t >= 0;
  LoraStepOptions opt;
  opt.grad_scale = 1.0 / counted;
  opt.bf16_checkpoints = false;  // PyTorch runs the fp32 model
  LoraAdapter grads = adapter;
  for (size_t i = 0; i < grads.slots().size(); ++i) {
    for (std::vector<float>* v : {&grads.weights(i).A, &grads.weights(i).B, &grads.weights(i).m})
      std::fill(v->begin(), v->end(), 0.f);
  }
  const LoraStepResult r = lora_loss_and_grad(model, adapter, batch, targets, &grads, opt);
  const double want_loss = expected.get("loss").as<double>()[0];
  EXPECT_NEAR(r.nll_sum / r.counted, want_loss, kLossRelTol * want_loss);
  const test::GradComparison cmp = test::expect_peft_grads_close(grads, expected, "", kGradRelTol);
  const int compared = cmp.compared, nonzero = cmp.nonzero;
  const double worst_rel = cmp.worst_rel;
  EXPECT_EQ(compared, static_cast<int64_t>(adapter.slots().size()) * (adapter.use_dora() ? 3 : 2));
  EXPECT_EQ(static_cast<int64_t>(expected.names().size()) - 3, compared) << "gradients in the oracle's file";
  // Only a MoE expert that no token reached has a zero gradient: the test must not compare zeros alone.
  EXPECT_GT(nonzero, compared * 3 / 4) << "most of the oracle's gradients are zero: the test would prove little";
  std::printf("%s: loss %.8g (torch %.8g), %d gradients, worst max|ours - torch| / max|torch| = %.3g\n", dir.c_str(),
              r.nll_sum / r.counted, want_loss, compared, worst_rel);
}

TEST(LoraGradOracle, LossAndGradientsMatchPyTorch) {
  const char* dirs = std::getenv("QWENQ_ORACLE_LORA_DIRS");
  if (!dirs) GTEST_SKIP() << "QWENQ_ORACLE_LORA_DIRS not set (run tests/oracle/test_lora_grad_oracle.py)";
  std::stringstream ss(dirs);
  int cases = 0;
  for (std::string dir; std::getline(ss, dir, ':');) {
    SCOPED_TRACE(dir);
    check_case(dir);
    ++cases;
  }
  EXPECT_GE(cases, 1);
}

}  // namespace
}  // namespace qwenq
