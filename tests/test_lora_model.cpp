// The LoRA training forward/backward of the whole model (trainer/lora_model): with B = 0 the adapted model is the
// base model; the adapter gradients agree with central finite differences of the loss along random directions
// and along the gradient itself (fp32 checkpoints: tests/test_lora_bf16_checkpoints.cpp covers the bf16 ones);
// checkpointing (recompute) and keeping activations give bit-identical results (with the default bf16 ones);
// dropout masks are reproducible, and the gradients with dropout match finite differences too; the same on MoE models,
// whose MLP targets adapt every expert; NEFTune's noise is a training input only. PyTorch autograd + PEFT is the oracle in tests/oracle/test_lora_grad_oracle.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/rng.h"
#include "kernels/loss.h"
#include "lora/lora_adapter.h"
#include "tests/support/directional_fd.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_training.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_model.h"
#include "trainer/random_model.h"

namespace qwenq {
namespace {

// Directional derivatives of the summed loss (~75) by central differences with Richardson extrapolation over steps
// h and h/2, computed in fp32: rounding noise ~1e-4 / h (observed < 5e-4 at h = 1e-3), and the remaining h⁴ term
// matters only along the gradient, where the adapter (B ~ 0.3, s = 4) makes the loss strongly curved.
constexpr double kFdStep = 2e-3;
// MoE models: a step that moves a token to another expert is a jump of the loss; along the gradient of tiny-moe's
// adapter (derivative 36.5) one happens between ±2e-3 (central differences 39.7 there, 36.45 to 36.49 at 1e-3 and
// below), none at 1e-3. Random directions (derivatives ~0.1) keep kFdStep, whose rounding noise is 4x lower.
constexpr double kFdStepMoe = 1e-3;
constexpr double kFdRelTol = 5e-3;
constexpr double kFdAbsTol = 2e-3;
// The trainer's fp32 loss over the scored rows against a double cross-entropy of lora_forward_logits: fp32 logits
// from two GEMM paths (different row counts) and fp32 softmax sums; ~1e-6 relative expected.
constexpr double kMaskedLossRelTol = 1e-5;

std::string make_model(const std::string& dir, int64_t kv_heads = 0) {
  return test::make_tiny_model(dir, /*seed=*/21, kv_heads);
}

const std::vector<std::string> kAllTargets = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                              "gate_proj", "up_proj", "down_proj"};

LoraConfig config_of(double dropout, const std::vector<std::string>& targets, bool dora) {
  LoraConfig cfg;
  cfg.r = 4;
  cfg.alpha = 16;
  cfg.dropout = dropout;
  cfg.target_modules = targets;
  cfg.use_dora = dora;
  return cfg;
}

// dora: magnitudes from the base (init_dora_magnitudes), then scaled so that m / n is far from 1.
LoraAdapter random_adapter(const QwenModel& m, const LoraConfig& cfg) {
  const bool dora = cfg.use_dora;
  LoraAdapter a(lora_dims_of(m.config()), cfg);
  a.init_peft(3);
  if (dora) init_dora_magnitudes(m, &a);
  Rng rng(4);
  for (size_t i = 0; i < a.slots().size(); ++i) {
    for (auto& b : a.weights(i).B) b = 0.3f * static_cast<float>(rng.normal());  // nonzero B: every gradient flows
    for (auto& v : a.weights(i).m) v *= 1.f + 0.3f * static_cast<float>(rng.normal());
  }
  return a;
}

LoraAdapter random_adapter(const QwenModel& m, double dropout = 0.0,
                           const std::vector<std::string>& targets = kAllTargets, bool dora = false) {
  return random_adapter(m, config_of(dropout, targets, dora));
}

PackedBatch test_batch() {
  return PackedBatch::from_sequences({{1, 5, 9, 200, 3, 3, 7, 40, 41, 42, 17}, {42, 17, 99, 100}, {7}});
}

using test::for_each_adapter_value;
using test::zeros_like;

TEST(LoraModel, ZeroBIsTheBaseModel) {
  const std::string dir = make_model(test::scratch_dir() + "/m");
  QwenModel m(dir);
  LoraAdapter a = random_adapter(m);
  for (LoraTarget t : a.targets()) {
    for (int64_t l = 0; l < m.config().num_layers; ++l) std::fill(a.at(l, t).B.begin(), a.at(l, t).B.end(), 0.f);
  }  // (a dense model: every target is a layer's own Linear)
  const PackedBatch b = test_batch();
  EXPECT_EQ(lora_forward_logits(m, a, b), m.forward_logits(b));
}

TEST(LoraModel, GradientsMatchFiniteDifferences) {
  // Targets masked as SFT masks a prompt (the head sees only the scored rows); GQA and multi-head; and with dropout, whose masks are fixed by the step's seed (the loss is then a smooth
  // function of the adapter, with x̃ = m ⊙ x in every branch). And the mixtures of experts (every expert adapted; the
  // gradient of the earlier layers' adapters flows back through the MoE blocks: experts, routing weights, router,
  // shared expert), whose routing is piecewise constant: the steps below move no token to another expert.
  struct Case {
    int64_t kv;
    double dropout;
    const char* moe_preset;
  };
  for (const Case cs : {Case{0, 0.0, nullptr}, Case{4, 0.0, nullptr}, Case{0, 0.1, nullptr}, Case{0, 0.0, "tiny-moe"},
                        Case{0, 0.1, "tiny-moe-shared"}}) {
    const int64_t kv = cs.kv;
    SCOPED_TRACE(::testing::Message() << "kv heads " << kv << ", dropout " << cs.dropout << ", "
                                      << (cs.moe_preset ? cs.moe_preset : "dense"));
    const std::string where = test::scratch_dir() + "/kv" + std::to_string(kv) + (cs.moe_preset ? cs.moe_preset : "");
    const std::string dir = cs.moe_preset ? test::make_random_model(where, cs.moe_preset, DType::F32, 22)
                                          : make_model(where, kv);
    QwenModel m(dir);
    LoraAdapter a = random_adapter(m, cs.dropout);
    const PackedBatch b = test_batch();
    // SFT-style masking besides each sequence's last token: every third target ignored, so the head scores a
    // gathered subset of rows and scatters its gradient back.
    std::vector<int32_t> targets = next_token_targets(b);
    for (size_t t = 0; t < targets.size(); t += 3) targets[t] = kIgnoreIndex;
    LoraStepOptions opt;
    opt.dropout_seed = 1234;
    opt.bf16_checkpoints = false;  // the exact fp32 model: bf16-rounded block inputs make the loss a step function
    LoraAdapter g = zeros_like(a);
    const LoraStepResult r = lora_loss_and_grad(m, a, b, targets, &g, opt);
    EXPECT_EQ(r.counted, 8);  // 16 tokens less each sequence's last (10, 14, 15) and 0, 3, 6, 9, 12
    std::vector<float> grad;
    for_each_adapter_value(g, [&](float& v) { grad.push_back(v); });
    auto loss_at = [&](const std::vector<float>& dir, double h) {
      LoraAdapter p = a;
      size_t i = 0;
      for_each_adapter_value(p, [&](float& v) { v += static_cast<float>(h * dir[i++]); });
      return lora_loss_and_grad(m, p, b, targets, nullptr, opt).nll_sum;
    };
    test::DirectionalFdOptions fd;
    fd.trials = 4;
    fd.step = [&](int trial) { return cs.moe_preset && trial == 0 ? kFdStepMoe : kFdStep; };  // smaller: more noise
    fd.rel_tol = kFdRelTol;
    fd.abs_tol = kFdAbsTol;
    test::expect_directional_derivatives(grad, loss_at, fd);
  }
}

// PEFT's finer selection (lora/lora_select.h): layers without an adapter, Linears with ranks and alphas of their own
// (so each branch must use its own scaling forward and backward), with and without DoRA and dropout.
TEST(LoraModel, FineSelectionGradientsMatchFiniteDifferences) {
  const std::string dir = make_model(test::scratch_dir() + "/fine");
  QwenModel m(dir);
  ASSERT_GE(m.config().num_layers, 2);
  for (const bool dora : {false, true}) {
    SCOPED_TRACE(dora ? "DoRA" : "LoRA");
    LoraConfig cfg = config_of(dora ? 0.0 : 0.1, kAllTargets, dora);
    cfg.layers_to_transform = {1};                                         // layer 0 unadapted
    cfg.rank_pattern = {{"down_proj", 2}, {"q_proj", 3}};                 // three ranks
    cfg.alpha_pattern = {{"v_proj", 40}, {"layers.1.mlp.gate_proj", 2}};  // and four scalings
    cfg.exclude_modules = {"k_proj"};
    const LoraAdapter a = random_adapter(m, cfg);
    ASSERT_FALSE(a.has(0, LoraTarget::QProj));
    ASSERT_FALSE(a.has(1, LoraTarget::KProj));
    ASSERT_EQ(a.at(1, LoraTarget::QProj).r, 3);
    ASSERT_EQ(a.at(1, LoraTarget::DownProj).r, 2);
    ASSERT_EQ(a.at(1, LoraTarget::VProj).scaling, 10.0);   // 40 / 4
    ASSERT_EQ(a.at(1, LoraTarget::GateProj).scaling, 0.5); // 2 / 4
    const PackedBatch b = test_batch();
    const std::vector<int32_t> targets = next_token_targets(b);
    LoraStepOptions opt;
    opt.dropout_seed = 99;
    opt.bf16_checkpoints = false;
    // DoRA's norms are detached in the backward (PEFT's): the differences hold them at the unperturbed adapter's.
    if (dora) opt.dora_norms_from = &a;
    LoraAdapter g = zeros_like(a);
    lora_loss_and_grad(m, a, b, targets, &g, opt);
    std::vector<float> grad;  // A, B and DoRA's m
    for_each_adapter_value(g, [&](float& v) { grad.push_back(v); });
    auto loss_at = [&](const std::vector<float>& d, double h) {
      LoraAdapter p = a;
      size_t k = 0;
      for_each_adapter_value(p, [&](float& v) { v += static_cast<float>(h * d[k++]); });
      return lora_loss_and_grad(m, p, b, targets, nullptr, opt).nll_sum;
    };
    test::DirectionalFdOptions fd;
    fd.trials = 4;
    fd.step = [](int) { return kFdStep; };
    fd.rel_tol = kFdRelTol;
    fd.abs_tol = kFdAbsTol;
    test::expect_directional_derivatives(grad, loss_at, fd);
  }
}

// The recomputation skips what no backward reads (a dense MLP's down-projection product: only its u = x̃ Aᵀ runs,
// nothing for an unadapted one, the whole Linear for DoRA, whose backward reads z = x̃ Wᵀ), so the adapters vary:
// every target, none on down_proj, down_proj alone, and DoRA on every target.
// The head scores only the rows whose target counts: the loss and its count are those of the full logits
// (lora_forward_logits, every row) through a double-precision cross-entropy over the counted rows.
TEST(LoraModel, MaskedTargetsAreScoredFromTheFullLogits) {
  const std::string dir = make_model(test::scratch_dir() + "/m");
  QwenModel m(dir);
  const LoraAdapter a = random_adapter(m);
  const PackedBatch b = test_batch();
  std::vector<int32_t> targets = next_token_targets(b);
  for (size_t t = 0; t < 6; ++t) targets[t] = kIgnoreIndex;  // a "prompt" of 6 tokens
  const std::vector<float> logits = lora_forward_logits(m, a, b);
  const int64_t V = m.config().vocab_size;
  double want = 0;
  int64_t counted = 0;
  for (size_t t = 0; t < targets.size(); ++t) {
    if (targets[t] == kIgnoreIndex) continue;
    const float* row = logits.data() + t * V;
    double mx = row[0], sum = 0;
    for (int64_t v = 1; v < V; ++v) mx = std::max(mx, static_cast<double>(row[v]));
    for (int64_t v = 0; v < V; ++v) sum += std::exp(row[v] - mx);
    want += mx + std::log(sum) - row[targets[t]];
    ++counted;
  }
  LoraStepOptions opt;
  opt.bf16_checkpoints = false;  // lora_forward_logits is the fp32 model
  LoraAdapter g = zeros_like(a);
  for (LoraAdapter* grads : {static_cast<LoraAdapter*>(nullptr), &g}) {  // the loss alone, and with gradients
    const LoraStepResult r = lora_loss_and_grad(m, a, b, targets, grads, opt);
    EXPECT_EQ(r.counted, counted);
    EXPECT_NEAR(r.nll_sum, want, kMaskedLossRelTol * want);
  }
  targets[2] = static_cast<int32_t>(V);
  EXPECT_NE(test::error_of([&] { lora_loss_and_grad(m, a, b, targets, nullptr, opt); })
                .find("lora_loss_and_grad: target " + std::to_string(V) + " of row 2 is outside the vocabulary"),
            std::string::npos);
}

TEST(LoraModel, CheckpointingAndDropoutAreReproducible) {
  struct Kind {
    const char* name;
    std::vector<std::string> targets;
    bool dora;
  };
  const Kind kinds[] = {{"every target", kAllTargets, false},
                        {"no down_proj", {"q_proj", "v_proj", "gate_proj"}, false},
                        {"down_proj alone", {"down_proj"}, false},
                        {"DoRA, every target", kAllTargets, true}};
  for (bool moe : {false, true})  // a dense model and a MoE one (every target: the experts' adapters too)
  for (const Kind& kind : kinds) {
    if (moe && kind.targets.size() < kAllTargets.size()) continue;  // the MoE layers' MLP runs whole anyway
    SCOPED_TRACE(std::string(moe ? "tiny-moe-shared, " : "tiny, ") + kind.name);
    const std::string root = test::scratch_dir();
    const std::string dir = moe ? test::make_random_model(root + "/moe", "tiny-moe-shared", DType::BF16, 23)
                                : make_model(root + "/m");
    QwenModel m(dir);
    for (double p : {0.0, 0.1}) {
      LoraAdapter a = random_adapter(m, p, kind.targets, kind.dora);
      const PackedBatch b = test_batch();
      const std::vector<int32_t> targets = next_token_targets(b);
      LoraStepOptions ck, keep;
      ck.dropout_seed = keep.dropout_seed = 77;
      keep.checkpointing = false;
      LoraAdapter g1 = zeros_like(a), g2 = zeros_like(a);
      const auto r1 = lora_loss_and_grad(m, a, b, targets, &g1, ck);
      const auto r2 = lora_loss_and_grad(m, a, b, targets, &g2, keep);
      EXPECT_EQ(r1.nll_sum, r2.nll_sum) << "dropout " << p;
      for (size_t i = 0; i < a.slots().size(); ++i) {
        EXPECT_EQ(g1.weights(i).A, g2.weights(i).A) << "dropout " << p << ", " << a.slots()[i].path;
        EXPECT_EQ(g1.weights(i).B, g2.weights(i).B) << "dropout " << p << ", " << a.slots()[i].path;
        EXPECT_EQ(g1.weights(i).m, g2.weights(i).m) << "dropout " << p << ", " << a.slots()[i].path;
      }
      // Another dropout seed changes the loss only when dropout is on.
      ck.dropout_seed = 78;
      const auto r3 = lora_loss_and_grad(m, a, b, targets, nullptr, ck);
      if (p == 0.0) EXPECT_EQ(r3.nll_sum, r1.nll_sum);
      else EXPECT_NE(r3.nll_sum, r1.nll_sum);
    }
  }
}

// NEFTune (LoraStepOptions::neftune_half_width): the noise is an input of training steps only. With it, checkpointing
// and kept activations still agree bit for bit (the checkpoint holds the noisy embeddings the recomputation reads);
// it moves the loss, differently for another dropout seed; evaluation (train = false) and half-width 0 give the
// noise-free bits.
TEST(LoraModel, NeftuneNoiseIsATrainingInputOnly) {
  QwenModel m(make_model(test::scratch_dir() + "/m"));
  LoraAdapter a = random_adapter(m);
  const PackedBatch b = test_batch();
  const std::vector<int32_t> targets = next_token_targets(b);
  LoraStepOptions quiet, noisy, keep;
  quiet.dropout_seed = noisy.dropout_seed = keep.dropout_seed = 77;
  noisy.neftune_half_width = keep.neftune_half_width = 0.05f;
  keep.checkpointing = false;
  LoraAdapter g1 = zeros_like(a), g2 = zeros_like(a);
  const double clean = lora_loss_and_grad(m, a, b, targets, nullptr, quiet).nll_sum;
  const double r1 = lora_loss_and_grad(m, a, b, targets, &g1, noisy).nll_sum;
  EXPECT_EQ(lora_loss_and_grad(m, a, b, targets, &g2, keep).nll_sum, r1);
  for (size_t i = 0; i < a.slots().size(); ++i) {
    EXPECT_EQ(g1.weights(i).A, g2.weights(i).A) << a.slots()[i].path;
    EXPECT_EQ(g1.weights(i).B, g2.weights(i).B) << a.slots()[i].path;
  }
  EXPECT_NE(r1, clean);
  LoraStepOptions other = noisy;
  other.dropout_seed = 78;
  EXPECT_NE(lora_loss_and_grad(m, a, b, targets, nullptr, other).nll_sum, r1);
  LoraStepOptions eval = noisy;
  eval.train = false;
  EXPECT_EQ(lora_loss_and_grad(m, a, b, targets, nullptr, eval).nll_sum, clean);
  LoraStepOptions zero = noisy;
  zero.neftune_half_width = 0.f;
  EXPECT_EQ(lora_loss_and_grad(m, a, b, targets, nullptr, zero).nll_sum, clean);
}

TEST(LoraModel, RefusesAnAdapterForAnotherBase) {
  const std::string root = test::scratch_dir();
  QwenModel m(make_model(root + "/a"));
  RandomModelOptions o;
  o.out_dir = root + "/b";
  o.layers = 3;
  write_random_model(o);
  QwenModel other(o.out_dir);
  LoraAdapter a = random_adapter(other);
  const PackedBatch b = test_batch();
  EXPECT_NE(test::error_of([&] { lora_loss_and_grad(m, a, b, next_token_targets(b), nullptr, {}); })
                .find("the adapter was made for another base model"),
            std::string::npos);
}

// On a MoE model an MLP target adapts every expert (and the shared expert), each with its own A and B (and with DoRA
// its own magnitude), as PEFT does.
TEST(LoraModel, MoeMlpTargetsAdaptEveryExpert) {
  const std::string dir = test::make_random_model(test::scratch_dir() + "/moe", "tiny-moe-shared", DType::BF16, 23);
  QwenModel m(dir);
  const LoraAdapter a = random_adapter(m);
  // 2 MoE layers x (4 attention + 3 x (6 experts + shared)).
  EXPECT_EQ(a.slots().size(), 2u * (4 + 3 * 7));
  EXPECT_FALSE(a.has(0, LoraTarget::UpProj));
  EXPECT_EQ(a.expert_at(1, 5, LoraTarget::DownProj).K, m.config().moe_intermediate_size);
  EXPECT_EQ(a.expert_at(1, -1, LoraTarget::UpProj).N, m.config().shared_expert_intermediate_size);
  EXPECT_EQ(a.slots()[5].path, "mlp.experts.1.gate_proj");
  LoraConfig dora;  // DoRA: a magnitude per output row of every expert's Linear too
  dora.use_dora = true;
  dora.target_modules = {"q_proj", "up_proj"};
  const LoraAdapter d(lora_dims_of(m.config()), dora);
  EXPECT_EQ(static_cast<int64_t>(d.expert_at(1, 5, LoraTarget::UpProj).m.size()), m.config().moe_intermediate_size);
  EXPECT_EQ(static_cast<int64_t>(d.expert_at(1, -1, LoraTarget::UpProj).m.size()),
            m.config().shared_expert_intermediate_size);
}

}  // namespace
}  // namespace qwenq
