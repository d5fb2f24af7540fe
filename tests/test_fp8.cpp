// Block-wise FP8 checkpoints (quant/fp8.h, quant_method "fp8" in trainer/quant_config.h) against their oracles:
//   - f8_e4m3_to_f32 for all 256 bytes against the format's definition evaluated in double (sign, exponent bias 7,
//     subnormals at 2^−6·m/8, 0x7F/0xFF NaN, 448 the largest);
//   - a tiny random model written as an FP8 checkpoint by this test's own quantizer (blocks of 16 x 48, so partial
//     blocks in both directions; BF16 scales; codes by brute force over the 254 finite values) loads with ŵ equal bit
//     for bit to value(code)·scale in fp32, and its logits equal, within kLogitTol of the largest, those of an F32
//     checkpoint holding exactly those ŵ (few rows through the FP8 row product, many through the dequantized GEMM);
//     the forward and transposed row products against double, also on a weight wider than one transposed task; a
//     Qwen3-MoE whose experts are FP8 (the router written dense) computes its F32 twin's logits;
//   - `dequantize` writes those ŵ bit for bit (F32), `gguf` the F32 twin's file byte for byte; the plan and the GPU
//     refuse FP8 with one message naming what to do (the quantizers read it: tests/test_fp8_source.cpp); a wrong scale shape, fmt "e5m2", a missing weight_block_size and a static activation scheme
//     are refused naming the tensor or the field;
//   - Fp8Oracle.*: the C++ half of tests/oracle/test_fp8_oracle.py (checkpoints torch wrote).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <regex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/files.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "quant/fp8.h"
#include "quant/packed_matvec.h"
#include "tests/support/fp8_fixtures.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/memory_plan.h"
#include "trainer/quantize_model.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

using test::e4m3_definition;
using test::kBlockK;
using test::kBlockN;
using test::qwen_fp8_config;
using test::write_fp8_pair;
// Logits of the same ŵ through the FP8 products and through the F32 checkpoint's: only the fp32 summation order
// differs (relative to the largest logit).
constexpr double kLogitTol = 1e-5;
// dx = dy·Ŵ in fp32 against double, relative to Σ|dy·ŵ|.
constexpr double kDotRelTol = 1e-5;

TEST(Fp8, E4m3ValuesAreTheFormatsDefinition) {
  for (int b = 0; b < 256; ++b) {
    const float got = f8_e4m3_to_f32(static_cast<uint8_t>(b));
    const double want = e4m3_definition(b);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << "byte " << b;
      continue;
    }
    EXPECT_EQ(got, static_cast<float>(want)) << "byte " << b;
    EXPECT_EQ(std::signbit(got), (b & 0x80) != 0) << "byte " << b;
  }
  // The row reader (vector decoding where the target has it, the table for tails) gives the same bits, scale 1.
  Fp8Linear row;
  row.N = 1;
  row.K = 256 + 7;
  row.block_n = 1;
  row.block_k = 512;
  std::vector<uint8_t> bytes(static_cast<size_t>(row.K));
  for (int64_t i = 0; i < row.K; ++i) bytes[i] = static_cast<uint8_t>(i % 256);
  row.data = bytes.data();
  row.scale_inv = {1.0f};
  std::vector<float> out(static_cast<size_t>(row.K));
  fp8_row(row, 0, 0, row.K, out.data());
  for (int64_t i = 0; i < row.K; ++i) {
    const float want = f8_e4m3_to_f32(bytes[i]);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(out[i])) << "byte " << int(bytes[i]);
    } else {
      EXPECT_EQ(std::memcmp(&out[i], &want, 4), 0) << "byte " << int(bytes[i]) << ": " << out[i] << " vs " << want;
    }
  }
  EXPECT_EQ(f8_e4m3_to_f32(0x7E), 448.0f);
  EXPECT_EQ(f8_e4m3_to_f32(0x01), 0x1p-9f);
  EXPECT_EQ(f8_e4m3_to_f32(0x08), 0x1p-6f);
}

