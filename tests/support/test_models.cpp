#include "tests/support/test_models.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <regex>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "tests/support/safetensors_edit.h"
#include "tests/support/test_paths.h"
#include "trainer/gguf_model.h"
#include "trainer/llama2c_import.h"
#include "trainer/qwen_weights.h"
#include "trainer/random_model.h"
#include "trainer/tokenizer.h"

namespace qwenq::test {

std::string rtn_gptq_model(const std::string& src, const std::string& dst, int64_t group) {
  QuantizeOptions q;
  q.method = QuantizeOptions::Method::Rtn;
  q.group_size = group;
  q.model_dir = src;
  q.out_dir = dst;
  q.quiet = true;
  quantize_model(q);
  return dst;
}

void expect_batched_step_is_lone_step(const QwenModel& model) {
  KvCache c1 = model.make_cache(8), c2 = model.make_cache(8), c3 = model.make_cache(8);
  model.forward_step({1, 2, 3}, &c1);
  model.forward_step({4, 5}, &c2);
  const std::vector<float> both = model.forward_steps({6, 7}, {&c1, &c2});
  const std::vector<float> alone = (model.forward_step({4, 5}, &c3), model.forward_step({7}, &c3));
  const int64_t V = model.config().vocab_size;
  EXPECT_EQ(std::vector<float>(both.begin() + V, both.end()), alone);
}

std::string make_tiny_model(const std::string& dir, uint64_t seed, int64_t kv_heads, int64_t layers) {
  RandomModelOptions o;
  o.out_dir = dir;
  o.dtype = DType::F32;
  o.seed = seed;
  o.kv_heads = kv_heads;
  o.layers = layers;
  write_random_model(o);
  return dir;
}

std::string make_random_model(const std::string& dir, const std::string& preset, DType dtype, uint64_t seed,
                              int64_t layers) {
  RandomModelOptions o;
  o.preset = preset;
  o.layers = layers;
  o.out_dir = dir;
  o.dtype = dtype;
  o.seed = seed;
  write_random_model(o);
  return dir;
}

std::string import_stories260k(const std::string& dir) {
  Llama2cImportOptions io;
  io.checkpoint = shared_data_dir() + "/stories260K/stories260K.bin";
  io.tokenizer = shared_data_dir() + "/stories260K/tok512.bin";
  io.out_dir = dir;
  import_llama2c(io);
  return dir;
}

std::vector<int32_t> tinystories_tokens(const std::string& model_dir) {
  return Tokenizer::from_dir(model_dir).encode(read_file(shared_data_dir() + "/tinystories/tinystories_val.txt"));
}

std::vector<int32_t> tinystories_prefix_tokens(const std::string& model_dir, size_t n) {
  const std::string text = read_file(shared_data_dir() + "/tinystories/tinystories_val.txt").substr(0, 20000);
  std::vector<int32_t> tokens = Tokenizer::from_dir(model_dir).encode(text);
  QWENQ_CHECK(tokens.size() >= n, "tinystories_prefix_tokens: " << tokens.size() << " tokens, not " << n);
  tokens.resize(n);
  return tokens;
}

double mean_next_token_nll(const QwenModel& m, const std::vector<int32_t>& tokens) {
  std::vector<float> nll;
  const int64_t n = m.next_token_nll(PackedBatch::from_sequences({tokens}), &nll);
  double s = 0;
  for (float v : nll) s += v;
  return s / static_cast<double>(n);
}

ScopedInt8Activations::ScopedInt8Activations() { set_int8_activations(true); }
ScopedInt8Activations::~ScopedInt8Activations() { set_int8_activations(false); }

std::string copy_with_noisy_lm_head(const std::string& src, const std::string& dst, uint64_t seed, float sigma) {
  std::filesystem::remove_all(dst);
  std::filesystem::copy(src, dst);
  // A tied model (stories260K) has no lm_head.weight: the copy gets one, the embedding plus the noise, and
  // tie_word_embeddings false. Without this the copy would be the model itself (KL divergence 0).
  const std::string config_path = path_join(dst, "config.json");
  nlohmann::ordered_json cfg = nlohmann::ordered_json::parse(read_file(config_path));
  const bool tied = cfg.value("tie_word_embeddings", false);
  int noised = 0;
  const auto noisy = [&](const TensorView& v, std::vector<uint8_t> bytes) {
    QWENQ_CHECK(v.dtype == DType::F32, "copy_with_noisy_lm_head: an fp32 lm_head");
    float* f = reinterpret_cast<float*>(bytes.data());
    Rng rng(seed);
    for (int64_t i = 0; i < v.numel(); ++i) f[i] += sigma * rng.normal();
    ++noised;
    return bytes;
  };
  rewrite_safetensors(path_join(dst, "model.safetensors"),
                      [&](const std::string& name, const TensorView& v, std::vector<uint8_t> bytes, SafetensorsWriter& w) {
                        if (tied && name == "model.embed_tokens.weight") {
                          w.add_owned("lm_head.weight", v.dtype, v.shape, noisy(v, bytes));
                        } else if (!tied && name == "lm_head.weight") {
                          bytes = noisy(v, std::move(bytes));
                        }
                        w.add_owned(name, v.dtype, v.shape, std::move(bytes));
                      });
  QWENQ_CHECK(noised == 1, "copy_with_noisy_lm_head: " << src << " has no " << (tied ? "embedding" : "lm_head.weight"));
  if (tied) {
    cfg["tie_word_embeddings"] = false;
    write_file_atomic(config_path, cfg.dump(2));
  }
  return dst;
}

std::vector<int32_t> lcg_tokens(int64_t n, int64_t vocab, uint32_t seed) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  uint32_t s = seed;
  for (auto& v : t) {
    s = s * 1664525u + 1013904223u;
    v = static_cast<int32_t>((s >> 8) % static_cast<uint32_t>(vocab));
  }
  return t;
}

