// RMSNorm, as transformers' Qwen2RMSNorm computes it on fp32 activations:
//   var  = mean(x²) over the C channels of a row (fp32)
//   y    = w · (x · rsqrt(var + eps))            with rsqrt(v) = 1 / sqrt(v) in fp32 and w widened to fp32
// The product order (x times the scalar first, then the weight) is the one transformers uses, so the only
// difference from it is the order of the fp32 sum of squares. Rows run in parallel; x and y may alias.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/norm.h"

namespace qwenq {

void rmsnorm_forward_ref(const float* x, int64_t rows, int64_t C, const void* weight, DType w_dtype, float eps,
                         float* y) {
  QWENQ_CHECK(rows >= 0 && C > 0, "rmsnorm_forward_ref: bad shape rows=" << rows << " C=" << C);
  QWENQ_CHECK(w_dtype == DType::F32 || w_dtype == DType::BF16 || w_dtype == DType::F16,
              "rmsnorm_forward_ref: weight dtype " << dtype_name(w_dtype) << " is not supported (F32, BF16 or F16)");
  QWENQ_CHECK(eps >= 0.f, "rmsnorm_forward_ref: eps must be >= 0, got " << eps);
  if (rows == 0) return;
  QWENQ_CHECK(x != nullptr && weight != nullptr && y != nullptr, "rmsnorm_forward_ref: null pointer");

  std::vector<float> w(static_cast<size_t>(C));
  to_f32(w_dtype, weight, w.data(), static_cast<size_t>(C));
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

}  // namespace qwenq