struct Fp8Pair : ::testing::Test {
  void SetUp() override {
    root = test::scratch_dir();
    const std::string src = test::make_tiny_model(root + "/src", /*seed=*/31);
    write_fp8_pair(src, root + "/fp8", root + "/ref", qwen_fp8_config());
  }
  std::string root;
};

TEST_F(Fp8Pair, LoadsTheSameWeightsAndLogitsAsF32) {
  const QwenModel fp8(root + "/fp8"), ref(root + "/ref");
  const QwenLayerWeights& l = fp8.weights().layers[1];
  ASSERT_TRUE(l.down.fp8) << "down_proj did not load as FP8";
  ASSERT_TRUE(l.q.fp8);
  for (const auto* pair : {&fp8.weights().layers[0].q, &fp8.weights().layers[1].down, &fp8.weights().layers[0].k}) {
    const LinearWeight& r = pair == &fp8.weights().layers[0].q     ? ref.weights().layers[0].q
                            : pair == &fp8.weights().layers[1].down ? ref.weights().layers[1].down
                                                                     : ref.weights().layers[0].k;
    EXPECT_EQ(pair->dequantize(), r.dequantize()) << "ŵ differs from value(code)·scale";
  }
  for (const std::vector<int64_t>& lengths : {std::vector<int64_t>{1, 7, 33}, std::vector<int64_t>{150}}) {
    const PackedBatch batch = test::random_batch(lengths, fp8.config().vocab_size, 5);
    const std::vector<float> a = fp8.forward_logits(batch), b = ref.forward_logits(batch);
    ASSERT_EQ(a.size(), b.size());
    double top = 0.0, err = 0.0;
    for (size_t i = 0; i < a.size(); ++i) {
      top = std::max(top, std::fabs(double(b[i])));
      err = std::max(err, std::fabs(double(a[i]) - b[i]));
    }
    EXPECT_LE(err, kLogitTol * top) << lengths.size() << " sequences";
  }
}

// out[m, o] against Σ_i in[m, i]·weight(o, i) in double, for M rows, within kDotRelTol of Σ|terms|.
template <typename Weight>
void expect_rows_match_double(const float* out, const float* in, int64_t M, int64_t outs, int64_t ins, Weight weight,
                              const char* what) {
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t o = 0; o < outs; ++o) {
      double s = 0.0, mag = 0.0;
      for (int64_t i = 0; i < ins; ++i) {
        s += double(in[m * ins + i]) * weight(o, i);
        mag += std::fabs(double(in[m * ins + i]) * weight(o, i));
      }
      ASSERT_NEAR(out[m * outs + o], s, kDotRelTol * mag + 1e-30) << "row " << m << " " << what << " " << o;
    }
  }
}

// The transposed and forward row products of w (ŵ = W) on M random rows against double.
void expect_products_match_double(const Fp8Linear& w, const std::vector<float>& W, int64_t M) {
  Rng rng(7);
  std::vector<float> dy(static_cast<size_t>(M * w.N)), dx(static_cast<size_t>(M * w.K)), y(static_cast<size_t>(M * w.N));
  for (auto& v : dy) v = static_cast<float>(rng.normal());
  fp8_linear_matvec_t(w, dy.data(), M, dx.data());
  expect_rows_match_double(dx.data(), dy.data(), M, w.K, w.N, [&](int64_t k, int64_t n) { return W[n * w.K + k]; },
                           "input");
  fp8_linear_matvec(w, dx.data(), M, y.data());  // forward on those rows: against double too
  expect_rows_match_double(y.data(), dx.data(), M, w.N, w.K, [&](int64_t n, int64_t k) { return W[n * w.K + k]; },
                           "output");
}

