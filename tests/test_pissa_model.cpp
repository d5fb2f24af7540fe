// PiSSA on whole models (trainer/quantize_model.h's pissa options): `qwen-quant rtn|nf4|fp4 --pissa-rank` writes the
// adapter pissa_split makes from each original Linear and stores the quantized residual, bit for bit; on the trained
// stories260K the adapted base starts closer to the original than the plain 4-bit base; every expert of a MoE model
// gets its own; train starts from it; the wrong inputs are refused by name with nothing written.
// The numerics of one Linear are tests/test_pissa.cpp; PEFT's pissa_init is tests/oracle/test_pissa_oracle.py.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "core/files.h"
#include "lora/peft_io.h"
#include "lora/low_rank.h"
#include "lora/pissa.h"
#include "quant/nf4.h"
#include "tests/support/adapter_init_checks.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_training.h"
#include "quant/grid.h"
#include "tests/support/gptq_inputs.h"
#include "trainer/gptq_model.h"
#include "trainer/lora_model.h"
#include "trainer/perplexity.h"
#include "trainer/qwen_model.h"
#include "trainer/quantize_model.h"
#include "trainer/quantize_output.h"
#include "trainer/train_loop.h"

namespace qwenq {
namespace {

using test::error_of;

using test::all_linear_lora;
using test::mean_logit_error;

QuantizeOptions pissa_quantize(const std::string& dense, const std::string& out, QuantizeOptions::Method m,
                               int64_t r = 4) {
  QuantizeOptions q = test::small_quantize_options(dense, out, m);
  q.pissa = all_linear_lora(r, 2.0 * r);  // s = 2: the split A = R/√s, B = L/√s matters
  return q;
}

// NF4 with double quantization at blocksize 64, as `qwen-quant nf4` stores it by default.
std::vector<float> nf4_round_trip(const std::vector<float>& X) {
  Nf4Options o;
  o.double_quant = true;
  return nf4_dequantize(nf4_quantize(X.data(), static_cast<int64_t>(X.size()), o));
}

// Slot i of `written` holds pissa_split's A and B of the original's Linear, zero-padded to the base's shape as the
// quantizers pad it (q: the split's errors too), bit for bit. Returns the split.
PissaSplit expect_slot_is_the_split(const QwenModel& orig, const QwenModel& base, const LoraAdapter& written, size_t i,
                                    const QuantizeDequantize& q = {}) {
  const LoraSlot& sl = written.slots()[i];
  SCOPED_TRACE(testing::Message() << "layer " << sl.layer << " " << sl.path);
  const LinearWeight& ow = slot_linear(orig.weights(), sl);
  const LinearWeight& bw = slot_linear(base.weights(), sl);
  const std::vector<float> W = pad_matrix(ow.dequantize(), ow.N, ow.K, bw.N, bw.K);
  PissaSplit p = pissa_split(W, bw.N, bw.K, written.uniform_rank(), written.uniform_scaling(), q);
  EXPECT_EQ(written.weights(i).A, p.A);
  EXPECT_EQ(written.weights(i).B, p.B);
  return p;
}

// Every adapted Linear of the written output (each expert's too): its A and B are pissa_split's of the original W, the
// stored base is NF4 of that split's residual, and the report's errors are the sums of the splits'. Returns the
// number of Linears checked.
int64_t expect_nf4_pissa_output(const std::string& dense, const std::string& out, const QuantizeReport& rep) {
  const QwenModel orig(dense), base(out);
  const LoraAdapter written = load_peft_adapter(path_join(out, "pissa_init"), lora_dims_of(base.config()));
  double plain2 = 0, err2 = 0, w2 = 0, p2 = 0;
  for (size_t i = 0; i < written.slots().size(); ++i) {
    const PissaSplit p = expect_slot_is_the_split(orig, base, written, i, nf4_round_trip);
    EXPECT_EQ(slot_linear(base.weights(), written.slots()[i]).dequantize(), nf4_round_trip(p.residual))
        << written.slots()[i].path;
    plain2 += p.plain_error * p.plain_error;
    err2 += p.residual_error * p.residual_error;
    w2 += p.weight_sq;
    p2 += p.principal_sq;
  }
  EXPECT_NEAR(rep.pissa_plain_error, std::sqrt(plain2), 1e-12 * rep.pissa_plain_error);
  EXPECT_NEAR(rep.pissa_error, std::sqrt(err2), 1e-12 * rep.pissa_error);
  EXPECT_NEAR(rep.pissa_share, p2 / w2, 1e-12);
  return static_cast<int64_t>(written.slots().size());
}

TEST(PissaModel, WrittenAdapterAndBaseAreTheSplitOfEachLinear) {
  const std::string root = test::scratch_dir();
  const std::string dense = test::make_tiny_model(root + "/dense", 3);
  const std::string out = root + "/nf4";
  const QuantizeReport rep = quantize_model(pissa_quantize(dense, out, QuantizeOptions::Method::Nf4));
  EXPECT_EQ(expect_nf4_pissa_output(dense, out, rep), 7 * QwenModel(dense).config().num_layers);
  EXPECT_FALSE(file_exists(path_join(out, "loftq_init/adapter_config.json")));
  // Targets: only the attention's q and v adapted; the other Linears are stored from W itself.
  QuantizeOptions qv = pissa_quantize(dense, root + "/qv", QuantizeOptions::Method::Nf4);
  qv.pissa.target_modules = parse_lora_targets("q_proj,v_proj");
  quantize_model(qv);
  const QwenModel orig(dense), qv_base(qv.out_dir);
  const LoraAdapter written = load_peft_adapter(path_join(qv.out_dir, "pissa_init"), lora_dims_of(qv_base.config()));
  EXPECT_EQ(written.slots().size(), 2u * qv_base.config().num_layers);
  const LinearWeight& o_proj = qv_base.weights().layers[0].o;
  EXPECT_EQ(o_proj.dequantize(), nf4_round_trip(orig.weights().layers[0].o.dequantize()));
}

// The trained stories260K: the adapter holds most of each Linear's energy and the stored residual quantizes with a
// smaller error, so base + adapter starts much closer to the original than plain NF4. Also RTN with the MLP padded
// (172 -> 192): the padded rows of gate/up and columns of down stay zero in B and A.
TEST(PissaModel, TrainedModelStartsCloserToTheOriginal) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string root = test::scratch_dir();
  const std::string dense = test::import_stories260k(root + "/dense");
  const QwenModel orig(dense);
  const PackedBatch batch = perplexity_window_batch(test::tinystories_tokens(dense), 128, 0, 4);
  LoraAdapter zero(lora_dims_of(orig.config()), all_linear_lora(8, 8));
  const std::vector<float> ref = lora_forward_logits(orig, zero, batch);
  QuantizeOptions plain = pissa_quantize(dense, root + "/nf4", QuantizeOptions::Method::Nf4);
  plain.pissa.r = 0;
  quantize_model(plain);
  const QwenModel plain_base(plain.out_dir);
  const double plain_error = mean_logit_error(plain_base, zero, ref, batch);
  const std::string out = root + "/nf4_pissa";
  const QuantizeReport rep = quantize_model(pissa_quantize(dense, out, QuantizeOptions::Method::Nf4, 8));
  expect_nf4_pissa_output(dense, out, rep);
  const QwenModel base(out);
  const LoraAdapter ps = load_peft_adapter(path_join(out, "pissa_init"), lora_dims_of(base.config()));
  const double pissa_error = mean_logit_error(base, ps, ref, batch);
  std::printf("stories260K NF4, PiSSA r8 (%.1f%% of ||W||^2 in the adapters): ||W - q(W)|| %.4f -> ||W_res - "
              "q(W_res)|| %.4f; mean |logit error| %.5f -> %.5f\n",
              100 * rep.pissa_share, rep.pissa_plain_error, rep.pissa_error, plain_error, pissa_error);
  // Measured: 50.6 % of ||W||^2 in the adapters, ||W - q(W)|| 5.993 -> 4.257, logit error 0.742 -> 0.610 (PEFT's QPiSSA
  // on the same windows: 0.610, tests/oracle/test_pissa_oracle.py). On 104 random tokens (not a test) it grew instead,
  // 0.377 -> 0.421: the gain holds on the text the model was trained for.
  EXPECT_LT(rep.pissa_error, 0.9 * rep.pissa_plain_error);
  EXPECT_LT(pissa_error, 0.9 * plain_error);

