// compressed-tensors checkpoints (quant/compressed_tensors.h, trainer/quant_config_ct.cpp) against their oracles:
//   - the format's definition: this test writes seeded random tensors as the compressed-tensors docs and code lay
//     them out (signed codes + 2^(b-1) in little-endian bit fields of int32 words along K; packed zero points along
//     N; BF16/F16 scales [N, G]; int8 and float8 weights unpacked) and computes ŵ[n, k] = (q - zero)·scale from that
//     definition; load_linear must give the same fp32 values bit for bit, held packed (GPTQ v2 words) or as FP8 rows,
//     for int2/int4/int8, symmetric and not, tensor/channel/group scales (a partial last group), a shuffled g_idx,
//     a Qwen2.5-0.5B q_proj shape, and F32 scales fp16 cannot hold (then kept as exact fp32 ŵ);
//   - a tiny model and a tiny Qwen3-MoE quantized by `rtn --format gptq_v2`, rewritten in compressed-tensors' pack-quantized layout, loads
//     to the same logits bit for bit, dequantizes to the same bytes, and takes the int8 products on every Linear;
//   - configs and tensors that cannot be read are refused with one error naming the field, tensor or file; the
//     scheme of a module follows targets and ignore (regexes matched from the start, names before "Linear").
//   - CompressedTensorsOracle.* (tests/test_compressed_tensors_oracle.cpp) checks files the library itself wrote.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <memory>
#include <tuple>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/files.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "quant/int_checkpoint.h"
#include "tests/support/checkpoint_compare.h"
#include "tests/support/ct_fixtures.h"
#include "tests/support/safetensors_edit.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/quant_config.h"
#include "trainer/quantize_model.h"
#include "trainer/qwen_model.h"
#include "trainer/qwen_weights.h"

