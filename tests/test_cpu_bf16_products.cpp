// `eval --cpu-matmul bf16` (trainer/qwen_weights.h, set_cpu_bf16_products):
//   - apply_linear on a dense F32 or BF16 weight (bias included) is linear_forward_bf16's bits with the switch on and
//     linear_forward_ref's with it off; an F16 weight keeps the fp32 product either way; a 4-bit Linear from
//     kCpuBf16Q4MinRows rows has the bits of the bf16 product on its dequantized fp32 weight, and below them the
//     packed fp32 product's;
//   - the CPU trainer's step on a GPTQ, AWQ or NF4 base (each Linear multiplied from its Q4 form) is, bit for bit, the
//     step on the base's dequantized fp32 copy;
//   - the same on act-order GPTQ (gptq --desc-act on stories260K), each Linear's Q4 form carrying its permutation;
//   - the CPU trainer's loss with bf16_matmul is eval's NLL with the switch, bit for bit (attention included);
//   - the attention of a window takes bf16 operands with the switch (from kCpuBf16MinRows rows): the first row of a
//     sequence attends to itself alone (P = 1), so its output is v's row rounded to bf16;
//   - end to end on the real stories260K (fp32 weights, tied lm_head): the mean NLL over 512 TinyStories tokens moves
//     by the operands' bf16 rounding only (within kNllBf16Shift, and it does move), and switching off gives the
//     fp32 bits again.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "kernels/gemm.h"
#include "kernels/gemm_bf16.h"
#include "quant/format/qgemm_layout.h"
#include "quant/int_dot_int8.h"
#include "quant/nf4_checkpoint.h"
#include "quant/packed_matvec.h"
#include "tests/support/bf16_paths.h"
#include "tests/support/checkpoint_compare.h"
#include "tests/support/test_models.h"
#include "tests/support/test_training.h"
#include "tests/support/test_paths.h"
#include "lora/lora_adapter.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_model.h"
#include "trainer/quantize_model.h"
#include "trainer/qwen_weights.h"

