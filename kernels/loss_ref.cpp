// Softmax cross-entropy per row, exponentials in fp32 with the max subtracted, their sum in double:
//   m = max_v logits[r][v],  lse = m + log Σ_v exp(logits[r][v] − m),  nll[r] = lse − logits[r][target[r]]
// Rows whose target is kIgnoreIndex get nll = 0 and are not counted; any other target outside [0, V) is an
// error naming the row. Rows run in parallel.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/loss.h"

namespace qwenq {

int64_t cross_entropy_forward_ref(const float* logits, int64_t rows, int64_t V, const int32_t* targets,
                                  float* nll) {
  QWENQ_CHECK(rows >= 0 && V > 0, "cross_entropy_forward_ref: bad shape rows=" << rows << " V=" << V);
  if (rows == 0) return 0;
  QWENQ_CHECK(logits != nullptr && targets != nullptr && nll != nullptr, "cross_entropy_forward_ref: null pointer");
  int64_t counted = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t t = targets[r];
    QWENQ_CHECK(t == kIgnoreIndex || (t >= 0 && t < V), "cross_entropy_forward_ref: target " << t << " of row " << r
                                                           << " is outside the vocabulary [0, " << V
                                                           << ") and is not the ignore index " << kIgnoreIndex);
    if (t != kIgnoreIndex) ++counted;
  }
  parallel_for(rows, std::max<int64_t>(1, 65536 / V), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      if (targets[r] == kIgnoreIndex) {
        nll[r] = 0.f;
        continue;
      }
      const float* l = logits + r * V;
      float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
      for (int64_t v = 0; v < V; ++v) mx = std::max(mx, l[v]);
      double sum = 0.0;  // exp in fp32, summed in double: the sum of ~150k terms stays exact to fp32
      for (int64_t v = 0; v < V; ++v) sum += std::exp(l[v] - mx);
      nll[r] = mx + static_cast<float>(std::log(sum)) - l[targets[r]];
    }
  });
  return counted;
}

}  // namespace qwenq
