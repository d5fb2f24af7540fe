#include "trainer/qwen_weights.h"

#include <string>

#include "core/error.h"

namespace qwenq {

namespace {

TensorView fetch(const Checkpoint& ckpt, const std::string& name, std::vector<int64_t> shape) {
  QWENQ_CHECK(ckpt.has(name), "tensor '" << name << "' not found in checkpoint " << ckpt.dir());
  const TensorView& t = ckpt.get(name);
  QWENQ_CHECK(t.shape == shape, ckpt.file_of(name) << ": tensor '" << name << "' has shape " << shape_str(t.shape)
                                                   << " but config.json implies " << shape_str(shape));
  QWENQ_CHECK(t.dtype == DType::BF16 || t.dtype == DType::F16 || t.dtype == DType::F32,
              ckpt.file_of(name) << ": tensor '" << name << "' has dtype " << dtype_name(t.dtype)
                                 << "; expected BF16, F16 or F32");
  return t;
}

}  // namespace

QwenWeights bind_qwen_weights(const QwenConfig& c, const Checkpoint& ckpt) {
  const int64_t C = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  QwenWeights w;
  w.embed = fetch(ckpt, "model.embed_tokens.weight", {V, C});
  w.final_norm = fetch(ckpt, "model.norm.weight", {C});
  if (c.tie_word_embeddings) {
    w.lm_head = w.embed;
  } else {
    w.lm_head = fetch(ckpt, "lm_head.weight", {V, C});
  }
  w.layers.resize(c.num_layers);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    QwenLayerWeights& L = w.layers[l];
    L.input_norm = fetch(ckpt, p + "input_layernorm.weight", {C});
    L.q = fetch(ckpt, p + "self_attn.q_proj.weight", {c.q_dim(), C});
    L.k = fetch(ckpt, p + "self_attn.k_proj.weight", {c.kv_dim(), C});
    L.v = fetch(ckpt, p + "self_attn.v_proj.weight", {c.kv_dim(), C});
    L.o = fetch(ckpt, p + "self_attn.o_proj.weight", {C, c.q_dim()});
    if (c.qkv_bias) {
      L.q_bias = fetch(ckpt, p + "self_attn.q_proj.bias", {c.q_dim()});
      L.k_bias = fetch(ckpt, p + "self_attn.k_proj.bias", {c.kv_dim()});
      L.v_bias = fetch(ckpt, p + "self_attn.v_proj.bias", {c.kv_dim()});
    }
    if (c.qk_norm) {
      L.q_norm = fetch(ckpt, p + "self_attn.q_norm.weight", {c.head_dim});
      L.k_norm = fetch(ckpt, p + "self_attn.k_norm.weight", {c.head_dim});
    }
    L.post_norm = fetch(ckpt, p + "post_attention_layernorm.weight", {C});
    L.gate = fetch(ckpt, p + "mlp.gate_proj.weight", {I, C});
    L.up = fetch(ckpt, p + "mlp.up_proj.weight", {I, C});
    L.down = fetch(ckpt, p + "mlp.down_proj.weight", {C, I});
  }
  return w;
}

}  // namespace qwenq
