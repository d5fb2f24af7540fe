// Mixtures of experts as GGUF files (llama.cpp's qwen3moe / qwen2moe; trainer/gguf_model.h): an F32 file reads back
// to the directory's logits exactly and dequantizes back to its tensors, quantized files stay within their rounding,
// llama-quantize's 8-expert type rules, importance matrices with one matrix per expert, and the configs llama.cpp's
// graphs would compute differently are refused.
// gguf-py's view of the same files (names, stacks, keys, types, bytes) is tests/oracle/test_gguf_oracle.py.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "core/gguf.h"
#include "core/safetensors.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_compare.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/gguf_file_type.h"
#include "trainer/gguf_model.h"
#include "trainer/imatrix_model.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

// Relative RMS error of the logits read back from a q8_0 / q4_k_m file (measured on these models: ~5e-3 and ~0.05;
// 3x over): a stack written in the wrong expert order or a wrong router gives O(1).
constexpr double kQ8RelTol = 2e-2;
constexpr double kQ4KmRelTol = 0.2;



TEST(GgufMoe, RoundTripsThroughLlamaCppsLayout) {
  const std::string root = test::scratch_dir();
  // qwen2moe: 6 experts top 2 with a shared expert; qwen3moe: tiny-moe cut to its first layer (every layer sparse).
  for (const auto& [preset, layers] : {std::make_pair("tiny-moe-shared", 0), std::make_pair("tiny-moe", 1)}) {
    SCOPED_TRACE(preset);
    const std::string src = test::make_random_model(root + "/" + preset, preset, DType::F32, 31, layers);
    const QwenModel want(src);
    const QwenConfig& c = want.config();
    ASSERT_FALSE(c.has_dense_mlp());
    const PackedBatch batch = test::random_batch({13, 7}, c.vocab_size, 5);
    const std::vector<float> ref = want.forward_logits(batch);

    const std::string f32 = test::export_gguf_to(src, root + "/" + preset + "-f32.gguf", "f32");
    const QwenModel back(f32);
    const QwenConfig& b = back.config();
    EXPECT_EQ(b.model_type, c.model_type);
    EXPECT_EQ(b.num_experts, c.num_experts);
    EXPECT_EQ(b.experts_per_token, c.experts_per_token);
    EXPECT_EQ(b.moe_intermediate_size, c.moe_intermediate_size);
    EXPECT_EQ(b.shared_expert_intermediate_size, c.shared_expert_intermediate_size);
    EXPECT_EQ(b.norm_topk_prob, c.norm_topk_prob);
    EXPECT_EQ(back.forward_logits(batch), ref);  // the same fp32 values in the same order: bit for bit

    // Dequantized back: every tensor of the source, each expert its own again.
    DequantizeOptions d;
    d.model_dir = f32;
    d.out_dir = root + "/" + preset + "-back";
    d.dtype = DType::F32;
    d.quiet = true;
    gguf_to_hf(d);
    Checkpoint a(src), z(d.out_dir);
    for (const std::string& name : a.names()) {
      ASSERT_TRUE(z.has(name)) << name;
      const TensorView &x = a.get(name), &y = z.get(name);
      EXPECT_EQ(x.numel(), y.numel()) << name;
      EXPECT_EQ(tensor_to_f32(x), tensor_to_f32(y)) << name;
    }
    EXPECT_EQ(QwenModel(d.out_dir).forward_logits(batch), ref);

    const QwenModel q8(test::export_gguf_to(src, root + "/" + preset + "-q8_0.gguf", "q8_0"));
    EXPECT_LE(test::relative_l2(q8.forward_logits(batch), ref), kQ8RelTol);
    const QwenModel q4km(test::export_gguf_to(src, root + "/" + preset + "-q4_k_m.gguf", "q4_k_m"));
    const double q4 = test::relative_l2(q4km.forward_logits(batch), ref);
    EXPECT_LE(q4, kQ4KmRelTol);
    EXPECT_GT(q4, 0.0);
  }
}

