// LoftQ on whole models (trainer/quantize_model.h's loftq options, trainer/adapter_init.h): the adapter `qwen-quant
// nf4|rtn --loftq-rank` writes is exactly what the one-shot initialisation computes on the base it stored (so the
// stored base is q(X) of the iteration's X), it brings the logits closer to the original model's than the base
// alone, `train --init-adapter` and `train --loftq-model` start from it, and the wrong inputs are refused by name.
// The numerics of one Linear are tests/test_loftq.cpp; PEFT's LoftQ is tests/oracle/test_loftq_oracle.py.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "core/files.h"
#include "lora/peft_io.h"
#include "tests/support/adapter_init_checks.h"
#include "tests/support/safetensors_edit.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_training.h"
#include "trainer/adapter_init.h"
#include "trainer/gptq_model.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_model.h"
#include "trainer/quantize_model.h"
#include "trainer/train_loop.h"

namespace qwenq {
namespace {

using test::error_of;

// The random model's Linears are white noise, whose quantization residual has no strong directions: rank 4 removes
// 9.8 % of the mean logit error with one iteration and 21.5 % with five (measured); a real model's residual gains
// more (stories260K in the README).
constexpr double kLogitGain = 0.95;

using test::all_linear_lora;

QuantizeOptions loftq_quantize(const std::string& dense, const std::string& out, QuantizeOptions::Method m, int iters) {
  QuantizeOptions q = test::small_quantize_options(dense, out, m);
  q.loftq = all_linear_lora(4, 8);  // s = 2: the split A = R/√s, B = L/√s matters
  q.loftq_iters = iters;
  return q;
}

// Every adapted Linear (each expert's of a MoE layer too) holds the same A and B.
void expect_same_adapter(const LoraAdapter& a, const LoraAdapter& b) {
  ASSERT_EQ(a.slots().size(), b.slots().size());
  for (size_t i = 0; i < a.slots().size(); ++i) {
    SCOPED_TRACE(testing::Message() << "layer " << a.slots()[i].layer << " " << a.slots()[i].path);
    EXPECT_EQ(a.slots()[i].path, b.slots()[i].path);
    EXPECT_EQ(a.weights(i).A, b.weights(i).A);
    EXPECT_EQ(a.weights(i).B, b.weights(i).B);
  }
}

using test::mean_logit_error;

TEST(LoftqModel, WrittenAdapterIsTheOneShotStepOnTheStoredBase) {
  const std::string root = test::scratch_dir();
  const std::string dense = test::make_tiny_model(root + "/dense", 3);
  struct Case {
    const char* name;
    QuantizeOptions::Method method;
    int iters;
  };
  for (const Case c : {Case{"nf4, 1 iteration", QuantizeOptions::Method::Nf4, 1},
                       Case{"nf4, 4 iterations", QuantizeOptions::Method::Nf4, 4},
                       Case{"rtn g32, 3 iterations", QuantizeOptions::Method::Rtn, 3}}) {
    SCOPED_TRACE(c.name);
    const std::string out = root + "/q" + std::to_string(static_cast<int>(c.method)) + "_" + std::to_string(c.iters);
    const QuantizeReport rep = quantize_model(loftq_quantize(dense, out, c.method, c.iters));
    EXPECT_LT(rep.loftq_error, rep.loftq_plain_error);
    const QwenModel base(out);
    const LoraAdapter written = load_peft_adapter(path_join(out, "loftq_init"), lora_dims_of(base.config()));
    LoraAdapter oneshot(lora_dims_of(base.config()), all_linear_lora(4, 8));
    const LoftqInitReport r = loftq_init_adapter(base, dense, &oneshot, true);
    EXPECT_EQ(r.linears, 7 * base.config().num_layers);
    expect_same_adapter(written, oneshot);
    EXPECT_NEAR(r.corrected_error, rep.loftq_error, 1e-9 * rep.loftq_error);
  }
}

// GPTQ: LoftQ one-shot on the finished model (its iterations are refused), written inside the output before it is
// renamed into place.
TEST(LoftqModel, GptqWritesTheOneShotAdapter) {
  const std::string root = test::scratch_dir();
  const std::string dense = test::make_tiny_model(root + "/dense", 7);
  GptqModelOptions g;
  g.out.model_dir = dense;
  g.out.out_dir = root + "/gptq";
  g.out.group_size = 32;
  g.out.quiet = true;
  g.out.loftq = all_linear_lora(4, 8);
  g.calib_path = test::write_random_words(root + "/calib.txt", 20000, 3);
  g.calib_samples = 8;
  g.calib_seq_len = 48;
  const QuantizeReport rep = gptq_quantize_model(g);
  EXPECT_LT(rep.loftq_error, rep.loftq_plain_error);
  EXPECT_GT(rep.loftq_error, 0.0);
  const QwenModel base(g.out.out_dir);
  const LoraAdapter written = load_peft_adapter(path_join(g.out.out_dir, "loftq_init"), lora_dims_of(base.config()));
  LoraAdapter oneshot(lora_dims_of(base.config()), all_linear_lora(4, 8));
  loftq_init_adapter(base, dense, &oneshot, true);
  expect_same_adapter(written, oneshot);
  // Refused before any work: iterations, and a rank the model's Linears cannot hold.
  g.out.out_dir = root + "/gptq_iter";
  g.out.loftq_iters = 3;
  EXPECT_NE(error_of([&] { gptq_quantize_model(g); }).find("LoftQ runs one-shot after GPTQ"), std::string::npos);
  g.out.loftq_iters = 1;
  g.out.loftq = all_linear_lora(65, 65);
  EXPECT_NE(error_of([&] { gptq_quantize_model(g); }).find("--loftq-rank: LoRA rank r=65 exceeds"), std::string::npos);
  EXPECT_FALSE(dir_exists(g.out.out_dir));
}

// stories260K's intermediate size 172 does not pack into int32 words: the base is padded to 192 zero channels, the
// adapter is shaped for the padded model, and the one-shot step pads the original's weights with zeros to match.
TEST(LoftqModel, PaddedIntermediate) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string root = test::scratch_dir();
  const std::string dense = test::import_stories260k(root + "/dense");
  QuantizeOptions q = loftq_quantize(dense, root + "/rtn", QuantizeOptions::Method::Rtn, 2);
  q.pad_intermediate = true;
  quantize_model(q);
  const QwenModel base(q.out_dir);
  ASSERT_EQ(base.config().intermediate_size, 192);
  const LoraAdapter written = load_peft_adapter(path_join(q.out_dir, "loftq_init"), lora_dims_of(base.config()));
  LoraAdapter oneshot(lora_dims_of(base.config()), all_linear_lora(4, 8));
  loftq_init_adapter(base, dense, &oneshot, true);
  expect_same_adapter(written, oneshot);
  // The padded rows of gate/up and columns of down stay zero in B and A: nothing leaks into the padding.
  test::expect_padding_untouched(oneshot, base.config().num_layers, 172, 192);
}

TEST(LoftqModel, AdapterBringsLogitsTowardTheOriginal) {
  const std::string root = test::scratch_dir();
  const std::string dense = test::make_tiny_model(root + "/dense", 4);
  const QwenModel orig(dense);
  const PackedBatch batch = test::random_batch({40, 25}, orig.config().vocab_size, 9);
  LoraAdapter zero(lora_dims_of(orig.config()), all_linear_lora(4, 8));  // B = 0: the plain model
  const std::vector<float> ref = lora_forward_logits(orig, zero, batch);
  double errors[2];
  for (int iters : {1, 5}) {
    const std::string out = root + "/nf4_" + std::to_string(iters);
    quantize_model(loftq_quantize(dense, out, QuantizeOptions::Method::Nf4, iters));
    const QwenModel base(out);
    const LoraAdapter lq = load_peft_adapter(path_join(out, "loftq_init"), lora_dims_of(base.config()));
    const double plain = mean_logit_error(base, zero, ref, batch);
    const double corrected = mean_logit_error(base, lq, ref, batch);
    std::printf("nf4 + LoftQ r4, %d iteration(s): mean |logit error| %.5f -> %.5f\n", iters, plain, corrected);
    EXPECT_LT(corrected, kLogitGain * plain);
    errors[iters == 1 ? 0 : 1] = corrected;
  }
  EXPECT_LT(errors[1], errors[0]);
}

// A mixture of experts (Qwen2-MoE with a shared expert): every expert's Linear gets its own rank-r correction (PEFT's
// mlp.experts.<e>.* names), both where the quantizer iterates (rtn, 3 iterations) and one-shot on the stored base
// (nf4, 1 iteration: the same as loftq_init_adapter recomputes), and the corrected model is closer to the original.
TEST(LoftqModel, MoeAdaptsEveryExpert) {
  const std::string root = test::scratch_dir();
  const std::string dense = test::make_random_model(root + "/moe", "tiny-moe-shared", DType::F32, 6);
  const QwenModel orig(dense);
  const QwenConfig& c = orig.config();
  const PackedBatch batch = test::random_batch({40, 25}, c.vocab_size, 9);
  LoraAdapter zero(lora_dims_of(c), all_linear_lora(4, 8));
  const std::vector<float> ref = lora_forward_logits(orig, zero, batch);
  const int64_t slots = c.num_layers * (4 + 3 * (c.num_experts + 1));
  for (const auto& [method, iters] : {std::make_pair(QuantizeOptions::Method::Nf4, 1),
                                      std::make_pair(QuantizeOptions::Method::Rtn, 3)}) {
    SCOPED_TRACE(iters);
    const std::string out = root + "/q" + std::to_string(iters);
    const QuantizeReport rep = quantize_model(loftq_quantize(dense, out, method, iters));
    EXPECT_LT(rep.loftq_error, rep.loftq_plain_error);
    const QwenModel base(out);
    const LoraAdapter written = load_peft_adapter(path_join(out, "loftq_init"), lora_dims_of(base.config()));
    EXPECT_EQ(static_cast<int64_t>(written.slots().size()), slots);
    EXPECT_TRUE(written.has_expert(0, 3, LoraTarget::DownProj) && written.has_expert(1, -1, LoraTarget::GateProj));
    if (iters == 1) {
      LoraAdapter oneshot(lora_dims_of(base.config()), all_linear_lora(4, 8));
      const LoftqInitReport r = loftq_init_adapter(base, dense, &oneshot, true);
      EXPECT_EQ(r.linears, slots);
      expect_same_adapter(written, oneshot);
    }
    LoraAdapter none(lora_dims_of(base.config()), all_linear_lora(4, 8));
    const double plain = mean_logit_error(base, none, ref, batch);
    const double corrected = mean_logit_error(base, written, ref, batch);
    std::printf("tiny-moe-shared, LoftQ r4, %d iteration(s): mean |logit error| %.5f -> %.5f\n", iters, plain,
                corrected);
    // Measured: -1 % at 1 iteration, -21 % at 3 (the dense tiny model: -10 % at 1). A token whose routing the
    // rounding flipped is one no rank-r correction of the experts undoes (not measured apart), so one iteration must
    // only not hurt.
    EXPECT_LT(corrected, (iters == 1 ? 1.0 : kLogitGain) * plain);
  }
}

TEST(LoftqModel, TrainStartsFromTheLoftqAdapter) {
  const std::string root = test::scratch_dir();
  const std::string dense = test::make_tiny_model(root + "/dense", 5);
  const std::string base = root + "/nf4";
  quantize_model(loftq_quantize(dense, base, QuantizeOptions::Method::Nf4, 1));
  const std::string data = test::make_text_data(root + "/d.jsonl", 60);
  auto run = [&](const std::string& name, const std::string& init_adapter, const std::string& loftq_model,
                 bool dora = false) {
    TrainOptions o = test::small_lora_options(base, data, root + "/" + name, 2);  // r 4, alpha 8, all seven
    o.lora.use_dora = dora;
    o.init_adapter = init_adapter;
    o.loftq_model = loftq_model;
    return train_lora(o).first_eval_loss;
  };
  const double plain = run("plain", "", "");
  const double from_dir = run("init", path_join(base, "loftq_init"), "");
  const double oneshot = run("oneshot", "", dense);
  EXPECT_EQ(from_dir, oneshot);  // the same adapter (one iteration: the stored base is q(W))
  EXPECT_NE(from_dir, plain);
  // DoRA after LoftQ: m = ‖Q + s·B A‖ per row (PEFT's order: LoftQ, then dora_init), so the model starts where the
  // LoRA one does; m = ‖Q‖ would not.
  const double dora = run("dora", "", dense, true);
  EXPECT_NEAR(dora, oneshot, 1e-5 * oneshot);
  // Refusals: both at once; an adapter of another shape; a model the base was not made from; a quantized one.
  EXPECT_NE(error_of([&] {
              TrainOptions o = test::small_lora_options(base, data, root + "/both", 2);
              o.init_adapter = path_join(base, "loftq_init");
              o.loftq_model = dense;
              train_lora(o);
            }).find("give --init-adapter or --loftq-model, not both"),
            std::string::npos);
  std::string e = error_of([&] {
    TrainOptions o = test::small_lora_options(base, data, root + "/r8", 2);
    o.lora.r = 8;
    o.init_adapter = path_join(base, "loftq_init");
    train_lora(o);
  });
  EXPECT_NE(e.find("the adapter has r 4 (not 8)"), std::string::npos) << e;
  EXPECT_FALSE(dir_exists(root + "/r8"));
  const std::string other = test::make_tiny_model(root + "/other", 6);
  e = error_of([&] {
    TrainOptions o = test::small_lora_options(base, data, root + "/other_run", 2);
    o.loftq_model = other;
    train_lora(o);
  });
  EXPECT_NE(e.find("the base was not made from this model by rounding alone"), std::string::npos) << e;
  // The original with one norm rescaled, as AWQ folds its scales into the norms.
  const std::string scaled = root + "/scaled";
  std::filesystem::copy(dense, scaled);
  test::rewrite_safetensors(path_join(scaled, "model.safetensors"),
                            [](const std::string& name, const TensorView& v, std::vector<uint8_t> bytes,
                               SafetensorsWriter& w) {
                              if (name == "model.layers.1.post_attention_layernorm.weight") {
                                float* f = reinterpret_cast<float*>(bytes.data());
                                for (int64_t i = 0; i < v.numel(); ++i) f[i] *= 1.5f;
                              }
                              w.add_owned(name, v.dtype, v.shape, std::move(bytes));
                            });
  e = error_of([&] {
    TrainOptions o = test::small_lora_options(base, data, root + "/scaled_run", 2);
    o.loftq_model = scaled;
    train_lora(o);
  });
  EXPECT_NE(e.find("model.layers.1.post_attention_layernorm.weight[0] is 1.5 there and 1 in the base"),
            std::string::npos) << e;
  e = error_of([&] {
    TrainOptions o = test::small_lora_options(base, data, root + "/quantized_run", 2);
    o.loftq_model = base;
    train_lora(o);
  });
  EXPECT_NE(e.find("is quantized"), std::string::npos) << e;
}

}  // namespace
}  // namespace qwenq
