#include "trainer/moe_block.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "kernels/act.h"
#include "kernels/dora.h"
#include "kernels/dropout.h"
#include "kernels/dropout_mask.h"
#include "kernels/moe_route.h"
#include "lora/lora_linear.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_model.h"

namespace qwenq {

namespace {

const LoraTarget kExpertTargets[3] = {LoraTarget::GateProj, LoraTarget::UpProj, LoraTarget::DownProj};

// One expert's adapters during a pass: per Linear (gate, up, down) the weights (null: not adapted), their gradients,
// the dropout key, and where that Linear's saved u = drop(x) Aᵀ [rows, r] and dropped input [rows, K] go.
struct ExpertLora {
  const LoraWeights* w[3] = {};
  const LoraBranch* b[3] = {};  // an attached adapter at inference instead (MoeLora::branches)
  LoraWeights* g[3] = {};
  uint64_t key[3] = {};
  float* u[3] = {};
  float* xd[3] = {};
  float s = 1.f, p = 0.f;
  // DoRA: where the norms come from (the adapter, or dora_norms_from), and where z, v [rows, N] and n [N] are saved.
  const LoraWeights* nw[3] = {};
  float* z[3] = {};
  float* v[3] = {};
  float* norm[3] = {};
};

// The adapters of expert e (-1: shared) of lora's layer; `row` is its first row in the saved arrays (stride r for u,
// the Linear's K for xd).
ExpertLora expert_lora(const MoeLora* lora, MoeBlockActs& a, bool shared, int64_t e, int64_t row) {
  ExpertLora x;
  if (lora && lora->branches) {
    x.s = lora->scaling;
    for (int j = 0; j < 3; ++j) {
      const LoraBranch& b = lora->branches[(e + 1) * 3 + j];
      if (b.A == nullptr) continue;
      x.b[j] = &b;
      x.u[j] = (shared ? a.su[j] : a.u[j]).data() + row * b.r;
    }
    return x;
  }
  if (!lora || !lora->adapter) return x;
  x.s = static_cast<float>(lora->adapter->config().scaling());  // every expert's (lora_plan refuses one of its own)
  x.p = lora->dropout;
  for (int j = 0; j < 3; ++j) {
    if (!lora->adapter->has_expert(lora->layer, e, kExpertTargets[j])) continue;
    const LoraWeights& w = lora->adapter->expert_at(lora->layer, e, kExpertTargets[j]);
    x.w[j] = &w;
    if (lora->grads) x.g[j] = &lora->grads->expert_at(lora->layer, e, kExpertTargets[j]);
    x.key[j] = expert_dropout_key(lora->dropout_seed, lora->layer, e, j);
    std::vector<float>& u = shared ? a.su[j] : a.u[j];
    x.u[j] = u.data() + row * w.r;
    if (x.p > 0.f) x.xd[j] = (shared ? a.sxd[j] : a.xd[j]).data() + row * w.K;
    if (w.m.empty()) continue;
    x.nw[j] = lora->dora_norms_from ? &lora->dora_norms_from->expert_at(lora->layer, e, kExpertTargets[j]) : &w;
    x.z[j] = (shared ? a.sz[j] : a.z[j]).data() + row * w.N;
    x.v[j] = (shared ? a.sv[j] : a.v[j]).data() + row * w.N;
    x.norm[j] = shared ? a.snorm[j].data() : a.norm[j].data() + e * w.N;
  }
  return x;
}

// y[rows, N] += s·(drop(x) Aᵀ) Bᵀ for adapted Linear j of base W (y holds x Wᵀ), keeping u (and the dropped input);
// with DoRA, y += (g − 1) ⊙ z + g ⊙ v instead, keeping z, v and n (moe_block.h).
void branch_forward(const ExpertLora& L, int j, const LinearWeight& W, const float* x, int64_t rows, float* y) {
  if (L.b[j]) {  // inference: y += s·(x Aᵀ) Bᵀ, then DoRA's y = g ⊙ y (experts have no bias)
    lora_branch_forward(*L.b[j], x, rows, TensorView{}, y, L.u[j]);
    return;
  }
  if (!L.w[j]) return;
  const LoraWeights& w = *L.w[j];
  const float* xin = x;
  if (L.p > 0.f) {
    dropout_forward_ref(x, rows * w.K, L.p, L.key[j], L.xd[j]);
    xin = L.xd[j];
  }
  if (w.m.empty()) {
    lora_forward_ref(xin, rows, w.K, w.A.data(), w.B.data(), w.r, w.N, L.s, y, L.u[j]);
    return;
  }
  const int64_t N = w.N;
  const std::vector<float> n = dora_row_norms(W, *L.nw[j], L.s);
  std::copy(n.begin(), n.end(), L.norm[j]);
  if (L.p > 0.f) {
    apply_linear(W, xin, rows, TensorView{}, L.z[j]);
  } else {
    std::copy(y, y + rows * N, L.z[j]);  // the base output (experts have no bias)
  }
  std::fill(L.v[j], L.v[j] + rows * N, 0.f);
  lora_forward_ref(xin, rows, w.K, w.A.data(), w.B.data(), w.r, N, L.s, L.v[j], L.u[j]);
  dora_combine(w.m.data(), L.norm[j], L.z[j], L.v[j], rows, N, y);
}

// dA, dB (and DoRA's dm) of adapted Linear j accumulate; dx[rows, K] += its input gradient through the branch.
void branch_backward(const ExpertLora& L, int j, const LinearWeight& W, const float* dy, const float* x, int64_t rows,
                     float* dx) {
  if (!L.w[j]) return;
  const LoraWeights& w = *L.w[j];
  LoraWeights& g = *L.g[j];
  if (!w.m.empty()) {
    const int64_t N = w.N, K = w.K;
    std::vector<float> dz(rows * N), dv(rows * N), tmp(rows * K);
    dora_split_grad(w.m.data(), L.norm[j], L.z[j], L.v[j], dy, rows, N, g.m.data(), dz.data(), dv.data());
    apply_linear_backward_input(W, dz.data(), rows, tmp.data());  // dx̃ = dz W, then + the branch's
    lora_backward_ref(dv.data(), L.p > 0.f ? L.xd[j] : x, L.u[j], rows, K, N, w.r, w.A.data(), w.B.data(), L.s,
                      g.A.data(), g.B.data(), tmp.data());
    if (L.p > 0.f) {
      dropout_backward_ref(tmp.data(), rows * K, L.p, L.key[j], dx);
    } else {
      for (int64_t i = 0; i < rows * K; ++i) dx[i] += tmp[i];
    }
    return;
  }
  if (L.p > 0.f) {
    std::vector<float> t(rows * w.K, 0.f);
    lora_backward_ref(dy, L.xd[j], L.u[j], rows, w.K, w.N, w.r, w.A.data(), w.B.data(), L.s, g.A.data(), g.B.data(),
                      t.data());
    dropout_backward_ref(t.data(), rows * w.K, L.p, L.key[j], dx);
    return;
  }
  lora_backward_ref(dy, x, L.u[j], rows, w.K, w.N, w.r, w.A.data(), w.B.data(), L.s, g.A.data(), g.B.data(), dx);
}

// gate, up, act [rows, I] and y [rows, C] of one expert on x [rows, C] (row r: token tokens[r], null for every
// token in order), with its adapters; the hook sees expert `id`'s two inputs.
void expert_forward(const MoeExpertWeights& e, int64_t id, const float* x, int64_t rows, const int64_t* tokens,
                    float* gate, float* up, float* act, float* y, const MoeInputHook& hook, const ExpertLora& L) {
  const int64_t I = e.gate.N;
  if (hook) hook(BlockLinear::GateUp, id, x, rows, tokens);
  apply_linear(e.gate, x, rows, TensorView{}, gate);
  branch_forward(L, 0, e.gate, x, rows, gate);
  apply_linear(e.up, x, rows, TensorView{}, up);
  branch_forward(L, 1, e.up, x, rows, up);
  swiglu_forward_ref(gate, up, rows * I, act);
  if (hook) hook(BlockLinear::Down, id, act, rows, tokens);
  apply_linear(e.down, act, rows, TensorView{}, y);
  branch_forward(L, 2, e.down, act, rows, y);
}

// dx [rows, C] (written) of one expert given dy [rows, C], its input x and its forward's gate, up, act; the
// adapters' gradients accumulate.
void expert_backward(const MoeExpertWeights& e, const float* x, const float* gate, const float* up, const float* act,
                     const float* dy, int64_t rows, float* dx, const ExpertLora& L) {
  const int64_t I = e.gate.N, C = e.gate.K;
  std::vector<float> dact(rows * I), dgate(rows * I), dup(rows * I), tmp(rows * C);
  apply_linear_backward_input(e.down, dy, rows, dact.data());
  branch_backward(L, 2, e.down, dy, act, rows, dact.data());
  swiglu_backward_ref(dact.data(), gate, up, rows * I, dgate.data(), dup.data());
  apply_linear_backward_input(e.gate, dgate.data(), rows, dx);
  apply_linear_backward_input(e.up, dup.data(), rows, tmp.data());
  for (int64_t i = 0; i < rows * C; ++i) dx[i] += tmp[i];
  branch_backward(L, 0, e.gate, dgate.data(), x, rows, dx);
  branch_backward(L, 1, e.up, dup.data(), x, rows, dx);
}

}  // namespace

float moe_shared_gate(float g) { return 1.f / (1.f + std::exp(-g)); }

MoeDispatch moe_dispatch(const QwenConfig& c, const float* router_logits, const float* gate_logits, int64_t T,
                         bool for_backward) {
  const int64_t E = c.num_experts, k = c.experts_per_token, R = T * k;
  std::vector<int32_t> chosen(static_cast<size_t>(R)), slot;
  std::vector<float> weight(static_cast<size_t>(R));
  MoeDispatch d;
  if (for_backward) d.probs.resize(static_cast<size_t>(T * E));
  moe_route_ref(router_logits, T, E, k, c.norm_topk_prob, chosen.data(), weight.data(),
                for_backward ? d.probs.data() : nullptr);
  std::vector<int64_t> token;
  moe_group_by_expert(chosen.data(), T, k, E, &d.start, &token, &slot);
  d.gather.resize(static_cast<size_t>(R));
  d.combine.resize(static_cast<size_t>(R));
  d.weight.resize(static_cast<size_t>(R));
  if (for_backward) d.choice.resize(static_cast<size_t>(R));
  std::vector<int64_t> seen(static_cast<size_t>(T), 0);
  for (int64_t r = 0; r < R; ++r) {  // grouped rows run over the experts in ascending order
    const int64_t t = token[r], j = seen[t]++;
    d.gather[r] = static_cast<int32_t>(t);
    d.combine[t * k + j] = static_cast<int32_t>(r);
    d.weight[t * k + j] = weight[t * k + slot[r]];
    if (for_backward) d.choice[t * k + j] = static_cast<int32_t>(t * k + slot[r]);
  }
  if (for_backward) {
    d.chosen = std::move(chosen);
    d.routed = std::move(weight);
  }
  if (gate_logits != nullptr) {
    d.shared_gate.resize(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) d.shared_gate[t] = moe_shared_gate(gate_logits[t]);
  }
  return d;
}

void moe_group_by_expert(const int32_t* chosen, int64_t T, int64_t k, int64_t E, std::vector<int64_t>* start,
                         std::vector<int64_t>* token, std::vector<int32_t>* slot) {
  start->assign(E + 1, 0);
  for (int64_t i = 0; i < T * k; ++i) ++(*start)[chosen[i] + 1];
  for (int64_t e = 0; e < E; ++e) (*start)[e + 1] += (*start)[e];
  std::vector<int64_t> fill(start->begin(), start->end() - 1);
  token->resize(T * k);
  slot->resize(T * k);
  for (int64_t j = 0; j < k; ++j) {
    for (int64_t t = 0; t < T; ++t) {
      const int64_t r = fill[chosen[t * k + j]]++;
      (*token)[r] = t;
      (*slot)[r] = static_cast<int32_t>(j);
    }
  }
}

uint64_t expert_dropout_key(uint64_t seed, int64_t layer, int64_t expert, int which) {
  return dropout_key(dropout_key(seed, layer, 7), expert + 1, which);
}

void moe_router_backward(const QwenConfig& c, const float* probs, const int32_t* chosen, const float* weight,
                         const float* dw, int64_t T, float* dr) {
  const int64_t E = c.num_experts, k = c.experts_per_token;
  for (int64_t t = 0; t < T; ++t) {
    const float* p = probs + t * E;
    const int32_t* S = chosen + t * k;
    float* d = dr + t * E;  // holds dp, then dr
    std::fill(d, d + E, 0.f);
    if (c.norm_topk_prob) {
      double z = 0, mean = 0;
      for (int64_t j = 0; j < k; ++j) {
        z += p[S[j]];
        mean += static_cast<double>(dw[t * k + j]) * weight[t * k + j];
      }
      for (int64_t j = 0; j < k; ++j) d[S[j]] = static_cast<float>((dw[t * k + j] - mean) / z);
    } else {
      for (int64_t j = 0; j < k; ++j) d[S[j]] = dw[t * k + j];
    }
    double pdp = 0;
    for (int64_t j = 0; j < k; ++j) pdp += static_cast<double>(p[S[j]]) * d[S[j]];
    for (int64_t e = 0; e < E; ++e) d[e] = p[e] * (d[e] - static_cast<float>(pdp));
  }
}

void moe_block_forward(const QwenConfig& c, const MoeWeights& m, const float* n, int64_t T, float* out,
                       const MoeInputHook& hook, MoeBlockActs* acts, const MoeLora* lora) {
  const int64_t C = c.hidden_size, E = c.num_experts, k = c.experts_per_token, Im = c.moe_intermediate_size;
  QWENQ_CHECK(static_cast<int64_t>(m.experts.size()) == E && m.router.N == E,
              "moe_block_forward: " << m.experts.size() << " experts bound for a config of " << E);
  MoeBlockActs local;
  MoeBlockActs& a = acts ? *acts : local;
  std::vector<float> logits(T * E);
  apply_linear(m.router, n, T, TensorView{}, logits.data());
  a.chosen.resize(T * k);
  a.weight.resize(T * k);
  a.probs.resize(T * E);
  moe_route_ref(logits.data(), T, E, k, c.norm_topk_prob, a.chosen.data(), a.weight.data(), a.probs.data());

  // Choices grouped by expert in transformers' order (moe_block.h).
  moe_group_by_expert(a.chosen.data(), T, k, E, &a.start, &a.token, &a.slot);

  // Kept for a backward (and with adapters, whose saved u the pass needs anyway): every row's intermediates.
  // Otherwise one expert's at a time (T·k·(3·Im + C) floats less: 290 MB for 2048 tokens of Qwen3-30B-A3B).
  bool adapted = lora != nullptr && lora->branches != nullptr;
  QWENQ_CHECK(!(adapted && acts), "moe_block_forward: an attached adapter's branches are for inference (no acts)");
  if (lora && lora->adapter) {
    for (const LoraTarget t : kExpertTargets)
      adapted = adapted || lora->adapter->has_expert(lora->layer, 0, t) || lora->adapter->has_expert(lora->layer, -1, t);
  }
  // An attached adapter at inference (branches) saves nothing for a backward: its u is the branch's scratch.
  const bool trained = adapted && lora->adapter != nullptr;
  const bool keep = acts != nullptr || trained;
  if (!trained) a.xs.clear();  // the backward reads an empty xs as "no adapters" (acts may be reused across calls)
  if (adapted) {
    const int64_t r = lora->adapter ? lora->adapter->config().r : lora->rank, Is = c.shared_expert_intermediate_size;
    if (trained) {
      a.n.assign(n, n + T * C);
      a.xs.resize(T * k * C);
    }
    for (int j = 0; j < 3; ++j) {
      a.u[j].resize(T * k * r);
      a.su[j].resize(Is > 0 ? T * r : 0);
      if (trained && lora->dropout > 0.f) {
        a.xd[j].resize(T * k * (j == 2 ? Im : C));
        a.sxd[j].resize(Is > 0 ? T * (j == 2 ? Is : C) : 0);
      }
      if (trained && lora->adapter->use_dora()) {  // N of Linear j: the expert's width for gate/up, C for down
        const int64_t N = j == 2 ? C : Im, Ns = j == 2 ? C : Is;
        a.z[j].resize(T * k * N);
        a.v[j].resize(T * k * N);
        a.norm[j].resize(E * N);
        a.sz[j].resize(Is > 0 ? T * Ns : 0);
        a.sv[j].resize(Is > 0 ? T * Ns : 0);
        a.snorm[j].resize(Is > 0 ? Ns : 0);
      }
    }
  }
  std::vector<float> gate, up, act, y;
  std::vector<float>& G = keep ? a.gate : gate;
  std::vector<float>& U = keep ? a.up : up;
  std::vector<float>& A = keep ? a.act : act;
  std::vector<float>& Y = keep ? a.y : y;
  if (keep) {
    G.resize(T * k * Im);
    U.resize(T * k * Im);
    A.resize(T * k * Im);
    Y.resize(T * k * C);
  }
  std::vector<float> result(T * C, 0.f), xs;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = a.start[e], rows = a.start[e + 1] - r0;
    if (rows == 0) continue;
    float* x = trained ? a.xs.data() + r0 * C : (xs.resize(rows * C), xs.data());  // the rows routed to e
    for (int64_t r = 0; r < rows; ++r) std::copy(n + a.token[r0 + r] * C, n + (a.token[r0 + r] + 1) * C, x + r * C);
    const int64_t base = keep ? r0 : 0;  // this expert's first row in G, U, A, Y
    if (!keep) {
      G.resize(rows * Im);
      U.resize(rows * Im);
      A.resize(rows * Im);
      Y.resize(rows * C);
    }
    expert_forward(m.experts[e], e, x, rows, a.token.data() + r0, G.data() + base * Im, U.data() + base * Im, A.data() + base * Im,
                   Y.data() + base * C, hook, expert_lora(lora, a, false, e, r0));
    for (int64_t r = 0; r < rows; ++r) {
      const float w = a.weight[a.token[r0 + r] * k + a.slot[r0 + r]];
      float* dst = result.data() + a.token[r0 + r] * C;
      const float* src = Y.data() + (base + r) * C;
      for (int64_t i = 0; i < C; ++i) dst[i] += src[i] * w;
    }
  }
  if (m.shared.gate.N > 0) {
    const int64_t Is = m.shared.gate.N;
    a.sgate.resize(T * Is);
    a.sup.resize(T * Is);
    a.sact.resize(T * Is);
    a.sy.resize(T * C);
    a.g.resize(T);
    expert_forward(m.shared, -1, n, T, nullptr, a.sgate.data(), a.sup.data(), a.sact.data(), a.sy.data(), hook,
                   expert_lora(lora, a, true, -1, 0));
    apply_linear(m.shared_gate, n, T, TensorView{}, a.g.data());
    for (int64_t t = 0; t < T; ++t) {
      const float sg = moe_shared_gate(a.g[t]);
      for (int64_t i = 0; i < C; ++i) result[t * C + i] += sg * a.sy[t * C + i];
    }
  }
  std::copy(result.begin(), result.end(), out);
}