namespace qwenq {
namespace {

using nlohmann::json;

// An empty directory under this test's scratch directory (created, and emptied, once per test).
std::string fresh_dir(const std::string& name) {
  static std::string test_name, root;
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  if (info->name() != test_name) test_name = info->name(), root = test::scratch_dir();
  const std::string d = root + "/" + name;
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

using test::gptq_v2_to_compressed_tensors;
using test::int_weights;
using test::scheme_config;

// One Linear's tensors and the ŵ its definition gives.
struct CtFixture {
  SafetensorsWriter tensors;
  std::vector<float> want;  // [N, K]
};

// Random scales near 0.01, rounded to bf16 (or kept in f32 with fp16-inexact mantissas).
std::vector<float> random_scales(Rng& rng, int64_t n, bool f32) {
  std::vector<float> s(static_cast<size_t>(n));
  for (float& v : s) {
    v = 0.002f + 0.02f * rng.uniform();
    if (!f32) v = bf16_round(v);
  }
  return s;
}

void add_scales(CtFixture* f, const std::string& prefix, const std::vector<float>& s, std::vector<int64_t> shape,
                bool f32) {
  if (f32) {
    f->tensors.add_owned(prefix + ".weight_scale", DType::F32, shape, bytes_of(s));
    return;
  }
  std::vector<uint16_t> h(s.size());
  for (size_t i = 0; i < s.size(); ++i) h[i] = f32_to_bf16(s[i]);
  f->tensors.add_owned(prefix + ".weight_scale", DType::BF16, shape, bytes_of(h));
}

struct IntCase {
  int bits;
  bool sym;
  std::string strategy;  // tensor, channel, group
  int64_t group;
  bool shuffled_g_idx;
  int64_t N, K;
  bool f32_scales;
};

// pack-quantized tensors of `prefix` from seeded codes, by the format's definition.
CtFixture packed_fixture(const std::string& prefix, const IntCase& c, uint64_t seed) {
  Rng rng(seed);
  const int b = c.bits, f = 32 / b;
  const int64_t N = c.N, K = c.K;
  const int64_t G = c.strategy == "group" ? (K + c.group - 1) / c.group : 1;
  CtFixture fx;
  std::vector<int32_t> u(static_cast<size_t>(N * K));
  for (auto& v : u) v = static_cast<int32_t>(rng.below(uint64_t{1} << b));
  std::vector<int32_t> zero(static_cast<size_t>(N * G), 1 << (b - 1));  // stored (unsigned) zero per [n, g]
  if (!c.sym) {
    for (auto& z : zero) z = static_cast<int32_t>(rng.below(uint64_t{1} << b));
  }
  std::vector<float> scale = random_scales(rng, c.strategy == "tensor" ? 1 : N * G, c.f32_scales);
  std::vector<int32_t> g_idx(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) g_idx[k] = static_cast<int32_t>(c.strategy == "group" ? k / c.group : 0);
  if (c.shuffled_g_idx) {
    for (int64_t k = K - 1; k > 0; --k) std::swap(g_idx[k], g_idx[rng.below(static_cast<uint64_t>(k + 1))]);
  }
  std::vector<int32_t> packed(static_cast<size_t>(N * K / f), 0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      packed[n * (K / f) + k / f] |= static_cast<int32_t>(static_cast<uint32_t>(u[n * K + k]) << (b * (k % f)));
  fx.tensors.add_owned(prefix + ".weight_packed", DType::I32, {N, K / f}, bytes_of(packed));
  fx.tensors.add_owned(prefix + ".weight_shape", DType::I64, {2}, bytes_of(std::vector<int64_t>{N, K}));
  if (!c.sym) {
    std::vector<int32_t> zp(static_cast<size_t>(N / f * G), 0);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t g = 0; g < G; ++g)
        zp[(n / f) * G + g] |= static_cast<int32_t>(static_cast<uint32_t>(zero[n * G + g]) << (b * (n % f)));
    fx.tensors.add_owned(prefix + ".weight_zero_point", DType::I32, {N / f, G}, bytes_of(zp));
  }
  if (c.shuffled_g_idx) fx.tensors.add_owned(prefix + ".weight_g_idx", DType::I32, {K}, bytes_of(g_idx));
  add_scales(&fx, prefix, scale, c.strategy == "tensor" ? std::vector<int64_t>{1} : std::vector<int64_t>{N, G},
             c.f32_scales);
  fx.want.resize(static_cast<size_t>(N * K));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t g = g_idx[k];
      const float s = c.strategy == "tensor" ? scale[0] : scale[n * G + g];
      fx.want[n * K + k] = static_cast<float>(u[n * K + k] - zero[n * G + g]) * s;
    }
  }
  return fx;
}

// Loads `prefix` [N, K] of the checkpoint in `dir`, under quantization_config `qc`.
LinearWeight load_dir(const std::string& dir, const json& qc, const std::string& prefix, int64_t N, int64_t K) {
  static std::vector<std::unique_ptr<Checkpoint>> keep;  // the weights view the mapping
  keep.push_back(std::make_unique<Checkpoint>(dir));
  return load_linear(*keep.back(), parse_compressed_tensors_config(qc, "test config"), prefix, N, K);
}

// The same for `fx` written to a fresh directory `name`.
LinearWeight load_from(CtFixture& fx, const json& qc, const std::string& prefix, int64_t N, int64_t K,
                       const std::string& name) {
  const std::string dir = fresh_dir(name);
  fx.tensors.write(path_join(dir, "model.safetensors"));
  return load_dir(dir, qc, prefix, N, K);
}

void expect_bit_equal(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int64_t differ = 0, first = -1;
  for (size_t i = 0; i < want.size(); ++i) {
    if (got[i] != want[i] && differ++ == 0) first = static_cast<int64_t>(i);
  }
  EXPECT_EQ(differ, 0) << what << ": first at " << first << " (" << got[first < 0 ? 0 : first] << " vs "
                       << want[first < 0 ? 0 : first] << ")";
}

TEST(CompressedTensors, PackedIntegerWeightsLoadAsTheirDefinition) {
  const std::string prefix = "model.layers.0.self_attn.q_proj";
  uint64_t seed = 100;
  for (const IntCase& c : {IntCase{4, true, "group", 64, false, 48, 208, false},   // partial last group (16)
                           IntCase{4, false, "group", 64, false, 48, 208, false},
                           IntCase{4, true, "group", 32, true, 48, 256, false},    // actorder "group"
                           IntCase{4, false, "group", 32, true, 64, 128, false},
                           IntCase{2, true, "group", 16, false, 32, 96, false},
                           IntCase{2, false, "channel", -1, false, 32, 96, false},
                           IntCase{8, true, "channel", -1, false, 24, 100, false},
                           IntCase{8, false, "group", 128, false, 24, 200, false},
                           IntCase{4, true, "tensor", -1, false, 16, 64, false},
                           IntCase{4, true, "group", 128, false, 896, 896, false},  // Qwen2.5-0.5B q_proj
                           IntCase{4, true, "channel", -1, false, 48, 208, true},   // F32 scales: kept as fp32
                           IntCase{8, false, "group", 32, true, 24, 96, true}}) {
    const std::string what = "int" + std::to_string(c.bits) + (c.sym ? " sym " : " asym ") + c.strategy + " g" +
                             std::to_string(c.group) + (c.shuffled_g_idx ? " g_idx" : "") + " [" +
                             std::to_string(c.N) + ", " + std::to_string(c.K) + "]" + (c.f32_scales ? " f32" : "");
    SCOPED_TRACE(what);
    CtFixture fx = packed_fixture(prefix, c, ++seed);
    const LinearWeight w = load_from(fx, scheme_config("pack-quantized", int_weights(c.bits, c.sym, c.strategy, c.group)),
                                     prefix, c.N, c.K, "packed_" + std::to_string(seed));
    if (c.f32_scales) {
      EXPECT_TRUE(w.is_dense() && w.dense.dtype == DType::F32);
    } else {
      ASSERT_TRUE(w.packed);
      EXPECT_EQ(w.packed->layout, IntLayout::GptqV2);
      EXPECT_EQ(w.packed->bits, c.bits);
      EXPECT_EQ(w.packed->perm.empty(), !c.shuffled_g_idx);  // act-order rows sorted by group at load
    }
    expect_bit_equal(w.dequantize(), fx.want, what);
  }
}

TEST(CompressedTensors, UnpackedInt8AndFloat8WeightsLoadAsTheirDefinition) {
  const std::string prefix = "model.layers.1.mlp.down_proj";
  const int64_t N = 40, K = 96;
  uint64_t seed = 200;
  // int-quantized: I8 codes, optional I8 zero points of the scales' shape.
  for (const auto& [sym, strategy, group] : {std::make_tuple(true, std::string("channel"), int64_t{-1}),
                                             std::make_tuple(false, std::string("channel"), int64_t{-1}),
                                             std::make_tuple(false, std::string("group"), int64_t{32}),
                                             std::make_tuple(true, std::string("tensor"), int64_t{-1})}) {
    SCOPED_TRACE("int8 " + strategy + (sym ? " sym" : " asym"));
    Rng rng(++seed);
    const int64_t G = strategy == "group" ? K / group : 1;
    CtFixture fx;
    std::vector<int8_t> q(static_cast<size_t>(N * K)), zp(static_cast<size_t>(N * G), 0);
    for (auto& v : q) v = static_cast<int8_t>(static_cast<int>(rng.below(256)) - 128);
    if (!sym) {
      for (auto& v : zp) v = static_cast<int8_t>(static_cast<int>(rng.below(256)) - 128);
    }
    const std::vector<float> s = random_scales(rng, strategy == "tensor" ? 1 : N * G, false);
    fx.tensors.add_owned(prefix + ".weight", DType::I8, {N, K}, bytes_of(q));
    const std::vector<int64_t> sshape = strategy == "tensor" ? std::vector<int64_t>{1} : std::vector<int64_t>{N, G};
    add_scales(&fx, prefix, s, sshape, false);
    if (!sym) fx.tensors.add_owned(prefix + ".weight_zero_point", DType::I8, {N, G}, bytes_of(zp));
    fx.want.resize(static_cast<size_t>(N * K));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        const int64_t g = strategy == "group" ? k / group : 0;
        const float sc = strategy == "tensor" ? s[0] : s[n * G + g];
        fx.want[n * K + k] = static_cast<float>(q[n * K + k] - zp[n * G + g]) * sc;
      }
    const LinearWeight w = load_from(fx, scheme_config("int-quantized", int_weights(8, sym, strategy, group)), prefix,
                                     N, K, "int8_" + std::to_string(seed));
    ASSERT_TRUE(w.packed);
    EXPECT_EQ(w.packed->bits, 8);
    expect_bit_equal(w.dequantize(), fx.want, "int8");
  }
  // float-quantized: F8_E4M3 bytes (every finite code), scales per tensor, channel, group or block.
  for (const std::string strategy : {"tensor", "channel", "group", "block"}) {
    SCOPED_TRACE("fp8 " + strategy);
    Rng rng(++seed);
    json wj = {{"num_bits", 8}, {"type", "float"}, {"symmetric", true}, {"strategy", strategy}, {"dynamic", false}};
    int64_t bn = 1, bk = K;
    if (strategy == "tensor") bn = N;
    if (strategy == "group") bk = 32, wj["group_size"] = 32;
    if (strategy == "block") bn = 16, bk = 64, wj["block_structure"] = {16, 64};  // partial blocks both ways
    const int64_t SN = (N + bn - 1) / bn, SK = (K + bk - 1) / bk;
    CtFixture fx;
    std::vector<uint8_t> q(static_cast<size_t>(N * K));
    for (auto& v : q) {
      do v = static_cast<uint8_t>(rng.below(256));
      while ((v & 0x7F) == 0x7F);  // not NaN
    }
    const std::vector<float> s = random_scales(rng, SN * SK, false);
    fx.tensors.add_owned(prefix + ".weight", DType::F8_E4M3, {N, K}, q);
    add_scales(&fx, prefix, s, strategy == "tensor" ? std::vector<int64_t>{} : std::vector<int64_t>{SN, SK}, false);
    fx.want.resize(static_cast<size_t>(N * K));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) fx.want[n * K + k] = f8_e4m3_to_f32(q[n * K + k]) * s[(n / bn) * SK + k / bk];
    const LinearWeight w = load_from(fx, scheme_config("float-quantized", wj), prefix, N, K, "fp8_" + strategy);
    ASSERT_TRUE(w.fp8);
    expect_bit_equal(w.dequantize(), fx.want, "fp8");
  }
}

