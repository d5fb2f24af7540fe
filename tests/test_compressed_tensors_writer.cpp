// qwen-quant's compressed-tensors writer (quant/compressed_tensors.h add_ct_packed_linear, ct_quantization_config;
// --format compressed-tensors) against its oracles:
//   - the reader, itself checked against the format's definition and the library (test_compressed_tensors*.cpp): a
//     GPTQ v1/v2 or AWQ Linear written and read back dequantizes to the original ŵ bit for bit, for int2/int4/int8,
//     symmetric and not, act-order g_idx, a partial last group and a Qwen2.5-0.5B shape;
//   - the independent converter of test_compressed_tensors.cpp (tensors laid out from the format's definition): an
//     rtn model written directly is that converter's output for the same codes, tensor for tensor and byte for byte;
//   - the GPTQ v2 file of the same quantization: rtn (asymmetric), GPTQ with act-order and AWQ written as
//     compressed-tensors load to the same logits and dequantize to the same bytes, and a MoE model's routers are
//     ignored by pattern;
//   - what the format cannot say (3-bit codes, a "symmetric" grid with other zero points, sorted rows, act-order
//     groups without g_idx) is refused naming the Linear.
// CompressedTensorsOracle.* (tests/test_compressed_tensors_oracle.cpp) has the library read these files.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/files.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "quant/compressed_tensors.h"
#include "quant/grid.h"
#include "quant/int_checkpoint.h"
#include "tests/support/checkpoint_compare.h"
#include "tests/support/ct_fixtures.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/quant_config.h"
#include "trainer/quantize_model.h"
#include "trainer/quantize_output.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

using nlohmann::json;

struct LinearCase {
  IntLayout layout;
  int bits;
  bool sym;
  int64_t N, K, group;  // group K: one group per output (strategy channel)
  bool act_order;
};

// Seeded codes and grid on `c`, packed in its layout; zero points 2^(b-1) when symmetric.
PackedIntLinear random_linear(const LinearCase& c, uint64_t seed) {
  Rng rng(seed);
  const int64_t G = (c.K + c.group - 1) / c.group;
  const uint32_t levels = 1u << c.bits;
  GroupGrid grid;
  grid.bits = c.bits;
  grid.N = c.N;
  grid.K = c.K;
  grid.group = c.group;
  grid.scale.resize(static_cast<size_t>(G * c.N));
  grid.zero.resize(grid.scale.size());
  for (size_t i = 0; i < grid.scale.size(); ++i) {
    grid.scale[i] = f16_to_f32(f32_to_f16(0.001f + 0.05f * rng.uniform()));
    // GPTQ v1 stores zero - 1: its asymmetric zero points start at 1.
    grid.zero[i] = static_cast<uint8_t>(c.sym ? levels / 2 : 1 + rng.next_u64() % (levels - 1));
  }
  std::vector<uint8_t> codes(static_cast<size_t>(c.K * c.N));
  for (uint8_t& q : codes) q = static_cast<uint8_t>(rng.next_u64() % levels);
  std::vector<int32_t> g_idx(static_cast<size_t>(c.K));
  for (int64_t k = 0; k < c.K; ++k) g_idx[k] = static_cast<int32_t>(k / c.group);
  if (c.act_order) {
    for (int64_t k = c.K - 1; k > 0; --k) std::swap(g_idx[k], g_idx[rng.next_u64() % (k + 1)]);
  }
  return pack_int_linear(codes.data(), grid, g_idx.data(), c.layout);
}

CtWeightArgs args_of(const LinearCase& c) {
  CtWeightArgs a;
  a.bits = c.bits;
  a.sym = c.sym;
  a.strategy = c.group >= c.K ? CtStrategy::Channel : CtStrategy::Group;
  a.group_size = c.group;
  return a;
}

