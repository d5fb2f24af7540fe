// bf16 activation checkpoints (LoraStepOptions::bf16_checkpoints, trainer/lora_model.h): every block input and the
// final residual are rounded to bf16 where the forward produces them, which is what the GPU trainer stores.
//   - exact: with B = 0 (the adapter adds nothing) the loss is the base model run block by block through
//     QwenModel's calibration API with each x_l rounded by core/dtype.h's f32_to_bf16 (round to nearest even) and
//     widened back, then model.norm, lm_head and cross_entropy_forward_ref: the same kernels, so the same bits;
//     and it differs from the unrounded loss (the rounding is really applied);
//   - the size of the effect, one step: loss and every gradient of the tiny random model and of stories260K with
//     bf16 against fp32 checkpoints, within kLossRelTol / kGradRelTol, and not equal;
//   - over training: 30 AdamW steps (train_lora) with each setting on the tiny model and on stories260K, the
//     per-step losses within kTrainRelTol of each other.
// Measured (printed): one step, loss 1.6e-6 (tiny) and 2.3e-4 (stories260K) relative, gradients 1.8e-2 and
// 2.0e-2 of a tensor's max |value| at worst; 30 steps, per-step losses within 1.5e-4 and 1.3e-3 (stories260K:
// 4.58 -> 0.7435 against 0.7437). The tolerances are 5x (gradients) to 20x the measurements: room for other seeds,
// far below what a wrong rounding site or a gradient not passed straight through (O(1) changes) gives.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/dtype.h"
#include "core/rng.h"
#include "kernels/loss.h"
#include "kernels/norm.h"
#include "lora/lora_adapter.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_training.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_model.h"
#include "trainer/train_loop.h"

namespace qwenq {
namespace {

constexpr double kLossRelTol = 5e-3;   // one step, |loss_bf16 / loss_fp32 - 1|
constexpr double kGradRelTol = 1e-1;   // one step, per tensor: max |g_bf16 - g_fp32| / max |g_fp32|
constexpr double kTrainRelTol = 1e-2;  // 30 steps: every logged loss, relative

LoraAdapter random_adapter(const QwenModel& m, float b_scale) {
  LoraConfig cfg;
  cfg.r = 4;
  cfg.alpha = 8;
  cfg.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  LoraAdapter a(lora_dims_of(m.config()), cfg);
  a.init_peft(3);
  Rng rng(4);
  for (LoraTarget t : a.targets()) {
    for (int64_t l = 0; l < m.config().num_layers; ++l) {
      for (float& b : a.at(l, t).B) b = b_scale * static_cast<float>(rng.normal());
    }
  }
  return a;
}

using test::zeros_like;

void round_bf16(std::vector<float>* x) {
  bf16_round_inplace(x->data(), x->size());
}

TEST(LoraBf16Checkpoints, AreTheModelWithEveryBlockInputRounded) {
  const QwenModel m(test::make_tiny_model(test::scratch_dir() + "/m", 21));
  const QwenConfig& c = m.config();
  const LoraAdapter a = random_adapter(m, 0.f);  // B = 0: the adapted model is the base model
  const PackedBatch b = PackedBatch::from_sequences({{1, 5, 9, 200, 3, 3, 7, 40, 41, 42, 17}, {42, 17, 99, 100}, {7}});
  const std::vector<int32_t> targets = next_token_targets(b);
  const int64_t T = b.num_tokens(), C = c.hidden_size, V = c.vocab_size;

  std::vector<float> x;
  m.embed_batch(b, &x);
  round_bf16(&x);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    m.block_forward(l, b, x.data(), LinearInputHook());
    round_bf16(&x);
  }
  std::vector<float> hidden(static_cast<size_t>(T * C)), logits(static_cast<size_t>(T * V)), nll(static_cast<size_t>(T));
  const TensorView& fn = m.weights().final_norm;
  rmsnorm_forward_ref(x.data(), T, C, fn.data, fn.dtype, c.rms_norm_eps, hidden.data());
  m.logits(hidden.data(), T, logits.data());
  const int64_t counted = cross_entropy_forward_ref(logits.data(), T, V, targets.data(), nll.data());
  double want = 0;
  for (float v : nll) want += v;

