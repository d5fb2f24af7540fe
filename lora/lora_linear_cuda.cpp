// lora_forward_cuda (lora/lora_linear.h): the LoRA forward y += s·(x Aᵀ) Bᵀ on the GPU as two fp32 cuBLASLt
// matmuls. Row-major [rows, cols] is column-major [cols, rows] (kernels/blas_lt.h), so:
//   u [M, r] = x Aᵀ           lora_project_cuda = linear_forward_cuda (A is the weight [r, K] of a bias-free Linear)
//   yᵀ[N, M] += s · (B as r×N)ᵀ · (u as r×M)      one LtGemm: m = N, n = M, k = r, A-operand B transposed
//                                                  (lda = r), B-operand u (ldb = r), D = y (ldd = N), alpha = s,
//                                                  beta = 1
// Both are fp32 end to end (CUBLAS_COMPUTE_32F, no TF32): the branch adds no rounding beyond fp32 summation order.
#ifdef QWENQ_HAVE_CUDA

#include "lora/lora_linear.h"

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/blas_lt.h"

namespace qwenq {

namespace {

// Whether the byte ranges [a, a + a_bytes) and [b, b + b_bytes) intersect.
bool overlaps(const void* a, int64_t a_bytes, const void* b, int64_t b_bytes) {
  const char* pa = static_cast<const char*>(a);
  const char* pb = static_cast<const char*>(b);
  return pa < pb + b_bytes && pb < pa + a_bytes;
}

}  // namespace

void lora_project_cuda(const float* x, int64_t M, int64_t K, const float* A, int64_t r, float* u, CudaStream stream) {
  const char* name = "lora_project_cuda";
  QWENQ_CHECK(M >= 0 && K > 0 && r > 0, name << ": bad shape M=" << M << " K=" << K << " r=" << r);
  if (M == 0) return;
  QWENQ_CHECK(x != nullptr && A != nullptr && u != nullptr,
              name << ": null pointer (M=" << M << " K=" << K << " r=" << r << ")");
  const int64_t f = static_cast<int64_t>(sizeof(float));
  QWENQ_CHECK(!overlaps(u, M * r * f, x, M * K * f), name << ": u [" << M << ", " << r << "] overlaps x");
  linear_forward_cuda(x, M, K, A, DType::F32, r, nullptr, DType::F32, u, DType::F32, stream);
}

void lora_forward_cuda(const float* x, int64_t M, int64_t K, const float* A, const float* B, int64_t r, int64_t N,
                       float s, float* y, float* u, CudaStream stream) {
  const char* name = "lora_forward_cuda";
  QWENQ_CHECK(M >= 0 && K > 0 && N > 0 && r > 0,
              name << ": bad shape M=" << M << " K=" << K << " N=" << N << " r=" << r);
  if (M == 0) return;
  QWENQ_CHECK(x != nullptr && A != nullptr && B != nullptr && y != nullptr && u != nullptr,
              name << ": null pointer (M=" << M << " K=" << K << " N=" << N << " r=" << r << ")");
  const int64_t f = static_cast<int64_t>(sizeof(float));
  QWENQ_CHECK(!overlaps(u, M * r * f, x, M * K * f) && !overlaps(u, M * r * f, y, M * N * f),
              name << ": the scratch u [" << M << ", " << r << "] overlaps x or y");
  lora_project_cuda(x, M, K, A, r, u, stream);
  LtGemm g;
  g.m = N, g.n = M, g.k = r;
  g.trans_a = true, g.trans_b = false;
  g.lda = r, g.ldb = r, g.ldd = N;
  g.accumulate = true;
  BlasLt::current().matmul(g, B, u, y, nullptr, s, stream);
}

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