PackedBatch random_batch(const std::vector<int64_t>& lengths, int64_t vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<std::vector<int32_t>> seqs;
  for (int64_t len : lengths) {
    std::vector<int32_t> s(static_cast<size_t>(len));
    for (auto& t : s) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
    seqs.push_back(std::move(s));
  }
  return PackedBatch::from_sequences(seqs);
}

std::string write_random_words(const std::string& path, size_t bytes, uint64_t seed) {
  Rng rng(seed);
  std::string text;
  while (text.size() < bytes) {
    const int len = 1 + static_cast<int>(rng.below(8));
    for (int i = 0; i < len; ++i) text += static_cast<char>('a' + rng.below(26));
    text += rng.below(10) == 0 ? ".\n" : " ";
  }
  write_file_atomic(path, text);
  return path;
}

std::string gptq_act_order_stories260k(const std::string& hf, const std::string& out_dir, int64_t samples,
                                       int64_t seq_len) {
  GptqModelOptions g;
  g.out.model_dir = hf;
  g.out.out_dir = out_dir;
  g.out.group_size = 32;
  g.out.pad_intermediate = true;  // 172 is no multiple of the group
  g.out.quiet = true;
  g.calib_path = shared_data_dir() + "/c4/c4_demo.jsonl";
  g.calib_samples = samples;
  g.calib_seq_len = seq_len;
  g.desc_act = true;
  gptq_quantize_model(g);
  return out_dir;
}

GptqModelOptions tiny_gptq_options(const std::string& model_dir, const std::string& calib, uint64_t seed,
                                   const std::string& out_dir) {
  GptqModelOptions g;
  g.out.model_dir = model_dir;
  g.out.out_dir = out_dir;
  g.out.group_size = 32;
  g.out.quiet = true;
  g.calib_path = calib;
  g.calib_samples = 12;
  g.calib_seq_len = 48;
  g.seed = seed;
  return g;
}

