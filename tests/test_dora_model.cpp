// DoRA in the CPU trainer (trainer/lora_model.h): a fresh DoRA adapter (init_peft, then m = ‖W‖) is the base model
// bit for bit; the gradients of A, B and m agree with central finite differences of the loss along random
// directions and along the gradient itself, with and without dropout, on a dense and on a 4-bit (NF4) base. The
// norms n are detached in the backward (PEFT's DoRA), so the differences run with n held at the unperturbed
// adapter's values (LoraStepOptions::dora_norms_from). PyTorch + PEFT is the oracle in
// tests/oracle/test_lora_grad_oracle.py (case qwen2_dora).
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "lora/lora_adapter.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_model.h"
#include "trainer/quantize_model.h"

namespace qwenq {
namespace {

// As tests/test_lora_model.cpp: Richardson-extrapolated central differences of the fp32 loss (~75).
constexpr double kFdStep = 2e-3;
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
  for (LoraTarget t : a.targets()) {
    for (int64_t l = 0; l < m.config().num_layers; ++l) {
      for (auto& b : a.at(l, t).B) b = 0.3f * static_cast<float>(rng.normal());
      for (auto& v : a.at(l, t).m) v *= 1.f + 0.3f * static_cast<float>(rng.normal());  // m/n far from 1
    }
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

template <typename F>
void for_each_value(LoraAdapter& a, F&& f) {
  for (int64_t l = 0; l < a.dims().num_layers; ++l) {
    for (LoraTarget t : a.targets()) {
      for (auto& v : a.at(l, t).A) f(v);
      for (auto& v : a.at(l, t).B) f(v);
      for (auto& v : a.at(l, t).m) f(v);
    }
  }
}

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
  };
  for (const Case cs : {Case{0.0, false}, Case{0.1, false}, Case{0.0, true}}) {
    SCOPED_TRACE(::testing::Message() << "dropout " << cs.dropout << (cs.nf4 ? ", NF4 base" : ", dense base"));
    const std::string dir = cs.nf4 ? nf4_model(test::scratch_dir()) : test::make_tiny_model(test::scratch_dir() + "/m", 21);
    QwenModel m(dir);
    const LoraAdapter a = dora_adapter(m, cs.dropout, true);
    const PackedBatch b = test_batch();
    const std::vector<int32_t> targets = next_token_targets(b);
    LoraStepOptions opt;
    opt.dropout_seed = 1234;
    opt.bf16_checkpoints = false;
    opt.dora_norms_from = &a;  // n fixed at the unperturbed adapter: the function the detached backward differentiates
    LoraAdapter g = a;
    for_each_value(g, [](float& v) { v = 0.f; });
    lora_loss_and_grad(m, a, b, targets, &g, opt);
    std::vector<float> grad;
    for_each_value(g, [&](float& v) { grad.push_back(v); });
    double mnorm = 0;
    for (int64_t l = 0; l < a.dims().num_layers; ++l)
      for (LoraTarget t : a.targets())
        for (float v : g.at(l, t).m) mnorm += double(v) * v;
    ASSERT_GT(mnorm, 0.0) << "no magnitude gradient: the test would prove nothing about m";
    auto loss_at = [&](const std::vector<float>& d, double h) {
      LoraAdapter p = a;
      size_t i = 0;
      for_each_value(p, [&](float& v) { v += static_cast<float>(h * d[i++]); });
      return lora_loss_and_grad(m, p, b, targets, nullptr, opt).nll_sum;
    };
    Rng rng(9);
    for (int trial = 0; trial < 4; ++trial) {
      std::vector<float> d(grad.size());
      double norm = 0;
      for (size_t i = 0; i < d.size(); ++i) {
        d[i] = trial == 0 ? grad[i] : static_cast<float>(rng.normal());
        norm += static_cast<double>(d[i]) * d[i];
      }
      for (auto& v : d) v = static_cast<float>(v / std::sqrt(norm));
      double analytic = 0;
      for (size_t i = 0; i < d.size(); ++i) analytic += static_cast<double>(grad[i]) * d[i];
      auto central = [&](double h) { return (loss_at(d, h) - loss_at(d, -h)) / (2 * h); };
      const double fd = (4 * central(kFdStep / 2) - central(kFdStep)) / 3;
      EXPECT_NEAR(fd, analytic, kFdRelTol * std::fabs(analytic) + kFdAbsTol) << "direction " << trial;
    }
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
