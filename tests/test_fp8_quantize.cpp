// FP8 writing (quant/fp8_quantize.h, qwen-quant fp8) against its oracles:
//   - f32_to_e4m3 against the format's definition evaluated in double (tests/support/fp8_fixtures.h): every finite
//     value maps to its byte, the midpoints between neighbours to the even one, a hair off them to the nearer one,
//     2^16 seeded random floats over the whole range to the nearest value; beyond 448 saturated, NaN to 0x7F;
//   - quantize_fp8_blocks: each block's scale is max(max|w| / 448, 2^-23) (an all-zero block gets the floor), each code
//     the nearest e4m3 value to w / scale (by the definition), on per-channel and partial 32 x 48 blocks;
//   - `quantize_model` with Method::Fp8 on a tiny model (both formats) and a tiny Qwen3-MoE (compressed-tensors):
//     the files load through the FP8 readers with ŵ = value(code)·scale bit for bit, the logits stay within
//     kFp8LogitTol of the fp32 model's, and the MoE routers stay dense (ignored by pattern, or listed by path in the
//     block-wise format); the GPU and LoftQ are refused before any output.
// The Python side (tests/oracle/test_compressed_tensors_oracle.py) checks the bytes against torch's own float8 cast
// and the compressed-tensors library's decompression.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "core/rng.h"
#include "quant/fp8.h"
#include "quant/fp8_quantize.h"
#include "tests/support/fp8_fixtures.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/quant_config.h"
#include "trainer/quantize_model.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

using test::e4m3_definition;

// Logits of the FP8 model against the fp32 one it was made from, as a relative RMS difference: e4m3 keeps 3 mantissa
// bits (a relative rounding of up to 1/16 per weight): measured 0.025 per channel, 0.032 in 32 x 32 blocks, 0.043 on
// the MoE (routing flips); 4-bit grids give about 0.2 on these models.
constexpr double kFp8LogitTol = 5e-2;

// The byte whose definition is nearest x, |x| <= 448 (no ties in the inputs used); zero carries x's sign (as torch's
// cast gives -0 for a negative value that rounds to zero).
int nearest_by_definition(double x) {
  int best = std::signbit(x) ? 0x80 : 0x00;
  for (int b = 0; b < 256; ++b) {
    if ((b & 0x7F) == 0x7F) continue;
    if (std::fabs(e4m3_definition(b) - x) < std::fabs(e4m3_definition(best) - x)) best = b;
  }
  return best;
}

