#include "trainer/moe_block.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "kernels/act.h"
#include "kernels/moe_route.h"
#include "trainer/qwen_model.h"

namespace qwenq {

namespace {

// gate, up, act [rows, I] and y [rows, C] of one expert on x [rows, C]; the hook sees expert `id`'s two inputs.
void expert_forward(const MoeExpertWeights& e, int64_t id, const float* x, int64_t rows, float* gate, float* up,
                    float* act, float* y, const MoeInputHook& hook) {
  const int64_t I = e.gate.N;
  if (hook) hook(BlockLinear::GateUp, id, x, rows);
  apply_linear(e.gate, x, rows, TensorView{}, gate);
  apply_linear(e.up, x, rows, TensorView{}, up);
  swiglu_forward_ref(gate, up, rows * I, act);
  if (hook) hook(BlockLinear::Down, id, act, rows);
  apply_linear(e.down, act, rows, TensorView{}, y);
}

// dx [rows, C] (written) of one expert given dy [rows, C] and its forward's gate, up, act.
void expert_backward(const MoeExpertWeights& e, const float* gate, const float* up, const float* dy, int64_t rows,
                     float* dx) {
  const int64_t I = e.gate.N, C = e.gate.K;
  std::vector<float> dact(rows * I), dgate(rows * I), dup(rows * I), tmp(rows * C);
  apply_linear_backward_input(e.down, dy, rows, dact.data());
  swiglu_backward_ref(dact.data(), gate, up, rows * I, dgate.data(), dup.data());
  apply_linear_backward_input(e.gate, dgate.data(), rows, dx);
  apply_linear_backward_input(e.up, dup.data(), rows, tmp.data());
  for (int64_t i = 0; i < rows * C; ++i) dx[i] += tmp[i];
}

float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

}  // namespace

void moe_block_forward(const QwenConfig& c, const MoeWeights& m, const float* n, int64_t T, float* out,
                       const MoeInputHook& hook, MoeBlockActs* acts) {
  const int64_t C = c.hidden_size, E = c.num_experts, k = c.experts_per_token, Im = c.moe_intermediate_size;
  QWENQ_CHECK(static_cast<int64_t>(m.experts.size()) == E && m.router.N == E,
              "moe_block_forward: " << m.experts.size() << " experts bound for a config of " << E);
  MoeBlockActs local;
  MoeBlockActs& a = acts ? *acts : local;
  a.logits.resize(T * E);
  apply_linear(m.router, n, T, TensorView{}, a.logits.data());
  a.chosen.resize(T * k);
  a.weight.resize(T * k);
  moe_route_ref(a.logits.data(), T, E, k, c.norm_topk_prob, a.chosen.data(), a.weight.data());

  // Choices grouped by expert (a counting sort, token order kept within an expert).
  a.start.assign(E + 1, 0);
  for (int64_t i = 0; i < T * k; ++i) ++a.start[a.chosen[i] + 1];
  for (int64_t e = 0; e < E; ++e) a.start[e + 1] += a.start[e];
  std::vector<int64_t> fill(a.start.begin(), a.start.end() - 1);
  a.token.resize(T * k);
  a.slot.resize(T * k);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t r = fill[a.chosen[t * k + j]]++;
      a.token[r] = t;
      a.slot[r] = static_cast<int32_t>(j);
    }
  }

  // Kept for a backward: every row's intermediates. Otherwise one expert's at a time (T·k·(3·Im + C) floats less:
  // 290 MB for 2048 tokens of Qwen3-30B-A3B).
  const bool keep = acts != nullptr;
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
    xs.resize(rows * C);
    for (int64_t r = 0; r < rows; ++r) std::copy(n + a.token[r0 + r] * C, n + (a.token[r0 + r] + 1) * C, xs.data() + r * C);
    const int64_t base = keep ? r0 : 0;  // this expert's first row in G, U, A, Y
    if (!keep) {
      G.resize(rows * Im);
      U.resize(rows * Im);
      A.resize(rows * Im);
      Y.resize(rows * C);
    }
    expert_forward(m.experts[e], e, xs.data(), rows, G.data() + base * Im, U.data() + base * Im, A.data() + base * Im,
                   Y.data() + base * C, hook);
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
    expert_forward(m.shared, -1, n, T, a.sgate.data(), a.sup.data(), a.sact.data(), a.sy.data(), hook);
    apply_linear(m.shared_gate, n, T, TensorView{}, a.g.data());
    for (int64_t t = 0; t < T; ++t) {
      const float sg = sigmoid(a.g[t]);
      for (int64_t i = 0; i < C; ++i) result[t * C + i] += sg * a.sy[t * C + i];
    }
  }
  std::copy(result.begin(), result.end(), out);
}

