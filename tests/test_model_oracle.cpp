// The C++ half of tests/oracle/test_model_oracle.py and test_rope_scaling_oracle.py: our forward pass against
// logits computed by Hugging Face transformers (fp32, eager attention) on tiny random Qwen2/Qwen3/Llama models it
// built, and, where the fixture holds them, our RoPE table against transformers' inv_freq and attention_scaling.
// Skipped unless a script points QWENQ_ORACLE_MODEL_DIRS at its fixtures.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <sstream>

#include "core/files.h"
#include "core/safetensors.h"
#include "kernels/rope_table.h"
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
    if (expected.has("rope_inv_freq")) {
      // transformers' fp32 operations redone in the same order (kernels/rope_table.cpp): the same bits.
      const RopeTable table = rope_table(model.config().rope, model.config().head_dim);
      const TensorView& inv_freq = expected.get("rope_inv_freq");
      ASSERT_EQ(inv_freq.numel(), static_cast<int64_t>(table.inv_freq.size()));
      for (int64_t i = 0; i < inv_freq.numel(); ++i)
        EXPECT_EQ(table.inv_freq[i], inv_freq.as<float>()[i]) << "inv_freq[" << i << "]";
      EXPECT_EQ(table.attention_scaling, expected.get("rope_attention_scaling").as<float>()[0]);
    }
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