// llama-quantize's rules for a model of exactly 8 experts (Mixtral's bump), and none for other counts.
TEST(GgufMoe, EightExpertTypeRules) {
  bool fb = false;
  const GgufFileType& q4km = gguf_file_type("q4_k_m");
  const GgufFileType& q4_0 = gguf_file_type("q4_0");
  const GgufFileType& q3kl = gguf_file_type("q3_k_l");
  const int64_t L = 48, row = 2048, layer = 10;  // layer 10 of 48: not one use_more_bits picks
  EXPECT_EQ(gguf_tensor_type(q4km, GgufRole::AttnV, layer, L, row, false, &fb, 4, false, 8), GgmlType::Q8_0);
  EXPECT_EQ(gguf_tensor_type(q4_0, GgufRole::AttnK, layer, L, row, false, &fb, 4, false, 8), GgmlType::Q8_0);
  EXPECT_EQ(gguf_tensor_type(q4km, GgufRole::AttnOutput, layer, L, row, false, &fb, 4, false, 8), GgmlType::Q5_K);
  EXPECT_EQ(gguf_tensor_type(q3kl, GgufRole::AttnOutput, layer, L, row, false, &fb, 4, false, 8), GgmlType::Q3_K);
  // 128 experts (Qwen3-30B-A3B): the dense rules.
  EXPECT_EQ(gguf_tensor_type(q4km, GgufRole::AttnV, layer, L, row, false, &fb, 4, false, 128), GgmlType::Q4_K);
  EXPECT_EQ(gguf_tensor_type(q4_0, GgufRole::AttnK, layer, L, row, false, &fb, 4, false, 128), GgmlType::Q4_0);
  EXPECT_EQ(gguf_tensor_type(q4km, GgufRole::AttnOutput, layer, L, row, false, &fb, 4, false, 128), GgmlType::Q4_K);
  EXPECT_EQ(gguf_tensor_type(q3kl, GgufRole::AttnOutput, layer, L, row, false, &fb, 4, false, 128), GgmlType::Q5_K);
  // The rules of convert_hf_to_gguf's types ignore experts.
  EXPECT_EQ(gguf_tensor_type(gguf_file_type("q8_0"), GgufRole::AttnV, layer, L, row, false, &fb, 4, false, 8),
            GgmlType::Q8_0);
  EXPECT_EQ(gguf_tensor_type(gguf_file_type("f16"), GgufRole::AttnK, layer, L, row, false, &fb, 4, false, 8),
            GgmlType::F16);
}

// Configs llama.cpp's qwen3moe / qwen2moe would compute differently, and an importance matrix for expert stacks:
// one error naming the config and the reason, no file.
TEST(GgufMoe, ConfigsWithoutAGgufFormAreRefused) {
  const std::string root = test::scratch_dir();
  const std::string mixed = test::make_random_model(root + "/mixed", "tiny-moe", DType::F32, 3);  // layer 1 dense
  test::expect_error([&] { test::export_gguf_to(mixed, root + "/mixed.gguf", "q8_0"); },
                     {mixed + "/config.json: a mixture of experts with dense layers", "qwen3moe makes every layer sparse"});
  const std::string shared = test::make_random_model(root + "/shared", "tiny-moe-shared", DType::F32, 3);
  nlohmann::json cfg = nlohmann::json::parse(read_file(shared + "/config.json"));
  cfg["norm_topk_prob"] = true;
  write_file_atomic(shared + "/config.json", cfg.dump(2));
  test::expect_error([&] { test::export_gguf_to(shared, root + "/shared.gguf", "q8_0"); },
                     {"norm_topk_prob=true has no GGUF form: llama.cpp's qwen2moe never renormalizes"});
  for (const char* f : {"mixed.gguf", "shared.gguf"}) EXPECT_FALSE(file_exists(root + "/" + f)) << f;
  ImatrixOptions io;
  io.model = mixed;
  io.calib_path = test::write_random_words(root + "/calib.txt", 4000, 2);
  io.quiet = true;
  test::expect_error([&] { compute_imatrix(io); }, {"imatrix: " + mixed + ": a mixture of experts with dense layers"});
}