void expect_same_as_gptq(const std::string& root, const std::string& preset);

TEST(CompressedTensors, GptqModelRewrittenAsPackQuantizedComputesTheSameLogits) {
  for (const std::string preset : {"tiny", "tiny-moe"}) {
    SCOPED_TRACE(preset);
    expect_same_as_gptq(fresh_dir("model_" + preset), preset);
  }
}

void expect_same_as_gptq(const std::string& root, const std::string& preset) {
  test::make_random_model(root + "/dense", preset, DType::F32, 7);
  QuantizeOptions q;
  q.model_dir = root + "/dense";
  q.out_dir = root + "/gptq";
  q.layout = IntLayout::GptqV2;
  q.group_size = 32;
  q.quiet = true;
  quantize_model(q);
  gptq_v2_to_compressed_tensors(root + "/gptq", root + "/ct", 4, 32);
  const QwenModel gptq(root + "/gptq"), ct(root + "/ct");
  ASSERT_EQ(ct.quant_config().method, QuantConfig::Method::CompressedTensors);
  const PackedBatch batch = test::random_batch({9, 17}, ct.config().vocab_size, 5);
  const std::vector<float> a = gptq.forward_logits(batch), b = ct.forward_logits(batch);
  expect_bit_equal(b, a, "logits");
  // dequantize writes the same dense model.
  test::expect_same_dequantized(root + "/gptq", root + "/ct");
  // The int8 products reach every packed Linear (all but the MoE routers, stored dense), as for the GPTQ file.
  test::ScopedInt8Activations on;
  const Int8Coverage cov = int8_coverage(QwenModel(root + "/ct").weights());
  const Int8Coverage want = int8_coverage(QwenModel(root + "/gptq").weights());
  EXPECT_EQ(cov.int8, want.int8);
  EXPECT_EQ(cov.linears, want.linears);
  EXPECT_GT(want.int8, want.linears / 2);
}

