// RMSNorm, as transformers' Qwen2RMSNorm computes it on fp32 activations:
//   var  = mean(x²) over the C channels of a row (fp32)
//   y    = w · (x · rsqrt(var + eps))            with rsqrt(v) = 1 / sqrt(v) in fp32 and w widened to fp32
// The product order (x times the scalar first, then the weight) is the one transformers uses, so the only
// difference from it is the order of the fp32 sum of squares. Rows run in parallel; x and y may alias.
// Backward, per row: r as above (same fp32 sum), g = dy · w, dot = Σ g·x (fp32),
//   dx = r · (g − x · (r² · dot / C))         (= r·g − r³·x·dot/C; one pass reads the row, a second writes dx)
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/norm.h"

namespace qwenq {

namespace {

// Checks the arguments shared by forward and backward (`name` starts each message) and returns w in fp32.
std::vector<float> checked_weight(const char* name, int64_t rows, int64_t C, const void* weight, DType w_dtype,
                                  float eps) {
  QWENQ_CHECK(rows >= 0 && C > 0, name << ": bad shape rows=" << rows << " C=" << C);
  QWENQ_CHECK(w_dtype == DType::F32 || w_dtype == DType::BF16 || w_dtype == DType::F16,
              name << ": weight dtype " << dtype_name(w_dtype) << " is not supported (F32, BF16 or F16)");
  QWENQ_CHECK(eps >= 0.f, name << ": eps must be >= 0, got " << eps);
  if (rows == 0) return {};
  QWENQ_CHECK(weight != nullptr, name << ": null weight");
  std::vector<float> w(static_cast<size_t>(C));
  to_f32(w_dtype, weight, w.data(), static_cast<size_t>(C));
  return w;
}

}  // namespace

void rmsnorm_forward_ref(const float* x, int64_t rows, int64_t C, const void* weight, DType w_dtype, float eps,
                         float* y) {
  const std::vector<float> w = checked_weight("rmsnorm_forward_ref", rows, C, weight, w_dtype, eps);
  if (rows == 0) return;
  QWENQ_CHECK(x != nullptr && y != nullptr, "rmsnorm_forward_ref: null pointer");
  const float* wp = w.data();
  parallel_for(rows, std::max<int64_t>(1, 16384 / C), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * C;
      float* yr = y + r * C;
      float ss = 0.f;
#pragma omp simd reduction(+ : ss)
      for (int64_t c = 0; c < C; ++c) ss += xr[c] * xr[c];
      const float inv = 1.0f / std::sqrt(ss / static_cast<float>(C) + eps);
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yr[c] = wp[c] * (xr[c] * inv);
    }
  });
}

void rmsnorm_backward_ref(const float* dy, const float* x, int64_t rows, int64_t C, const void* weight,
                          DType w_dtype, float eps, float* dx) {
  const std::vector<float> w = checked_weight("rmsnorm_backward_ref", rows, C, weight, w_dtype, eps);
  if (rows == 0) return;
  QWENQ_CHECK(dy != nullptr && x != nullptr && dx != nullptr, "rmsnorm_backward_ref: null pointer");
  const float* wp = w.data();
  parallel_for(rows, std::max<int64_t>(1, 16384 / C), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * C;
      const float* dyr = dy + r * C;
      float* dxr = dx + r * C;
      float ss = 0.f, dot = 0.f;
#pragma omp simd reduction(+ : ss, dot)
      for (int64_t c = 0; c < C; ++c) {
        ss += xr[c] * xr[c];
        dot += dyr[c] * wp[c] * xr[c];
      }
      const float inv = 1.0f / std::sqrt(ss / static_cast<float>(C) + eps);
      const float coef = inv * inv * dot / static_cast<float>(C);
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) dxr[c] = inv * (dyr[c] * wp[c] - xr[c] * coef);
    }
  });
}

}  // namespace qwenq
