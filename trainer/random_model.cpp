#include "trainer/random_model.h"

#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "core/threads.h"

namespace qwenq {

namespace {

struct Preset {
  const char* name;
  int64_t layers, hidden, intermediate, heads, kv_heads, vocab;
  bool tied;
  // Mixture of experts (model_type qwen3_moe, or qwen2_moe with a shared expert): experts, top-k, expert width,
  // shared expert width, and one layer kept dense (mlp_only_layers; -1: none).
  int64_t experts = 0, top_k = 0, moe_intermediate = 0, shared_intermediate = 0, dense_layer = -1;
  int64_t head_dim = 0;  // 0: hidden / heads
};
// Qwen2.5 shapes (REFERENCE.md A6.4); head_dim = hidden / heads for all of them.
constexpr Preset kPresets[] = {
    {"tiny", 2, 64, 128, 4, 2, 320, true},
    {"tiny256", 8, 256, 512, 4, 2, 320, false},  // rows that split into llama.cpp's 256-value k-quant blocks
    {"tiny896", 1, 896, 1024, 14, 2, 320, true},  // Qwen2.5-0.5B's width and 7:1 heads: llama.cpp's fallback types
    // Qwen3-MoE's block (q/k norm, 8 experts, top 2, renormalized), layer 1 dense; Qwen2-MoE's with a shared expert.
    {"tiny-moe", 3, 64, 128, 4, 2, 320, false, 8, 2, 32, 0, 1},
    {"tiny-moe-shared", 2, 64, 128, 4, 2, 320, true, 6, 2, 32, 96, -1},
    {"qwen2.5-0.5b", 24, 896, 4864, 14, 2, 151936, true},
    {"qwen2.5-1.5b", 28, 1536, 8960, 12, 2, 151936, true},
    {"qwen2.5-3b", 36, 2048, 11008, 16, 2, 151936, true},
    {"qwen2.5-7b", 28, 3584, 18944, 28, 4, 152064, false},
    {"qwen2.5-14b", 48, 5120, 13824, 40, 8, 152064, false},
    {"qwen2.5-32b", 64, 5120, 27648, 40, 8, 152064, false},
    {"qwen2.5-72b", 80, 8192, 29568, 64, 8, 152064, false},
    // Mixtures of experts in the shapes of their published config.json: Qwen3-30B-A3B, Qwen1.5-MoE-A2.7B.
    {"qwen3-30b-a3b", 48, 2048, 6144, 32, 4, 151936, false, 128, 8, 768, 0, -1, 128},
    {"qwen1.5-moe-a2.7b", 24, 2048, 5632, 16, 16, 151936, false, 60, 4, 1408, 5632, -1},
};

// GPT-2's byte -> printable-unicode map, which byte-level BPE vocabularies are spelled in.
std::string byte_symbol(int b) {
  int cp = b;
  const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  if (!printable) {
    int n = 0;
    for (int x = 0; x < b; ++x) {
      if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) ++n;
    }
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

void write_byte_level_tokenizer(const std::string& dir, int64_t vocab) {
  QWENQ_CHECK(vocab >= 259, "a byte-level tokenizer needs a vocabulary of at least 259, got " << vocab);
  nlohmann::ordered_json v;
  for (int b = 0; b < 256; ++b) v[byte_symbol(b)] = b;
  write_file_atomic(path_join(dir, "vocab.json"), v.dump() + "\n");
  write_file_atomic(path_join(dir, "merges.txt"), "#version: 0.2\n");
  nlohmann::ordered_json added;
  const char* specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  for (int i = 0; i < 3; ++i) {
    added[std::to_string(256 + i)] = {{"content", specials[i]}, {"lstrip", false}, {"normalized", false},
                                      {"rstrip", false},        {"single_word", false}, {"special", true}};
  }
  nlohmann::ordered_json cfg = {
      {"added_tokens_decoder", added},
      {"bos_token", nullptr},
      {"eos_token", "<|endoftext|>"},
      {"pad_token", "<|endoftext|>"},
      {"model_max_length", 32768},
      {"tokenizer_class", "Qwen2Tokenizer"},
      {"chat_template",
       "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
       "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"},
  };
  write_file_atomic(path_join(dir, "tokenizer_config.json"), cfg.dump(2) + "\n");
}

std::vector<uint8_t> random_tensor(int64_t n, DType dtype, float stddev, Rng& rng) {
  std::vector<float> f(n);
  for (auto& x : f) x = static_cast<float>(rng.normal() * stddev);
  std::vector<uint8_t> bytes(n * dtype_size(dtype));
  from_f32(dtype, f.data(), bytes.data(), n);
  return bytes;
}

std::vector<uint8_t> constant_tensor(int64_t n, DType dtype, float value) {
  std::vector<float> f(n, value);
  std::vector<uint8_t> bytes(n * dtype_size(dtype));
  from_f32(dtype, f.data(), bytes.data(), n);
  return bytes;
}

}  // namespace

QwenConfig qwen_preset(const std::string& name) {
  std::string names;
  for (const Preset& p : kPresets) {
    names += std::string(names.empty() ? "" : ", ") + p.name;
    if (name != p.name) continue;
    QwenConfig c;
    c.model_type = p.experts == 0 ? "qwen2" : p.shared_intermediate > 0 ? "qwen2_moe" : "qwen3_moe";
    c.num_layers = p.layers;
    c.hidden_size = p.hidden;
    c.intermediate_size = p.intermediate;
    c.num_heads = p.heads;
    c.num_kv_heads = p.kv_heads;
    c.head_dim = p.head_dim > 0 ? p.head_dim : p.hidden / p.heads;
    c.vocab_size = p.vocab;
    c.tie_word_embeddings = p.tied;
    c.max_position_embeddings = 32768;
    c.rms_norm_eps = 1e-6f;
    c.rope = rope_spec_default(1e6);
    c.qkv_bias = c.model_type != "qwen3_moe";
    c.qk_norm = c.model_type == "qwen3_moe";
    if (p.experts > 0) {
      c.num_experts = p.experts;
      c.experts_per_token = p.top_k;
      c.moe_intermediate_size = p.moe_intermediate;
      c.shared_expert_intermediate_size = p.shared_intermediate;
      c.norm_topk_prob = c.model_type == "qwen3_moe";  // Qwen3-MoE's released configs renormalize; Qwen2-MoE's do not
      c.moe_layer.assign(p.layers, true);
      if (p.dense_layer >= 0) c.moe_layer[p.dense_layer] = false;
    }
    c.bos_token_id = 256;  // <|endoftext|> in the byte-level tokenizer below
    c.eos_token_id = 256;
    return c;
  }
  QWENQ_FAIL("unknown model preset '" << name << "' (known: " << names << ")");
}

void write_random_model(const RandomModelOptions& opt) {
  QwenConfig c = qwen_preset(opt.preset);
  if (opt.layers > 0) {
    c.num_layers = opt.layers;
    if (c.is_moe()) c.moe_layer.resize(c.num_layers, true);
  }
  if (opt.kv_heads > 0) {
    QWENQ_CHECK(c.num_heads % opt.kv_heads == 0,
                "kv_heads " << opt.kv_heads << " must divide the preset's " << c.num_heads << " attention heads");
    c.num_kv_heads = opt.kv_heads;
  }
  const int64_t C = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  Rng rng(opt.seed);
  const float std_init = 0.02f;
  SafetensorsWriter w;
  auto add_random = [&](const std::string& name, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    w.add_owned(name, opt.dtype, std::move(shape), random_tensor(n, opt.dtype, std_init, rng));
  };
  auto add_const = [&](const std::string& name, int64_t n, float value) {
    w.add_owned(name, opt.dtype, {n}, constant_tensor(n, opt.dtype, value));
  };
  add_random("model.embed_tokens.weight", {V, C});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add_const(p + "input_layernorm.weight", C, 1.f);
    add_random(p + "self_attn.q_proj.weight", {c.q_dim(), C});
    if (c.qkv_bias) add_const(p + "self_attn.q_proj.bias", c.q_dim(), 0.f);
    add_random(p + "self_attn.k_proj.weight", {c.kv_dim(), C});
    if (c.qkv_bias) add_const(p + "self_attn.k_proj.bias", c.kv_dim(), 0.f);
    add_random(p + "self_attn.v_proj.weight", {c.kv_dim(), C});
    if (c.qkv_bias) add_const(p + "self_attn.v_proj.bias", c.kv_dim(), 0.f);
    add_random(p + "self_attn.o_proj.weight", {C, c.q_dim()});
    if (c.qk_norm) {
      add_const(p + "self_attn.q_norm.weight", c.head_dim, 1.f);
      add_const(p + "self_attn.k_norm.weight", c.head_dim, 1.f);
    }
    add_const(p + "post_attention_layernorm.weight", C, 1.f);
    auto add_mlp = [&](const std::string& m, int64_t width) {
      add_random(m + "gate_proj.weight", {width, C});
      add_random(m + "up_proj.weight", {width, C});
      add_random(m + "down_proj.weight", {C, width});
    };
    if (!c.is_moe_layer(l)) {
      add_mlp(p + "mlp.", I);
      continue;
    }
    // A router of std 0.02 would route almost uniformly; a wider one makes the choice of experts matter.
    w.add_owned(p + "mlp.gate.weight", opt.dtype, {c.num_experts, C},
                random_tensor(c.num_experts * C, opt.dtype, 0.5f, rng));
    for (int64_t e = 0; e < c.num_experts; ++e)
      add_mlp(p + "mlp.experts." + std::to_string(e) + ".", c.moe_intermediate_size);
    if (c.shared_expert_intermediate_size > 0) {
      add_mlp(p + "mlp.shared_expert.", c.shared_expert_intermediate_size);
      add_random(p + "mlp.shared_expert_gate.weight", {1, C});
    }
  }
  add_const("model.norm.weight", C, 1.f);
  if (!c.tie_word_embeddings) add_random("lm_head.weight", {V, C});
  w.set_metadata("format", "pt");
  w.set_metadata("qwenq.source", "random weights, preset " + opt.preset + ", seed " + std::to_string(opt.seed));