TEST(CompressedTensorsWriter, LinearsReadBackToTheSameWeightsBitForBit) {
  const std::string dir = test::scratch_dir();
  const std::vector<LinearCase> cases = {
      {IntLayout::GptqV2, 4, true, 64, 128, 32, false},    {IntLayout::GptqV2, 4, false, 64, 128, 32, false},
      {IntLayout::GptqV2, 4, true, 64, 128, 32, true},     {IntLayout::GptqV2, 4, false, 32, 200, 64, true},
      {IntLayout::GptqV2, 2, false, 48, 96, 16, false},    {IntLayout::GptqV2, 2, true, 48, 96, 16, true},
      {IntLayout::GptqV2, 8, true, 36, 64, 64, false},     {IntLayout::GptqV2, 8, false, 36, 72, 72, false},
      {IntLayout::GptqV1, 4, true, 64, 128, 32, true},     {IntLayout::GptqV1, 4, false, 64, 128, 32, false},
      {IntLayout::AwqGemm, 4, false, 64, 128, 32, false},  {IntLayout::AwqGemm, 4, true, 64, 128, 128, false},
      {IntLayout::GptqV2, 4, true, 896, 896, 128, true},   // Qwen2.5-0.5B q_proj
  };
  uint64_t seed = 1;
  for (const LinearCase& c : cases) {
    const std::string what = std::string(int_layout_name(c.layout)) + " int" + std::to_string(c.bits) +
                             (c.sym ? " sym" : " asym") + " [" + std::to_string(c.N) + ", " + std::to_string(c.K) +
                             "] group " + std::to_string(c.group) + (c.act_order ? " act-order" : "");
    SCOPED_TRACE(what);
    const PackedIntLinear p = random_linear(c, seed++);
    SafetensorsWriter w;
    add_ct_packed_linear(w, "layer.proj", p, c.sym, c.act_order);
    const std::string path = dir + "/model.safetensors";
    w.write(path);
    const SafetensorsFile file(path);
    EXPECT_EQ(file.has("layer.proj.weight_zero_point"), !c.sym);
    EXPECT_EQ(file.has("layer.proj.weight_g_idx"), c.act_order);
    EXPECT_EQ(file.get("layer.proj.weight_scale").dtype, DType::F16);
    const Checkpoint ckpt(dir);
    const CtIntLinear back = read_ct_packed_linear(ckpt, "layer.proj", args_of(c), c.N, c.K);
    EXPECT_TRUE(back.scales_f32.empty());  // our scales are fp16 already
    const std::vector<float> want = dequantize_int_linear(p), got = dequantize_ct_int_linear(back);
    ASSERT_EQ(got.size(), want.size());
    int64_t differ = 0;
    for (size_t i = 0; i < want.size(); ++i) differ += std::memcmp(&got[i], &want[i], sizeof(float)) != 0;
    EXPECT_EQ(differ, 0) << " of " << want.size() << " weights differ";
    std::filesystem::remove(path);
  }
}

TEST(CompressedTensorsWriter, RefusesWhatTheFormatCannotSay) {
  SafetensorsWriter w;
  const PackedIntLinear asym = random_linear({IntLayout::GptqV2, 4, false, 32, 64, 32, false}, 3);
  test::expect_error([&] { add_ct_packed_linear(w, "m.q_proj", asym, true, false); },
                     {"m.q_proj: zero point", "is not 8, so the grid is not symmetric"});
  const PackedIntLinear three = random_linear({IntLayout::GptqV2, 3, true, 32, 64, 32, false}, 4);
  test::expect_error([&] { add_ct_packed_linear(w, "m.k_proj", three, true, false); },
                     {"m.k_proj: compressed-tensors pack-quantized files are written with 2, 4 or 8-bit codes, not 3"});
  const PackedIntLinear shuffled = random_linear({IntLayout::GptqV2, 4, true, 32, 64, 16, true}, 5);
  test::expect_error([&] { add_ct_packed_linear(w, "m.v_proj", shuffled, true, false); },
                     {"m.v_proj: act-order groups (g_idx out of input order) need actorder \"group\""});
  test::expect_error([&] { add_ct_packed_linear(w, "m.o_proj", int_linear_sort_inputs_by_group(shuffled), true, true); },
                     {"m.o_proj: this Linear's rows were sorted by group in memory"});

  QuantizeOptions o;
  o.compressed_tensors = true;
  o.layout = IntLayout::GptqV2;
  o.bits = 3;
  test::expect_error([&] { check_int_options(o); },
                     {"compressed-tensors pack-quantized files are written with 2, 4 or 8-bit codes, not 3"});
  o.bits = 4;
  o.layout = IntLayout::AwqGemm;
  test::expect_error([&] { check_int_options(o); }, {"compressed-tensors output is made from GPTQ v2 codes, not awq-gemm"});
}

