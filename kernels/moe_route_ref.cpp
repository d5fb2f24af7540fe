#include "kernels/moe_route.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/threads.h"

namespace qwenq {

void moe_route_ref(const float* logits, int64_t T, int64_t E, int64_t k, bool norm_topk_prob, int32_t* experts,
                   float* weights, float* probs) {
  QWENQ_CHECK(E >= 1 && k >= 1 && k <= E, "moe_route: top-" << k << " of " << E << " experts");
  parallel_for(T, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> p(E);
    std::vector<int32_t> order(E);
    for (int64_t t = begin; t < end; ++t) {
      const float* r = logits + t * E;
      const float mx = *std::max_element(r, r + E);
      float sum = 0.f;
      for (int64_t e = 0; e < E; ++e) {
        p[e] = std::exp(r[e] - mx);
        sum += p[e];
      }
      for (int64_t e = 0; e < E; ++e) p[e] /= sum;
      if (probs) std::copy(p.begin(), p.end(), probs + t * E);
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + k, order.end(),
                        [&](int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
      float kept = 0.f;
      for (int64_t j = 0; j < k; ++j) kept += p[order[j]];
      for (int64_t j = 0; j < k; ++j) {
        experts[t * k + j] = order[j];
        weights[t * k + j] = norm_topk_prob ? p[order[j]] / kept : p[order[j]];
      }
    }
  });
}

}  // namespace qwenq
