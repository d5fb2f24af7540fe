// LoRA forward and backward on the CPU, composed from the dense reference GEMMs of kernels/gemm.h (fp32
// products and sums):
//   forward:  u = x Aᵀ (lora_project_ref);  t = u Bᵀ;  y += s·t
//   backward: g = dy B, then g *= s;  dB += dyᵀ (s·u);  dA += gᵀ x;  dx += g A
// s is applied to the rank-r intermediates (M·r values) rather than to dy or to the outputs (M·N or M·K).
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/gemm.h"
#include "lora/lora_linear.h"

namespace qwenq {

namespace {

void check_dims(int64_t M, int64_t K, int64_t N, int64_t r) {
  QWENQ_CHECK(M >= 0 && K > 0 && N > 0 && r > 0, "LoRA linear: bad shape M=" << M << " K=" << K << " N=" << N
                                                                               << " r=" << r);
}

}  // namespace

void lora_project_ref(const float* x, int64_t M, int64_t K, const float* A, int64_t r, float* u) {
  QWENQ_CHECK(M >= 0 && K > 0 && r > 0, "lora_project_ref: bad shape M=" << M << " K=" << K << " r=" << r);
  if (M == 0) return;
  linear_forward_ref(x, M, K, A, DType::F32, r, nullptr, DType::F32, u);
}

void lora_forward_ref(const float* x, int64_t M, int64_t K, const float* A, const float* B, int64_t r, int64_t N,
                      float s, float* y, float* u) {
  check_dims(M, K, N, r);
  if (M == 0) return;
  lora_project_ref(x, M, K, A, r, u);
  std::vector<float> t(static_cast<size_t>(M * N));
  linear_forward_ref(u, M, r, B, DType::F32, N, nullptr, DType::F32, t.data());
  for (size_t i = 0; i < t.size(); ++i) y[i] += s * t[i];
}

void lora_backward_ref(const float* dy, const float* x, const float* u, int64_t M, int64_t K, int64_t N, int64_t r,
                       const float* A, const float* B, float s, float* dA, float* dB, float* dx) {
  check_dims(M, K, N, r);
  if (M == 0) return;
  const size_t mr = static_cast<size_t>(M * r);
  std::vector<float> g(mr), su(mr);
  linear_backward_input_ref(dy, M, N, B, DType::F32, r, g.data());  // g = dy B
  for (size_t i = 0; i < mr; ++i) {
    g[i] *= s;
    su[i] = s * u[i];
  }
  linear_backward_weight_ref(dy, su.data(), M, N, r, dB);  // dB += dyᵀ (s·u)
  linear_backward_weight_ref(g.data(), x, M, r, K, dA);    // dA += gᵀ x
  if (dx) {
    std::vector<float> t(static_cast<size_t>(M * K));
    linear_backward_input_ref(g.data(), M, r, A, DType::F32, K, t.data());  // t = g A
    for (size_t i = 0; i < t.size(); ++i) dx[i] += t[i];
  }
}

}  // namespace qwenq