  QuantizeOptions padded = pissa_quantize(dense, root + "/rtn", QuantizeOptions::Method::Rtn);
  padded.pad_intermediate = true;
  quantize_model(padded);
  const QwenModel rtn(padded.out_dir);
  ASSERT_EQ(rtn.config().intermediate_size, 192);
  const LoraAdapter rp = load_peft_adapter(path_join(padded.out_dir, "pissa_init"), lora_dims_of(rtn.config()));
  test::expect_padding_untouched(rp, rtn.config().num_layers, 172, 192);
}

// GPTQ of the residual on the real model (4-bit g64 asym, C4 calibration as tests/test_quantize_model.cpp's GPTQ
// acceptance): the adapter as pissa_split makes it from each original Linear (padded), and base + adapter closer to the
// original than GPTQ alone.
TEST(PissaModel, GptqOfTheResidualOnStories260K) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string root = test::scratch_dir();
  const std::string dense = test::import_stories260k(root + "/dense");
  GptqModelOptions g;
  g.out = test::small_quantize_options(dense, root + "/gptq", QuantizeOptions::Method::Rtn);
  g.out.group_size = 64;
  g.out.sym = false;
  g.out.layout = IntLayout::GptqV2;
  g.out.pad_intermediate = true;
  g.calib_path = test::shared_data_dir() + "/c4/c4_demo.jsonl";
  g.calib_samples = 32;
  g.calib_seq_len = 128;
  g.seed = 1;
  gptq_quantize_model(g);
  GptqModelOptions gp = g;
  gp.out.out_dir = root + "/gptq_pissa";
  gp.out.pissa = all_linear_lora(8, 8);
  const QuantizeReport rep = gptq_quantize_model(gp);
  const QwenModel orig(dense), plain(g.out.out_dir), base(gp.out.out_dir);
  const LoraAdapter ps = load_peft_adapter(path_join(gp.out.out_dir, "pissa_init"), lora_dims_of(base.config()));
  for (size_t i = 0; i < ps.slots().size(); i += 4) expect_slot_is_the_split(orig, base, ps, i);  // every 4th
  test::expect_padding_untouched(ps, base.config().num_layers, 172, 192);
  const PackedBatch batch = perplexity_window_batch(test::tinystories_tokens(dense), 128, 0, 4);
  LoraAdapter zero(lora_dims_of(orig.config()), all_linear_lora(8, 8));
  const std::vector<float> ref = lora_forward_logits(orig, zero, batch);
  LoraAdapter zero_padded(lora_dims_of(plain.config()), all_linear_lora(8, 8));
  const double plain_error = mean_logit_error(plain, zero_padded, ref, batch);
  const double pissa_error = mean_logit_error(base, ps, ref, batch);
  std::printf("stories260K GPTQ g64 asym, PiSSA r8 (%.1f%% of ||W||^2 in the adapters): mean |logit error| %.5f -> "
              "%.5f\n", 100 * rep.pissa_share, plain_error, pissa_error);
  // Measured: 0.707 -> 0.533; with the later blocks calibrated on the residual alone (Q handed back without s·B A),
  // 0.751.
  EXPECT_LT(pissa_error, 0.9 * plain_error);
}

