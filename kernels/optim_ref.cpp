// AdamW step and global-norm clipping (formulas in optim.h). Both are elementwise or a plain reduction:
// parallel over fixed blocks of elements, so the results do not depend on the number of threads (the norm's
// per-block partial sums are added in block order).
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/optim.h"

namespace qwenq {

namespace {

constexpr int64_t kBlock = 1 << 14;  // elements per parallel work item

}  // namespace

void adamw_step_ref(float* param, const float* grad, float* m, float* v, int64_t n, double lr, double beta1,
                    double beta2, double eps, double weight_decay, int64_t step) {
  QWENQ_CHECK(n >= 0, "adamw_step_ref: negative size " << n);
  QWENQ_CHECK(step >= 1, "adamw_step_ref: step must be >= 1 (the count after this update), got " << step);
  QWENQ_CHECK(lr >= 0.0, "adamw_step_ref: invalid learning rate " << lr);
  QWENQ_CHECK(eps >= 0.0, "adamw_step_ref: invalid epsilon " << eps);
  QWENQ_CHECK(beta1 >= 0.0 && beta1 < 1.0, "adamw_step_ref: invalid beta1 " << beta1 << " (must be in [0, 1))");
  QWENQ_CHECK(beta2 >= 0.0 && beta2 < 1.0, "adamw_step_ref: invalid beta2 " << beta2 << " (must be in [0, 1))");
  QWENQ_CHECK(weight_decay >= 0.0, "adamw_step_ref: invalid weight_decay " << weight_decay);
  if (n == 0) return;
  QWENQ_CHECK(param != nullptr && grad != nullptr && m != nullptr && v != nullptr, "adamw_step_ref: null pointer");

  const double t = static_cast<double>(step);
  const double bias_correction1 = 1.0 - std::pow(beta1, t);
  const double bias_correction2 = 1.0 - std::pow(beta2, t);
  const float decay = static_cast<float>(1.0 - lr * weight_decay);
  // torch's lerp(m, g, w) is m + w·(g − m) for w < 0.5 and g − (g − m)·(1 − w) otherwise (w = 1 − β1).
  const float w1 = static_cast<float>(1.0 - beta1);
  const bool lerp_from_m = w1 < 0.5f;
  const float b2 = static_cast<float>(beta2), one_minus_b2 = static_cast<float>(1.0 - beta2);
  const float neg_step_size = static_cast<float>(-(lr / bias_correction1));
  const float bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  const float eps_f = static_cast<float>(eps);
  parallel_for(n, kBlock, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float g = grad[i];
      const float p = param[i] * decay;
      const float mi = lerp_from_m ? m[i] + w1 * (g - m[i]) : g - (g - m[i]) * (1.0f - w1);
      const float vi = v[i] * b2 + one_minus_b2 * g * g;
      const float denom = std::sqrt(vi) / bc2_sqrt + eps_f;
      m[i] = mi;
      v[i] = vi;
      param[i] = p + neg_step_size * (mi / denom);
    }
  });
}

float clip_grad_norm_ref(float* const* grads, const int64_t* sizes, int n_tensors, float max_norm) {
  QWENQ_CHECK(n_tensors >= 0, "clip_grad_norm_ref: negative tensor count " << n_tensors);
  QWENQ_CHECK(max_norm >= 0.f, "clip_grad_norm_ref: max_norm must be >= 0, got " << max_norm);
  if (n_tensors == 0) return 0.f;
  QWENQ_CHECK(grads != nullptr && sizes != nullptr, "clip_grad_norm_ref: null grads or sizes");
  for (int i = 0; i < n_tensors; ++i) {
    QWENQ_CHECK(sizes[i] >= 0, "clip_grad_norm_ref: tensor " << i << " has negative size " << sizes[i]);
    QWENQ_CHECK(sizes[i] == 0 || grads[i] != nullptr, "clip_grad_norm_ref: tensor " << i << " of size " << sizes[i]
                                                                                    << " has a null pointer");
  }

  double sum_sq = 0.0;
  std::vector<double> partial;
  for (int i = 0; i < n_tensors; ++i) {
    const float* g = grads[i];
    const int64_t blocks = (sizes[i] + kBlock - 1) / kBlock;
    partial.assign(static_cast<size_t>(blocks), 0.0);
    parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        double s = 0.0;
        const int64_t end = std::min(sizes[i], (b + 1) * kBlock);
        for (int64_t j = b * kBlock; j < end; ++j) s += static_cast<double>(g[j]) * g[j];
        partial[b] = s;
      }
    });
    for (double s : partial) sum_sq += s;
  }
  const float norm = static_cast<float>(std::sqrt(sum_sq));
  if (!std::isfinite(norm)) return norm;
  const float coef = max_norm / (norm + 1e-6f);
  if (coef < 1.f) {
    for (int i = 0; i < n_tensors; ++i) {
      float* g = grads[i];
      parallel_for(sizes[i], kBlock, [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) g[j] *= coef;
      });
    }
  }
  return norm;
}

}  // namespace qwenq