// The config qwen-quant writes, read back by our parser: one int scheme over every Linear but lm_head.
TEST(CompressedTensorsWriter, ConfigIsTheLibrarysShape) {
  const json qc = ct_quantization_config(4, 128, true, "group", {"lm_head"});
  EXPECT_EQ(qc["quant_method"], "compressed-tensors");
  EXPECT_EQ(qc["format"], "pack-quantized");
  EXPECT_EQ(qc["quantization_status"], "compressed");
  const json& w = qc["config_groups"]["group_0"]["weights"];
  EXPECT_EQ(w["num_bits"], 4);
  EXPECT_EQ(w["strategy"], "group");
  EXPECT_EQ(w["group_size"], 128);
  EXPECT_EQ(w["actorder"], "group");
  EXPECT_EQ(w["symmetric"], true);
  const json channel = ct_quantization_config(8, -1, false, "group", {"lm_head"});
  const json& wc = channel["config_groups"]["group_0"]["weights"];
  EXPECT_EQ(wc["strategy"], "channel");
  EXPECT_TRUE(wc["group_size"].is_null());
  EXPECT_TRUE(wc["actorder"].is_null());  // the library allows actorder with group strategy only
  const QuantConfig parsed = parse_compressed_tensors_config(qc, "config.json");
  ASSERT_EQ(parsed.ct_schemes.size(), 1u);
  EXPECT_EQ(parsed.ct_scheme_for("model.layers.0.mlp.up_proj"), &parsed.ct_schemes[0]);
  EXPECT_EQ(parsed.ct_scheme_for("lm_head"), nullptr);
  EXPECT_EQ(parsed.ct_schemes[0].weights.group_size, 128);
  EXPECT_TRUE(parsed.ct_schemes[0].packed);
}

QuantizeOptions tiny_options(const std::string& model, const std::string& out, bool ct) {
  QuantizeOptions o;
  o.model_dir = model;
  o.out_dir = out;
  o.layout = IntLayout::GptqV2;
  o.compressed_tensors = ct;
  o.group_size = 32;
  o.quiet = true;
  return o;
}

// Same logits bit for bit on a random batch, and `dequantize` writes the same dense model.
void expect_same_model(const std::string& a, const std::string& b) {
  const QwenModel ma(a), mb(b);
  ASSERT_EQ(mb.quant_config().method, QuantConfig::Method::CompressedTensors);
  const PackedBatch batch = test::random_batch({9, 17}, ma.config().vocab_size, 5);
  const std::vector<float> la = ma.forward_logits(batch), lb = mb.forward_logits(batch);
  ASSERT_EQ(la.size(), lb.size());
  EXPECT_EQ(std::memcmp(la.data(), lb.data(), la.size() * sizeof(float)), 0) << "logits differ";
  test::expect_same_dequantized(a, b);
}

TEST(CompressedTensorsWriter, RtnFileIsTheDefinitionsLayoutOfItsGptqCodes) {
  const std::string root = test::scratch_dir();
  const std::string src = test::make_random_model(root + "/dense", "tiny", DType::F32, 7);
  quantize_model(tiny_options(src, root + "/gptq", false));
  quantize_model(tiny_options(src, root + "/ct", true));
  // Tensor for tensor what the test's own converter (the format's definition) makes of the GPTQ v2 file.
  test::gptq_v2_to_compressed_tensors(root + "/gptq", root + "/converted", 4, 32);
  test::expect_same_tensors(root + "/ct", root + "/converted");
  const json qc = json::parse(read_file(root + "/ct/config.json"))["quantization_config"];
  EXPECT_EQ(qc["ignore"], json::array({"lm_head"}));
  EXPECT_EQ(qc["qwenq_method"], "rtn");
  expect_same_model(root + "/gptq", root + "/ct");
}