TEST(CompressedTensors, SchemesFollowTargetsAndIgnore) {
  json qc = scheme_config("pack-quantized", int_weights(4, true, "group", 128),
                          {"lm_head", "re:.*mlp\\.gate$", "re:mlp\\.up_proj"});
  qc["config_groups"]["group_1"] = {{"targets", {"re:.*down_proj"}}, {"weights", int_weights(8, true, "channel")}};
  const QuantConfig c = parse_compressed_tensors_config(qc, "cfg");
  ASSERT_EQ(c.ct_schemes.size(), 2u);
  EXPECT_EQ(c.ct_scheme_for("model.layers.0.mlp.gate"), nullptr);  // the MoE router, ignored
  EXPECT_EQ(c.ct_scheme_for("lm_head"), nullptr);
  ASSERT_NE(c.ct_scheme_for("model.layers.0.mlp.gate_proj"), nullptr);  // re.match: from the start, not to the end
  EXPECT_EQ(c.ct_scheme_for("model.layers.0.mlp.gate_proj")->weights.bits, 4);
  EXPECT_NE(c.ct_scheme_for("model.layers.0.mlp.up_proj"), nullptr);  // "re:mlp..." does not match from the start
  EXPECT_EQ(c.ct_scheme_for("model.layers.3.mlp.down_proj")->weights.bits, 8);  // a name match before "Linear"
  json clash = qc;
  clash["config_groups"]["group_2"] = {{"targets", {"re:.*down"}}, {"weights", int_weights(2, true, "channel")}};
  EXPECT_NE(test::error_of([&] { parse_compressed_tensors_config(clash, "cfg").ct_scheme_for("model.layers.0.mlp.down_proj"); })
                .find("both target model.layers.0.mlp.down_proj"),
            std::string::npos);
}

