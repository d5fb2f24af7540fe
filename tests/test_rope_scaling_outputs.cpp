// A model with rope_scaling through the tools that write model directories: the merged (LoRA) and the quantized
// outputs keep config.json's rope_scaling as written, so they load with the same RoPE; and the merged directory
// computes the adapted model, whose logits come from the LoRA forward (trainer/lora_model) — two forward
// implementations agreeing on a scaled RoPE.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "lora/peft_io.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_training.h"
#include "trainer/lora_merge.h"
#include "trainer/lora_model.h"
#include "trainer/quantize_model.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

// As tests/test_lora_merge.cpp: fp32 reassociation of W + sBA against W x + s B(Ax), through two layers.
constexpr double kMergeRelTol = 1e-5;

nlohmann::json config_of(const std::string& dir) { return nlohmann::json::parse(read_file(dir + "/config.json")); }

// The tiny model with YaRN (factor 4 over a 16-token original context, explicit betas) added to its config.json.
std::string make_yarn_model(const std::string& dir) {
  test::make_tiny_model(dir, /*seed=*/31);
  nlohmann::ordered_json cfg = nlohmann::ordered_json::parse(read_file(dir + "/config.json"));
  cfg["max_position_embeddings"] = 64;
  cfg["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 16},
                         {"beta_fast", 8.0}, {"beta_slow", 1.0}};
  write_file_atomic(dir + "/config.json", cfg.dump(2) + "\n");
  return dir;
}

void expect_same_rope(const RopeSpec& a, const RopeSpec& b) {
  EXPECT_EQ(a.type, b.type);
  EXPECT_EQ(a.theta, b.theta);
  EXPECT_EQ(a.factor, b.factor);
  EXPECT_EQ(a.original_max_position_embeddings, b.original_max_position_embeddings);
  EXPECT_EQ(a.beta_fast, b.beta_fast);
  EXPECT_EQ(a.attention_factor, b.attention_factor);
}

TEST(RopeScalingOutputs, MergedAndQuantizedDirectoriesKeepRopeScaling) {
  const std::string root = test::scratch_dir();
  const std::string dir = make_yarn_model(root + "/base");
  const QwenModel base(dir);
  ASSERT_EQ(base.config().rope.type, RopeType::Yarn);
  const nlohmann::json want_scaling = config_of(dir)["rope_scaling"];

  const LoraAdapter adapter =
      test::adapter_with_random_b(base.config(), {"q_proj", "k_proj", "v_proj", "o_proj"}, 4, 8, false, 11, 0.3f);
  save_peft_adapter(root + "/adapter", adapter);
  std::vector<int32_t> long_seq(40);
  for (size_t t = 0; t < long_seq.size(); ++t) long_seq[t] = static_cast<int32_t>((t * 37 + 5) % 250);
  const PackedBatch batch = PackedBatch::from_sequences({long_seq, {42, 17, 99}});
  const std::vector<float> want = lora_forward_logits(base, adapter, batch);

  MergeOptions m;
  m.model_dir = dir;
  m.adapter_dir = root + "/adapter";
  m.out_dir = root + "/merged";
  m.quiet = true;
  merge_adapter_to_dir(m);
  EXPECT_EQ(config_of(m.out_dir)["rope_scaling"], want_scaling);
  const QwenModel merged(m.out_dir);
  expect_same_rope(merged.config().rope, base.config().rope);
  const std::vector<float> got = merged.forward_logits(batch);
  ASSERT_EQ(got.size(), want.size());
  double err = 0, peak = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[i]));
    peak = std::max(peak, std::fabs(static_cast<double>(want[i])));
  }
  EXPECT_LE(err, kMergeRelTol * peak) << "merged model vs the LoRA forward on a YaRN model";

  QuantizeOptions q;
  q.method = QuantizeOptions::Method::Rtn;
  q.group_size = 32;
  q.model_dir = dir;
  q.out_dir = root + "/rtn";
  q.quiet = true;
  quantize_model(q);
  EXPECT_EQ(config_of(q.out_dir)["rope_scaling"], want_scaling);
  expect_same_rope(QwenModel(q.out_dir).config().rope, base.config().rope);
}

}  // namespace
}  // namespace qwenq
