// The C++ half of tests/oracle/test_autoawq_oracle.py: an AWQ checkpoint quantized and written by AutoAWQ itself
// (scaled norms, AutoAWQ GEMM tensors), loaded by qwenq; logits against a dense model built from AutoAWQ's own
// unpacking. Skipped unless the script points QWENQ_ORACLE_AUTOAWQ_DIR at its fixture.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "core/files.h"
#include "core/safetensors.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

// The dequantized weights are identical on both sides (exact fp32 products of fp16 scales and small integers);
// everything is fp32; only summation orders differ.
constexpr double kLogitRelTol = 1e-5;

TEST(AutoAwqOracle, CheckpointMadeByAutoAwqGivesItsLogits) {
  const char* dir = std::getenv("QWENQ_ORACLE_AUTOAWQ_DIR");
  if (!dir) GTEST_SKIP() << "QWENQ_ORACLE_AUTOAWQ_DIR not set (run tests/oracle/test_autoawq_oracle.py)";
  QwenModel model(dir);
  ASSERT_EQ(model.quant_config().method, QuantConfig::Method::Awq);
  SafetensorsFile expected(path_join(dir, "expected.safetensors"));
  const TensorView& ids = expected.get("input_ids");
  const TensorView& want = expected.get("logits");
  const std::vector<int32_t> seq(ids.as<int32_t>(), ids.as<int32_t>() + ids.numel());
  const std::vector<float> got = model.forward_logits(PackedBatch::from_sequences({seq}));
  ASSERT_EQ(static_cast<int64_t>(got.size()), want.numel());
  double scale = 0, worst = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    scale = std::max(scale, (double)std::fabs(want.as<float>()[i]));
    worst = std::max(worst, (double)std::fabs(got[i] - want.as<float>()[i]));
  }
  std::printf("AutoAWQ checkpoint: max |ours - reference| = %.3g, max |logit| = %.3g\n", worst, scale);
  EXPECT_LE(worst, kLogitRelTol * scale);
}

}  // namespace
}  // namespace qwenq
