#include "trainer/qwen_weights.h"

#include <string>

#include "core/error.h"
#include "kernels/gemm.h"

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

bool skipped(const QuantConfig& q, const std::string& prefix) {
  for (const std::string& m : q.skip_modules) {
    if (prefix == m || (prefix.size() > m.size() && prefix.compare(prefix.size() - m.size(), m.size(), m) == 0 &&
                        prefix[prefix.size() - m.size() - 1] == '.')) {
      return true;
    }
  }
  return false;
}

}  // namespace

LinearWeight load_linear(const Checkpoint& ckpt, const QuantConfig& q, const std::string& prefix, int64_t N, int64_t K) {
  LinearWeight w;
  w.N = N;
  w.K = K;
  const bool int_packed = (q.method == QuantConfig::Method::Gptq || q.method == QuantConfig::Method::Awq) &&
                          ckpt.has(prefix + ".qweight");
  if (int_packed && !skipped(q, prefix)) {
    w.packed = std::make_shared<PackedIntLinear>(read_int_linear(ckpt, prefix, q.layout, q.bits, q.group_size, K, N));
  } else if (q.method == QuantConfig::Method::Bnb4 && has_nf4_linear(ckpt, prefix) && !skipped(q, prefix)) {
    auto nf4 = std::make_shared<Nf4Linear>(read_nf4_linear(ckpt, prefix));
    QWENQ_CHECK(nf4->shape == std::vector<int64_t>({N, K}),
                ckpt.file_of(prefix + ".weight") << ": 4-bit tensor '" << prefix << ".weight' has shape "
                                                 << shape_str(nf4->shape) << " but config.json implies "
                                                 << shape_str({N, K}));
    w.nf4 = std::move(nf4);
  } else {
    w.dense = fetch(ckpt, prefix + ".weight", {N, K});
  }
  return w;
}

std::string moe_expert_path(int64_t expert) {
  return expert < 0 ? std::string("mlp.shared_expert.") : "mlp.experts." + std::to_string(expert) + ".";
}

int64_t count_layer_linears(const QwenConfig& c) {
  int64_t n = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) n += static_cast<int64_t>(layer_linears(c, l).size());
  return n;
}

std::vector<LayerLinear> layer_linears(const QwenConfig& c, int64_t l) {
  const int64_t C = c.hidden_size, I = c.intermediate_size;
  std::vector<LayerLinear> out = {{"self_attn.q_proj", c.q_dim(), C, 0},
                                  {"self_attn.k_proj", c.kv_dim(), C, 1},
                                  {"self_attn.v_proj", c.kv_dim(), C, 2},
                                  {"self_attn.o_proj", C, c.q_dim(), 3}};
  if (!c.is_moe_layer(l)) {
    out.push_back({"mlp.gate_proj", I, C, 4});
    out.push_back({"mlp.up_proj", I, C, 5});
    out.push_back({"mlp.down_proj", C, I, 6});
    return out;
  }
  auto expert = [&](const std::string& p, int64_t width) {
    out.push_back({p + "gate_proj", width, C, -1});
    out.push_back({p + "up_proj", width, C, -1});
    out.push_back({p + "down_proj", C, width, -1});
  };
  out.push_back({"mlp.gate", c.num_experts, C, -1});
  for (int64_t e = 0; e < c.num_experts; ++e) expert(moe_expert_path(e), c.moe_intermediate_size);
  if (c.shared_expert_intermediate_size > 0) {
    expert(moe_expert_path(-1), c.shared_expert_intermediate_size);
    out.push_back({"mlp.shared_expert_gate", 1, C, -1});
  }
  return out;
}

void apply_linear(const LinearWeight& w, const float* x, int64_t M, const TensorView& bias, float* y) {
  if (w.is_dense()) {
    linear_forward_ref(x, M, w.K, w.dense.data, w.dense.dtype, w.N, bias.data, bias.dtype, y);
    return;
  }
  const std::vector<float> W = w.dequantize();
  linear_forward_ref(x, M, w.K, W.data(), DType::F32, w.N, bias.data, bias.dtype, y);
}