namespace qwenq {
namespace {

// |mean NLL with bf16 products − fp32| on stories260K's 512 tokens: measured 1.2e-4 with the Linears' products alone
// (1.311214 -> 1.311331), 1.1e-3 since the attention's take bf16 operands too (-> 1.310121; its heads have D = 8, so a
// score sums few products). torch 2.5.1 under bf16 autocast on the same model and tokens: -6.7e-4 (eager attention),
// +1.3e-3 (sdpa).
constexpr double kNllBf16Shift = 3e-3;
// max |logit with bf16 products − fp32| over the tiny preset's vocabulary after a 12-token prompt: measured 1.2e-3.
constexpr double kLogitBf16Shift = 1e-2;

struct Bf16Products {
  Bf16Products() { set_cpu_bf16_products(true); }
  ~Bf16Products() { set_cpu_bf16_products(false); }
};

std::vector<float> normal(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(rng.normal());
  return v;
}

TEST(CpuBf16Products, ApplyLinearTakesTheBf16ProductForF32AndBf16Weights) {
  const int64_t M = 37, K = 200, N = 45;
  const std::vector<float> x = normal(M * K, 1), w32 = normal(N * K, 2), b = normal(N, 3);
  std::vector<uint16_t> w16(w32.size()), w_half(w32.size());
  for (size_t i = 0; i < w32.size(); ++i) {
    w16[i] = f32_to_bf16(w32[i]);
    w_half[i] = f32_to_f16(w32[i]);
  }
  const TensorView bias{b.data(), DType::F32, {N}};
  for (const auto& [data, dt] : {std::pair<const void*, DType>{w32.data(), DType::F32},
                                 std::pair<const void*, DType>{w16.data(), DType::BF16},
                                 std::pair<const void*, DType>{w_half.data(), DType::F16}}) {
    LinearWeight lw;
    lw.N = N;
    lw.K = K;
    lw.dense = TensorView{data, dt, {N, K}};
    std::vector<float> ref(M * N), bf(M * N), got_off(M * N), got_on(M * N);
    linear_forward_ref(x.data(), M, K, data, dt, N, b.data(), DType::F32, ref.data());
    apply_linear(lw, x.data(), M, bias, got_off.data());
    EXPECT_EQ(got_off, ref) << dtype_name(dt) << ": switch off";
    {
      const Bf16Products on;
      apply_linear(lw, x.data(), M, bias, got_on.data());
    }
    if (dt == DType::F16) {
      EXPECT_EQ(got_on, ref) << "an F16 weight keeps the fp32 product";
      continue;
    }
    linear_forward_bf16(x.data(), M, K, data, dt, N, b.data(), DType::F32, bf.data());
    EXPECT_EQ(got_on, bf) << dtype_name(dt) << ": switch on";
    EXPECT_NE(got_on, ref) << dtype_name(dt) << ": the switch changed nothing";
  }
}

// Below kCpuBf16MinRows rows (a decode step) the switch keeps the fp32 product; from there on it is the bf16 one.
TEST(CpuBf16Products, FewerRowsThanTheFloorKeepTheFp32Product) {
  const int64_t K = 96, N = 40;
  const std::vector<float> w32 = normal(N * K, 4);
  std::vector<uint16_t> w16(w32.size());
  for (size_t i = 0; i < w32.size(); ++i) w16[i] = f32_to_bf16(w32[i]);
  LinearWeight lw;
  lw.N = N;
  lw.K = K;
  lw.dense = TensorView{w16.data(), DType::BF16, {N, K}};
  for (int64_t M : {int64_t{1}, kCpuBf16MinRows - 1, kCpuBf16MinRows}) {
    const std::vector<float> x = normal(M * K, 5 + static_cast<uint64_t>(M));
    std::vector<float> ref(M * N), bf(M * N), got(M * N);
    linear_forward_ref(x.data(), M, K, w16.data(), DType::BF16, N, nullptr, DType::F32, ref.data());
    linear_forward_bf16(x.data(), M, K, w16.data(), DType::BF16, N, nullptr, DType::F32, bf.data());
    ASSERT_NE(ref, bf) << "M " << M << ": the two products agree here, so this shows nothing";
    {
      const Bf16Products on;
      apply_linear(lw, x.data(), M, TensorView{}, got.data());
    }
    EXPECT_EQ(got, M < kCpuBf16MinRows ? ref : bf) << "M " << M;
  }
}

// `generate --cpu-matmul bf16`: the prompt's forward (12 rows) takes the bf16 products, the decode steps after it
// (one row) the fp32 ones: a step from the same cache has the same bits with the switch on and off.
TEST(CpuBf16Products, GenerateTakesItForThePromptNotTheDecodeSteps) {
  const QwenModel model(test::make_tiny_model(test::scratch_dir() + "/tiny", 22));
  const std::vector<int32_t> prompt = {1, 5, 9, 200, 3, 3, 7, 40, 41, 42, 17, 8};
  KvCache off_cache = model.make_cache(16), on_cache = model.make_cache(16);
  const std::vector<float> off = model.forward_step(prompt, &off_cache);
  std::vector<float> on, step_on;
  {
    const Bf16Products s;
    on = model.forward_step(prompt, &on_cache);
    KvCache c = on_cache;
    step_on = model.forward_step({42}, &c);
  }
  double worst = 0;
  for (size_t i = 0; i < off.size(); ++i) worst = std::max(worst, std::fabs(static_cast<double>(on[i]) - off[i]));
  EXPECT_GT(worst, 0.0) << "the prompt's products did not change";
  EXPECT_LT(worst, kLogitBf16Shift);
  KvCache c = on_cache;
  EXPECT_EQ(model.forward_step({42}, &c), step_on) << "a decode step took the bf16 products";
  std::printf("[ tiny ] prompt logits, bf16 products vs fp32: max |difference| %.3g\n", worst);
}

// The attention's output (the o_proj's input) of each sequence's first row is bf16(v) with the switch on, v itself
// without it (whose fp32 sums are not all bf16 values).
TEST(CpuBf16Products, WindowAttentionTakesBf16Operands) {
  const QwenModel model(test::make_tiny_model(test::scratch_dir() + "/tiny", 23));
  const QwenConfig& c = model.config();
  std::vector<int32_t> a(12), b(9);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<int32_t>(3 + 17 * i);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<int32_t>(200 + 5 * i);
  const PackedBatch batch = PackedBatch::from_sequences({a, b});
  const int64_t width = c.num_heads * c.head_dim;
  // The share of the first rows' attention outputs that are bf16 values, with the switch on or off.
  auto bf16_share = [&](bool on) {
    std::optional<Bf16Products> scope;
    if (on) scope.emplace();
    std::vector<float> x;
    model.embed_batch(batch, &x);
    int64_t exact = 0, total = 0;
    model.block_forward_to(0, batch, x.data(), BlockLinear::O, [&](const float* in, int64_t T) {
      ASSERT_EQ(T, batch.num_tokens());
      for (int64_t s = 0; s < batch.num_seqs(); ++s)
        for (int64_t e = 0; e < width; ++e) {
          const float o = in[batch.cu_seqlens[s] * width + e];
          exact += bf16_round(o) == o;
          ++total;
        }
    });
    return static_cast<double>(exact) / static_cast<double>(total);
  };
  EXPECT_EQ(bf16_share(true), 1.0) << "a first row's output is not bf16(v): the attention kept fp32 operands";
  EXPECT_LT(bf16_share(false), 0.5) << "without the switch the rows should be v's fp32 sums";
}

// A GPTQ (in order and act-order, rows sorted as the loader holds them), AWQ or NF4 Linear through apply_linear with
// the switch on: below kCpuBf16Q4MinRows rows the packed fp32 product's bits (quant/packed_matvec.h, as with the
// switch off); from kCpuBf16Q4MinRows rows, and past the packed product's own limit, the bits of the bf16 product on
// its fp32 dequantization (the Q4 tiles); with --int8-activations on as well, its int8 product wins where it applies.
TEST(CpuBf16Products, FourBitLinearsTakeItFromTheirRowFloor) {
  const int64_t K = 256, N = 64;
  const auto packed = [&](IntLayout layout, bool act_order) {
    LinearWeight lw;
    lw.N = N;
    lw.K = K;
    PackedIntLinear p = q4_synthetic_int_linear(layout, K, N, 32, act_order, 7);
    lw.packed = std::make_shared<PackedIntLinear>(act_order ? int_linear_for_products(std::move(p)) : std::move(p));
    return lw;
  };
  LinearWeight nf4;
  nf4.N = N;
  nf4.K = K;
  nf4.nf4 = std::make_shared<Nf4Linear>(Nf4Linear{q4_synthetic_nf4(N, K, false, 64, true, 7), {N, K}, "bfloat16"});
  const std::pair<const char*, LinearWeight> kinds[] = {{"gptq", packed(IntLayout::GptqV1, false)},
                                                         {"gptq act-order", packed(IntLayout::GptqV1, true)},
                                                         {"awq", packed(IntLayout::AwqGemm, false)},
                                                         {"nf4", nf4}};
  for (const auto& [name, lw] : kinds) {
    const int64_t limit = lw.packed ? int_linear_matvec_max_rows(*lw.packed) : kNf4MatvecMaxRows;
    const std::vector<float> W = lw.dequantize();
    for (const int64_t M : {kCpuBf16Q4MinRows - 1, kCpuBf16Q4MinRows, limit + 1}) {
      SCOPED_TRACE(std::string(name) + ", " + std::to_string(M) + " rows");
      const std::vector<float> x = normal(M * K, 8 + M);
      std::vector<float> bf(M * N), off(M * N), on(M * N);
      linear_forward_bf16(x.data(), M, K, W.data(), DType::F32, N, nullptr, DType::F32, bf.data());
      apply_linear(lw, x.data(), M, TensorView{}, off.data());
      {
        const Bf16Products s;
        apply_linear(lw, x.data(), M, TensorView{}, on.data());
      }
      if (M < kCpuBf16Q4MinRows) {
        std::vector<float> pk(M * N);
        if (lw.packed)
          int_linear_matvec(*lw.packed, x.data(), M, pk.data());
        else
          nf4_linear_matvec(lw.nf4->q, N, K, x.data(), M, pk.data());
        EXPECT_EQ(off, pk);
        EXPECT_EQ(on, pk);
      } else {
        EXPECT_EQ(on, bf);
        EXPECT_NE(on, off);
      }
    }
  }
  // --int8-activations over --cpu-matmul bf16 on a GPTQ Linear it reaches.
  const LinearWeight& gptq = kinds[0].second;
  ASSERT_TRUE(int_int8_product_supported(*gptq.packed));
  const int64_t M = kCpuBf16Q4MinRows;
  const std::vector<float> x = normal(M * K, 99);
  std::vector<float> want(M * N), got(M * N);
  int_linear_matvec_int8(*gptq.packed, x.data(), M, want.data());
  set_int8_activations(true);
  {
    const Bf16Products s;
    apply_linear(gptq, x.data(), M, TensorView{}, got.data());
  }
  set_int8_activations(false);
  EXPECT_EQ(got, want);
}

// A LoRA step (r 4 on all seven Linears, B random from `seed`) with the bf16 products on q and on its dequantized
// copy, on both product paths of this CPU: the same loss and adapter gradients bit for bit; and the fp32 products
// give another loss (the switch is what the products follow).
void expect_bf16_step_is_the_dense_copys(const QwenModel& q, const QwenModel& dense, uint64_t seed) {
  const PackedBatch batch = PackedBatch::from_sequences({{1, 5, 9, 200, 3, 3, 7, 40, 41, 42, 17, 8}, {42, 17, 99}});
  const std::vector<int32_t> targets = next_token_targets(batch);
  const LoraAdapter a = test::adapter_with_random_b(
      q.config(), {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}, 4, 16, false, seed,
      0.3f);
  for (bool portable : test::bf16_gemm_paths()) {
    test::PortableScope scope(portable);
    LoraStepOptions opt;
    opt.bf16_matmul = true;
    LoraAdapter gq = test::zeros_like(a), gd = test::zeros_like(a);
    const LoraStepResult rq = lora_loss_and_grad(q, a, batch, targets, &gq, opt);
    const LoraStepResult rd = lora_loss_and_grad(dense, a, batch, targets, &gd, opt);
    EXPECT_EQ(rq.nll_sum, rd.nll_sum) << (portable ? "portable" : "avx512_bf16");
    for (size_t i = 0; i < a.slots().size(); ++i) {
      EXPECT_EQ(gq.weights(i).A, gd.weights(i).A) << a.slots()[i].path;
      EXPECT_EQ(gq.weights(i).B, gd.weights(i).B) << a.slots()[i].path;
    }
    opt.bf16_matmul = false;
    EXPECT_NE(lora_loss_and_grad(q, a, batch, targets, nullptr, opt).nll_sum, rq.nll_sum);
  }
}

// The CPU trainer's --cpu-matmul bf16 on a 4-bit base multiplies each Linear from its Q4 form (no fp32 copy of the
// weight, trainer/lora_model.cpp): a LoRA step on GPTQ, AWQ and NF4 models gives, bit for bit, the loss and adapter
// gradients of the same step on the model's dequantized fp32 copy, on both product paths of this CPU.
TEST(CpuBf16Products, FourBitTrainingStepHasTheBitsOfItsDequantizedCopy) {
  const std::string root = test::scratch_dir();
  const std::string src = test::make_tiny_model(root + "/fp32", 21);
  struct Method {
    const char* name;
    QuantizeOptions::Method method;
    IntLayout layout;
  };
  const Method methods[] = {{"gptq", QuantizeOptions::Method::Rtn, IntLayout::GptqV1},
                            {"awq", QuantizeOptions::Method::Rtn, IntLayout::AwqGemm},
                            {"nf4", QuantizeOptions::Method::Nf4, IntLayout::GptqV1}};
  for (const Method& m : methods) {
    SCOPED_TRACE(m.name);
    QuantizeOptions o;
    o.method = m.method;
    o.layout = m.layout;
    o.group_size = 32;
    o.model_dir = src;
    o.out_dir = root + "/" + m.name;
    o.quiet = true;
    quantize_model(o);
    const QwenModel q(o.out_dir), dense(test::dequantized_copy(o.out_dir));
    for (const auto& layer : q.weights().layers)
      for (int t = 0; t < 7; ++t) ASSERT_TRUE(q4_linear_form(layer_linear(layer, t)).has_form()) << "Linear " << t;
    expect_bf16_step_is_the_dense_copys(q, dense, 3);
  }
}

// Act-order GPTQ (gptq --desc-act on the real stories260K, its rows sorted by group at load): every Linear has a Q4
// form with a permutation, and the bf16 step is, bit for bit, the step on the dequantized fp32 copy.
TEST(CpuBf16Products, ActOrderTrainingStepHasTheBitsOfItsDequantizedCopy) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string root = test::scratch_dir();
  const std::string hf = test::import_stories260k(root + "/hf");
  const std::string act = test::gptq_act_order_stories260k(hf, root + "/act", 8, 64);
  const QwenModel q(act), dense(test::dequantized_copy(act));
  int64_t permuted = 0;
  for (const auto& layer : q.weights().layers)
    for (int t = 0; t < 7; ++t) {
      const Q4Transient f = q4_linear_form(layer_linear(layer, t));
      ASSERT_TRUE(f.has_form()) << "Linear " << t;
      permuted += f.view.perm != nullptr;
    }
  EXPECT_GT(permuted, 0) << "no Linear has an act-order permutation: this test shows nothing";
  expect_bf16_step_is_the_dense_copys(q, dense, 5);
}

// The CPU trainer's forward with bf16_matmul (exact block inputs, B = 0, gradients asked for, so the lm_head takes the
// bf16 product) is eval's forward under the switch, attention included: the same NLL sum bit for bit, as with fp32
// products on both sides. (An attention left on fp32 operands on either side breaks it.)
TEST(CpuBf16Products, TrainerLossIsEvalNllWithTheSwitch) {
  const QwenModel model(test::make_tiny_model(test::scratch_dir() + "/tiny", 22));
  const PackedBatch batch =
      PackedBatch::from_sequences({{1, 5, 9, 200, 3, 3, 7, 40, 41, 42, 17, 8}, {42, 17, 99, 4, 5, 6, 7, 8, 9}});
  const std::vector<int32_t> targets = next_token_targets(batch);
  const LoraAdapter a = test::adapter_with_random_b(model.config(), {"q_proj", "v_proj"}, 4, 16, false, 3, 0.f);
  double sums[2][2];  // [switch][trainer, eval]
  for (bool on : {false, true}) {
    LoraStepOptions opt;
    opt.bf16_matmul = on;
    opt.bf16_checkpoints = false;
    LoraAdapter g = test::zeros_like(a);
    sums[on][0] = lora_loss_and_grad(model, a, batch, targets, &g, opt).nll_sum;
    std::optional<Bf16Products> scope;
    if (on) scope.emplace();
    std::vector<float> nll;
    model.next_token_nll(batch, &nll);
    sums[on][1] = 0;
    for (float v : nll) sums[on][1] += v;
  }
  EXPECT_EQ(sums[0][0], sums[0][1]) << "fp32 products";
  EXPECT_EQ(sums[1][0], sums[1][1]) << "bf16 products";
  EXPECT_NE(sums[1][1], sums[0][1]) << "the switch changed nothing";
}

TEST(CpuBf16Products, Stories260kNllMovesByTheRoundingOnly) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string hf = test::import_stories260k(test::scratch_dir() + "/hf");
  const std::vector<int32_t> tokens = test::tinystories_prefix_tokens(hf, 512);
  const QwenModel model(hf);
  const double fp32 = test::mean_next_token_nll(model, tokens);
  double bf16;
  {
    const Bf16Products on;
    bf16 = test::mean_next_token_nll(model, tokens);
  }
  EXPECT_NE(bf16, fp32) << "the switch changed nothing";
  EXPECT_NEAR(bf16, fp32, kNllBf16Shift);
  EXPECT_EQ(test::mean_next_token_nll(model, tokens), fp32) << "switched off, not the fp32 bits again";
  std::printf("[ stories260K ] mean NLL fp32 products %.6f, bf16 products %.6f\n", fp32, bf16);
}

}  // namespace
}  // namespace qwenq
