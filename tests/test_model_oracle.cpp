// The C++ half of tests/oracle/test_model_oracle.py: our forward pass against logits computed by Hugging Face
// transformers (fp32, eager attention) on tiny random Qwen2/Qwen3 models it built. Skipped unless the
// script points QWENQ_ORACLE_MODEL_DIRS at its fixtures.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <sstream>

#include "core/files.h"
#include "core/safetensors.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

// fp32 end to end on both sides; the only differences are summation orders.
constexpr float kLogitTolerance = 1e-4f;

std::vector<std::string> oracle_dirs() {
  const char* v = std::getenv("QWENQ_ORACLE_MODEL_DIRS");
  std::vector<std::string> out;
  if (!v) return out;
  std::stringstream ss(v);
  std::string item;
  while (std::getline(ss, item, ':')) out.push_back(item);
  return out;
}

TEST(ModelOracle, LogitsMatchTransformers) {
  const auto dirs = oracle_dirs();
  if (dirs.empty()) GTEST_SKIP() << "QWENQ_ORACLE_MODEL_DIRS not set (run tests/oracle/test_model_oracle.py)";
  for (const std::string& dir : dirs) {
    SCOPED_TRACE(dir);
    SafetensorsFile expected(path_join(dir, "oracle_expected.safetensors"));
    const TensorView& ids = expected.get("input_ids");
    const TensorView& lens = expected.get("lengths");
    const TensorView& want = expected.get("logits");
    std::vector<std::vector<int32_t>> seqs;
    int64_t off = 0;
    for (int64_t s = 0; s < lens.numel(); ++s) {
      const int32_t n = lens.as<int32_t>()[s];
      seqs.emplace_back(ids.as<int32_t>() + off, ids.as<int32_t>() + off + n);
      off += n;
    }
    QwenModel model(dir);
    const int64_t V = model.config().vocab_size;
    // Batched (all sequences packed together) and one at a time must both match.
    std::vector<float> got = model.forward_logits(PackedBatch::from_sequences(seqs));
    ASSERT_EQ(static_cast<int64_t>(got.size()), want.numel());
    float max_err = 0;
    for (int64_t i = 0; i < want.numel(); ++i) max_err = std::max(max_err, std::fabs(got[i] - want.as<float>()[i]));
    EXPECT_LE(max_err, kLogitTolerance) << "packed batch";
    std::printf("%s: max |logit error| %.3g over %lld logits\n", dir.c_str(), max_err, (long long)want.numel());

    // Incremental decoding with the KV cache reproduces the last logits of the longest sequence.
    const auto& last = seqs.back();
    KvCache cache = model.make_cache(static_cast<int64_t>(last.size()));
    std::vector<float> step;
    const size_t half = last.size() / 2;
    if (half > 0) model.forward_step(std::vector<int32_t>(last.begin(), last.begin() + half), &cache);
    for (size_t t = half; t < last.size(); ++t) step = model.forward_step({last[t]}, &cache);
    const float* want_last = want.as<float>() + (want.numel() / V - 1) * V;
    float step_err = 0;
    for (int64_t v = 0; v < V; ++v) step_err = std::max(step_err, std::fabs(step[v] - want_last[v]));
    EXPECT_LE(step_err, kLogitTolerance) << "KV-cache decoding";
  }
}

}  // namespace
}  // namespace qwenq
