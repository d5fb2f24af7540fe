// The CUDA twin of kernels/moe_combine_ref.cpp (formula and order in moe_combine.h): a 2-D grid, one block row
// (blockIdx.y) per token, each thread a column of it, the k + 1 fused multiply-adds in the ref's order (__fmaf_rn:
// never re-associated or split), so the twins agree bit for bit.
#include <algorithm>
#include <climits>
#include <vector>

#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "kernels/moe_combine.h"

namespace qwenq {

namespace {

constexpr unsigned kThreads = 256;

__global__ void moe_combine_kernel(const float* y, int64_t C, const int32_t* rows, const float* w, int64_t k,
                                   const float* s, const float* sw, float* out) {
  const int64_t t = blockIdx.y;
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  float acc = 0.f;
  for (int64_t j = 0; j < k; ++j) acc = __fmaf_rn(w[t * k + j], y[static_cast<int64_t>(rows[t * k + j]) * C + c], acc);
  if (s != nullptr) acc = __fmaf_rn(sw[t], s[t * C + c], acc);
  out[t * C + c] = acc;
}

}  // namespace

void moe_combine_cuda(const float* y, int64_t R, int64_t C, const int32_t* rows, const float* w, int64_t T, int64_t k,
                      const float* s, const float* sw, float* out, CudaStream stream, const int32_t* host_rows) {
  const char* name = "moe_combine_cuda";
  QWENQ_CHECK(R >= 0 && C > 0 && T >= 0 && k >= 1, name << ": bad shape R=" << R << " C=" << C << " T=" << T
                                                         << " k=" << k);
  if (T == 0) return;
  QWENQ_CHECK(y != nullptr && rows != nullptr && w != nullptr && out != nullptr, name << ": null pointer");
  moe_combine_check(name, R, C, host_rows ? host_rows : download_sync(rows, T * k, stream).data(), T, k, s, sw);
  constexpr int64_t kMaxGridY = 65535;  // tokens per launch (the grid's y limit)
  for (int64_t t0 = 0; t0 < T; t0 += kMaxGridY) {
    const int64_t n = std::min(kMaxGridY, T - t0);
    const dim3 grid(static_cast<unsigned>((C + kThreads - 1) / kThreads), static_cast<unsigned>(n));
    moe_combine_kernel<<<grid, kThreads, 0, stream>>>(y, C, rows + t0 * k, w + t0 * k, k, s ? s + t0 * C : nullptr,
                                                      sw ? sw + t0 : nullptr, out + t0 * C);
    QWENQ_CUDA_CHECK_LAUNCH(name << " R=" << R << " C=" << C << " T=" << T << " k=" << k << " from token " << t0);
  }
}

}  // namespace qwenq
