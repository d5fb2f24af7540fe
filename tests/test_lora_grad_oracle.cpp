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
  for (LoraTarget t : grads.targets()) {
    for (int64_t l = 0; l < model.config().num_layers; ++l) {
      std::fill(grads.at(l, t).A.begin(), grads.at(l, t).A.end(), 0.f);
      std::fill(grads.at(l, t).B.begin(), grads.at(l, t).B.end(), 0.f);
      std::fill(grads.at(l, t).m.begin(), grads.at(l, t).m.end(), 0.f);
    }
  }
  const LoraStepResult r = lora_loss_and_grad(model, adapter, batch, targets, &grads, opt);
  const double want_loss = expected.get("loss").as<double>()[0];
  EXPECT_NEAR(r.nll_sum / r.counted, want_loss, kLossRelTol * want_loss);
  int compared = 0;
  double worst_rel = 0;
  for (LoraTarget t : adapter.targets()) {
    for (int64_t l = 0; l < model.config().num_layers; ++l) {
      for (int which = 0; which < (adapter.use_dora() ? 3 : 2); ++which) {  // A, B, DoRA's m
        const std::string name = which == 2 ? peft_magnitude_name(l, t) + ".weight" : peft_tensor_name(l, t, which);
        SCOPED_TRACE(name);
        const TensorView& want = expected.get(name + ".grad");
        const std::vector<float>& got = which == 2 ? grads.at(l, t).m : which ? grads.at(l, t).B : grads.at(l, t).A;
        ASSERT_EQ(static_cast<int64_t>(got.size()), want.numel());
        float scale = 0.f;
        for (int64_t i = 0; i < want.numel(); ++i) scale = std::max(scale, std::fabs(want.as<float>()[i]));
        ASSERT_GT(scale, 0.f) << "the oracle's gradient is zero: the test would prove nothing";
        double worst = 0;
        for (int64_t i = 0; i < want.numel(); ++i) worst = std::max(worst, (double)std::fabs(got[i] - want.as<float>()[i]));
        EXPECT_LE(worst, kGradRelTol * scale) << "max |ours - torch| = " << worst << ", max |torch| = " << scale;
        worst_rel = std::max(worst_rel, worst / scale);
        ++compared;
      }
    }
  }
  EXPECT_EQ(compared, model.config().num_layers * static_cast<int64_t>(adapter.targets().size()) *
                         (adapter.use_dora() ? 3 : 2));
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