TEST(CompressedTensors, UnreadableConfigsAreRefusedNamingTheField) {
  const json w4 = int_weights(4, true, "group", 128);
  const auto refused = [](json qc, const std::vector<std::string>& parts) {
    test::expect_error([&] { parse_compressed_tensors_config(qc, "dir/config.json"); }, parts);
  };
  json kv = scheme_config("pack-quantized", w4);
  kv["kv_cache_scheme"] = {{"num_bits", 8}, {"type", "float"}};
  refused(kv, {"dir/config.json", "kv_cache_scheme"});
  json stat = scheme_config("float-quantized", {{"num_bits", 8}, {"type", "float"}, {"strategy", "tensor"}});
  stat["config_groups"]["group_0"]["input_activations"] = {{"num_bits", 8}, {"type", "float"}, {"dynamic", false}};
  refused(stat, {"config_groups.group_0", "static input activation scales"});
  refused(scheme_config("marlin-24", w4), {"format \"marlin-24\"", "not supported"});
  refused(scheme_config("pack-quantized", int_weights(3, true, "group", 128)), {"int3"});
  refused(scheme_config("nvfp4-pack-quantized", {{"num_bits", 4}, {"type", "float"}, {"strategy", "tensor_group"}}),
          {"float4"});
  refused(scheme_config("pack-quantized", int_weights(4, true, "group")), {"group needs a positive group_size"});
  refused(scheme_config("int-quantized", int_weights(8, true, "block")), {"strategy block"});
  refused(scheme_config("int-quantized", int_weights(4, true, "channel")), {"int4 weights stored unpacked"});
  refused(scheme_config("float-quantized", w4), {"float-quantized holds float weights"});
  json sparse = scheme_config("pack-quantized", w4);
  sparse["sparsity_config"] = {{"format", "sparse-24-bitmask"}};
  refused(sparse, {"sparse"});
  refused(scheme_config("pack-quantized", w4, {"re:(?<=x)y"}), {"ignore", "\"(?<=x)y\"", "regular expression"});
  json none = scheme_config("pack-quantized", w4);
  none.erase("config_groups");
  refused(none, {"config_groups"});
}