// A file whose expert count disagrees with its tensors (the key patched from 6 to 8 in place): refused when opened,
// naming the file, the first tensor that disagrees (the router) and both shapes.
TEST(GgufMoe, ExpertCountThatDisagreesWithTheStacksIsRefused) {
  const std::string root = test::scratch_dir();
  const std::string src = test::make_random_model(root + "/moe", "tiny-moe-shared", DType::F32, 43);
  const std::string path = test::export_gguf_to(src, root + "/m.gguf", "f32");
  std::string bytes = read_file(path);
  const std::string key = "qwen2moe.expert_count";
  const size_t at = bytes.find(key);
  ASSERT_NE(at, std::string::npos);
  uint32_t type = 0, value = 0;  // GGUF: the key, then its u32 value type (4) and the value
  std::memcpy(&type, bytes.data() + at + key.size(), 4);
  std::memcpy(&value, bytes.data() + at + key.size() + 4, 4);
  ASSERT_EQ(type, 4u);
  ASSERT_EQ(value, 6u);
  const uint32_t eight = 8;
  std::memcpy(&bytes[at + key.size() + 4], &eight, 4);
  write_file_atomic(path, bytes);
  test::expect_error([&] { QwenModel m(path); },
                     {path, "tensor 'blk.0.ffn_gate_inp.weight' has ne [64, 6]", "the metadata implies [8, 64]"});
}

// llama-imatrix's view of a MoE model: the router reads every token, each expert's stack matrix the tokens routed to
// it (k per token in all), the shared expert every token; llama-quantize --imatrix then weighs each expert's rows by
// its own matrix. (The sums themselves against transformers' hooks: tests/oracle/test_imatrix_oracle.py.)
TEST(GgufMoe, ImatrixWeighsEachExpertByItsOwnTokens) {
  const std::string root = test::scratch_dir();
  const std::string src = test::make_random_model(root + "/moe", "tiny-moe-shared", DType::F32, 41);
  const QwenConfig c = QwenModel(src).config();
  ImatrixOptions io;
  io.model = src;
  io.calib_path = test::write_random_words(root + "/calib.txt", 20000, 3);
  io.ctx = 32;
  io.chunks = 8;
  io.no_ppl = true;
  io.quiet = true;
  const Imatrix m = compute_imatrix(io);
  const float T = 8 * 32;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    EXPECT_EQ(m.entries.at(p + "ffn_gate_inp.weight").counts, std::vector<float>{T});
    EXPECT_EQ(m.entries.at(p + "ffn_gate_inp_shexp.weight").counts, std::vector<float>{T});
    EXPECT_EQ(m.entries.at(p + "ffn_down_shexp.weight").counts, std::vector<float>{T});
    const ImatrixEntry& g = m.entries.at(p + "ffn_gate_exps.weight");
    ASSERT_EQ(static_cast<int64_t>(g.counts.size()), c.num_experts);
    EXPECT_EQ(g.columns(), c.hidden_size);
    float routed = 0;
    for (float n : g.counts) routed += n;
    EXPECT_EQ(routed, T * static_cast<float>(c.experts_per_token));
    EXPECT_EQ(m.entries.at(p + "ffn_up_exps.weight").sum2, g.sum2);
    const ImatrixEntry& d = m.entries.at(p + "ffn_down_exps.weight");
    EXPECT_EQ(d.counts, g.counts);
    EXPECT_EQ(d.columns(), c.moe_intermediate_size);
  }
  const std::string imatrix = root + "/imatrix.gguf";
  write_imatrix_gguf(m, imatrix);
  GgufExportOptions o;
  o.type = "q4_0";
  o.quiet = true;
  export_gguf(src, root + "/plain.gguf", o);
  o.imatrix_path = imatrix;
  const GgufExportReport rep = export_gguf(src, root + "/weighted.gguf", o);
  EXPECT_GT(rep.imatrix_tensors, 3 * c.num_layers);  // the stacks at least
  const GgufFile plain(root + "/plain.gguf"), weighted(root + "/weighted.gguf");
  const GgufTensor &a = plain.tensor("blk.0.ffn_down_exps.weight"), &b = weighted.tensor("blk.0.ffn_down_exps.weight");
  ASSERT_EQ(a.bytes, b.bytes);
  EXPECT_NE(0, std::memcmp(a.data, b.data, a.bytes)) << "the importance changed no block of the expert stack";

  // An imatrix of another model (8 experts, not 6) is refused naming the entry.
  const std::string other = test::make_random_model(root + "/other", "tiny-moe", DType::F32, 41, 1);
  io.model = other;
  write_imatrix_gguf(compute_imatrix(io), root + "/other.gguf");
  o.imatrix_path = root + "/other.gguf";
  test::expect_error([&] { export_gguf(src, root + "/bad.gguf", o); },
                     {"imatrix entry blk.0.ffn_gate_exps.weight has", "x 6 experts (an imatrix of another model?)"});
  EXPECT_FALSE(file_exists(root + "/bad.gguf"));
}

}  // namespace
}  // namespace qwenq