std::string upcycle_stories260k(const std::string& dense, const std::string& dir, int64_t E) {
  const QwenModel m(dense);
  const QwenConfig& c = m.config();
  const int64_t C = c.hidden_size, I = c.intermediate_size, I2 = 192;
  Checkpoint ckpt(dense);
  SafetensorsWriter w;
  const std::regex mlp(R"(^model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight$)");
  Rng rng(77);
  for (const auto& name : ckpt.names()) {
    const TensorView& t = ckpt.get(name);
    std::smatch mm;
    if (!std::regex_match(name, mm, mlp)) {
      w.add(name, t.dtype, t.shape, t.data);
      continue;
    }
    const bool down = mm[2] == "down";
    std::vector<float> W(C * I2, 0.f);  // padded: zero rows of gate/up, zero columns of down
    for (int64_t a = 0; a < (down ? C : I); ++a)
      for (int64_t b = 0; b < (down ? I : C); ++b) W[down ? a * I2 + b : a * C + b] = t.as<float>()[a * (down ? I : C) + b];
    std::vector<uint8_t> bytes(W.size() * 4);
    std::memcpy(bytes.data(), W.data(), bytes.size());
    const std::string p = "model.layers." + mm[1].str() + ".mlp.";
    for (int64_t e = 0; e < E; ++e)
      w.add_owned(p + "experts." + std::to_string(e) + "." + mm[2].str() + "_proj.weight", DType::F32,
                  down ? std::vector<int64_t>{C, I2} : std::vector<int64_t>{I2, C}, bytes);
    if (mm[2] == "gate") {
      std::vector<uint8_t> router(E * C * 4);
      for (int64_t i = 0; i < E * C; ++i) {
        const float v = static_cast<float>(rng.normal() / std::sqrt(static_cast<double>(C)));
        std::memcpy(router.data() + 4 * i, &v, 4);
      }
      w.add_owned(p + "gate.weight", DType::F32, {E, C}, std::move(router));
    }
  }
  QWENQ_CHECK(std::system(("mkdir -p '" + dir + "'").c_str()) == 0, "upcycle_stories260k: cannot create " << dir);
  w.write(dir + "/model.safetensors");
  nlohmann::json cfg = nlohmann::json::parse(read_file(dense + "/config.json"));
  cfg["model_type"] = "qwen2_moe";
  cfg["architectures"] = {"Qwen2MoeForCausalLM"};
  cfg["num_experts"] = E;
  cfg["num_experts_per_tok"] = 2;
  cfg["moe_intermediate_size"] = I2;
  cfg["shared_expert_intermediate_size"] = 0;
  cfg["norm_topk_prob"] = true;
  write_file_atomic(dir + "/config.json", cfg.dump(2) + "\n");
  for (const char* f : {"vocab.json", "merges.txt", "tokenizer_config.json", "tokenizer.json", "tokenizer.model"})
    if (file_exists(dense + "/" + f)) write_file_atomic(dir + "/" + f, read_file(dense + "/" + f));
  return dir;
}


TinyStoriesPerplexity::TinyStoriesPerplexity(const std::string& stories_dir) : ids_(tinystories_tokens(stories_dir)) {
  ids_.resize(32 * 256);
  po_.seq_len = 256;
  po_.windows_per_batch = 8;
  po_.quiet = true;
}

double TinyStoriesPerplexity::operator()(const std::string& dir) const {
  return evaluate_perplexity(QwenModel(dir), ids_, po_).perplexity;
}

std::string export_gguf_to(const std::string& model_dir, const std::string& path, const std::string& type) {
  GgufExportOptions o;
  o.type = type;
  o.quiet = true;
  export_gguf(model_dir, path, o);
  return path;
}

AwqModelOptions awq_test_options(const std::string& model, const std::string& out, const std::string& calib,
                                 IntLayout layout) {
  AwqModelOptions a;
  a.out.model_dir = model;
  a.out.out_dir = out;
  a.out.group_size = 32;
  a.out.layout = layout;
  a.out.quiet = true;
  a.calib_path = calib;
  a.calib_samples = 8;
  a.calib_seq_len = 64;
  a.seed = 3;
  return a;
}

UpcycledAwq upcycled_stories260k_awq(const std::string& root) {
  UpcycledAwq u;
  u.dense = import_stories260k(root + "/fp32");
  u.moe = upcycle_stories260k(u.dense, root + "/moe", 4);
  u.options = awq_test_options(u.moe, root + "/awq", shared_data_dir() + "/c4/c4_demo.jsonl");
  u.options.out.group_size = 64;
  u.options.calib_samples = 32;
  u.options.calib_seq_len = 128;
  return u;
}

}  // namespace qwenq::test