// The config variants compressed-tensors' QuantizationConfig / QuantizationArgs accept: a null or dense
// sparsity_config, a null "ignore", a group quantizing only activations (its weights stay dense), a group's own
// "format" under a top-level "mixed-precision", null "symmetric", "type"/"strategy" in any case (its validators
// lower-case them), and no strategy at all: inferred from group_size as validate_model_after does (none: tensor,
// positive: group, -1: channel).
TEST(CompressedTensors, ConfigVariantsReadAsTheLibraryReadsThem) {
  const json w4 = int_weights(4, true, "group", 128);
  json qc = scheme_config("mixed-precision", w4, nullptr);
  qc["config_groups"]["group_0"]["format"] = "pack-quantized";
  qc["config_groups"]["group_1"] = {{"targets", {"re:.*down_proj"}}, {"format", "naive-quantized"},
                                    {"weights", {{"num_bits", 8}, {"type", "INT"}, {"symmetric", nullptr}, {"strategy", "Channel"}}}};
  qc["config_groups"]["group_2"] = {{"targets", {"Linear"}}, {"weights", nullptr},
                                    {"input_activations", {{"num_bits", 8}, {"type", "float"}, {"dynamic", true}}}};
  qc["sparsity_config"] = nullptr;
  QuantConfig c = parse_compressed_tensors_config(qc, "cfg");
  ASSERT_EQ(c.ct_schemes.size(), 2u);  // group_2 quantizes no weights
  EXPECT_TRUE(c.ct_ignore.empty());
  EXPECT_TRUE(c.ct_schemes[0].packed);
  EXPECT_FALSE(c.ct_schemes[1].packed);
  EXPECT_EQ(c.ct_schemes[1].weights.bits, 8);
  EXPECT_FALSE(c.ct_schemes[1].weights.is_float);
  EXPECT_TRUE(c.ct_schemes[1].weights.sym);
  EXPECT_EQ(c.ct_schemes[1].weights.strategy, CtStrategy::Channel);
  EXPECT_EQ(c.ct_scheme_for("model.layers.0.mlp.down_proj"), &c.ct_schemes[1]);
  EXPECT_EQ(c.ct_scheme_for("model.layers.0.mlp.up_proj"), &c.ct_schemes[0]);
  qc["sparsity_config"] = {{"format", "dense"}, {"global_sparsity", 0.0}};
  EXPECT_EQ(parse_compressed_tensors_config(qc, "cfg").ct_schemes.size(), 2u);
  // A group's format is its own: int4 unpacked under a top-level pack-quantized is refused by the group's name.
  json own = scheme_config("pack-quantized", w4);
  own["config_groups"]["group_0"]["format"] = "int-quantized";
  test::expect_error([&] { parse_compressed_tensors_config(own, "cfg"); },
                     {"cfg: config_groups.group_0", "int4 weights stored unpacked (int-quantized)"});
  // Two groups that give the same module the same weights do not clash; a different block does.
  json fp8 = scheme_config("float-quantized", {{"num_bits", 8}, {"type", "float"}, {"strategy", "block"},
                                               {"block_structure", {128, 128}}});
  fp8["config_groups"]["group_1"] = fp8["config_groups"]["group_0"];
  EXPECT_EQ(parse_compressed_tensors_config(fp8, "cfg").ct_scheme_for("model.layers.0.mlp.up_proj")->weights.block_k, 128);
  fp8["config_groups"]["group_1"]["weights"]["block_structure"] = {128, 64};
  test::expect_error([&] { parse_compressed_tensors_config(fp8, "cfg").ct_scheme_for("model.layers.0.mlp.up_proj"); },
                     "config groups \"group_0\" and \"group_1\" both target model.layers.0.mlp.up_proj");

  // No strategy (absent or null): the library's inference from group_size.
  for (const bool null : {false, true}) {
    json w = w4;
    w.erase("strategy");
    if (null) w["strategy"] = nullptr;
    for (const auto& [group, want] : std::vector<std::pair<json, CtStrategy>>{
             {json(128), CtStrategy::Group}, {json(-1), CtStrategy::Channel}, {json(nullptr), CtStrategy::Tensor}}) {
      w["group_size"] = group;
      const CtWeightArgs a = parse_compressed_tensors_config(scheme_config("pack-quantized", w), "cfg").ct_schemes[0].weights;
      EXPECT_EQ(a.strategy, want) << w.dump();
      if (want == CtStrategy::Group) {
        EXPECT_EQ(a.group_size, 128);
      }
    }
  }
  json null_strategy = w4;
  null_strategy["strategy"] = nullptr;
  null_strategy["group_size"] = 0;
  test::expect_error([&] { parse_compressed_tensors_config(scheme_config("pack-quantized", null_strategy), "cfg"); },
                     {"cfg: config_groups.group_0.weights", "group_size 0 without a strategy"});
  json token = w4;
  token["strategy"] = "token";
  test::expect_error([&] { parse_compressed_tensors_config(scheme_config("pack-quantized", token), "cfg"); },
                     "weight strategy \"token\" is not supported");
  token["strategy"] = 4;
  test::expect_error([&] { parse_compressed_tensors_config(scheme_config("pack-quantized", token), "cfg"); },
                     "cfg: config_groups.group_0.weights: \"strategy\" must be a string, got 4");
}

