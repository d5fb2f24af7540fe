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
};
// Qwen2.5 shapes (REFERENCE.md A6.4); head_dim = hidden / heads for all of them.
constexpr Preset kPresets[] = {
    {"tiny", 2, 64, 128, 4, 2, 320, true},
    {"tiny256", 8, 256, 512, 4, 2, 320, false},  // rows that split into llama.cpp's 256-value k-quant blocks
    {"tiny896", 1, 896, 1024, 14, 2, 320, true},  // Qwen2.5-0.5B's width and 7:1 heads: llama.cpp's fallback types
    {"qwen2.5-0.5b", 24, 896, 4864, 14, 2, 151936, true},
    {"qwen2.5-1.5b", 28, 1536, 8960, 12, 2, 151936, true},
    {"qwen2.5-3b", 36, 2048, 11008, 16, 2, 151936, true},
    {"qwen2.5-7b", 28, 3584, 18944, 28, 4, 152064, false},
    {"qwen2.5-14b", 48, 5120, 13824, 40, 8, 152064, false},
    {"qwen2.5-32b", 64, 5120, 27648, 40, 8, 152064, false},
    {"qwen2.5-72b", 80, 8192, 29568, 64, 8, 152064, false},
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
    c.model_type = "qwen2";
    c.num_layers = p.layers;
    c.hidden_size = p.hidden;
    c.intermediate_size = p.intermediate;
    c.num_heads = p.heads;
    c.num_kv_heads = p.kv_heads;
    c.head_dim = p.hidden / p.heads;
    c.vocab_size = p.vocab;
    c.tie_word_embeddings = p.tied;
    c.max_position_embeddings = 32768;
    c.rms_norm_eps = 1e-6f;
    c.rope = rope_spec_default(1e6);
    c.qkv_bias = true;
    c.bos_token_id = 256;  // <|endoftext|> in the byte-level tokenizer below
    c.eos_token_id = 256;
    return c;
  }
  QWENQ_FAIL("unknown model preset '" << name << "' (known: " << names << ")");
}

void write_random_model(const RandomModelOptions& opt) {
  QwenConfig c = qwen_preset(opt.preset);
  if (opt.layers > 0) c.num_layers = opt.layers;
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
    add_const(p + "self_attn.q_proj.bias", c.q_dim(), 0.f);
    add_random(p + "self_attn.k_proj.weight", {c.kv_dim(), C});
    add_const(p + "self_attn.k_proj.bias", c.kv_dim(), 0.f);
    add_random(p + "self_attn.v_proj.weight", {c.kv_dim(), C});
    add_const(p + "self_attn.v_proj.bias", c.kv_dim(), 0.f);
    add_random(p + "self_attn.o_proj.weight", {C, c.q_dim()});
    add_const(p + "post_attention_layernorm.weight", C, 1.f);
    add_random(p + "mlp.gate_proj.weight", {I, C});
    add_random(p + "mlp.up_proj.weight", {I, C});
    add_random(p + "mlp.down_proj.weight", {C, I});
  }
  add_const("model.norm.weight", C, 1.f);
  if (!c.tie_word_embeddings) add_random("lm_head.weight", {V, C});
  w.set_metadata("format", "pt");
  w.set_metadata("qwenq.source", "random weights, preset " + opt.preset + ", seed " + std::to_string(opt.seed));

  nlohmann::ordered_json cfg = {
      {"architectures", {"Qwen2ForCausalLM"}},
      {"model_type", "qwen2"},
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
  StagedDir out(opt.out_dir, opt.overwrite);
  write_file_atomic(path_join(out.path(), "config.json"), cfg.dump(2) + "\n");
  write_byte_level_tokenizer(out.path(), V);
  w.write(path_join(out.path(), "model.safetensors"));
  out.commit();
}

}  // namespace qwenq
