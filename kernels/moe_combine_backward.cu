// The CUDA twins of kernels/moe_combine_backward_ref.cpp (formulas and orders in moe_combine_backward.h).
//   moe_combine_backward_kernel  one block of 256 threads per token (a 1-D grid: up to 2³¹ − 1 tokens). For each of
//                                the token's k choices every thread walks its strided columns, writes dy (one
//                                __fmul_rn) and adds dout · y into a double (the product of two floats is exact in
//                                double, so the fma is the ref's multiply-then-add); a fixed-order block sum
//                                (kernels/cuda_check.cuh) and thread 0 writes dw. Then the shared expert the same way:
//                                ds, and dg with the ref's three float roundings.
//   moe_scatter_add_kernel       a 2-D grid, one block row per token (sliced past the grid's 65535-row limit), a
//                                thread per column: dn's value plus the k rows of dx in j order (__fadd_rn).
// The _rn intrinsics keep nvcc from contracting anything, so dy, ds and dn are the ref's bits; dw and dg differ
// from it only by the order of the double sum, and are the same bits run to run.
#include <algorithm>
#include <climits>
#include <vector>

#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "kernels/moe_combine_backward.h"

namespace qwenq {

namespace {

constexpr unsigned kThreads = 256;

__global__ void moe_combine_backward_kernel(const float* dout, const float* y, int64_t C, const int32_t* rows,
                                            const float* w, int64_t k, const float* s, const float* sw, float* dy,
                                            float* dw, float* ds, float* dg) {
  __shared__ double scratch[32];
  const int64_t t = blockIdx.x;
  const float* d = dout + t * C;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t r = rows[t * k + j];
    const float wj = w[t * k + j];
    const float* src = y + r * C;
    float* dst = dy + r * C;
    double dot = 0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const float dc = d[c];
      dst[c] = __fmul_rn(wj, dc);
      dot = __fma_rn(static_cast<double>(dc), static_cast<double>(src[c]), dot);
    }
    dot = cuda::block_sum(dot, scratch);  // starts with a barrier: the previous choice's reads of scratch are done
    if (threadIdx.x == 0) dw[t * k + j] = static_cast<float>(dot);
  }
  if (s == nullptr) return;  // uniform over the block: no thread is left waiting at a barrier
  const float g = sw[t];
  const float* st = s + t * C;
  float* dst = ds + t * C;
  double dot = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const float dc = d[c];
    dst[c] = __fmul_rn(g, dc);
    dot = __fma_rn(static_cast<double>(dc), static_cast<double>(st[c]), dot);
  }
  dot = cuda::block_sum(dot, scratch);
  if (threadIdx.x == 0) dg[t] = __fmul_rn(__fmul_rn(static_cast<float>(dot), g), __fsub_rn(1.f, g));
}

__global__ void moe_scatter_add_kernel(const float* dx, int64_t C, const int32_t* rows, int64_t k, float* dn) {
  const int64_t t = blockIdx.y;
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  float acc = dn[t * C + c];
  for (int64_t j = 0; j < k; ++j) acc = __fadd_rn(acc, dx[static_cast<int64_t>(rows[t * k + j]) * C + c]);
  dn[t * C + c] = acc;
}

}  // namespace

void moe_combine_backward_cuda(const float* dout, const float* y, int64_t R, int64_t C, const int32_t* rows,
                               const float* w, int64_t T, int64_t k, const float* s, const float* sw, float* dy,
                               float* dw, float* ds, float* dg, CudaStream stream, const int32_t* host_rows) {
  const char* name = "moe_combine_backward_cuda";
  if (T == 0) {  // the shapes and the shared pointers still checked (no index to read); nothing to launch
    moe_combine_backward_check(name, R, C, nullptr, 0, k, s, sw, ds, dg);
    return;
  }
  QWENQ_CHECK(R >= 0 && C > 0 && T > 0 && k >= 1, name << ": bad shape R=" << R << " C=" << C << " T=" << T
                                                        << " k=" << k);
  QWENQ_CHECK(T <= INT_MAX, name << ": T=" << T << " tokens exceed the grid limit " << INT_MAX);
  QWENQ_CHECK(dout != nullptr && y != nullptr && rows != nullptr && w != nullptr && dy != nullptr && dw != nullptr,
              name << ": null pointer");
  // The ref's checks on a host copy of the indices: the caller's, or downloaded (that waits for the work queued on
  // `stream`, which may make them).
  moe_combine_backward_check(name, R, C, host_rows ? host_rows : download_sync(rows, T * k, stream).data(), T, k, s,
                             sw, ds, dg);
  moe_combine_backward_kernel<<<static_cast<unsigned>(T), kThreads, 0, stream>>>(dout, y, C, rows, w, k, s, sw, dy, dw,
                                                                                  ds, dg);
  QWENQ_CUDA_CHECK_LAUNCH(name << " R=" << R << " C=" << C << " T=" << T << " k=" << k << " shared "
                               << (s != nullptr));
}

void moe_scatter_add_cuda(const float* dx, int64_t R, int64_t C, const int32_t* rows, int64_t T, int64_t k, float* dn,
                          CudaStream stream, const int32_t* host_rows) {
  const char* name = "moe_scatter_add_cuda";
  if (T == 0) {
    moe_combine_backward_check(name, R, C, nullptr, 0, k, nullptr, nullptr, nullptr, nullptr);
    return;
  }
  QWENQ_CHECK(R >= 0 && C > 0 && T > 0 && k >= 1, name << ": bad shape R=" << R << " C=" << C << " T=" << T
                                                        << " k=" << k);
  QWENQ_CHECK(dx != nullptr && rows != nullptr && dn != nullptr, name << ": null pointer");
  moe_combine_backward_check(name, R, C, host_rows ? host_rows : download_sync(rows, T * k, stream).data(), T, k,
                             nullptr, nullptr, nullptr, nullptr);
  constexpr int64_t kMaxGridY = 65535;  // tokens per launch (the grid's y limit)
  for (int64_t t0 = 0; t0 < T; t0 += kMaxGridY) {
    const int64_t n = std::min(kMaxGridY, T - t0);
    const dim3 grid(static_cast<unsigned>((C + kThreads - 1) / kThreads), static_cast<unsigned>(n));
    moe_scatter_add_kernel<<<grid, kThreads, 0, stream>>>(dx, C, rows + t0 * k, k, dn + t0 * C);
    QWENQ_CUDA_CHECK_LAUNCH(name << " R=" << R << " C=" << C << " T=" << T << " k=" << k << " from token " << t0);
  }
}

}  // namespace qwenq
