// The architecture facts of a Qwen-family checkpoint, read from its config.json.
//
// Supported: model_type "qwen2" (Qwen1.5, Qwen2, Qwen2.5: q/k/v bias), "qwen3" (per-head q_norm/k_norm
// RMSNorm before RoPE, no q/k/v bias, explicit head_dim), "llama" (same block without biases), and the mixtures
// of experts "qwen3_moe" (Qwen3-30B-A3B, Qwen3-235B-A22B: Qwen3's attention, top-k routed SwiGLU experts) and
// "qwen2_moe" (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B: Qwen2's attention, routed experts plus a sigmoid-gated shared
// expert); MoE models run in every command, on the CPU and on the GPU. RoPE
// default, or rope_scaling of type linear, yarn or llama3 read as transformers 4.51.3 reads them (rope); tied or
// untied embeddings; GQA. Anything else (sliding window on, dynamic/longrope/other rope_scaling, another
// activation) is refused with one error naming config.json and the field, rather than computed wrongly.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

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

  // Mixture of experts (qwen2_moe, qwen3_moe; all zero for a dense model). Layer l's MLP is a sparse MoE block when
  // moe_layer[l] (transformers: l not in mlp_only_layers and (l + 1) % decoder_sparse_step == 0), else the dense
  // SwiGLU of intermediate_size.
  int64_t num_experts = 0;                      // E routed experts per MoE layer
  int64_t experts_per_token = 0;                // k (num_experts_per_tok)
  int64_t moe_intermediate_size = 0;            // each routed expert's SwiGLU width
  int64_t shared_expert_intermediate_size = 0;  // qwen2_moe's shared expert (0: none)
  bool norm_topk_prob = false;                  // renormalize the k routing weights to sum 1
  std::vector<bool> moe_layer;                  // per layer (empty for a dense model)

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
  bool is_moe() const { return num_experts > 0; }
  bool is_moe_layer(int64_t l) const { return l >= 0 && l < static_cast<int64_t>(moe_layer.size()) && moe_layer[l]; }
  // How many layers' MLPs are sparse MoE blocks (0 for a dense model).
  int64_t num_moe_layers() const {
    int64_t n = 0;
    for (int64_t l = 0; l < num_layers; ++l) n += is_moe_layer(l) ? 1 : 0;
    return n;
  }
  // Some layer's MLP is the dense SwiGLU (every layer of a dense model; a MoE model's mlp_only_layers).
  bool has_dense_mlp() const { return num_moe_layers() < num_layers; }
};

// Parses `<dir>/config.json`. Throws naming the file and field on anything missing or unsupported. Prints
// rope_warning to stderr, once per config.json path in a process.
QwenConfig load_qwen_config(const std::string& dir);
QwenConfig parse_qwen_config(const std::string& json_text, const std::string& path_for_errors);

}  // namespace qwenq