  LoraStepOptions opt;
  ASSERT_TRUE(opt.bf16_checkpoints);  // the default
  const LoraStepResult got = lora_loss_and_grad(m, a, b, targets, nullptr, opt);
  EXPECT_EQ(got.counted, counted);
  EXPECT_EQ(got.nll_sum, want);
  opt.bf16_checkpoints = false;
  const LoraStepResult exact = lora_loss_and_grad(m, a, b, targets, nullptr, opt);
  EXPECT_NE(exact.nll_sum, want);
  std::printf("B = 0: loss with bf16 block inputs %.7f, fp32 %.7f\n", want, exact.nll_sum);
}

// One step's loss and gradients with bf16 against fp32 checkpoints; returns the worst gradient ratio.
void expect_step_close(const QwenModel& m, const LoraAdapter& a, const PackedBatch& b, const std::string& what) {
  SCOPED_TRACE(what);
  const std::vector<int32_t> targets = next_token_targets(b);
  LoraStepOptions o16, o32;
  o32.bf16_checkpoints = false;
  LoraAdapter g16 = zeros_like(a), g32 = zeros_like(a);
  const LoraStepResult r16 = lora_loss_and_grad(m, a, b, targets, &g16, o16);
  const LoraStepResult r32 = lora_loss_and_grad(m, a, b, targets, &g32, o32);
  const double loss_rel = std::fabs(r16.nll_sum / r32.nll_sum - 1);
  EXPECT_LE(loss_rel, kLossRelTol);
  EXPECT_NE(r16.nll_sum, r32.nll_sum);
  double worst = 0;
  for (LoraTarget t : a.targets()) {
    for (int64_t l = 0; l < a.dims().num_layers; ++l) {
      for (bool is_b : {false, true}) {
        const std::vector<float>& x = is_b ? g16.at(l, t).B : g16.at(l, t).A;
        const std::vector<float>& y = is_b ? g32.at(l, t).B : g32.at(l, t).A;
        double mx = 0, err = 0;
        for (size_t i = 0; i < y.size(); ++i) {
          mx = std::max(mx, static_cast<double>(std::fabs(y[i])));
          err = std::max(err, static_cast<double>(std::fabs(x[i] - y[i])));
        }
        const double ratio = err / std::max(mx, 1e-30);
        worst = std::max(worst, ratio);
        EXPECT_LE(ratio, kGradRelTol) << "layer " << l << " " << lora_target_name(t) << (is_b ? " B" : " A");
      }
    }
  }
  EXPECT_GT(worst, 0.0);
  std::printf("%s, one step: loss %.6f (bf16) vs %.6f (fp32), rel %.2e; worst gradient error / max %.2e\n",
              what.c_str(), r16.nll_sum, r32.nll_sum, loss_rel, worst);
}

TEST(LoraBf16Checkpoints, MoveOneStepLittle) {
  const std::string root = test::scratch_dir();
  const QwenModel tiny(test::make_tiny_model(root + "/m", 21));
  expect_step_close(tiny, random_adapter(tiny, 0.3f), test::random_batch({60, 33, 7}, tiny.config().vocab_size, 5),
                    "tiny random model");
  QWENQ_REQUIRE_SHARED_DATA();
  const QwenModel stories(test::import_stories260k(root + "/stories"));
  const std::vector<int32_t> text = test::tinystories_tokens(stories.dir());
  ASSERT_GE(text.size(), 512u);
  const PackedBatch b = PackedBatch::from_sequences(
      {std::vector<int32_t>(text.begin(), text.begin() + 256), std::vector<int32_t>(text.begin() + 256, text.begin() + 512)});
  expect_step_close(stories, random_adapter(stories, 0.05f), b, "stories260K");
}

// 30 steps of train_lora with bf16 and with fp32 checkpoints: the per-step losses.
void expect_runs_close(const std::string& model, const std::string& root, const std::string& what) {
  SCOPED_TRACE(what);
  const std::string data = test::make_text_data(root + "-d.jsonl", 200);
  std::vector<double> l16, l32;
  for (bool bf16 : {true, false}) {
    TrainOptions o = test::small_lora_options(model, data, root + (bf16 ? "/run16" : "/run32"), 30);
    o.bf16_checkpoints = bf16;
    train_lora(o);
    (bf16 ? l16 : l32) = test::losses_of(root + (bf16 ? "/run16" : "/run32") + "/metrics.jsonl");
  }
  ASSERT_EQ(l16.size(), 30u);
  ASSERT_EQ(l32.size(), 30u);
  double worst = 0;
  for (size_t i = 0; i < l16.size(); ++i) {
    const double rel = std::fabs(l16[i] / l32[i] - 1);
    worst = std::max(worst, rel);
    EXPECT_LE(rel, kTrainRelTol) << "step " << i + 1;
  }
  EXPECT_GT(worst, 0.0);
  std::printf("%s, 30 steps: loss %.4f -> %.4f (bf16) vs %.4f -> %.4f (fp32); worst per-step rel %.2e\n",
              what.c_str(), l16.front(), l16.back(), l32.front(), l32.back(), worst);
}

TEST(LoraBf16Checkpoints, TrainLikeFp32) {
  const std::string root = test::scratch_dir();
  expect_runs_close(test::make_tiny_model(root + "/m", 21), root + "/tiny", "tiny random model");
  QWENQ_REQUIRE_SHARED_DATA();
  expect_runs_close(test::import_stories260k(root + "/stories"), root + "/stories-run", "stories260K");
}

}  // namespace
}  // namespace qwenq
