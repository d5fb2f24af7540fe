// Inverted dropout on the CPU (kernels/dropout.h): each element's factor m_i = keep(key, i) ? 1/(1 − p) : 0 from
// kernels/dropout_mask.h, the scale computed once in fp32; forward x̃_i = m_i·x_i, backward dx_i = fma(m_i, dx̃_i,
// dx_i) written as std::fma so that no compiler contraction choice can make it differ from the GPU's fmaf.
// Elementwise and order-free, so the rows are split over threads.
#include <cmath>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/dropout.h"
#include "kernels/dropout_mask.h"

namespace qwenq {

namespace {

void check_args(const char* fn, const void* in, int64_t n, float p, const void* out) {
  QWENQ_CHECK(p >= 0.0f && p < 1.0f, fn << ": dropout probability must be in [0, 1), got " << p);
  QWENQ_CHECK(n >= 0, fn << ": negative size " << n);
  QWENQ_CHECK(n == 0 || (in != nullptr && out != nullptr), fn << ": null pointer");
}

}  // namespace

void dropout_forward_ref(const float* x, int64_t n, float p, uint64_t key, float* x_drop) {
  check_args("dropout_forward_ref", x, n, p, x_drop);
  const float scale = 1.0f / (1.0f - p);
  parallel_for(n, 1 << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) x_drop[i] = dropout_factor(key, i, p, scale) * x[i];
  });
}

void dropout_backward_ref(const float* dx_drop, int64_t n, float p, uint64_t key, float* dx) {
  check_args("dropout_backward_ref", dx_drop, n, p, dx);
  const float scale = 1.0f / (1.0f - p);
  parallel_for(n, 1 << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dx[i] = std::fma(dropout_factor(key, i, p, scale), dx_drop[i], dx[i]);
  });
}

void uniform_noise_add_ref(float* x, int64_t n, float half_width, uint64_t key) {
  QWENQ_CHECK(std::isfinite(half_width) && half_width >= 0.0f,
              "uniform_noise_add_ref: the half-width must be finite and >= 0, got " << half_width);
  QWENQ_CHECK(n >= 0, "uniform_noise_add_ref: negative size " << n);
  QWENQ_CHECK(n == 0 || x != nullptr, "uniform_noise_add_ref: null pointer");
  parallel_for(n, 1 << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) x[i] = std::fma(half_width, 2.0f * dropout_uniform(key, i) - 1.0f, x[i]);
  });
}

}  // namespace qwenq