// A mixture of experts (Qwen2-MoE with a shared expert): every expert's Linear gets its own split (PEFT's
// mlp.experts.<e>.* names), with NF4 and with GPTQ.
TEST(PissaModel, MoeSplitsEveryExpert) {
  const std::string root = test::scratch_dir();
  const std::string dense = test::make_random_model(root + "/moe", "tiny-moe-shared", DType::F32, 6);
  const QwenConfig c = QwenModel(dense).config();
  const std::string out = root + "/nf4";
  const QuantizeReport rep = quantize_model(pissa_quantize(dense, out, QuantizeOptions::Method::Nf4));
  const int64_t slots = c.num_layers * (4 + 3 * (c.num_experts + 1));
  EXPECT_EQ(expect_nf4_pissa_output(dense, out, rep), slots);
  // GPTQ splits each expert's Linear in its own step (GptqLinearStep::run_expert).
  GptqModelOptions g = test::tiny_gptq_options(dense, test::write_random_words(root + "/calib.txt", 20000, 3), 1,
                                               root + "/gptq");
  g.out.pissa = all_linear_lora(4, 8);
  gptq_quantize_model(g);
  const QwenModel orig(dense), base(g.out.out_dir);
  const LoraAdapter written = load_peft_adapter(path_join(g.out.out_dir, "pissa_init"), lora_dims_of(base.config()));
  ASSERT_EQ(static_cast<int64_t>(written.slots().size()), slots);
  for (size_t i = 0; i < written.slots().size(); ++i) expect_slot_is_the_split(orig, base, written, i);
}