TEST(CompressedTensorsWriter, AsymmetricActOrderAndAwqFilesComputeAsTheirGptqTwins) {
  const std::string root = test::scratch_dir();
  const std::string src = test::make_random_model(root + "/dense", "tiny", DType::F32, 8);
  {
    SCOPED_TRACE("rtn --asym");
    QuantizeOptions a = tiny_options(src, root + "/rtn-gptq", false), b = tiny_options(src, root + "/rtn-ct", true);
    a.sym = b.sym = false;
    quantize_model(a);
    quantize_model(b);
    expect_same_model(a.out_dir, b.out_dir);
    EXPECT_TRUE(SafetensorsFile(b.out_dir + "/model.safetensors").has("model.layers.0.mlp.up_proj.weight_zero_point"));
  }
  const std::string calib = test::write_random_words(root + "/calib.txt", 20000, 3);
  {
    SCOPED_TRACE("gptq --desc-act");
    GptqModelOptions g;
    g.calib_path = calib;
    g.calib_samples = 8;
    g.calib_seq_len = 64;
    g.desc_act = true;
    g.out = tiny_options(src, root + "/g-gptq", false);
    gptq_quantize_model(g);
    g.out = tiny_options(src, root + "/g-ct", true);
    gptq_quantize_model(g);
    expect_same_model(root + "/g-gptq", root + "/g-ct");
    const json w = json::parse(read_file(root + "/g-ct/config.json"))["quantization_config"]["config_groups"]["group_0"]
                                                                             ["weights"];
    EXPECT_EQ(w["actorder"], "group");
    EXPECT_TRUE(SafetensorsFile(root + "/g-ct/model.safetensors").has("model.layers.1.self_attn.o_proj.weight_g_idx"));
    g.static_groups = true;  // groups in input order: no g_idx, actorder "weight"
    g.out = tiny_options(src, root + "/gs-ct", true);
    gptq_quantize_model(g);
    const json ws = json::parse(read_file(root + "/gs-ct/config.json"))["quantization_config"]["config_groups"]
                                                                             ["group_0"]["weights"];
    EXPECT_EQ(ws["actorder"], "weight");
    EXPECT_FALSE(SafetensorsFile(root + "/gs-ct/model.safetensors").has("model.layers.1.self_attn.o_proj.weight_g_idx"));
  }
  {
    SCOPED_TRACE("awq");
    AwqModelOptions a = test::awq_test_options(src, root + "/awq-gptq", calib, IntLayout::GptqV2);
    awq_quantize_model(a);
    a.out.out_dir = root + "/awq-ct";
    a.out.compressed_tensors = true;
    awq_quantize_model(a);
    expect_same_model(root + "/awq-gptq", root + "/awq-ct");
    const json qc = json::parse(read_file(root + "/awq-ct/config.json"))["quantization_config"];
    EXPECT_EQ(qc["config_groups"]["group_0"]["weights"]["symmetric"], false);
    EXPECT_EQ(qc["qwenq_method"], "awq");
  }
}

TEST(CompressedTensorsWriter, MoeRoutersAreIgnoredByPattern) {
  const std::string root = test::scratch_dir();
  const std::string src = test::make_random_model(root + "/dense", "tiny-moe", DType::F32, 9);
  quantize_model(tiny_options(src, root + "/gptq", false));
  quantize_model(tiny_options(src, root + "/ct", true));
  const json qc = json::parse(read_file(root + "/ct/config.json"))["quantization_config"];
  EXPECT_EQ(qc["ignore"][0], "lm_head");
  EXPECT_EQ(qc["ignore"][1], "re:.*mlp\\.gate$");
  const QuantConfig parsed = load_quant_config(root + "/ct");
  EXPECT_EQ(parsed.ct_scheme_for("model.layers.0.mlp.gate"), nullptr);
  EXPECT_NE(parsed.ct_scheme_for("model.layers.0.mlp.experts.3.gate_proj"), nullptr);
  EXPECT_NE(parsed.ct_scheme_for("model.layers.0.mlp.gate_proj"), nullptr);  // a dense layer's stays quantized
  expect_same_model(root + "/gptq", root + "/ct");
}

}  // namespace
}  // namespace qwenq