TEST(Fp8Quantize, E4m3RoundingIsNearestTiesToEven) {
  // The positive finite values in order: bytes 0x00 .. 0x7E.
  for (int b = 0; b <= 0x7E; ++b) {
    const float v = static_cast<float>(e4m3_definition(b));
    EXPECT_EQ(f32_to_e4m3(v), b) << v;
    EXPECT_EQ(f32_to_e4m3(-v), b | 0x80) << -v;
    if (b == 0x7E) break;
    const double next = e4m3_definition(b + 1), mid = (e4m3_definition(b) + next) / 2;
    const int even = (b % 2 == 0) ? b : b + 1;  // the mantissa's last bit is the byte's
    EXPECT_EQ(f32_to_e4m3(static_cast<float>(mid)), even) << "midpoint " << mid;
    EXPECT_EQ(f32_to_e4m3(std::nextafter(static_cast<float>(mid), 0.0f)), b) << "below " << mid;
    EXPECT_EQ(f32_to_e4m3(std::nextafter(static_cast<float>(mid), 1e9f)), b + 1) << "above " << mid;
  }
  EXPECT_EQ(f32_to_e4m3(448.0f), 0x7E);
  EXPECT_EQ(f32_to_e4m3(464.0f), 0x7E);  // saturated (the quantizer clamps first)
  EXPECT_EQ(f32_to_e4m3(-1e30f), 0xFE);
  EXPECT_EQ(f32_to_e4m3(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(f32_to_e4m3(-0.0f), 0x80);
  Rng rng(5);
  for (int i = 0; i < 65536; ++i) {
    const float x = std::ldexp(rng.uniform(-1.0f, 1.0f), static_cast<int>(rng.below(20)) - 11);  // |x| < 512
    if (std::fabs(x) > 448.0f) continue;
    ASSERT_EQ(f32_to_e4m3(x), nearest_by_definition(x)) << x;
  }
}

TEST(Fp8Quantize, BlocksFollowTheirDefinition) {
  const int64_t N = 40, K = 100;
  Rng rng(7);
  std::vector<float> W(N * K);
  for (float& w : W) w = rng.uniform(-0.3f, 0.3f);
  for (int64_t n = 0; n < 32; ++n)
    for (int64_t k = 48; k < 96; ++k) W[n * K + k] = 0.0f;  // block (0, 1) of 32 x 48 is all zero
  for (const auto& [bn, bk] : {std::pair<int64_t, int64_t>{1, K}, {32, 48}}) {
    SCOPED_TRACE(std::to_string(bn) + " x " + std::to_string(bk));
    const Fp8Blocks q = quantize_fp8_blocks(W.data(), N, K, bn, bk);
    const int64_t SK = (K + bk - 1) / bk;
    ASSERT_EQ(q.scale.size(), static_cast<size_t>(((N + bn - 1) / bn) * SK));
    for (int64_t b = 0; b < static_cast<int64_t>(q.scale.size()); ++b) {
      float amax = 0.0f;
      for (int64_t n = (b / SK) * bn; n < std::min(N, (b / SK + 1) * bn); ++n)
        for (int64_t k = (b % SK) * bk; k < std::min(K, (b % SK + 1) * bk); ++k) amax = std::max(amax, std::fabs(W[n * K + k]));
      EXPECT_EQ(q.scale[b], amax > 0 ? amax / 448.0f : 0x1p-23f) << "block " << b;
    }
    if (bn == 32) {
      EXPECT_EQ(q.scale[1], 0x1p-23f);
    }
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t k = 0; k < K; ++k) {
        const double s = q.scale[(n / bn) * SK + k / bk];
        ASSERT_EQ(q.codes[n * K + k], nearest_by_definition(std::fmax(-448.0, std::fmin(448.0, W[n * K + k] / s))))
            << n << ", " << k;
      }
    }
  }
}

QuantizeOptions fp8_options(const std::string& model, const std::string& out, int64_t block) {
  QuantizeOptions o;
  o.method = QuantizeOptions::Method::Fp8;
  o.model_dir = model;
  o.out_dir = out;
  o.fp8_block = block;
  o.quiet = true;
  return o;
}

// The loaded Linear `name` of layer L (a dense MLP's by index, a MoE layer's router, experts and shared expert by name).
const LinearWeight& linear_named(const QwenLayerWeights& L, const LayerLinear& ll) {
  if (ll.decoder_index >= 0) return layer_linear(L, ll.decoder_index);
  if (ll.name == "mlp.gate") return L.moe.router;
  if (ll.name == "mlp.shared_expert_gate") return L.moe.shared_gate;
  const std::string rest = ll.name.substr(ll.name.rfind('.') + 1);  // gate_proj, up_proj, down_proj
  const MoeExpertWeights& e = ll.name.rfind("mlp.shared_expert.", 0) == 0
                                  ? L.moe.shared
                                  : L.moe.experts[std::stoul(ll.name.substr(std::string("mlp.experts.").size()))];
  return rest == "gate_proj" ? e.gate : rest == "up_proj" ? e.up : e.down;
}

