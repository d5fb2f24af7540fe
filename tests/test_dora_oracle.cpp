// The C++ half of tests/oracle/test_dora_oracle.py: a DoRA adapter made by PEFT (every tensor randomized) read by
// our loader, run unmerged by the CPU trainer's forward (trainer/lora_model.h) and merged into the base in memory
// (trainer/lora_merge.h), against PEFT's logits; then saved again for PEFT to read. Skipped unless the script points QWENQ_ORACLE_DORA_DIR at its fixtures.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "core/files.h"
#include "core/safetensors.h"
#include "lora/peft_io.h"
#include "trainer/lora_merge.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

// fp32 on both sides; only summation orders differ (the row norms: double here, fp32 in torch).
constexpr double kLogitRelTol = 1e-5;

const char* fixture_dir() { return std::getenv("QWENQ_ORACLE_DORA_DIR"); }

// max |got - want| / max |want|, printed under `what`.
double rel_error(const std::vector<float>& got, const TensorView& want, const char* what) {
  EXPECT_EQ(static_cast<int64_t>(got.size()), want.numel());
  double scale = 0, worst = 0;
  for (int64_t i = 0; i < want.numel() && i < static_cast<int64_t>(got.size()); ++i) {
    scale = std::max(scale, (double)std::fabs(want.as<float>()[i]));
    worst = std::max(worst, (double)std::fabs(got[i] - want.as<float>()[i]));
  }
  std::printf("%s: max |ours - peft| = %.3g, max |logit| = %.3g, relative %.3g\n", what, worst, scale, worst / scale);
  return worst / scale;
}

TEST(DoraOracle, PeftAdapterReadMergedAndSaved) {
  const char* dir = fixture_dir();
  if (!dir) GTEST_SKIP() << "QWENQ_ORACLE_DORA_DIR not set (run tests/oracle/test_dora_oracle.py)";
  QwenModel model(path_join(dir, "base"));
  const LoraAdapter adapter = load_peft_adapter(path_join(dir, "peft_adapter"), lora_dims_of(model.config()));
  ASSERT_TRUE(adapter.use_dora());
  SafetensorsFile expected(path_join(dir, "expected.safetensors"));
  int checked = 0;
  for (int64_t l = 0; l < model.config().num_layers; ++l) {
    for (LoraTarget t : adapter.targets()) {
      const TensorView& m = expected.get("layers." + std::to_string(l) + "." + lora_target_name(t) + ".m");
      const std::vector<float> want(m.as<float>(), m.as<float>() + m.numel());
      EXPECT_EQ(adapter.at(l, t).m, want) << "layer " << l << " " << lora_target_name(t);
      ++checked;
    }
  }
  EXPECT_EQ(checked, 14);
  const TensorView& ids = expected.get("input_ids");
  const std::vector<int32_t> seq(ids.as<int32_t>(), ids.as<int32_t>() + ids.numel());
  const PackedBatch batch = PackedBatch::from_sequences({seq});
  const TensorView& want = expected.get("logits");

  save_peft_adapter(path_join(dir, "ours"), adapter);
  EXPECT_LE(rel_error(lora_forward_logits(model, adapter, batch), want, "trainer forward (unmerged)"), kLogitRelTol);
  merge_adapter_in_memory(model, adapter);
  EXPECT_LE(rel_error(model.forward_logits(batch), want, "merged in memory"), kLogitRelTol);
}

}  // namespace
}  // namespace qwenq
