// llama-quantize's file types written by `qwen-quant gguf` (trainer/gguf_file_type.h, quant/ggml_kquants.h): the
// files llama.cpp's own quantizer makes from the same model, byte for byte, and the per-tensor type rules.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/gguf.h"
#include "core/rng.h"
#include "quant/ggml_blocks.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/gguf_file_type.h"
#include "trainer/gguf_model.h"

namespace qwenq {
namespace {

// llama.cpp's files for `qwen-quant init-random --preset tiny256 --dtype fp32` (seed 0), made by llama_model_quantize
// of llama-cpp-python 0.3.36 (x86-64) from our F32 export, no importance matrix: fingerprint() of each, printed by
// tests/oracle/llamacpp_golden.py. Every tensor's type and bytes enter the fingerprint, so equality means the same
// file contents tensor for tensor.
struct LlamaQuantizeGolden {
  const char* type;
  uint64_t fingerprint;
};
constexpr LlamaQuantizeGolden kLlamaQuantize[] = {
    {"q4_0", 0xccfb9659c57951b7ull},   {"q4_1", 0x6f21fee50dad3f98ull},   {"q5_0", 0xc658ee0928b5a2e1ull},
    {"q5_1", 0x5ca39fab0475a81eull},   {"q4_k_s", 0x2d8e74fabf955eacull}, {"q4_k_m", 0x60d58bb9ac16570dull},
    {"q5_k_m", 0x8584bce5c133f74full}, {"q6_k", 0x5e5998efc940a5f0ull},
};

// FNV-1a 64 over the tensors sorted by name: the name's bytes, the ggml type as u32 little-endian, the data.
uint64_t fingerprint(const GgufFile& f) {
  std::vector<const GgufTensor*> ts;
  for (const GgufTensor& t : f.tensors()) ts.push_back(&t);
  std::sort(ts.begin(), ts.end(), [](const GgufTensor* a, const GgufTensor* b) { return a->name < b->name; });
  uint64_t h = 0xcbf29ce484222325ull;
  auto eat = [&h](const uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  };
  for (const GgufTensor* t : ts) {
    eat(reinterpret_cast<const uint8_t*>(t->name.data()), t->name.size());
    const uint32_t type = static_cast<uint32_t>(t->type);
    const uint8_t le[4] = {uint8_t(type), uint8_t(type >> 8), uint8_t(type >> 16), uint8_t(type >> 24)};
    eat(le, 4);
    eat(t->data, t->bytes);
  }
  return h;
}

TEST(GgufKQuants, FilesEqualLlamaQuantizes) {
  const std::string dir = test::scratch_dir();
  const std::string hf = test::make_random_model(dir + "/tiny256", "tiny256", DType::F32, 0);
  for (const LlamaQuantizeGolden& g : kLlamaQuantize) {
    GgufExportOptions o;
    o.type = g.type;
    o.quiet = true;
    const std::string path = dir + "/" + g.type + ".gguf";
    export_gguf(hf, path, o);
    EXPECT_EQ(fingerprint(GgufFile(path)), g.fingerprint) << g.type << ": not the bytes llama-quantize writes";
  }
  // Re-quantizing a GGUF file, as llama-quantize does: from our F32 export, the same bytes as from the directory.
  GgufExportOptions o;
  o.type = "f32";
  o.quiet = true;
  export_gguf(hf, dir + "/f32.gguf", o);
  o.type = "q4_k_m";
  export_gguf(dir + "/f32.gguf", dir + "/again.gguf", o);
  EXPECT_EQ(fingerprint(GgufFile(dir + "/again.gguf")), kLlamaQuantize[5].fingerprint) << "q4_k_m from a GGUF";
}

// The 5-bit and k-quant formats on a seeded normal row with one outlier: the relative RMS error of the round trip
// (more bits, less error), the outlier kept, Q6_K's dequantized values (nearly) a fixed point of its quantizer; all-zero
// blocks back to zero. Bit-exactness is FilesEqualLlamaQuantizes'.
TEST(GgufKQuants, RoundTripErrorWithinTheStoredStep) {
  Rng rng(17);
  const int64_t n = 4864;  // Qwen2.5-0.5B's MLP width: 19 super-blocks
  std::vector<float> x(n);
  for (auto& v : x) v = 0.02f * static_cast<float>(rng.normal());
  x[5] = 0.3f;  // an outlier in the first sub-block
  struct Case {
    GgmlType type;
    double rel_rms;  // ~1.6x the measured: Q4_K 0.074, Q5_K 0.037, Q6_K 0.019, Q5_0 0.048, Q5_1 0.040
  };
  for (const Case& c : {Case{GgmlType::Q4_K, 0.12}, Case{GgmlType::Q5_K, 0.06}, Case{GgmlType::Q6_K, 0.03},
                        Case{GgmlType::Q5_0, 0.08}, Case{GgmlType::Q5_1, 0.065}}) {
    std::vector<uint8_t> b(ggml_row_bytes(c.type, n));
    quantize_ggml_row(c.type, x.data(), n, b.data());
    std::vector<float> y(n);
    dequantize_ggml_row(c.type, b.data(), n, y.data());
    double err = 0, ref = 0;
    for (int64_t i = 0; i < n; ++i) err += (y[i] - x[i]) * double(y[i] - x[i]), ref += double(x[i]) * x[i];
    const double rel = std::sqrt(err / ref);
    EXPECT_LE(rel, c.rel_rms) << ggml_type_info(uint32_t(c.type))->name;
    EXPECT_GT(rel, 0.0) << ggml_type_info(uint32_t(c.type))->name;
    EXPECT_NEAR(y[5], 0.3f, 0.3f * (c.type == GgmlType::Q4_K ? 0.1f : 0.05f)) << "the outlier";
    if (c.type == GgmlType::Q6_K) {
      std::vector<uint8_t> b2(b.size());
      quantize_ggml_row(c.type, y.data(), n, b2.data());
      std::vector<float> y2(n);
      dequantize_ggml_row(c.type, b2.data(), n, y2.data());
      double drift = 0;
      for (int64_t i = 0; i < n; ++i) drift = std::max(drift, double(std::fabs(y2[i] - y[i])));
      EXPECT_LE(drift, 1e-3) << "Q6_K requantized drifts";
    }
  }
  // All-zero super-blocks: zero scales, values back to 0.
  std::fill(x.begin(), x.end(), 0.0f);
  for (GgmlType t : {GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q5_0, GgmlType::Q5_1}) {
    std::vector<uint8_t> b(ggml_row_bytes(t, 256));
    quantize_ggml_row(t, x.data(), 256, b.data());
    std::vector<float> y(256, 1.0f);
    dequantize_ggml_row(t, b.data(), 256, y.data());
    for (float v : y) EXPECT_EQ(v, 0.0f) << ggml_type_info(uint32_t(t))->name;
  }
}

// llama-quantize's choices on real Qwen2.5 shapes (from llama.cpp's llama_tensor_get_type, no imatrix).
TEST(GgufKQuants, TensorTypesFollowLlamaQuantize) {
  const GgufFileType& m = gguf_file_type("q4_k_m");
  bool fb = false;
  // Qwen2.5-7B (28 layers, rows of 3584 / 18944: all k-quant blocks fit): attn_v and ffn_down Q6_K in the 14 layers
  // use_more_bits picks, the output Q6_K, the untied embedding Q4_K.
  std::vector<int64_t> six;
  for (int64_t l = 0; l < 28; ++l) {
    const GgmlType v = gguf_tensor_type(m, GgufRole::AttnV, l, 28, 3584, false, &fb);
    EXPECT_EQ(gguf_tensor_type(m, GgufRole::FfnDown, l, 28, 18944, false, &fb), v) << l;
    EXPECT_EQ(gguf_tensor_type(m, GgufRole::OtherLinear, l, 28, 3584, false, &fb), GgmlType::Q4_K);
    if (v == GgmlType::Q6_K) six.push_back(l);
  }
  EXPECT_EQ(six, (std::vector<int64_t>{0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27}));
  EXPECT_EQ(gguf_tensor_type(m, GgufRole::Output, 0, 28, 3584, false, &fb), GgmlType::Q6_K);
  EXPECT_EQ(gguf_tensor_type(m, GgufRole::TokenEmbd, 0, 28, 3584, false, &fb), GgmlType::Q4_K);
  EXPECT_FALSE(fb);
  // Qwen2.5-0.5B (rows of 896 = 3.5 blocks of 256): Q4_K -> Q5_0, Q6_K -> Q8_0; ffn_down (4864) keeps its k-quant;
  // the tied embedding is the output: Q8_0.
  EXPECT_EQ(gguf_tensor_type(m, GgufRole::OtherLinear, 3, 24, 896, true, &fb), GgmlType::Q5_0);
  EXPECT_TRUE(fb);
  EXPECT_EQ(gguf_tensor_type(m, GgufRole::AttnV, 0, 24, 896, true, &fb), GgmlType::Q8_0);
  EXPECT_EQ(gguf_tensor_type(m, GgufRole::FfnDown, 0, 24, 4864, true, &fb), GgmlType::Q6_K);
  EXPECT_EQ(gguf_tensor_type(m, GgufRole::FfnDown, 3, 24, 4864, true, &fb), GgmlType::Q4_K);
  EXPECT_EQ(gguf_tensor_type(m, GgufRole::TokenEmbd, 0, 24, 896, true, &fb), GgmlType::Q8_0);
  // q4_k_s: Q5_K attn_v in the first 4 layers, ffn_down in the first n/8; an 80-layer model's Q4_K attn_v is Q5_K.
  const GgufFileType& s = gguf_file_type("q4_k_s");
  EXPECT_EQ(gguf_tensor_type(s, GgufRole::AttnV, 3, 28, 3584, false, &fb), GgmlType::Q5_K);
  EXPECT_EQ(gguf_tensor_type(s, GgufRole::AttnV, 4, 28, 3584, false, &fb), GgmlType::Q4_K);
  EXPECT_EQ(gguf_tensor_type(s, GgufRole::FfnDown, 3, 28, 18944, false, &fb), GgmlType::Q4_K);
  EXPECT_EQ(gguf_tensor_type(s, GgufRole::FfnDown, 2, 28, 18944, false, &fb), GgmlType::Q5_K);
  EXPECT_EQ(gguf_tensor_type(s, GgufRole::AttnV, 40, 80, 8192, false, &fb), GgmlType::Q5_K);
  // convert_hf_to_gguf's types: everything in the type, F16 when 32 does not divide the rows.
  const GgufFileType& q8 = gguf_file_type("Q8_0");
  EXPECT_EQ(gguf_tensor_type(q8, GgufRole::Output, 0, 5, 64, true, &fb), GgmlType::Q8_0);
  EXPECT_EQ(gguf_tensor_type(q8, GgufRole::FfnDown, 0, 5, 172, true, &fb), GgmlType::F16);
  EXPECT_TRUE(fb);
  test::expect_error([] { gguf_file_type("q3_k_m"); }, {"q3_k_m", "q4_k_m", "q6_k"});
}

}  // namespace
}  // namespace qwenq
