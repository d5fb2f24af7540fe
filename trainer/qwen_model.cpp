#include "trainer/qwen_model.h"

#include <algorithm>
#include <cmath>

#include "core/dtype.h"
#include "core/error.h"
#include "core/gguf.h"
#include "core/threads.h"
#include "kernels/act.h"
#include "kernels/attention.h"
#include "kernels/attention_decode.h"
#include "kernels/dora.h"
#include "kernels/gemm.h"
#include "kernels/loss.h"
#include "kernels/norm.h"
#include "kernels/rope.h"
#include "lora/lora_linear.h"
#include "trainer/gguf_model.h"
#include "trainer/lora_inference.h"
#include "trainer/lora_model.h"
#include "trainer/moe_block.h"

namespace qwenq {

namespace {

void rmsnorm(const float* x, int64_t rows, const TensorView& w, float eps, float* y) {
  rmsnorm_forward_ref(x, rows, w.shape[0], w.data, w.dtype, eps, y);
}

// Rows [p0, p0 + n) of layer l of the cache from k, v [n, kv_dim]: copied, or rounded to bf16 for a BF16 cache.
void store_kv_rows(KvCache* cache, int64_t l, int64_t p0, int64_t n, int64_t kvd, const float* k, const float* v) {
  const size_t count = static_cast<size_t>(n * kvd);
  if (cache->dtype == KvCacheDType::BF16) {
    from_f32(DType::BF16, k, cache->k16[l].data() + p0 * kvd, count);
    from_f32(DType::BF16, v, cache->v16[l].data() + p0 * kvd, count);
  } else {
    std::copy(k, k + count, cache->k[l].begin() + p0 * kvd);
    std::copy(v, v + count, cache->v[l].begin() + p0 * kvd);
  }
}

}  // namespace

const char* kv_cache_dtype_name(KvCacheDType t) { return t == KvCacheDType::BF16 ? "bf16" : "f32"; }

KvCacheDType parse_kv_cache_dtype(const std::string& name, const std::string& what) {
  if (name == "f32") return KvCacheDType::F32;
  if (name == "bf16") return KvCacheDType::BF16;
  QWENQ_FAIL(what << ": '" << name << "' is not a KV cache dtype; use f32 or bf16");
}

int64_t KvCache::bytes() const {
  int64_t total = 0;
  for (const auto* layers : {&k, &v})
    for (const auto& r : *layers) total += static_cast<int64_t>(r.size() * sizeof(float));
  for (const auto* layers : {&k16, &v16})
    for (const auto& r : *layers) total += static_cast<int64_t>(r.size() * sizeof(uint16_t));
  return total;
}

PackedBatch PackedBatch::from_sequences(const std::vector<std::vector<int32_t>>& seqs) {
  PackedBatch b;
  b.cu_seqlens.push_back(0);
  for (const auto& s : seqs) {
    QWENQ_CHECK(!s.empty(), "PackedBatch: empty sequence");
    for (size_t i = 0; i < s.size(); ++i) {
      b.tokens.push_back(s[i]);
      b.positions.push_back(static_cast<int32_t>(i));
    }
    b.cu_seqlens.push_back(static_cast<int32_t>(b.tokens.size()));
  }
  return b;
}

struct QwenModel::Scratch {
  std::vector<float> n, q, k, v, a, gate, up;
  Scratch(const QwenConfig& c, int64_t T)
      : n(T * c.hidden_size), q(T * c.q_dim()), k(T * c.kv_dim()), v(T * c.kv_dim()), a(T * c.q_dim()),
        gate(T * c.intermediate_size), up(T * c.intermediate_size) {}
};

QwenModel::QwenModel(const std::string& dir, ModelHead head) : dir_(dir) {
  if (is_gguf_file(dir)) {
    QWENQ_CHECK(head == ModelHead::kLanguageModel,
                dir << ": a GGUF file holds a language model; a sequence classifier (reward model) is read from a "
                       "Hugging Face directory");
    gguf_ = std::make_unique<GgufFile>(dir);
    cfg_ = qwen_config_from_gguf(*gguf_);
    w_ = bind_gguf_weights(cfg_, *gguf_);
    return;
  }
  cfg_ = load_qwen_config(dir);
  quant_ = load_quant_config(dir);
  ckpt_ = std::make_unique<Checkpoint>(dir);
  w_ = bind_qwen_weights(cfg_, quant_, *ckpt_, head);
}

QwenModel::~QwenModel() = default;

void QwenModel::embed(const std::vector<int32_t>& tokens, float* x) const {
  const int64_t C = cfg_.hidden_size;
  for (size_t t = 0; t < tokens.size(); ++t) {
    const int32_t id = tokens[t];
    QWENQ_CHECK(id >= 0 && id < cfg_.vocab_size,
                "token id " << id << " at position " << t << " is outside the vocabulary [0, " << cfg_.vocab_size << ")");
    table_row_f32(w_.embed, w_.embed_q.get(), id, x + t * C);
  }
}

void QwenModel::attach_adapter(const LoraInferenceLayout* lora) {
  lora_linears_.clear();
  lora_experts_.clear();
  lora_gains_.clear();
  lora_ = nullptr;
  if (lora == nullptr) return;
  QWENQ_CHECK(lora->num_layers == cfg_.num_layers, "attach_adapter: an adapter of " << lora->num_layers
                                                   << " layers on a model of " << cfg_.num_layers);
  const int64_t E = cfg_.num_experts;
  std::vector<LoraBranch> linears(static_cast<size_t>(cfg_.num_layers * 7));
  std::vector<std::vector<LoraBranch>> experts(static_cast<size_t>(cfg_.num_layers));
  int64_t gain_floats = 0;
  for (const LoraArenaSlot& s : lora->slots) gain_floats += s.m_off >= 0 ? s.N : 0;
  std::vector<float> gains(static_cast<size_t>(gain_floats));
  int64_t next_gain = 0;
  const float* arena = lora->arena.data();
  for (const LoraArenaSlot& s : lora->slots) {  // (re-attached before every GRPO step: the names only on a refusal)
    const auto where = [&s] {
      return "model.layers." + std::to_string(s.layer) + "." + kDecoderLinears[static_cast<int>(s.target)].name;
    };
    QWENQ_CHECK(s.layer >= 0 && s.layer < cfg_.num_layers, "attach_adapter: a slot of layer " << s.layer);
    float* gain = nullptr;
    if (s.m_off >= 0) {  // DoRA: g = m / ‖W + s·B A‖ per output row, from the base as stored
      LoraSlot ls;
      ls.layer = s.layer, ls.target = s.target, ls.expert = s.expert;
      const LinearWeight& W = slot_linear(w_, ls);
      QWENQ_CHECK(W.N == s.N && W.K == s.K, "attach_adapter: " << where() << " is [" << W.N << ", " << W.K
                                            << "], its adapter slot [" << s.N << ", " << s.K << "]");
      std::vector<float> norms(static_cast<size_t>(s.N)), dense;
      DoraBaseWeight base;
      const Q4Transient q4 = W.is_dense() ? Q4Transient{} : q4_linear_form(W);
      if (W.is_dense()) {
        base.dense = W.dense.data;
        base.dtype = W.dense.dtype;
      } else if (q4.has_form()) {
        base.q4 = &q4.view;
      } else {
        dense = W.dequantize();
        base.dense = dense.data();
      }
      dora_row_norms_ref(base, s.N, s.K, arena + s.a_off, arena + s.b_off, s.r, s.s, norms.data());
      gain = gains.data() + next_gain;
      next_gain += s.N;
      dora_gain_ref(arena + s.m_off, norms.data(), s.N, gain);
    }
    const LoraBranch branch{arena + s.a_off, arena + s.b_off, gain, s.N, s.K, s.r, s.s};
    if (s.expert == kNoExpert) {  // (a MoE layer's MLP has no Linears of its own: its targets are the experts')
      QWENQ_CHECK(!cfg_.is_moe_layer(s.layer) || static_cast<int>(s.target) < static_cast<int>(LoraTarget::GateProj),
                  "attach_adapter: " << where() << " is a mixture-of-experts layer's MLP, which has only experts");
      linears[static_cast<size_t>(s.layer * 7 + static_cast<int>(s.target))] = branch;
      continue;
    }
    QWENQ_CHECK(cfg_.is_moe_layer(s.layer) && s.expert >= -1 && s.expert < E &&
                    (s.expert >= 0 || cfg_.shared_expert_intermediate_size > 0),
                "attach_adapter: " << where() << " of expert " << s.expert << " is not one of the model's experts");
    std::vector<LoraBranch>& layer = experts[static_cast<size_t>(s.layer)];
    if (layer.empty()) layer.resize(static_cast<size_t>((E + 1) * 3));
    layer[static_cast<size_t>((s.expert + 1) * 3 + moe_expert_index(s.target))] = branch;
  }
  lora_linears_ = std::move(linears);
  lora_experts_ = std::move(experts);
  lora_gains_ = std::move(gains);  // (a vector's move keeps its buffer: the gain pointers stay valid)
  lora_ = lora;
}

void QwenModel::linear_at(int64_t l, int t, const float* x, int64_t T, const LinearWeight& w, const TensorView& bias,
                          float* y) const {
  apply_linear(w, x, T, bias, y);
  if (lora_ == nullptr) return;
  const LoraBranch& b = lora_linears_[static_cast<size_t>(l * 7 + t)];
  if (b.A == nullptr) return;
  std::vector<float> u(static_cast<size_t>(T * b.r));
  lora_branch_forward(b, x, T, bias, y, u.data());
}

template <typename AttnFn>
bool QwenModel::attention_sublayer(int64_t l, const float* n, int64_t T, const int32_t* pos, AttnFn&& attention,
                                   Scratch& s, const LinearInputStopHook& hook, float* out) const {
  const QwenConfig& c = cfg_;
  const int64_t D = c.head_dim;
  const QwenLayerWeights& L = w_.layers[l];
  if (hook && !hook(BlockLinear::QKV, n, T)) return false;
  linear_at(l, 0, n, T, L.q, L.q_bias, s.q.data());
  linear_at(l, 1, n, T, L.k, L.k_bias, s.k.data());
  linear_at(l, 2, n, T, L.v, L.v_bias, s.v.data());
  if (c.qk_norm) {
    rmsnorm(s.q.data(), T * c.num_heads, L.q_norm, c.rms_norm_eps, s.q.data());
    rmsnorm(s.k.data(), T * c.num_kv_heads, L.k_norm, c.rms_norm_eps, s.k.data());
  }
  rope_forward_ref(s.q.data(), T, c.num_heads, D, pos, c.rope);
  rope_forward_ref(s.k.data(), T, c.num_kv_heads, D, pos, c.rope);
  attention(l, s.q.data(), s.k.data(), s.v.data(), s.a.data());
  if (hook && !hook(BlockLinear::O, s.a.data(), T)) return false;
  linear_at(l, 3, s.a.data(), T, L.o, TensorView{}, out);
  return true;
}

bool QwenModel::mlp_sublayer(int64_t l, const float* n, int64_t T, Scratch& s, const LinearInputStopHook& hook,
                             const MoeInputHook& moe_hook, float* out) const {
  const QwenLayerWeights& L = w_.layers[l];
  if (cfg_.is_moe_layer(l)) {
    // The block's input: the router's and (a subset) every expert's.
    if (hook && !hook(BlockLinear::GateUp, n, T)) return false;
    MoeLora lora;
    const bool adapted = lora_ != nullptr && !lora_experts_[static_cast<size_t>(l)].empty();
    if (adapted) {
      lora.layer = l;
      lora.branches = lora_experts_[static_cast<size_t>(l)].data();
      lora.scaling = lora_->scaling;
      lora.rank = lora_->rank;
    }
    moe_block_forward(cfg_, L.moe, n, T, out, moe_hook, nullptr, adapted ? &lora : nullptr);
    return true;
  }
  if (hook && !hook(BlockLinear::GateUp, n, T)) return false;
  linear_at(l, 4, n, T, L.gate, TensorView{}, s.gate.data());
  linear_at(l, 5, n, T, L.up, TensorView{}, s.up.data());
  swiglu_forward_ref(s.gate.data(), s.up.data(), T * cfg_.intermediate_size, s.gate.data());
  if (hook && !hook(BlockLinear::Down, s.gate.data(), T)) return false;
  linear_at(l, 6, s.gate.data(), T, L.down, TensorView{}, out);
  return true;
}

template <typename AttnFn>
bool QwenModel::layer_forward(int64_t l, float* x, int64_t T, const int32_t* pos, AttnFn&& attention, Scratch& s,
                              const LinearInputStopHook& hook, const MoeInputHook& moe_hook) const {
  const int64_t C = cfg_.hidden_size;
  const QwenLayerWeights& L = w_.layers[l];
  rmsnorm(x, T, L.input_norm, cfg_.rms_norm_eps, s.n.data());
  if (!attention_sublayer(l, s.n.data(), T, pos, attention, s, hook, s.n.data())) return false;
  for (int64_t i = 0; i < T * C; ++i) x[i] += s.n[i];
  rmsnorm(x, T, L.post_norm, cfg_.rms_norm_eps, s.n.data());
  if (!mlp_sublayer(l, s.n.data(), T, s, hook, moe_hook, s.n.data())) return false;
  for (int64_t i = 0; i < T * C; ++i) x[i] += s.n[i];
  return true;
}

template <typename AttnFn>
void QwenModel::run_layers(float* x, int64_t T, const int32_t* pos, AttnFn&& attention) const {
  Scratch s(cfg_, T);
  for (int64_t l = 0; l < cfg_.num_layers; ++l) layer_forward(l, x, T, pos, attention, s, nullptr);
  rmsnorm(x, T, w_.final_norm, cfg_.rms_norm_eps, x);
}

void QwenModel::embed_batch(const PackedBatch& b, std::vector<float>* x) const {
  x->assign(b.num_tokens() * cfg_.hidden_size, 0.f);
  embed(b.tokens, x->data());
}

void QwenModel::batch_layer(int64_t l, const PackedBatch& b, float* x, const LinearInputStopHook& hook,
                            const MoeInputHook& moe_hook) const {
  const QwenConfig& c = cfg_;
  Scratch s(c, b.num_tokens());
  layer_forward(l, x, b.num_tokens(), b.positions.data(), [&](int64_t, const float* q, const float* k, const float* v, float* out) {
    attention_forward_ref(q, k, v, b.cu_seqlens.data(), b.num_seqs(), c.num_heads, c.num_kv_heads, c.head_dim, out, nullptr,
                          cpu_bf16_attention(b.num_tokens()));
  }, s, hook, moe_hook);
}

void QwenModel::block_forward(int64_t l, const PackedBatch& b, float* x, const LinearInputHook& hook,
                              const MoeInputHook& moe_hook) const {
  QWENQ_CHECK(l >= 0 && l < cfg_.num_layers, "block_forward: layer " << l << " outside [0, " << cfg_.num_layers << ")");
  LinearInputStopHook go_on;
  if (hook) go_on = [&](BlockLinear at, const float* in, int64_t T) { hook(at, in, T); return true; };
  batch_layer(l, b, x, go_on, moe_hook);
}

void QwenModel::block_forward_to(int64_t l, const PackedBatch& b, float* x, BlockLinear group,
                                 const std::function<void(const float* x, int64_t T)>& at) const {
  QWENQ_CHECK(l >= 0 && l < cfg_.num_layers,
              "block_forward_to: layer " << l << " outside [0, " << cfg_.num_layers << ")");
  QWENQ_CHECK(!(cfg_.is_moe_layer(l) && group == BlockLinear::Down),
              "block_forward_to: layer " << l << " is a mixture-of-experts layer: its down_proj inputs are its experts'");
  bool seen = false;
  batch_layer(l, b, x, [&](BlockLinear g, const float* in, int64_t T) {
    if (g != group) return true;
    seen = true;
    at(in, T);
    return false;
  }, nullptr);
  QWENQ_CHECK(seen, "block_forward_to: layer " << l << " never reached Linear group " << static_cast<int>(group));
}

void QwenModel::attention_forward(int64_t l, const PackedBatch& b, const float* n, float* out) const {
  QWENQ_CHECK(l >= 0 && l < cfg_.num_layers, "attention_forward: layer " << l << " outside [0, " << cfg_.num_layers << ")");
  const QwenConfig& c = cfg_;
  Scratch s(c, b.num_tokens());
  attention_sublayer(l, n, b.num_tokens(), b.positions.data(), [&](int64_t, const float* q, const float* k, const float* v, float* o) {
    attention_forward_ref(q, k, v, b.cu_seqlens.data(), b.num_seqs(), c.num_heads, c.num_kv_heads, c.head_dim, o, nullptr,
                          cpu_bf16_attention(b.num_tokens()));
  }, s, nullptr, out);
}

void QwenModel::mlp_forward(int64_t l, const float* n, int64_t T, float* out) const {
  QWENQ_CHECK(l >= 0 && l < cfg_.num_layers, "mlp_forward: layer " << l << " outside [0, " << cfg_.num_layers << ")");
  Scratch s(cfg_, T);
  mlp_sublayer(l, n, T, s, nullptr, nullptr, out);
}

LinearWeight& QwenModel::linear_weight(int64_t l, BlockLinear which, int index) {
  QwenLayerWeights& L = w_.layers.at(l);
  switch (which) {
    case BlockLinear::QKV: return index == 0 ? L.q : index == 1 ? L.k : L.v;
    case BlockLinear::O: return L.o;
    case BlockLinear::GateUp: return index == 0 ? L.gate : L.up;
    case BlockLinear::Down: return L.down;
  }
  QWENQ_FAIL("linear_weight: bad selector");
}

LinearWeight& QwenModel::expert_linear(int64_t l, int64_t expert, int which) {
  QWENQ_CHECK(cfg_.is_moe_layer(l), "expert_linear: layer " << l << " is not a mixture-of-experts layer");
  MoeWeights& m = w_.layers.at(l).moe;
  QWENQ_CHECK(expert >= -1 && expert < static_cast<int64_t>(m.experts.size()) && (expert >= 0 || m.shared.gate.N > 0),
              "expert_linear: layer " << l << " has no expert " << expert);
  return expert_member(expert < 0 ? m.shared : m.experts[expert], which);
}

void QwenModel::forward_hidden(const PackedBatch& b, std::vector<float>* hidden, KvCacheDType kv) const {
  const int64_t T = b.num_tokens();
  QWENQ_CHECK(T > 0 && b.positions.size() == b.tokens.size() && b.num_seqs() >= 1 && b.cu_seqlens.back() == T,
              "forward_hidden: malformed batch (" << T << " tokens, " << b.cu_seqlens.size() << " offsets)");
  hidden->assign(T * cfg_.hidden_size, 0.f);
  embed(b.tokens, hidden->data());
  const QwenConfig& c = cfg_;
  std::vector<float> kr, vr;  // kv = BF16: k and v rounded to bf16, widened back
  run_layers(hidden->data(), T, b.positions.data(), [&](int64_t, const float* q, const float* k, const float* v, float* out) {
    if (kv == KvCacheDType::BF16) {
      const int64_t n = T * c.kv_dim();
      kr.resize(n);
      vr.resize(n);
      for (int64_t i = 0; i < n; ++i) {
        kr[i] = bf16_round(k[i]);
        vr[i] = bf16_round(v[i]);
      }
      k = kr.data();
      v = vr.data();
    }
    attention_forward_ref(q, k, v, b.cu_seqlens.data(), b.num_seqs(), c.num_heads, c.num_kv_heads, c.head_dim, out,
                          nullptr, cpu_bf16_attention(T));
  });
}

void QwenModel::logits(const float* hidden, int64_t rows, float* out) const {
  lm_head_forward(w_, hidden, rows, out);
}

std::vector<float> QwenModel::forward_logits(const PackedBatch& b, KvCacheDType kv) const {
  std::vector<float> hidden;
  forward_hidden(b, &hidden, kv);
  std::vector<float> out(b.num_tokens() * cfg_.vocab_size);
  logits(hidden.data(), b.num_tokens(), out.data());
  return out;
}

std::vector<int32_t> next_token_targets(const PackedBatch& b) {
  std::vector<int32_t> targets(b.num_tokens(), kIgnoreIndex);
  for (int64_t s = 0; s < b.num_seqs(); ++s) {
    for (int32_t t = b.cu_seqlens[s]; t + 1 < b.cu_seqlens[s + 1]; ++t) targets[t] = b.tokens[t + 1];
  }
  return targets;
}

int64_t QwenModel::next_token_nll(const PackedBatch& b, std::vector<float>* nll) const {
  std::vector<float> hidden;
  forward_hidden(b, &hidden);
  const int64_t T = b.num_tokens();
  const std::vector<int32_t> targets = next_token_targets(b);
  nll->assign(T, 0.f);
  return hidden_nll(hidden.data(), T, targets.data(), nll->data());
}

int64_t QwenModel::hidden_nll(const float* hidden, int64_t rows, const int32_t* targets, float* nll) const {
  return lm_head_nll(w_, hidden, rows, targets, nll);
}

std::vector<float> QwenModel::forward_steps(const std::vector<int32_t>& ids, const std::vector<KvCache*>& caches) const {
  const int64_t B = static_cast<int64_t>(ids.size()), C = cfg_.hidden_size;
  QWENQ_CHECK(B > 0 && caches.size() == ids.size(),
              "forward_steps: " << ids.size() << " tokens for " << caches.size() << " caches");
  std::vector<int32_t> pos(B), len(B);
  for (int64_t b = 0; b < B; ++b) {
    QWENQ_CHECK(caches[b] != nullptr && caches[b]->length < caches[b]->capacity,
                "forward_steps: sequence " << b << " has no room in its KV cache (capacity "
                                           << (caches[b] ? caches[b]->capacity : 0) << ")");
    for (int64_t c = 0; c < b; ++c)
      QWENQ_CHECK(caches[c] != caches[b], "forward_steps: sequences " << c << " and " << b << " share one KV cache");
    pos[b] = static_cast<int32_t>(caches[b]->length);
    len[b] = pos[b] + 1;
  }
  const CpuFp32Products fp32;  // a one-token step's products, whatever B
  std::vector<float> x(B * C);
  embed(ids, x.data());
  const QwenConfig& c = cfg_;
  const int64_t kvd = c.kv_dim(), qd = c.q_dim();
  run_layers(x.data(), B, pos.data(), [&](int64_t l, const float* q, const float* k, const float* v, float* out) {
    for (int64_t b = 0; b < B; ++b) {
      KvCache* cache = caches[b];
      store_kv_rows(cache, l, pos[b], 1, kvd, k + b * kvd, v + b * kvd);
      if (cache->dtype == KvCacheDType::BF16) {
        attention_decode_bf16_cpu(q + b * qd, cache->k16[l].data(), cache->v16[l].data(), &len[b], 1, c.num_heads,
                                  c.num_kv_heads, c.head_dim, cache->capacity, len[b], out + b * qd);
      } else {
        attention_decode_cpu(q + b * qd, cache->k[l].data(), cache->v[l].data(), &len[b], 1, c.num_heads,
                             c.num_kv_heads, c.head_dim, cache->capacity, len[b], out + b * qd);
      }
    }
  });
  for (KvCache* cache : caches) ++cache->length;
  std::vector<float> out(B * c.vocab_size);
  logits(x.data(), B, out.data());
  return out;
}

KvCache QwenModel::make_cache(int64_t capacity, KvCacheDType dtype) const {
  KvCache cache;
  cache.capacity = capacity;
  cache.dtype = dtype;
  const size_t n = static_cast<size_t>(capacity * cfg_.kv_dim());
  if (dtype == KvCacheDType::BF16) {
    cache.k16.assign(cfg_.num_layers, std::vector<uint16_t>(n));
    cache.v16.assign(cfg_.num_layers, std::vector<uint16_t>(n));
  } else {
    cache.k.assign(cfg_.num_layers, std::vector<float>(n));
    cache.v.assign(cfg_.num_layers, std::vector<float>(n));
  }
  return cache;
}

void QwenModel::grow_cache(KvCache* cache, int64_t capacity) const {
  if (capacity <= cache->capacity) return;
  const size_t n = static_cast<size_t>(capacity * cfg_.kv_dim());
  const auto grow = [&](auto* layers) {
    layers->resize(static_cast<size_t>(cfg_.num_layers));
    for (auto& rows : *layers) rows.resize(n);  // [capacity, Hkv, D]: the existing rows stay where they are
  };
  if (cache->dtype == KvCacheDType::BF16) {
    grow(&cache->k16);
    grow(&cache->v16);
  } else {
    grow(&cache->k);
    grow(&cache->v);
  }
  cache->capacity = capacity;
}

std::vector<float> QwenModel::forward_step(const std::vector<int32_t>& tokens, KvCache* cache) const {
  const int64_t n = static_cast<int64_t>(tokens.size()), p0 = cache->length, C = cfg_.hidden_size;
  QWENQ_CHECK(n > 0, "forward_step: no tokens");
  QWENQ_CHECK(p0 + n <= cache->capacity,
              "sequence of " << p0 + n << " tokens exceeds the KV cache capacity of " << cache->capacity);
  if (n == 1) return forward_steps(tokens, {cache});  // a decode step: attention_decode_cpu
  std::vector<int32_t> pos(n);
  for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(p0 + i);
  std::vector<float> x(n * C);
  embed(tokens, x.data());
  const QwenConfig& c = cfg_;
  const int64_t kvd = c.kv_dim();
  // Several tokens at once (a prompt, or the rest of one after a reused prefix) attend with the packed forward's
  // blocked attention over the cache (attention_forward_suffix_ref; a BF16 cache's rows widened first, as stored),
  // not key by key (such loops were 72 % of a 2400-token prompt's time on the Qwen2.5-0.5B shape).
  std::vector<float> k_wide, v_wide;
  const int64_t rows = (p0 + n) * kvd;
  run_layers(x.data(), n, pos.data(), [&](int64_t l, const float* q, const float* k, const float* v, float* out) {
    store_kv_rows(cache, l, p0, n, kvd, k, v);
    if (cache->dtype == KvCacheDType::BF16) {
      k_wide.resize(static_cast<size_t>(rows));
      v_wide.resize(static_cast<size_t>(rows));
      for (int64_t i = 0; i < rows; ++i) {
        k_wide[i] = bf16_to_f32(cache->k16[l][i]);
        v_wide[i] = bf16_to_f32(cache->v16[l][i]);
      }
      attention_forward_suffix_ref(q, k_wide.data(), v_wide.data(), p0, n, c.num_heads, c.num_kv_heads, c.head_dim,
                                   out, cpu_bf16_attention(n));
      return;
    }
    attention_forward_suffix_ref(q, cache->k[l].data(), cache->v[l].data(), p0, n, c.num_heads, c.num_kv_heads,
                                 c.head_dim, out, cpu_bf16_attention(n));
  });
  cache->length = p0 + n;
  std::vector<float> out(c.vocab_size);
  logits(x.data() + (n - 1) * C, 1, out.data());
  return out;
}

}  // namespace qwenq
