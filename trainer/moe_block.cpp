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

// y[rows, C] = expert(x[rows, C]); gate/up scratch of rows x I; the hook sees expert `id`'s two inputs.
void expert_forward(const MoeExpertWeights& e, int64_t id, const float* x, int64_t rows, std::vector<float>& gate,
                    std::vector<float>& up, float* y, const MoeInputHook& hook) {
  const int64_t I = e.gate.N;
  gate.resize(rows * I);
  up.resize(rows * I);
  if (hook) hook(BlockLinear::GateUp, id, x, rows);
  apply_linear(e.gate, x, rows, TensorView{}, gate.data());
  apply_linear(e.up, x, rows, TensorView{}, up.data());
  swiglu_forward_ref(gate.data(), up.data(), rows * I, gate.data());
  if (hook) hook(BlockLinear::Down, id, gate.data(), rows);
  apply_linear(e.down, gate.data(), rows, TensorView{}, y);
}

}  // namespace

void moe_block_forward(const QwenConfig& c, const MoeWeights& m, const float* n, int64_t T, float* out,
                       const MoeInputHook& hook) {
  const int64_t C = c.hidden_size, E = c.num_experts, k = c.experts_per_token;
  QWENQ_CHECK(static_cast<int64_t>(m.experts.size()) == E && m.router.N == E,
              "moe_block_forward: " << m.experts.size() << " experts bound for a config of " << E);
  std::vector<float> logits(T * E);
  apply_linear(m.router, n, T, TensorView{}, logits.data());
  std::vector<int32_t> chosen(T * k);
  std::vector<float> weight(T * k);
  moe_route_ref(logits.data(), T, E, k, c.norm_topk_prob, chosen.data(), weight.data());

  // Tokens per expert (counting sort by expert, token order kept), with the weight of that choice.
  std::vector<int64_t> start(E + 1, 0);
  for (int64_t i = 0; i < T * k; ++i) ++start[chosen[i] + 1];
  for (int64_t e = 0; e < E; ++e) start[e + 1] += start[e];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  std::vector<int64_t> token(T * k);
  std::vector<float> token_weight(T * k);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t slot = fill[chosen[t * k + j]]++;
      token[slot] = t;
      token_weight[slot] = weight[t * k + j];
    }
  }

  std::vector<float> y(T * C, 0.f), xs, ys, gate, up;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t rows = start[e + 1] - start[e];
    if (rows == 0) continue;
    xs.resize(rows * C);
    ys.resize(rows * C);
    for (int64_t r = 0; r < rows; ++r) {
      const float* src = n + token[start[e] + r] * C;
      std::copy(src, src + C, xs.data() + r * C);
    }
    expert_forward(m.experts[e], e, xs.data(), rows, gate, up, ys.data(), hook);
    for (int64_t r = 0; r < rows; ++r) {
      const float w = token_weight[start[e] + r];
      float* dst = y.data() + token[start[e] + r] * C;
      const float* src = ys.data() + r * C;
      for (int64_t i = 0; i < C; ++i) dst[i] += src[i] * w;
    }
  }
  if (m.shared.gate.N > 0) {
    std::vector<float> s(T * C), g(T);
    expert_forward(m.shared, -1, n, T, gate, up, s.data(), hook);
    apply_linear(m.shared_gate, n, T, TensorView{}, g.data());
    for (int64_t t = 0; t < T; ++t) {
      const float sg = 1.f / (1.f + std::exp(-g[t]));
      for (int64_t i = 0; i < C; ++i) y[t * C + i] += sg * s[t * C + i];
    }
  }
  std::copy(y.begin(), y.end(), out);
}

}  // namespace qwenq
