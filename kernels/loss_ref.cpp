// Softmax cross-entropy per row, exponentials in fp32 with the max subtracted (exp_f32 of kernels/exp_rows.h,
// within an ulp; the same bits on every CPU), their sum in double over 16 lanes in a fixed order:
//   m = max_v logits[r][v],  lse = m + log Σ_v exp(logits[r][v] − m),  nll[r] = lse − logits[r][target[r]]
// Rows whose target is kIgnoreIndex get nll = 0 and are not counted; any other target outside [0, V) is an
// error naming the row. Rows run in parallel.
// Backward: the same m and double sum, then dlogits[v] = exp(logits[v] − m) · (scale / sum) and scale is
// subtracted at the target. Each row is read completely (max, sum) before it is written, so dlogits may
// alias logits.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/exp_rows.h"
#include "kernels/loss.h"

namespace qwenq {

namespace {

// Max of the row and Σ exp(l − max) (exp in fp32, sum in double: ~150k terms stay exact to fp32).
void row_max_and_sum(const float* l, int64_t V, float* mx_out, double* sum_out) {
  float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
  for (int64_t v = 0; v < V; ++v) mx = std::max(mx, l[v]);
  *mx_out = mx;
  *sum_out = exp_sum_row(l, V, mx);
}

// One row's nll from its max and Σ exp(l − max) (before the row is overwritten by its gradient).
float row_nll(const float* l, float mx, double sum, int32_t target) {
  return mx + static_cast<float>(std::log(sum)) - l[target];
}

// dl = scale · (softmax(l) − onehot(target)); dl may be l.
void row_grad(const float* l, int64_t V, float mx, double sum, int32_t target, float scale, float* dl) {
  const float coef = static_cast<float>(static_cast<double>(scale) / sum);
  exp_scale_row(l, V, mx, coef, dl);
  dl[target] -= scale;
}

}  // namespace

int64_t cross_entropy_count_targets(const char* name, int64_t rows, int64_t V, const int32_t* targets) {
  QWENQ_CHECK(rows >= 0 && V > 0, name << ": bad shape rows=" << rows << " V=" << V);
  if (rows == 0) return 0;
  QWENQ_CHECK(targets != nullptr, name << ": null pointer");
  int64_t counted = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t t = targets[r];
    QWENQ_CHECK(t == kIgnoreIndex || (t >= 0 && t < V), name << ": target " << t << " of row " << r
                                                             << " is outside the vocabulary [0, " << V
                                                             << ") and is not the ignore index " << kIgnoreIndex);
    if (t != kIgnoreIndex) ++counted;
  }
  return counted;
}

int64_t cross_entropy_forward_ref(const float* logits, int64_t rows, int64_t V, const int32_t* targets,
                                  float* nll) {
  const int64_t counted = cross_entropy_count_targets("cross_entropy_forward_ref", rows, V, targets);
  if (rows == 0) return 0;
  QWENQ_CHECK(logits != nullptr && nll != nullptr, "cross_entropy_forward_ref: null pointer");
  parallel_for(rows, std::max<int64_t>(1, 65536 / V), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      if (targets[r] == kIgnoreIndex) {
        nll[r] = 0.f;
        continue;
      }
      const float* l = logits + r * V;
      float mx;
      double sum;
      row_max_and_sum(l, V, &mx, &sum);
      nll[r] = row_nll(l, mx, sum, targets[r]);
    }
  });
  return counted;
}

void cross_entropy_backward_ref(const float* logits, int64_t rows, int64_t V, const int32_t* targets,
                                float dnll_scale, float* dlogits) {
  cross_entropy_count_targets("cross_entropy_backward_ref", rows, V, targets);
  if (rows == 0) return;
  QWENQ_CHECK(logits != nullptr && dlogits != nullptr, "cross_entropy_backward_ref: null pointer");
  QWENQ_CHECK(std::isfinite(dnll_scale), "cross_entropy_backward_ref: dnll_scale must be finite, got " << dnll_scale);
  parallel_for(rows, std::max<int64_t>(1, 65536 / V), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* l = logits + r * V;
      float* dl = dlogits + r * V;
      if (targets[r] == kIgnoreIndex) {
        std::fill(dl, dl + V, 0.f);
        continue;
      }
      float mx;
      double sum;
      row_max_and_sum(l, V, &mx, &sum);
      row_grad(l, V, mx, sum, targets[r], dnll_scale, dl);
    }
  });
}

int64_t cross_entropy_fused_ref(float* logits, int64_t rows, int64_t V, const int32_t* targets, float dnll_scale,
                                float* nll, const float* row_scale) {
  const int64_t counted = cross_entropy_count_targets("cross_entropy_fused_ref", rows, V, targets);
  if (rows == 0) return 0;
  QWENQ_CHECK(logits != nullptr && nll != nullptr, "cross_entropy_fused_ref: null pointer");
  QWENQ_CHECK(std::isfinite(dnll_scale), "cross_entropy_fused_ref: dnll_scale must be finite, got " << dnll_scale);
  for (int64_t r = 0; row_scale && r < rows; ++r) {
    QWENQ_CHECK(std::isfinite(row_scale[r]), "cross_entropy_fused_ref: row_scale of row " << r << " must be finite, got "
                                                                                        << row_scale[r]);
  }
  parallel_for(rows, std::max<int64_t>(1, 65536 / V), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* l = logits + r * V;
      if (targets[r] == kIgnoreIndex) {
        nll[r] = 0.f;
        std::fill(l, l + V, 0.f);
        continue;
      }
      float mx;
      double sum;
      row_max_and_sum(l, V, &mx, &sum);
      nll[r] = row_nll(l, mx, sum, targets[r]);
      row_grad(l, V, mx, sum, targets[r], row_scale ? row_scale[r] : dnll_scale, l);
    }
  });
  return counted;
}

}  // namespace qwenq