TEST(PissaModel, TrainStartsFromThePissaAdapter) {
  const std::string root = test::scratch_dir();
  const std::string dense = test::make_tiny_model(root + "/dense", 5);
  const std::string base = root + "/nf4";
  quantize_model(pissa_quantize(dense, base, QuantizeOptions::Method::Nf4));  // r 4, alpha 8: small_lora_options'
  const std::string data = test::make_text_data(root + "/d.jsonl", 60);
  auto run = [&](const std::string& name, const std::string& init_adapter) {
    TrainOptions o = test::small_lora_options(base, data, root + "/" + name, 2);  // r 4, alpha 8, all seven
    o.init_adapter = init_adapter;
    return train_lora(o);
  };
  const TrainReport plain = run("plain", "");
  const TrainReport from_pissa = run("pissa", path_join(base, "pissa_init"));
  EXPECT_NE(from_pissa.first_eval_loss, plain.first_eval_loss);
  const QwenModel qb(base);
  const LoraAdapter init = load_peft_adapter(path_join(base, "pissa_init"), lora_dims_of(qb.config()));
  const LoraAdapter trained = load_peft_adapter(root + "/pissa", lora_dims_of(qb.config()));
  EXPECT_NE(trained.weights(0).A, init.weights(0).A);  // and it moved from there
  EXPECT_TRUE(std::isfinite(from_pissa.eval_loss));
}

