// The architecture facts of a Qwen-family checkpoint, read from its config.json.
//
// Supported: model_type "qwen2" (Qwen1.5, Qwen2, Qwen2.5: q/k/v bias), "qwen3" (per-head q_norm/k_norm
// RMSNorm before RoPE, no q/k/v bias, explicit head_dim), and "llama" (same block without biases). RoPE
// default, or rope_scaling of type linear, yarn or llama3 read as transformers 4.51.3 reads them (rope); tied or
// untied embeddings; GQA. Anything else (sliding window on, dynamic/longrope/other rope_scaling, another
// activation) is refused with one error naming config.json and the field, rather than computed wrongly.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/rope_table.h"

namespace qwenq {

struct QwenConfig {
  std::string model_type;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;        // C
  int64_t intermediate_size = 0;  // I
  int64_t num_layers = 0;
  int64_t num_heads = 0;     // H
  int64_t num_kv_heads = 0;  // Hkv
  int64_t head_dim = 0;      // D
  int64_t max_position_embeddings = 0;
  float rms_norm_eps = 1e-6f;
  RopeSpec rope = rope_spec_default(1e6);  // rope_theta and rope_scaling, resolved as transformers 4.51.3 does
  std::string rope_warning;  // where that resolution departs from the config's words (one line; empty if none)
  bool tie_word_embeddings = false;
  bool qkv_bias = true;  // Qwen2: true; Qwen3 / Llama: attention_bias (default false)
  bool qk_norm = false;  // Qwen3
  int32_t bos_token_id = -1;
  int32_t eos_token_id = -1;
  std::string torch_dtype;  // as written ("bfloat16", ...), informative only

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
};

// Parses `<dir>/config.json`. Throws naming the file and field on anything missing or unsupported. Prints
// rope_warning to stderr, once per config.json path in a process.
QwenConfig load_qwen_config(const std::string& dir);
QwenConfig parse_qwen_config(const std::string& json_text, const std::string& path_for_errors);

}  // namespace qwenq
