// An adapter attached unmerged to the CPU model (QwenModel::attach_adapter on trainer/lora_inference.h's layout), as
// `eval --adapter` and friends and GRPO's rollouts run it, against two independent computations of the same model:
//   - the merged model (trainer/lora_merge.h's merge_adapter_in_memory: W' = W + s·B A, DoRA's g ⊙ (W + s·B A)),
//   - the trainer's forward (trainer/lora_model.h's lora_forward_logits, its own blocks, DoRA's combine),
// for DoRA on a dense and on a GPTQ base (the gains read from the packed weights' Q4 form), and LoRA / DoRA on the
// experts and shared expert of a mixture-of-experts model (trainer/moe_block.h; each branch a trainer/lora_inference.h LoraBranch), within kAttachedRelTol.
// Batched decode steps keep each sequence's lone-step bits with the experts' branches too (GRPO's groups decode
// together); detaching gives the base's logits back bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_training.h"
#include "trainer/lora_inference.h"
#include "trainer/lora_merge.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

// Three fp32 computations of one model whose sums run in different orders (K + r terms per output, a dozen layers of
// them): 2e-7 to 1.7e-6 relative in the logits measured; the bound leaves room, and the adapters move the logits by far more
// (kMinAdapterEffect), so the check cannot pass with the branch left out.
constexpr double kAttachedRelTol = 1e-5;
constexpr double kMinAdapterEffect = 1e-2;

const std::vector<std::string> kAll = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

// max |a − b| / max |b|
double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0, scale = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    worst = std::max(worst, static_cast<double>(std::fabs(a[i] - b[i])));
    scale = std::max(scale, static_cast<double>(std::fabs(b[i])));
  }
  return worst / std::max(scale, 1e-30);
}

PackedBatch test_batch() { return PackedBatch::from_sequences({{1, 2, 3, 4, 5, 6, 7}, {9, 8, 7, 30}, {11}}); }

// The attached forward of `a` on the model at `dir` equals the merged model's and the trainer's; detached, the
// base's bits come back.
void expect_attached_is_merged(const std::string& dir, const LoraAdapter& a, const std::string& what) {
  SCOPED_TRACE(what);
  QwenModel model(dir), merged(dir);
  merge_adapter_in_memory(merged, a);
  const PackedBatch b = test_batch();
  const std::vector<float> base = model.forward_logits(b);
  const LoraInferenceLayout layout = lora_inference_layout(a, model.config(), "test adapter");
  model.attach_adapter(&layout);
  const std::vector<float> got = model.forward_logits(b);
  const double vs_merged = rel_err(got, merged.forward_logits(b)), vs_trainer = rel_err(got, lora_forward_logits(model, a, b));
  std::printf("%s: attached against merged %.3g, against the trainer's forward %.3g\n", what.c_str(), vs_merged,
              vs_trainer);
  EXPECT_LE(vs_merged, kAttachedRelTol) << "against the merged model";
  EXPECT_LE(vs_trainer, kAttachedRelTol) << "against the trainer's forward";
  EXPECT_GE(rel_err(got, base), kMinAdapterEffect) << "the adapter hardly moves the logits: the check proves nothing";
  model.attach_adapter(nullptr);
  EXPECT_EQ(model.forward_logits(b), base) << "detached";
}

TEST(AttachedAdapter, DoraOnDenseAndGptqBasesIsTheMergedModel) {
  const std::string tmp = test::scratch_dir();
  const std::string dense = test::make_tiny_model(tmp + "/dense", 5), gptq = test::rtn_gptq_model(dense, tmp + "/gptq");
  ASSERT_FALSE(QwenModel(gptq).weights().layers[0].q.is_dense());
  expect_attached_is_merged(dense, test::dora_with_random_b(QwenModel(dense), kAll, 4, 8, 31, 0.3f), "dense, DoRA");
  expect_attached_is_merged(gptq, test::dora_with_random_b(QwenModel(gptq), {"q_proj", "v_proj", "down_proj"}, 8, 16, 32, 0.3f),
                            "gptq, DoRA on q, v, down");
}

TEST(AttachedAdapter, ExpertsAndSharedExpertOfAMixtureOfExpertsModel) {
  const std::string tmp = test::scratch_dir();
  const std::string shared = test::make_random_model(tmp + "/shared", "tiny-moe-shared", DType::F32, 7);
  const std::string plain = test::make_random_model(tmp + "/plain", "tiny-moe", DType::F32, 8);
  const QwenConfig cs = QwenModel(shared).config(), cp = QwenModel(plain).config();
  ASSERT_GT(cs.shared_expert_intermediate_size, 0);
  ASSERT_GT(cp.num_moe_layers(), 0);
  ASSERT_LT(cp.num_moe_layers(), cp.num_layers) << "tiny-moe keeps a dense layer: both kinds of MLP are adapted";
  expect_attached_is_merged(shared, test::adapter_with_random_b(cs, kAll, 4, 8, false, 41, 0.3f),
                            "qwen2_moe, LoRA on every Linear and expert");
  expect_attached_is_merged(plain, test::adapter_with_random_b(cp, {"up_proj", "down_proj", "o_proj"}, 2, 4, true, 42, 0.3f),
                            "qwen3_moe, rsLoRA on up, down, o");
  expect_attached_is_merged(shared, test::dora_with_random_b(QwenModel(shared), {"gate_proj", "v_proj"}, 4, 8, 43, 0.3f),
                            "qwen2_moe, DoRA on gate (every expert's) and v");
}

TEST(AttachedAdapter, BatchedDecodeStepsKeepEachSequencesBitsOnExperts) {
  const std::string dir = test::make_random_model(test::scratch_dir() + "/moe", "tiny-moe-shared", DType::F32, 9);
  QwenModel model(dir);
  const LoraAdapter a = test::dora_with_random_b(model, kAll, 4, 8, 51, 0.3f);
  const LoraInferenceLayout layout = lora_inference_layout(a, model.config(), "test adapter");
  model.attach_adapter(&layout);
  test::expect_batched_step_is_lone_step(model);
}

TEST(AttachedAdapter, RefusesALayoutOfAnotherLayerCount) {
  const std::string tmp = test::scratch_dir();
  QwenModel model(test::make_tiny_model(tmp + "/m", 3));
  QwenConfig other = model.config();
  other.num_layers += 1;
  const LoraAdapter a = test::adapter_with_random_b(other, {"q_proj"}, 2, 4, false, 1, 0.1f);
  const LoraInferenceLayout layout = lora_inference_layout(a, other, "test adapter");
  EXPECT_NE(test::error_of([&] { model.attach_adapter(&layout); }).find("an adapter of 3 layers on a model of 2"),
            std::string::npos);
}

}  // namespace
}  // namespace qwenq
