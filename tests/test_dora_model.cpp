// DoRA in the CPU trainer (trainer/lora_model.h): a fresh DoRA adapter (init_peft, then m = ‖W‖) is the base model
// bit for bit; the gradients of A, B and m agree with central finite differences of the loss along random
// directions and along the gradient itself, with and without dropout, on a dense and on a 4-bit (NF4) base. The
// norms n are detached in the backward (PEFT's DoRA), so the differences run with n held at the unperturbed
// adapter's values (LoraStepOptions::dora_norms_from). PyTorch + PEFT is the oracle in
// tests/oracle/test_lora_grad_oracle.py (cases qwen2_dora and qwen3_moe_dora). On mixtures of experts DoRA adapts every
// expert's Linear too (trainer/moe_block.h).
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "lora/lora_adapter.h"
#include "tests/support/directional_fd.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_training.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_model.h"
#include "trainer/quantize_model.h"

namespace qwenq {
namespace {

// As tests/test_lora_model.cpp: Richardson-extrapolated central differences of the fp32 loss (~75).
constexpr double kFdStep = 2e-3;
// MoE models along the gradient: a smaller step, so that no token changes experts inside it (tests/test_lora_model.cpp).
constexpr double kFdStepMoe = 1e-3;
constexpr double kFdRelTol = 5e-3;
constexpr double kFdAbsTol = 2e-3;

LoraAdapter dora_adapter(const QwenModel& m, double dropout, bool randomize) {
  LoraConfig cfg;
  cfg.r = 4;
  cfg.alpha = 16;
  cfg.dropout = dropout;
  cfg.use_dora = true;
  cfg.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  LoraAdapter a(lora_dims_of(m.config()), cfg);
  a.init_peft(3);
  init_dora_magnitudes(m, &a);
  if (!randomize) return a;
  Rng rng(4);
  for (size_t i = 0; i < a.slots().size(); ++i) {  // every adapted Linear, each expert's of a MoE layer too
    for (auto& b : a.weights(i).B) b = 0.3f * static_cast<float>(rng.normal());
    for (auto& v : a.weights(i).m) v *= 1.f + 0.3f * static_cast<float>(rng.normal());  // m/n far from 1
  }
  return a;
}

// The tiny model quantized to NF4 (its Linears dequantized per use by the trainer). Returns the NF4 directory.
std::string nf4_model(const std::string& root) {
  QuantizeOptions q;
  q.method = QuantizeOptions::Method::Nf4;
  q.model_dir = test::make_tiny_model(root + "/dense", 21);
  q.out_dir = root + "/nf4";
  q.overwrite = true;
  q.quiet = true;
  quantize_model(q);
  return q.out_dir;
}

PackedBatch test_batch() {
  return PackedBatch::from_sequences({{1, 5, 9, 200, 3, 3, 7, 40, 41, 42, 17}, {42, 17, 99, 100}, {7}});
}

using test::for_each_adapter_value;

TEST(DoraModel, FreshAdapterIsTheBaseModel) {
  QwenModel m(test::make_tiny_model(test::scratch_dir() + "/m", 21));
  const LoraAdapter a = dora_adapter(m, 0.0, false);
  const PackedBatch b = test_batch();
  EXPECT_EQ(lora_forward_logits(m, a, b), m.forward_logits(b));  // B = 0 and m = n: g = 1 exactly, v = 0
}

TEST(DoraModel, GradientsMatchFiniteDifferences) {
  struct Case {
    double dropout;
    bool nf4;
    const char* moe_preset;  // a mixture of experts: DoRA on every expert's Linear too (trainer/moe_block.h)
  };
  for (const Case cs : {Case{0.0, false, nullptr}, Case{0.1, false, nullptr}, Case{0.0, true, nullptr},
                        Case{0.0, false, "tiny-moe-shared"}, Case{0.1, false, "tiny-moe"}}) {
    SCOPED_TRACE(::testing::Message() << "dropout " << cs.dropout << (cs.nf4 ? ", NF4 base" : ", dense base") << ", "
                                      << (cs.moe_preset ? cs.moe_preset : "tiny"));
    const std::string dir =
        cs.moe_preset ? test::make_random_model(test::scratch_dir() + "/" + cs.moe_preset, cs.moe_preset, DType::F32, 22)
        : cs.nf4      ? nf4_model(test::scratch_dir())
                      : test::make_tiny_model(test::scratch_dir() + "/m", 21);
    QwenModel m(dir);
    const LoraAdapter a = dora_adapter(m, cs.dropout, true);
    const PackedBatch b = test_batch();
    const std::vector<int32_t> targets = next_token_targets(b);
    LoraStepOptions opt;
    opt.dropout_seed = 1234;
    opt.bf16_checkpoints = false;
    opt.dora_norms_from = &a;  // n fixed at the unperturbed adapter: the function the detached backward differentiates
    LoraAdapter g = test::zeros_like(a);
    lora_loss_and_grad(m, a, b, targets, &g, opt);
    std::vector<float> grad;
    for_each_adapter_value(g, [&](float& v) { grad.push_back(v); });
    double mnorm = 0, expert_mnorm = 0;
    for (size_t i = 0; i < g.slots().size(); ++i)
      for (float v : g.weights(i).m) (g.slots()[i].expert == kNoExpert ? mnorm : expert_mnorm) += double(v) * v;
    ASSERT_GT(mnorm, 0.0) << "no magnitude gradient: the test would prove nothing about m";
    if (cs.moe_preset) {
      ASSERT_GT(expert_mnorm, 0.0) << "no expert magnitude gradient";
    }
    auto loss_at = [&](const std::vector<float>& d, double h) {
      LoraAdapter p = a;
      size_t i = 0;
      for_each_adapter_value(p, [&](float& v) { v += static_cast<float>(h * d[i++]); });
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

TEST(DoraModel, InitMagnitudesRefusesAPlainAdapter) {
  QwenModel m(test::make_tiny_model(test::scratch_dir() + "/m", 21));
  LoraConfig cfg;
  LoraAdapter a(lora_dims_of(m.config()), cfg);
  EXPECT_NE(test::error_of([&] { init_dora_magnitudes(m, &a); }).find("does not use DoRA"), std::string::npos);
}

}  // namespace
}  // namespace qwenq