// GPTQ's step (trainer/gptq_model.h): with PiSSA it quantizes the residual with the Linear's Hessian and hands back
// Q + s·B A, bit for bit what pissa_split, gptq_quantize and dequantize_codes give one by one.
TEST(PissaModel, GptqStepQuantizesTheResidualAndHandsBackTheAdaptedLinear) {
  const std::string root = test::scratch_dir();
  QwenModel model(test::make_tiny_model(root + "/dense", 8));
  const QwenConfig& c = model.config();
  QuantizeOptions out = test::small_quantize_options("", root + "/unused", QuantizeOptions::Method::Rtn);
  out.pissa = all_linear_lora(4, 8);
  LoraAdapter pissa(lora_dims_of(c), out.pissa);
  GptqOptions go;
  go.group_size = 32;
  ShardedWriter shards(root, uint64_t{1} << 30);
  QuantizeReport rep;
  Progress bar("gptq", 7, "layers", true);
  GptqStageTimes times;
  GptqLinearStep step(model, out, c.intermediate_size, go, DType::F32, shards, rep, bar, times);
  step.set_pissa(&pissa);
  double w2 = 0, p2 = 0;
  for (const GptqSlot& slot : {kDecoderLinears[0], kDecoderLinears[6]}) {  // q_proj, down_proj
    SCOPED_TRACE(slot.name);
    const LinearWeight& lw = model.linear_weight(1, slot.group, slot.index);
    const int64_t N = lw.N, K = lw.K;
    const std::vector<float> W = lw.dequantize();
    const Eigen::MatrixXf H = test::hessian_of(test::correlated_inputs(4 * K, K, 3), K);
    const std::vector<float> back = step.run(1, slot, H, gptq_quantize);
    const PissaSplit ps = pissa_split(W, N, K, 4, pissa.uniform_scaling(), {});
    const GptqResult r = gptq_quantize(ps.residual.data(), N, K, H, go);
    std::vector<float> expected = dequantize_codes(r.codes.data(), r.grid, r.g_idx.data());
    subtract_scaled_product(expected.data(), ps.B.data(), ps.A.data(), -pissa.uniform_scaling(), N, K, 4, expected.data());
    EXPECT_EQ(back, expected);
    w2 += ps.weight_sq;
    p2 += ps.principal_sq;
    const LoraWeights& w = pissa.at(1, slot.group == BlockLinear::QKV ? LoraTarget::QProj : LoraTarget::DownProj);
    EXPECT_EQ(w.A, ps.A);
    EXPECT_EQ(w.B, ps.B);
  }
  EXPECT_DOUBLE_EQ(step.pissa_share(), p2 / w2);
}

TEST(PissaModel, Refusals) {
  const std::string root = test::scratch_dir();
  const std::string dense = test::make_tiny_model(root + "/dense", 7);
  auto refused = [&](QuantizeOptions q, const std::string& expect) {
    const std::string e = error_of([&] { quantize_model(q); });
    EXPECT_NE(e.find(expect), std::string::npos) << e;
    EXPECT_FALSE(dir_exists(q.out_dir)) << q.out_dir;
  };
  QuantizeOptions both = pissa_quantize(dense, root + "/both", QuantizeOptions::Method::Nf4);
  both.loftq = all_linear_lora(4, 4);
  refused(both, "give --loftq-rank or --pissa-rank, not both");
  refused(pissa_quantize(dense, root + "/big", QuantizeOptions::Method::Rtn, 65),
          "--pissa-rank: LoRA rank r=65 exceeds");
  QuantizeOptions fp8 = pissa_quantize(dense, root + "/fp8", QuantizeOptions::Method::Fp8);
  refused(fp8, "without LoftQ or PiSSA");
  QuantizeOptions gpu = pissa_quantize(dense, root + "/gpu", QuantizeOptions::Method::Nf4);
  gpu.device = Device::Cuda;
  refused(gpu, "--pissa-rank runs on the CPU");
  EXPECT_EQ(quantize_gpu_refusal(gpu), "--pissa-rank quantizes the residual W - s*B*A, made on the CPU");
  // GPTQ refuses PiSSA with LoftQ too (one adapter per model); AWQ takes neither (it rescales the base).
  GptqModelOptions g = test::tiny_gptq_options(dense, test::write_random_words(root + "/calib.txt", 20000, 3), 1,
                                               root + "/gptq");
  g.out.pissa = all_linear_lora(4, 4);
  g.out.loftq = all_linear_lora(4, 4);
  EXPECT_NE(error_of([&] { gptq_quantize_model(g); }).find("give --loftq-rank or --pissa-rank, not both"),
            std::string::npos);
  EXPECT_FALSE(dir_exists(g.out.out_dir));
  AwqModelOptions a;
  a.out.model_dir = dense;
  a.out.out_dir = root + "/awq";
  a.out.layout = IntLayout::AwqGemm;
  a.out.pissa = all_linear_lora(4, 4);
  a.calib_path = root + "/calib.txt";
  EXPECT_NE(error_of([&] { awq_quantize_model(a); }).find("awq: no LoftQ or PiSSA"), std::string::npos);
  EXPECT_FALSE(dir_exists(a.out.out_dir));
}

}  // namespace
}  // namespace qwenq