void moe_block_backward(const QwenConfig& c, const MoeWeights& m, const MoeBlockActs& a, int64_t T, const float* dout,
                        float* dn) {
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
    expert_backward(m.experts[e], a.gate.data() + r0 * Im, a.up.data() + r0 * Im, dy.data(), rows, dx.data());
    for (int64_t r = 0; r < rows; ++r) {
      float* dst = dn + a.token[r0 + r] * C;
      for (int64_t i = 0; i < C; ++i) dst[i] += dx[r * C + i];
    }
  }
  // Routing weights -> softmax probabilities -> router logits -> dn (the router's weight is frozen).
  std::vector<float> dr(T * E, 0.f), p(E);
  for (int64_t t = 0; t < T; ++t) {
    const float* r = a.logits.data() + t * E;
    const float mx = *std::max_element(r, r + E);
    float sum = 0.f;
    for (int64_t e = 0; e < E; ++e) sum += p[e] = std::exp(r[e] - mx);
    for (int64_t e = 0; e < E; ++e) p[e] /= sum;
    float* d = dr.data() + t * E;  // holds dp, then dr
    if (c.norm_topk_prob) {
      double z = 0, mean = 0;
      for (int64_t j = 0; j < k; ++j) {
        z += p[a.chosen[t * k + j]];
        mean += static_cast<double>(dw[t * k + j]) * a.weight[t * k + j];
      }
      for (int64_t j = 0; j < k; ++j) d[a.chosen[t * k + j]] = static_cast<float>((dw[t * k + j] - mean) / z);
    } else {
      for (int64_t j = 0; j < k; ++j) d[a.chosen[t * k + j]] = dw[t * k + j];
    }
    double pdp = 0;
    for (int64_t j = 0; j < k; ++j) pdp += static_cast<double>(p[a.chosen[t * k + j]]) * d[a.chosen[t * k + j]];
    for (int64_t e = 0; e < E; ++e) d[e] = p[e] * (d[e] - static_cast<float>(pdp));
  }
  std::vector<float> tmp(T * C);
  apply_linear_backward_input(m.router, dr.data(), T, tmp.data());
  for (int64_t i = 0; i < T * C; ++i) dn[i] += tmp[i];
  if (m.shared.gate.N > 0) {
    std::vector<float> ds(T * C), dg(T);
    for (int64_t t = 0; t < T; ++t) {
      const float sg = sigmoid(a.g[t]);
      double dot = 0;
      for (int64_t i = 0; i < C; ++i) {
        ds[t * C + i] = sg * dout[t * C + i];
        dot += static_cast<double>(dout[t * C + i]) * a.sy[t * C + i];
      }
      dg[t] = static_cast<float>(dot) * sg * (1.f - sg);
    }
    expert_backward(m.shared, a.sgate.data(), a.sup.data(), ds.data(), T, tmp.data());
    for (int64_t i = 0; i < T * C; ++i) dn[i] += tmp[i];
    apply_linear_backward_input(m.shared_gate, dg.data(), T, tmp.data());
    for (int64_t i = 0; i < T * C; ++i) dn[i] += tmp[i];
  }
}

}  // namespace qwenq
