// The CPU twin of kernels/kl_rows.h: each row's two arg-maxima, then its three sums in index order (double), rows
// in parallel. trainer/kl_divergence.cpp's kl_position is this on one row.
#include <cmath>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/kl_rows.h"
#include "kernels/loss.h"

namespace qwenq {

namespace {

KlRow kl_row(const float* b, const float* q, int64_t V, int32_t target) {
  KlRow r;
  r.top_base = first_argmax_ref(b, V);
  r.top = first_argmax_ref(q, V);
  const double mb = b[r.top_base], mq = q[r.top];
  double sb = 0, sq = 0, cross = 0;
  for (int64_t v = 0; v < V; ++v) {
    const double bv = b[v], qv = q[v], e = std::exp(bv - mb);
    sb += e;
    cross += e * (bv - qv);
    sq += std::exp(qv - mq);
  }
  const double lse_b = mb + std::log(sb), lse_q = mq + std::log(sq);
  r.kld = cross / sb - lse_b + lse_q;
  if (target != kIgnoreIndex) {
    r.nll_base = lse_b - b[target];
    r.nll = lse_q - q[target];
  }
  return r;
}

}  // namespace

int64_t first_argmax_ref(const float* x, int64_t V) {
  int64_t top = 0;
  bool found = false;
  for (int64_t v = 0; v < V; ++v) {
    if (x[v] != x[v]) continue;
    if (!found || x[v] > x[top]) {
      top = v;
      found = true;
    }
  }
  return top;
}

void kl_rows_check(const char* name, int64_t rows, int64_t V, const int32_t* targets) {
  cross_entropy_count_targets(name, rows, V, targets);
}

void kl_rows_ref(const float* base, const float* logits, int64_t rows, int64_t V, const int32_t* targets, KlRow* out) {
  const char* name = "kl_rows_ref";
  kl_rows_check(name, rows, V, targets);
  if (rows == 0) return;
  QWENQ_CHECK(base != nullptr && logits != nullptr && out != nullptr, name << ": null pointer");
  parallel_for(rows, 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) out[r] = kl_row(base + r * V, logits + r * V, V, targets[r]);
  });
}

}  // namespace qwenq