void moe_block_backward(const QwenConfig& c, const MoeWeights& m, const MoeBlockActs& a, int64_t T, const float* dout,
                        float* dn, const MoeLora* lora) {
  MoeBlockActs& saved = const_cast<MoeBlockActs&>(a);  // expert_lora hands out pointers; the backward only reads them
  const bool adapted = !a.xs.empty();
  QWENQ_CHECK(!adapted || (lora && lora->adapter && lora->grads),
              "moe_block_backward: the forward ran with adapters on the experts; give them and their gradients");
  const int64_t C = c.hidden_size, E = c.num_experts, k = c.experts_per_token, Im = c.moe_intermediate_size;
  QWENQ_CHECK(static_cast<int64_t>(a.chosen.size()) == T * k && static_cast<int64_t>(a.y.size()) == T * k * C,
              "moe_block_backward: the saved activations are not of this batch (" << T << " tokens)");
  std::vector<float> dw(T * k, 0.f), dy, dx;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = a.start[e], rows = a.start[e + 1] - r0;
    if (rows == 0) continue;
    dy.resize(rows * C);
    dx.resize(rows * C);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t t = a.token[r0 + r], choice = t * k + a.slot[r0 + r];
      const float w = a.weight[choice];
      const float* d = dout + t * C;
      const float* y = a.y.data() + (r0 + r) * C;
      double dot = 0;
      for (int64_t i = 0; i < C; ++i) {
        dy[r * C + i] = w * d[i];
        dot += static_cast<double>(d[i]) * y[i];
      }
      dw[choice] = static_cast<float>(dot);
    }
    expert_backward(m.experts[e], adapted ? a.xs.data() + r0 * C : nullptr, a.gate.data() + r0 * Im,
                    a.up.data() + r0 * Im, a.act.data() + r0 * Im, dy.data(), rows, dx.data(),
                    adapted ? expert_lora(lora, saved, false, e, r0) : ExpertLora{});
    for (int64_t r = 0; r < rows; ++r) {
      float* dst = dn + a.token[r0 + r] * C;
      for (int64_t i = 0; i < C; ++i) dst[i] += dx[r * C + i];
    }
  }
  // Routing weights -> softmax probabilities -> router logits -> dn (the router's weight is frozen).
  std::vector<float> dr(T * E);
  moe_router_backward(c, a.probs.data(), a.chosen.data(), a.weight.data(), dw.data(), T, dr.data());
  std::vector<float> tmp(T * C);
  apply_linear_backward_input(m.router, dr.data(), T, tmp.data());
  for (int64_t i = 0; i < T * C; ++i) dn[i] += tmp[i];
  if (m.shared.gate.N > 0) {
    std::vector<float> ds(T * C), dg(T);
    for (int64_t t = 0; t < T; ++t) {
      const float sg = moe_shared_gate(a.g[t]);
      double dot = 0;
      for (int64_t i = 0; i < C; ++i) {
        ds[t * C + i] = sg * dout[t * C + i];
        dot += static_cast<double>(dout[t * C + i]) * a.sy[t * C + i];
      }
      dg[t] = static_cast<float>(dot) * sg * (1.f - sg);
    }
    expert_backward(m.shared, adapted ? a.n.data() : nullptr, a.sgate.data(), a.sup.data(), a.sact.data(), ds.data(), T,
                    tmp.data(), adapted ? expert_lora(lora, saved, true, -1, 0) : ExpertLora{});
    for (int64_t i = 0; i < T * C; ++i) dn[i] += tmp[i];
    apply_linear_backward_input(m.shared_gate, dg.data(), T, tmp.data());
    for (int64_t i = 0; i < T * C; ++i) dn[i] += tmp[i];
  }
}

}  // namespace qwenq