TEST(CompressedTensors, CorruptTensorsAreRefusedNamingTheTensor) {
  const std::string prefix = "model.layers.0.self_attn.q_proj";
  const IntCase c{4, false, "group", 32, true, 32, 64, false};
  const json qc = scheme_config("pack-quantized", int_weights(4, false, "group", 32));
  // The fixture's file with tensor `drop` replaced by `name` (left out when name is empty), loaded: its error.
  const auto load_edited = [&](const std::string& dir_name, const std::string& drop, const std::string& name, DType dt,
                               std::vector<int64_t> shape, std::vector<uint8_t> bytes) {
    const std::string dir = fresh_dir(dir_name), file = path_join(dir, "model.safetensors");
    packed_fixture(prefix, c, 300).tensors.write(file);
    test::rewrite_safetensors(file, [&](const std::string& n, const TensorView& v, std::vector<uint8_t> b,
                                        SafetensorsWriter& w) {
      if (n != drop) w.add_owned(n, v.dtype, v.shape, std::move(b));
      else if (!name.empty()) w.add_owned(name, dt, shape, bytes);
    });
    return test::error_of([&] { load_dir(dir, qc, prefix, c.N, c.K); });
  };
  std::string e = load_edited("short", prefix + ".weight_packed", prefix + ".weight_packed", DType::I32, {32, 7},
                      std::vector<uint8_t>(32 * 7 * 4));
  EXPECT_NE(e.find("weight_packed' has shape [32, 7], expected [32, 8]"), std::string::npos) << e;
  EXPECT_NE(e.find("model.safetensors"), std::string::npos) << e;
  std::vector<int32_t> bad(64, 0);
  bad[5] = 2;  // G = 2
  e = load_edited("gidx", prefix + ".weight_g_idx", prefix + ".weight_g_idx", DType::I32, {64}, bytes_of(bad));
  EXPECT_NE(e.find("weight_g_idx[5] = 2 is outside [0, 2)"), std::string::npos) << e;
  e = load_edited("shape", prefix + ".weight_shape", prefix + ".weight_shape", DType::I64, {2},
                  bytes_of(std::vector<int64_t>{32, 56}));
  EXPECT_NE(e.find("weight_shape' says [32, 56]"), std::string::npos) << e;
  e = load_edited("nozp", prefix + ".weight_zero_point", "", DType::I32, {}, {});
  EXPECT_NE(e.find("weight_zero_point' (the packed zero points"), std::string::npos) << e;
  std::vector<uint16_t> inf(64, 0x7F80);
  e = load_edited("inf", prefix + ".weight_scale", prefix + ".weight_scale", DType::BF16, {32, 2}, bytes_of(inf));
  EXPECT_NE(e.find("weight_scale' holds inf"), std::string::npos) << e;
  // An int8 tensor where the scheme says packed, and a K the words cannot hold.
  e = load_edited("i8", prefix + ".weight_packed", prefix + ".weight", DType::I8, {32, 64}, std::vector<uint8_t>(2048));
  EXPECT_NE(e.find("stored as I8 but its compressed-tensors scheme \"group_0\" says int4, packed"), std::string::npos) << e;
  // A packed Linear that the config's ignore list names (or no group targets).
  json ignoring = qc;
  ignoring["ignore"] = {"re:.*q_proj"};
  {
    CtFixture fx = packed_fixture(prefix, c, 300);
    e = test::error_of([&] { load_from(fx, ignoring, prefix, c.N, c.K, "ignored"); });
    EXPECT_NE(e.find("q_proj is stored quantized, but no compressed-tensors config group"), std::string::npos) << e;
  }
  CtFixture odd;
  odd.tensors.add_owned(prefix + ".weight_packed", DType::I32, {32, 3}, std::vector<uint8_t>(32 * 3 * 4));
  e = test::error_of([&] { load_from(odd, qc, prefix, 32, 20, "oddk"); });
  EXPECT_NE(e.find("[32, 20] does not pack into int32 words of 8 codes"), std::string::npos) << e;
}

}  // namespace
}  // namespace qwenq
