// llama-quantize's file types written by `qwen-quant gguf` (trainer/gguf_file_type.h, quant/ggml_kquants.h): the
// files llama.cpp's own quantizer makes from the same model, byte for byte, and the per-tensor type rules.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iterator>

#include "core/gguf.h"
#include "core/rng.h"
#include "quant/ggml_blocks.h"
#include "quant/ggml_imatrix.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/gguf_file_type.h"
#include "trainer/gguf_model.h"

namespace qwenq {
namespace {

// llama.cpp's files for `qwen-quant init-random --preset P --dtype fp32` (seed 0), P = tiny256 (8 layers, rows of 256
// and 512: every k-quant block fits; 2:1 heads) and tiny896 (Qwen2.5-0.5B's width 896 and 7:1 heads: llama-quantize's
// fallback types and its n_gqa >= 4 rules), made by llama_model_quantize of llama-cpp-python 0.3.36 (x86-64) from our
// F32 export, without and with an importance matrix (synthetic_importance below, for every 2-D tensor but the
// embedding, passed as llama_model_imatrix_data): fingerprint() of each, printed by tests/oracle/llamacpp_golden.py.
// Every tensor's type and bytes enter the fingerprint, so equality means the same file contents tensor for tensor.
struct LlamaQuantizeGolden {
  const char* type;
  uint64_t plain, imatrix;
};
constexpr LlamaQuantizeGolden kTiny256[] = {
    {"q4_0", 0xccfb9659c57951b7ull, 0x539b88156ac6a952ull},
    {"q4_1", 0x6f21fee50dad3f98ull, 0xc0e25aea62034331ull},
    {"q5_0", 0xc658ee0928b5a2e1ull, 0xd8c0ae01019ded19ull},
    {"q5_1", 0x5ca39fab0475a81eull, 0x9616f446aa97484aull},
    {"q2_k", 0xfc6900fb76a4c9f2ull, 0xe39673c80fce0f7eull},
    {"q3_k_s", 0x16d1266bb05aec63ull, 0xdaffa39b989d94cdull},
    {"q3_k_m", 0x37e2cf061d19d757ull, 0xf3e76dca4914d61cull},
    {"q3_k_l", 0x38a4a575c7bd1d3cull, 0x4334c9cc0b6616ffull},
    {"q4_k_s", 0x2d8e74fabf955eacull, 0x4e2c81df39dcd948ull},
    {"q4_k_m", 0x60d58bb9ac16570dull, 0xbedeab2a3c7a7c55ull},
    {"q5_k_s", 0x9c3000d66d601cbbull, 0xba976b01ba290ae2ull},
    {"q5_k_m", 0x8584bce5c133f74full, 0x5c163408217f3fe3ull},
    {"q6_k", 0x5e5998efc940a5f0ull, 0xa26d56f775334016ull},
    {"iq4_nl", 0xd547f9d02f916db5ull, 0x19e48b7a4e6a0cdbull},
    {"iq4_xs", 0x7229725fe9d75979ull, 0xb872dd0dc5324104ull},
};
constexpr LlamaQuantizeGolden kTiny896[] = {
    {"q4_0", 0x1c335bf546a93d2cull, 0x30eef669a7954080ull},
    {"q4_1", 0x0dbda84143cd5a01ull, 0x9e5d72017e8aa5f3ull},
    {"q5_0", 0x91d3cea99fcb4d58ull, 0x40fa1e84d507be7cull},
    {"q5_1", 0x0d6bb310778761e3ull, 0xc8e797758d957608ull},
    {"q2_k", 0x66841c781c79f211ull, 0xa51906b853c1095full},
    {"q3_k_s", 0x96e1fa171e893b50ull, 0x8c08c8037541ef5eull},
    {"q3_k_m", 0x806cb319d69c25ebull, 0x4afb026d3bc688e4ull},
    {"q3_k_l", 0x2f7f8e151a3ac0a5ull, 0x0385bfb74268be29ull},
    {"q4_k_s", 0xea58dfe23e6be0e2ull, 0x097a17407dac3285ull},
    {"q4_k_m", 0xdc5cf45a65167356ull, 0x8a183ee7be13e819ull},
    {"q5_k_s", 0xf500c9b7aa4c5ff8ull, 0xbddf34c3edb3195full},
    {"q5_k_m", 0x6dd35b2e976dbba9ull, 0x6ae4625d3a79b733ull},
    {"q6_k", 0xff50426f7437a6e3ull, 0x8ea6f77c4251e2c8ull},
    {"iq4_nl", 0x418830e45470d725ull, 0x903f04020be337c4ull},
    {"iq4_xs", 0x0ffde71bf1f185f6ull, 0x9ba417e9fca23f07ull},
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

// llama_golden.py's synthetic importance of column j of tensor `name` (exact in fp32): 1 + ((j·2654435761 +
// 40503·|name|) mod 1024)/64, times 16 where 37 divides j.
float synthetic_importance(const std::string& name, int64_t j) {
  const uint64_t h = (static_cast<uint64_t>(j) * 2654435761ull + 40503ull * name.size()) % 1024;
  return (1.0f + static_cast<float>(h) / 64.0f) * (j % 37 == 0 ? 16.0f : 1.0f);
}

// Every llama-quantize file type of model `preset`, without and with the synthetic importance matrix, against
// llama.cpp's fingerprints.
// Files go to dir.
void expect_llama_quantize_files(const std::string& dir, const std::string& preset, const LlamaQuantizeGolden* goldens,
                                 size_t n) {
  const std::string hf = test::make_random_model(dir + "/hf", preset, DType::F32, 0);
  GgufExportOptions o;
  o.type = "f32";
  o.quiet = true;
  export_gguf(hf, dir + "/f32.gguf", o);
  Imatrix m;  // an entry for every 2-D tensor but the embedding (as llama-imatrix --process-output), 512 tokens
  m.datasets = {"synthetic"};
  m.chunk_count = 1;
  m.chunk_size = 512;
  const GgufFile f32(dir + "/f32.gguf");
  for (const GgufTensor& t : f32.tensors()) {
    if (t.ne.size() != 2 || t.name == "token_embd.weight") continue;
    ImatrixEntry e;
    for (int64_t j = 0; j < t.ne[0]; ++j) e.sum2.push_back(synthetic_importance(t.name, j) * 512.0f);
    e.counts = {512.0f};
    m.entries[t.name] = e;
  }
  write_imatrix_gguf(m, dir + "/imatrix.gguf");
  for (size_t i = 0; i < n; ++i) {
    const LlamaQuantizeGolden& g = goldens[i];
    o.type = g.type;
    o.imatrix_path.clear();
    export_gguf(hf, dir + "/plain.gguf", o);
    EXPECT_EQ(fingerprint(GgufFile(dir + "/plain.gguf")), g.plain)
        << preset << " " << g.type << ": not the file llama-quantize writes";
    o.imatrix_path = dir + "/imatrix.gguf";
    const GgufExportReport r = export_gguf(hf, dir + "/imatrix-q.gguf", o);
    const GgufFile f(dir + "/imatrix-q.gguf");
    EXPECT_EQ(fingerprint(f), g.imatrix)
        << preset << " " << g.type << " --imatrix: not the file llama-quantize --imatrix writes";
    int64_t weighted = 0;  // the report counts the tensors whose type uses the importance (not Q8_0, F16)
    for (const GgufTensor& t : f.tensors())
      weighted += m.entries.count(t.name) && t.type != GgmlType::Q8_0 && t.type != GgmlType::F16;
    EXPECT_EQ(r.imatrix_tensors, weighted) << preset << " " << g.type;
    o.overwrite = true;
  }
}

TEST(GgufKQuants, FilesEqualLlamaQuantizes) {
  const std::string dir = test::scratch_dir();
  expect_llama_quantize_files(dir, "tiny256", kTiny256, std::size(kTiny256));
  // Re-quantizing a GGUF file, as llama-quantize does: from our F32 export, the same bytes as from the directory.
  GgufExportOptions o;
  o.type = "q4_k_m";
  o.quiet = true;
  export_gguf(dir + "/f32.gguf", dir + "/again.gguf", o);
  const auto q4km = std::find_if(std::begin(kTiny256), std::end(kTiny256),
                                 [](const LlamaQuantizeGolden& g) { return std::string(g.type) == "q4_k_m"; });
  EXPECT_EQ(fingerprint(GgufFile(dir + "/again.gguf")), q4km->plain) << "q4_k_m from a GGUF";
}

TEST(GgufKQuants, FallbackFilesEqualLlamaQuantizes) {
  expect_llama_quantize_files(test::scratch_dir(), "tiny896", kTiny896, std::size(kTiny896));
}

// The 5-bit, k-quant and IQ4 formats on a seeded normal row with one outlier: the relative RMS error of the round trip
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
    double rel_rms;  // ~1.6x the measured: Q4_K 0.074, Q5_K 0.037, Q6_K 0.019, Q5_0 0.048, Q5_1 0.040, Q2_K 0.300,
                     // Q3_K 0.155, IQ4_NL 0.081, IQ4_XS 0.082
  };
  for (const Case& c : {Case{GgmlType::Q4_K, 0.12}, Case{GgmlType::Q5_K, 0.06}, Case{GgmlType::Q6_K, 0.03},
                        Case{GgmlType::Q5_0, 0.08}, Case{GgmlType::Q5_1, 0.065}, Case{GgmlType::Q2_K, 0.45},
                        Case{GgmlType::Q3_K, 0.24}, Case{GgmlType::IQ4_NL, 0.13}, Case{GgmlType::IQ4_XS, 0.13}}) {
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
  for (GgmlType t : {GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q2_K,
                     GgmlType::Q3_K, GgmlType::IQ4_NL, GgmlType::IQ4_XS}) {
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
  test::expect_error([] { gguf_file_type("q3_k_xl"); }, {"q3_k_xl", "q4_k_m", "iq4_xs"});

  // The 2-, 3-bit and IQ4 mixes on Qwen2.5-7B (28 layers, 7:1 heads) and -72B (80 layers, MLP 29568 = 115.5 blocks).
  const GgufFileType& q2 = gguf_file_type("q2_k");
  EXPECT_EQ(gguf_tensor_type(q2, GgufRole::AttnV, 5, 28, 3584, false, &fb, 7), GgmlType::Q4_K);  // n_gqa >= 4
  EXPECT_EQ(gguf_tensor_type(q2, GgufRole::AttnV, 5, 28, 3584, false, &fb, 2), GgmlType::Q3_K);
  EXPECT_EQ(gguf_tensor_type(q2, GgufRole::AttnOutput, 5, 28, 3584, false, &fb, 7), GgmlType::Q3_K);
  EXPECT_EQ(gguf_tensor_type(q2, GgufRole::FfnDown, 5, 28, 18944, false, &fb, 7), GgmlType::Q3_K);
  EXPECT_EQ(gguf_tensor_type(q2, GgufRole::OtherLinear, 5, 28, 3584, false, &fb, 7), GgmlType::Q2_K);
  EXPECT_EQ(gguf_tensor_type(q2, GgufRole::FfnDown, 5, 80, 29568, false, &fb, 8), GgmlType::Q4_0);  // Q3_K falls back
  EXPECT_TRUE(fb);
  const GgufFileType& q3m = gguf_file_type("q3_k_m");
  EXPECT_EQ(gguf_tensor_type(q3m, GgufRole::AttnV, 1, 28, 3584, false, &fb, 7), GgmlType::Q5_K);
  EXPECT_EQ(gguf_tensor_type(q3m, GgufRole::AttnV, 2, 28, 3584, false, &fb, 7), GgmlType::Q4_K);
  EXPECT_EQ(gguf_tensor_type(q3m, GgufRole::AttnV, 2, 80, 8192, false, &fb, 8), GgmlType::Q5_K);  // 70B bump
  EXPECT_EQ(gguf_tensor_type(q3m, GgufRole::FfnDown, 0, 28, 18944, false, &fb, 7), GgmlType::Q5_K);  // < 28/16
  EXPECT_EQ(gguf_tensor_type(q3m, GgufRole::FfnDown, 1, 28, 18944, false, &fb, 7), GgmlType::Q4_K);
  EXPECT_EQ(gguf_tensor_type(q3m, GgufRole::AttnOutput, 1, 28, 3584, false, &fb, 7), GgmlType::Q4_K);
  EXPECT_EQ(gguf_tensor_type(q3m, GgufRole::OtherLinear, 1, 28, 3584, false, &fb, 7), GgmlType::Q3_K);
  const GgufFileType& q3s = gguf_file_type("q3_k_s");
  EXPECT_EQ(gguf_tensor_type(q3s, GgufRole::AttnV, 9, 80, 8192, false, &fb, 8), GgmlType::Q5_K);  // 70B bump
  EXPECT_EQ(gguf_tensor_type(q3s, GgufRole::AttnV, 9, 28, 3584, false, &fb, 7), GgmlType::Q3_K);
  const GgufFileType& xs = gguf_file_type("iq4_xs");
  EXPECT_EQ(gguf_tensor_type(xs, GgufRole::AttnV, 9, 28, 3584, false, &fb, 7), GgmlType::Q5_K);
  EXPECT_EQ(gguf_tensor_type(xs, GgufRole::FfnDown, 2, 28, 18944, false, &fb, 7), GgmlType::Q5_K);  // < n/8, no imatrix
  EXPECT_EQ(gguf_tensor_type(xs, GgufRole::FfnDown, 2, 28, 18944, false, &fb, 7, true), GgmlType::IQ4_XS);
  EXPECT_EQ(gguf_tensor_type(xs, GgufRole::FfnDown, 40, 80, 29568, false, &fb, 8), GgmlType::IQ4_NL);
  // q4_0 / q5_0 with an importance matrix: ffn_down of the first n/8 layers in Q4_1 / Q5_1.
  const GgufFileType& q40 = gguf_file_type("q4_0");
  EXPECT_EQ(gguf_tensor_type(q40, GgufRole::FfnDown, 2, 28, 18944, false, &fb, 7, true), GgmlType::Q4_1);
  EXPECT_EQ(gguf_tensor_type(q40, GgufRole::FfnDown, 3, 28, 18944, false, &fb, 7, true), GgmlType::Q4_0);
  EXPECT_EQ(gguf_tensor_type(q40, GgufRole::FfnDown, 2, 28, 18944, false, &fb, 7, false), GgmlType::Q4_0);
}

}  // namespace
}  // namespace qwenq