  const char* arch = c.model_type == "qwen3_moe"   ? "Qwen3MoeForCausalLM"
                     : c.model_type == "qwen2_moe" ? "Qwen2MoeForCausalLM"
                                                   : "Qwen2ForCausalLM";
  nlohmann::ordered_json cfg = {
      {"architectures", {arch}},
      {"model_type", c.model_type},
      {"vocab_size", V},
      {"hidden_size", C},
      {"intermediate_size", I},
      {"num_hidden_layers", c.num_layers},
      {"num_attention_heads", c.num_heads},
      {"num_key_value_heads", c.num_kv_heads},
      {"hidden_act", "silu"},
      {"max_position_embeddings", c.max_position_embeddings},
      {"rms_norm_eps", c.rms_norm_eps},
      {"rope_theta", c.rope.theta},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"use_sliding_window", false},
      {"bos_token_id", c.bos_token_id},
      {"eos_token_id", c.eos_token_id},
      {"torch_dtype", opt.dtype == DType::BF16 ? "bfloat16" : opt.dtype == DType::F16 ? "float16" : "float32"},
  };
  if (c.model_type != "qwen2") cfg["head_dim"] = c.head_dim;
  if (c.model_type == "qwen3_moe") cfg["attention_bias"] = false;
  if (c.is_moe()) {
    cfg["num_experts"] = c.num_experts;
    cfg["num_experts_per_tok"] = c.experts_per_token;
    cfg["moe_intermediate_size"] = c.moe_intermediate_size;
    if (c.shared_expert_intermediate_size > 0) cfg["shared_expert_intermediate_size"] = c.shared_expert_intermediate_size;
    cfg["norm_topk_prob"] = c.norm_topk_prob;
    cfg["decoder_sparse_step"] = 1;
    nlohmann::json dense = nlohmann::json::array();
    for (int64_t l = 0; l < c.num_layers; ++l)
      if (!c.is_moe_layer(l)) dense.push_back(l);
    cfg["mlp_only_layers"] = dense;
  }
  StagedDir out(opt.out_dir, opt.overwrite);
  write_file_atomic(path_join(out.path(), "config.json"), cfg.dump(2) + "\n");
  write_byte_level_tokenizer(out.path(), V);
  w.write(path_join(out.path(), "model.safetensors"));
  out.commit();
}

}  // namespace qwenq
