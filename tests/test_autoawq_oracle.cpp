// The C++ half of tests/oracle/test_autoawq_oracle.py: an AWQ checkpoint quantized and written by AutoAWQ itself
// (scaled norms, AutoAWQ GEMM tensors), loaded by qwenq; logits against a dense model built from AutoAWQ's own
// unpacking. Skipped unless the script points QWENQ_ORACLE_AUTOAWQ_DIR at its fixture.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "core/dtype.h"
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

namespace qwenq {
namespace {

std::vector<float> logits_of(const QwenModel& m) {
  return m.forward_logits(PackedBatch::from_sequences({{1, 5, 9, 200, 3, 3, 7, 40, 41, 42, 17, 99}, {7, 8, 9, 10}}));
}

double rms_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double e = 0;
  for (size_t i = 0; i < a.size(); ++i) e += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return std::sqrt(e / a.size());
}

// Our AWQ against AutoAWQ's on the same model and calibration blocks. The search must pick the same scales (the
// scaled norms agree to fp32 rounding; a different grid point would move them by several percent) and the same clip
// bounds (every stored group scale within 2 fp16 ulps: a different clip step moves it by >= 5%); the weights cannot
// be bit-identical because AutoAWQ rounds the scaled weights to fp16 before its final rounding.
constexpr double kNormRelTol = 1e-5;
constexpr double kGroupScaleRelTol = 2.5e-3;  // 2^-10 is one fp16 ulp relative

TEST(AutoAwqOracle, OurAwqMatchesAutoAwqOnTheSameCalibration) {
  const char* theirs_dir = std::getenv("QWENQ_ORACLE_AUTOAWQ_DIR");
  const char* ours_dir = std::getenv("QWENQ_ORACLE_AWQ_OURS");
  const char* src_dir = std::getenv("QWENQ_ORACLE_AWQ_SOURCE");
  if (!theirs_dir || !ours_dir || !src_dir) GTEST_SKIP() << "run tests/oracle/test_autoawq_oracle.py";
  SafetensorsFile ft(path_join(theirs_dir, "model.safetensors")), fo(path_join(ours_dir, "model.safetensors"));
  int64_t groups = 0, norms = 0, same = 0, total = 0;
  double worst_norm = 0, worst_scale = 0;
  for (const std::string& name : ft.names()) {
    const TensorView &a = ft.get(name), &b = fo.get(name);
    ASSERT_EQ(a.shape, b.shape) << name;
    const bool is_norm = name.find("layernorm.weight") != std::string::npos;
    const bool is_scale = name.size() > 7 && name.compare(name.size() - 7, 7, ".scales") == 0;
    if (!is_norm && !is_scale) continue;
    std::vector<float> va(a.numel()), vb(b.numel());
    to_f32(a.dtype, a.data, va.data(), va.size());
    to_f32(b.dtype, b.data, vb.data(), vb.size());
    for (size_t i = 0; i < va.size(); ++i) {
      const double rel = std::fabs(va[i] - vb[i]) / std::max(std::fabs(vb[i]), 1e-12f);
      (is_norm ? worst_norm : worst_scale) = std::max(is_norm ? worst_norm : worst_scale, rel);
    }
    (is_norm ? norms : groups) += static_cast<int64_t>(va.size());
  }
  QwenModel theirs(theirs_dir), ours(ours_dir), src(src_dir);
  const std::pair<BlockLinear, int> slots[] = {{BlockLinear::QKV, 0}, {BlockLinear::QKV, 1}, {BlockLinear::QKV, 2},
                                               {BlockLinear::O, 0},   {BlockLinear::GateUp, 0}, {BlockLinear::GateUp, 1},
                                               {BlockLinear::Down, 0}};
  for (int64_t l = 0; l < src.config().num_layers; ++l) {
    for (const auto& [which, idx] : slots) {
      const std::vector<float> a = theirs.linear_weight(l, which, idx).dequantize();
      const std::vector<float> b = ours.linear_weight(l, which, idx).dequantize();
      for (size_t i = 0; i < a.size(); ++i) same += a[i] == b[i];
      total += static_cast<int64_t>(a.size());
    }
  }
  const std::vector<float> ref = logits_of(src);
  const double e_theirs = rms_diff(logits_of(theirs), ref), e_ours = rms_diff(logits_of(ours), ref);
  std::printf("AWQ, ours vs AutoAWQ on the same calibration: scaled norms (%lld values) within %.2g, group scales (%lld) "
              "within %.2g relative, %.1f%% of dequantized weights identical; logits RMS error vs fp32: AutoAWQ %.4g, "
              "ours %.4g\n", (long long)norms, worst_norm, (long long)groups, worst_scale, 100.0 * same / total, e_theirs,
              e_ours);
  EXPECT_LE(worst_norm, kNormRelTol);
  EXPECT_LE(worst_scale, kGroupScaleRelTol);
  EXPECT_LE(e_ours, 1.05 * e_theirs);
}

}  // namespace
}  // namespace qwenq
