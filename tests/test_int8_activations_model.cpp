// `--int8-activations` on GPTQ and AWQ checkpoints (trainer/qwen_weights.h, quant/int_dot_int8.h), end to end on the
// real stories260K (RTN 4-bit, group 32, intermediate padded 172 -> 192 so every Linear packs):
//   - the NLL on 512 TinyStories tokens moves by the activations' 8-bit rounding only: |int8 − exact| within
//     kNllInt8Shift (as the GGUF products' test in test_gguf_model.cpp), and it does move;
//   - AWQ words are repacked to GPTQ v2 at load when the switch is on (the same ŵ bit for bit as the AWQ reader's),
//     and left as they are otherwise;
//   - decode-sized batches (a few rows) take the int8 path too;
//   - act-order GPTQ (`gptq --desc-act`): every Linear's rows sorted by group at load (the same ŵ bit for bit as the
//     file's), all of them on the int8 products with the switch, the NLL within kNllInt8Shift; an act-order Linear
//     that was not sorted keeps the exact product bit for bit.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <utility>
#include <string>
#include <vector>

#include "quant/int_checkpoint.h"
#include "quant/int_dot_int8.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/quantize_model.h"
#include "trainer/qwen_model.h"
#include "trainer/qwen_weights.h"

namespace qwenq {
namespace {

// |mean NLL with int8 activations − exact| on 512 tokens: measured 1.1e-3 (GPTQ) and 6e-4 (AWQ).
constexpr double kNllInt8Shift = 3e-3;

std::string rtn_to(const std::string& hf, const std::string& out, IntLayout layout) {
  QuantizeOptions o;
  o.model_dir = hf;
  o.out_dir = out;
  o.bits = 4;
  o.group_size = 32;
  o.layout = layout;
  o.pad_intermediate = true;
  o.quiet = true;
  quantize_model(o);
  return out;
}

TEST(Int8ActivationsModel, GptqAndAwqStories260kMoveByTheRoundingOnly) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string dir = test::scratch_dir();
  const std::string hf = test::import_stories260k(dir + "/hf");
  const std::vector<int32_t> tokens = test::tinystories_prefix_tokens(hf, 512);
  const PackedBatch few = PackedBatch::from_sequences({{1, 2, 3}});
  for (const IntLayout layout : {IntLayout::GptqV1, IntLayout::AwqGemm}) {
    const std::string name = int_layout_name(layout);
    const std::string q = rtn_to(hf, dir + "/" + name, layout);
    const QwenModel exact_model(q);
    const LinearWeight& up = exact_model.weights().layers[0].up;
    ASSERT_TRUE(up.packed) << name;
    EXPECT_EQ(up.packed->layout, layout) << name << ": repacked without the switch";
    const double exact = test::mean_next_token_nll(exact_model, tokens);
    const std::vector<float> few_exact = exact_model.forward_logits(few);
    const test::ScopedInt8Activations on;
    const QwenModel m(q);  // loaded with the switch on: AWQ repacked along K
    const LinearWeight& up8 = m.weights().layers[0].up;
    EXPECT_EQ(up8.packed->layout, layout == IntLayout::AwqGemm ? IntLayout::GptqV2 : layout) << name;
    EXPECT_TRUE(uses_int8_activations(up8.packed.get())) << name << ": " << int_int8_unsupported_reason(*up8.packed);
    const std::vector<float> w = up.dequantize(), w8 = up8.dequantize();
    EXPECT_EQ(std::memcmp(w.data(), w8.data(), w.size() * sizeof(float)), 0) << name << ": the repack changed ŵ";
    const double int8 = test::mean_next_token_nll(m, tokens);
    EXPECT_NE(int8, exact) << name << ": the switch changed nothing";
    EXPECT_NEAR(int8, exact, kNllInt8Shift) << name;
    std::printf("[ %s ] mean NLL exact %.6f, int8 activations %.6f\n", name.c_str(), exact, int8);
    EXPECT_NE(m.forward_logits(few), few_exact) << name << ": few rows";
  }
}

TEST(Int8ActivationsModel, ActOrderGptqIsSortedAtLoadAndMovesByTheRoundingOnly) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string dir = test::scratch_dir();
  const std::string hf = test::import_stories260k(dir + "/hf");
  const std::string act = test::gptq_act_order_stories260k(hf, dir + "/act", 16, 128);
  const std::vector<int32_t> tokens = test::tinystories_prefix_tokens(hf, 512);
  const QwenModel exact_model(act);
  const LinearWeight& up = exact_model.weights().layers[0].up;
  ASSERT_TRUE(up.packed);
  // Sorted at load with or without the switch (int_linear_for_products): the file's g_idx was act-order.
  ASSERT_EQ(up.packed->perm.size(), static_cast<size_t>(up.K)) << "gptq --desc-act wrote an in-order g_idx?";
  const Checkpoint file(act);
  const PackedIntLinear stored = read_int_linear(file, "model.layers.0.mlp.up_proj", IntLayout::GptqV1, 4, 32, up.K, up.N);
  ASSERT_FALSE(int_linear_groups_in_order(stored)) << "gptq --desc-act wrote an in-order g_idx";
  const std::vector<float> w_file = dequantize_int_linear(stored), w_loaded = up.dequantize();
  EXPECT_EQ(std::memcmp(w_file.data(), w_loaded.data(), w_file.size() * sizeof(float)), 0) << "the sort changed ŵ";
  const double exact = test::mean_next_token_nll(exact_model, tokens);
  const test::ScopedInt8Activations on;
  const QwenModel m(act);  // loaded with the switch on: rows sorted by group
  const Int8Coverage c = int8_coverage(m.weights());
  EXPECT_EQ(c.int8, c.linears) << "act-order Linears left on the exact product";
  const double int8 = test::mean_next_token_nll(m, tokens);
  EXPECT_NE(int8, exact) << "the switch changed nothing";
  EXPECT_NEAR(int8, exact, kNllInt8Shift);
  std::printf("[ gptq desc_act ] mean NLL exact %.6f, int8 activations %.6f\n", exact, int8);
}

TEST(Int8ActivationsModel, UnsortedActOrderKeepsTheExactProduct) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string dir = test::scratch_dir();
  const std::string hf = test::import_stories260k(dir + "/hf");
  const QwenModel m(rtn_to(hf, dir + "/g", IntLayout::GptqV2));
  const LinearWeight& up = m.weights().layers[0].up;
  LinearWeight act = up;
  auto scattered = std::make_shared<PackedIntLinear>(*up.packed);
  std::swap(scattered->g_idx[0], scattered->g_idx[40]);  // groups no longer follow the inputs, rows not sorted
  act.packed = scattered;
  std::vector<float> x(static_cast<size_t>(3 * up.K));
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 37) % 11) - 5.0f;
  std::vector<float> y_exact(static_cast<size_t>(3 * up.N)), y(y_exact.size()), act_exact(y.size()), act_on(y.size());
  apply_linear(up, x.data(), 3, TensorView{}, y_exact.data());
  apply_linear(act, x.data(), 3, TensorView{}, act_exact.data());
  const test::ScopedInt8Activations on;
  apply_linear(up, x.data(), 3, TensorView{}, y.data());
  apply_linear(act, x.data(), 3, TensorView{}, act_on.data());
  EXPECT_NE(y, y_exact) << "the in-order weight took the int8 product";
  EXPECT_EQ(act_on, act_exact) << "an act-order Linear not sorted at load: the exact product, bit for bit";
}

}  // namespace
}  // namespace qwenq
