// The C++ half of tests/oracle/test_qlora_train_oracle.py: logits of the base + an adapter trained by
// `qwen-qlora train` (a LoRA and a DoRA one), from our forward (trainer/lora_model) against PEFT's PeftModel on
// the same files. Skipped
// unless the script points QWENQ_ORACLE_TRAINED_DIR at its fixtures.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "core/files.h"
#include "core/safetensors.h"
#include "lora/peft_io.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

// fp32 on both sides; only summation orders differ.
constexpr double kLogitRelTol = 1e-5;

TEST(TrainedAdapterOracle, LogitsMatchPeft) {
  const char* dir = std::getenv("QWENQ_ORACLE_TRAINED_DIR");
  if (!dir) GTEST_SKIP() << "QWENQ_ORACLE_TRAINED_DIR not set (run tests/oracle/test_qlora_train_oracle.py)";
  // QWENQ_ORACLE_TRAINED_RUN names another run directory (run_dora: a DoRA adapter) and its expected_<run> file.
  const char* run_env = std::getenv("QWENQ_ORACLE_TRAINED_RUN");
  const std::string run = run_env ? run_env : "run";
  QwenModel model(path_join(dir, "base"));
  const LoraAdapter adapter = load_peft_adapter(path_join(dir, run), lora_dims_of(model.config()));
  EXPECT_EQ(adapter.use_dora(), run == "run_dora");
  SafetensorsFile expected(path_join(dir, run == "run" ? "expected.safetensors" : "expected_" +
                                                                                     run.substr(4) + ".safetensors"));
  const TensorView& ids = expected.get("input_ids");
  const TensorView& want = expected.get("logits");
  const std::vector<int32_t> seq(ids.as<int32_t>(), ids.as<int32_t>() + ids.numel());
  const std::vector<float> got = lora_forward_logits(model, adapter, PackedBatch::from_sequences({seq}));
  ASSERT_EQ(static_cast<int64_t>(got.size()), want.numel());
  double scale = 0, worst = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    scale = std::max(scale, (double)std::fabs(want.as<float>()[i]));
    worst = std::max(worst, (double)std::fabs(got[i] - want.as<float>()[i]));
  }
  std::printf("%s: logits of %lld tokens: max |ours - peft| = %.3g, max |logit| = %.3g\n", run.c_str(), (long long)seq.size(), worst, scale);
  EXPECT_LE(worst, kLogitRelTol * scale);
}

}  // namespace
}  // namespace qwenq