void apply_linear_backward_input(const LinearWeight& w, const float* dy, int64_t M, float* dx) {
  if (w.is_dense()) {
    linear_backward_input_ref(dy, M, w.N, w.dense.data, w.dense.dtype, w.K, dx);
    return;
  }
  const std::vector<float> W = w.dequantize();
  linear_backward_input_ref(dy, M, w.N, W.data(), DType::F32, w.K, dx);
}

LinearWeight LinearWeight::from_fp32(std::vector<float> W, int64_t N, int64_t K) {
  QWENQ_CHECK(static_cast<int64_t>(W.size()) == N * K, "LinearWeight::from_fp32: " << W.size() << " values for [" << N << ", " << K << "]");
  LinearWeight w;
  w.N = N;
  w.K = K;
  auto owned = std::make_shared<const std::vector<float>>(std::move(W));
  w.dense.data = owned->data();
  w.dense.dtype = DType::F32;
  w.dense.shape = {N, K};
  w.owned = std::move(owned);
  return w;
}

std::vector<float> LinearWeight::dequantize() const {
  if (packed) return dequantize_int_linear(*packed);
  if (nf4) return nf4_dequantize(nf4->q);
  if (ggml) return dequantize_ggml_linear(*ggml);
  return tensor_to_f32(dense);
}

namespace {

MoeExpertWeights bind_expert(const Checkpoint& ckpt, const QuantConfig& quant, const std::string& p, int64_t C,
                             int64_t I) {
  MoeExpertWeights e;
  e.gate = load_linear(ckpt, quant, p + "gate_proj", I, C);
  e.up = load_linear(ckpt, quant, p + "up_proj", I, C);
  e.down = load_linear(ckpt, quant, p + "down_proj", C, I);
  return e;
}

// "model.layers.<l>." (p) of a MoE layer: mlp.gate (the router), mlp.experts.<e>.{gate,up,down}_proj, and qwen2_moe's
// mlp.shared_expert.{gate,up,down}_proj and mlp.shared_expert_gate.
MoeWeights bind_moe(const QwenConfig& c, const QuantConfig& quant, const Checkpoint& ckpt, const std::string& p) {
  const int64_t C = c.hidden_size;
  MoeWeights m;
  m.router = load_linear(ckpt, quant, p + "mlp.gate", c.num_experts, C);
  m.experts.reserve(c.num_experts);
  for (int64_t e = 0; e < c.num_experts; ++e)
    m.experts.push_back(bind_expert(ckpt, quant, p + moe_expert_path(e), C, c.moe_intermediate_size));
  if (c.shared_expert_intermediate_size > 0) {
    m.shared = bind_expert(ckpt, quant, p + moe_expert_path(-1), C, c.shared_expert_intermediate_size);
    m.shared_gate = load_linear(ckpt, quant, p + "mlp.shared_expert_gate", 1, C);
  }
  return m;
}

}  // namespace

QwenWeights bind_qwen_weights(const QwenConfig& c, const QuantConfig& quant, const Checkpoint& ckpt) {
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
    L.q = load_linear(ckpt, quant, p + "self_attn.q_proj", c.q_dim(), C);
    L.k = load_linear(ckpt, quant, p + "self_attn.k_proj", c.kv_dim(), C);
    L.v = load_linear(ckpt, quant, p + "self_attn.v_proj", c.kv_dim(), C);
    L.o = load_linear(ckpt, quant, p + "self_attn.o_proj", C, c.q_dim());
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
    if (c.is_moe_layer(l)) {
      L.moe = bind_moe(c, quant, ckpt, p);
      continue;
    }
    L.gate = load_linear(ckpt, quant, p + "mlp.gate_proj", I, C);
    L.up = load_linear(ckpt, quant, p + "mlp.up_proj", I, C);
    L.down = load_linear(ckpt, quant, p + "mlp.down_proj", C, I);
  }
  return w;
}

}  // namespace qwenq