TEST(Fp8, MixtureOfExpertsLoadsEveryExpert) {
  const std::string root = test::scratch_dir();
  const std::string src = test::make_random_model(root + "/src", "tiny-moe", DType::F32, /*seed=*/33);
  write_fp8_pair(src, root + "/fp8", root + "/ref", qwen_fp8_config());
  const QwenModel fp8(root + "/fp8"), ref(root + "/ref");
  const QwenLayerWeights& l = fp8.weights().layers[0];
  ASSERT_FALSE(l.moe.experts.empty()) << "tiny-moe's layer 0 is sparse";
  EXPECT_TRUE(l.moe.experts[3].down.fp8) << "an expert did not load as FP8";
  EXPECT_TRUE(l.moe.router.is_dense()) << "the router (mlp.gate) was written dense";
  const PackedBatch batch = test::random_batch({5, 19}, fp8.config().vocab_size, 6);
  const std::vector<float> a = fp8.forward_logits(batch), b = ref.forward_logits(batch);
  double top = 0.0, err = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    top = std::max(top, std::fabs(double(b[i])));
    err = std::max(err, std::fabs(double(a[i]) - b[i]));
  }
  EXPECT_LE(err, kLogitTol * top);
}

TEST_F(Fp8Pair, ProductsMatchDouble) {
  const QwenModel fp8(root + "/fp8");
  const LinearWeight& down = fp8.weights().layers[0].down;  // [64, 128]: partial blocks along K
  expect_products_match_double(*down.fp8, down.dequantize(), 3);
  // Wider than one task of the transposed product (512 inputs), with partial blocks and random finite codes; ŵ by
  // this test's own rule, value(code)·scale.
  Fp8Linear w;
  w.N = 40;
  w.K = 1100;
  w.block_n = kBlockN;
  w.block_k = kBlockK;
  Rng rng(11);
  std::vector<uint8_t> bytes(static_cast<size_t>(w.N * w.K));
  for (auto& b : bytes) {
    do b = static_cast<uint8_t>(rng.below(256));
    while ((b & 0x7F) == 0x7F);
  }
  w.data = bytes.data();
  w.scale_inv.resize(static_cast<size_t>(((w.N + kBlockN - 1) / kBlockN) * w.scale_cols()));
  for (auto& v : w.scale_inv) v = rng.uniform(1e-3f, 1e-2f);
  std::vector<float> W(bytes.size());
  for (int64_t n = 0; n < w.N; ++n)
    for (int64_t k = 0; k < w.K; ++k)
      W[n * w.K + k] = static_cast<float>(e4m3_definition(bytes[n * w.K + k])) *
                       w.scale_inv[(n / kBlockN) * w.scale_cols() + k / kBlockK];
  std::vector<float> got(W.size());
  dequantize_fp8_linear_into(w, got.data());
  EXPECT_EQ(got, W);
  expect_products_match_double(w, W, 5);
}

TEST_F(Fp8Pair, DequantizeAndGgufWriteTheWeightsAndPlanRefusesWithWhatToDo) {
  DequantizeOptions d;
  d.model_dir = root + "/fp8";
  d.out_dir = root + "/dense";
  d.dtype = DType::F32;
  d.quiet = true;
  dequantize_model(d);
  const Checkpoint out(d.out_dir), ref(root + "/ref");
  for (const std::string& name : ref.names()) {
    ASSERT_TRUE(out.has(name)) << name;
    const TensorView &a = out.get(name), &b = ref.get(name);
    ASSERT_EQ(a.nbytes(), b.nbytes()) << name;
    EXPECT_EQ(std::memcmp(a.data, b.data, a.nbytes()), 0) << name;
  }
  for (const std::string& name : out.names()) EXPECT_EQ(name.find("scale_inv"), std::string::npos) << name;
  EXPECT_FALSE(nlohmann::json::parse(read_file(d.out_dir + "/config.json")).contains("quantization_config"));

  // llama.cpp's file from the FP8 directory: the same bytes as from the F32 twin (both named "m": the name is in the
  // file's metadata).
  write_fp8_pair(test::make_tiny_model(root + "/src2", /*seed=*/31), root + "/x/m", root + "/y/m", qwen_fp8_config());
  const std::string from_fp8 = read_file(test::export_gguf_to(root + "/x/m", root + "/x.gguf", "q8_0"));
  EXPECT_TRUE(from_fp8 == read_file(test::export_gguf_to(root + "/y/m", root + "/y.gguf", "q8_0")))
      << "gguf of the FP8 directory differs from its F32 twin's";

  PlanInput in;
  EXPECT_NE(test::error_of([&] { plan_base_from_model_dir(root + "/fp8", &in); }).find("FP8"), std::string::npos);
}