// Every Linear of `dir` loads as FP8 with ŵ = value(code)·scale from its own tensors, and the logits stay near the
// fp32 model's.
void expect_fp8_model(const std::string& fp32, const std::string& dir, const char* scale_name) {
  const QwenModel m(dir), ref(fp32);
  const Checkpoint ckpt(dir);
  int64_t linears = 0;
  for (int64_t l = 0; l < m.config().num_layers; ++l) {
    for (const LayerLinear& ll : layer_linears(m.config(), l)) {
      const std::string prefix = "model.layers." + std::to_string(l) + "." + ll.name;
      const LinearWeight& w = linear_named(m.weights().layers[l], ll);
      if (ll.name == "mlp.gate" || ll.name == "mlp.shared_expert_gate") {  // routers stay dense
        EXPECT_TRUE(w.is_dense()) << prefix;
        continue;
      }
      ASSERT_TRUE(w.fp8) << prefix;
      const TensorView& codes = ckpt.get(prefix + ".weight");
      const TensorView& scale = ckpt.get(prefix + scale_name);
      const int64_t cols = scale.shape[1], bn = (w.N + scale.shape[0] - 1) / scale.shape[0],
                    bk = (w.K + cols - 1) / cols;
      const std::vector<float> got = w.dequantize();
      for (int64_t n = 0; n < w.N; ++n) {
        for (int64_t k = 0; k < w.K; ++k) {
          const float want = static_cast<float>(e4m3_definition(static_cast<const uint8_t*>(codes.data)[n * w.K + k])) *
                             scale.as<float>()[(n / bn) * cols + k / bk];
          ASSERT_EQ(got[n * w.K + k], want) << prefix << " [" << n << ", " << k << "]";
        }
      }
      ++linears;
    }
  }
  EXPECT_GT(linears, 0);
  const PackedBatch batch = test::random_batch({9, 17}, m.config().vocab_size, 5);
  const std::vector<float> a = m.forward_logits(batch), b = ref.forward_logits(batch);
  double d2 = 0, b2 = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d2 += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    b2 += double(b[i]) * b[i];
  }
  std::printf("%s: relative RMS difference of the fp8 and fp32 logits %.3g\n", dir.c_str(), std::sqrt(d2 / b2));
  EXPECT_LE(std::sqrt(d2 / b2), kFp8LogitTol);
}

TEST(Fp8Quantize, ModelsLoadAsTheirCodesAndScales) {
  const std::string root = test::scratch_dir();
  const std::string src = test::make_tiny_model(root + "/src", /*seed=*/51);
  quantize_model(fp8_options(src, root + "/ct", 0));
  expect_fp8_model(src, root + "/ct", ".weight_scale");
  const nlohmann::json qc = nlohmann::json::parse(read_file(root + "/ct/config.json"))["quantization_config"];
  EXPECT_EQ(qc["format"], "float-quantized");
  EXPECT_EQ(qc["config_groups"]["group_0"]["input_activations"]["dynamic"], true);
  EXPECT_TRUE(load_quant_config(root + "/ct").float8_weights());

  quantize_model(fp8_options(src, root + "/block", 32));
  expect_fp8_model(src, root + "/block", ".weight_scale_inv");
  EXPECT_EQ(load_quant_config(root + "/block").method, QuantConfig::Method::Fp8);

  const std::string moe = test::make_random_model(root + "/moe", "tiny-moe", DType::F32, 52);
  quantize_model(fp8_options(moe, root + "/moe-ct", 0));
  expect_fp8_model(moe, root + "/moe-ct", ".weight_scale");
  EXPECT_TRUE(QwenModel(root + "/moe-ct").weights().layers[0].moe.router.is_dense());
  EXPECT_EQ(nlohmann::json::parse(read_file(root + "/moe-ct/config.json"))["quantization_config"]["ignore"][1],
            "re:.*mlp\\.gate$");
  // Block-wise: the routers listed by their whole paths, one per sparse layer (tiny-moe's layer 1 is dense).
  quantize_model(fp8_options(moe, root + "/moe-block", 32));
  expect_fp8_model(moe, root + "/moe-block", ".weight_scale_inv");
  const nlohmann::json skip =
      nlohmann::json::parse(read_file(root + "/moe-block/config.json"))["quantization_config"]["modules_to_not_convert"];
  EXPECT_EQ(skip, nlohmann::json::array({"lm_head", "model.layers.0.mlp.gate", "model.layers.2.mlp.gate"}));
}

TEST(Fp8Quantize, RefusesWhatItCannotWrite) {
  const std::string root = test::scratch_dir();
  const std::string src = test::make_tiny_model(root + "/src", /*seed=*/53);
  QuantizeOptions gpu = fp8_options(src, root + "/gpu", 0);
  gpu.device = Device::Cuda;
  test::expect_error([&] { quantize_model(gpu); }, {"fp8 runs on the CPU (--device cpu)"});
  QuantizeOptions lq = fp8_options(src, root + "/lq", 0);
  lq.loftq.r = 4;
  test::expect_error([&] { quantize_model(lq); }, {"without LoftQ"});
  for (const char* d : {"/gpu", "/lq"}) EXPECT_FALSE(std::filesystem::exists(root + d)) << d;
}

}  // namespace
}  // namespace qwenq