TEST(Fp8, BadCheckpointsAreNamed) {
  const std::string root = test::scratch_dir();
  const std::string src = test::make_tiny_model(root + "/src", /*seed=*/32);
  nlohmann::json wrong_block = qwen_fp8_config();
  wrong_block["weight_block_size"] = {32, 48};  // the scales were written for 16 x 48
  write_fp8_pair(src, root + "/wrong", root + "/ref1", wrong_block);
  const std::string e = test::error_of([&] { QwenModel m(root + "/wrong"); });
  EXPECT_NE(e.find("weight_scale_inv' has shape"), std::string::npos) << e;
  EXPECT_NE(e.find("model.safetensors"), std::string::npos) << e;

  const auto refused = [&](nlohmann::json qc, const char* what) {
    const std::string dir = root + "/" + std::to_string(std::hash<std::string>()(qc.dump()));
    write_fp8_pair(src, dir, dir + "_ref", qc);
    const std::string msg = test::error_of([&] { QwenModel m(dir); });
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
  };
  nlohmann::json e5 = qwen_fp8_config();
  e5["fmt"] = "e5m2";
  refused(e5, "fmt \"e5m2\" is not supported");
  nlohmann::json no_block = qwen_fp8_config();
  no_block.erase("weight_block_size");
  refused(no_block, "weight_block_size");
  nlohmann::json statik = qwen_fp8_config();
  statik["activation_scheme"] = "static";
  refused(statik, "activation_scheme \"static\"");
}

// ---- oracle half ------------------------------------------------------------------------------------------

// Reads $QWENQ_ORACLE_FP8_DIR/model.safetensors, written by torch in tests/oracle/test_fp8_oracle.py, and requires
// our ŵ to equal torch's weight.to(float32) * scale_inv per block, and our value of each float8 byte torch's.
TEST(Fp8Oracle, ReadsTorchFloat8Checkpoints) {
  const char* env = std::getenv("QWENQ_ORACLE_FP8_DIR");
  if (!env || !*env) GTEST_SKIP() << "QWENQ_ORACLE_FP8_DIR not set (run tests/oracle/test_fp8_oracle.py)";
  const std::string dir = env;
  const Checkpoint ckpt(dir);
  const SafetensorsFile want(path_join(dir, "expected.safetensors"));
  for (const char* prefix : {"model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj",
                             "model.layers.0.self_attn.q_proj"}) {
    SCOPED_TRACE(prefix);
    ASSERT_TRUE(has_fp8_linear(ckpt, prefix));
    const Fp8Linear w = read_fp8_linear(ckpt, prefix, 32, 64, 96, 200);
    std::vector<float> got(static_cast<size_t>(w.N * w.K));
    dequantize_fp8_linear_into(w, got.data());
    const TensorView& t = want.get(prefix);
    ASSERT_EQ(t.dtype, DType::F32);
    ASSERT_EQ(t.numel(), w.N * w.K);
    EXPECT_EQ(std::memcmp(got.data(), t.data, t.nbytes()), 0) << "ŵ differs from torch's";
  }
  const TensorView& codes = ckpt.get("all_codes");
  const TensorView& values = want.get("all_codes");
  ASSERT_EQ(codes.dtype, DType::F8_E4M3);
  ASSERT_EQ(codes.numel(), 256);
  for (int b = 0; b < 256; ++b) {
    const uint8_t byte = static_cast<const uint8_t*>(codes.data)[b];
    const float torch_value = static_cast<const float*>(values.data)[b];
    const float ours = f8_e4m3_to_f32(byte);
    if (std::isnan(torch_value)) {
      EXPECT_TRUE(std::isnan(ours)) << "byte " << int(byte);
    } else {
      EXPECT_EQ(std::memcmp(&ours, &torch_value, 4), 0) << "byte " << int(byte) << ": " << ours << " vs " << torch_value;
    }
  }
}

}  // namespace
}  // namespace qwenq
