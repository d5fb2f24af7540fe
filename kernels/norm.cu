// RMSNorm on the GPU, the twin of norm_ref.cpp (formulas there and in norm.h):
//   forward   r = 1 / sqrtf(Σx² / C + eps) (fp32 sum),            y = w · (x · r)
//   backward  r as above, dot = Σ (dy·w)·x (fp32), coef = r·r·dot / C,   dx = r · (dy·w − x·coef)
// One block per row: the row is read once for the block-wide sums (warp shuffles, then one value per warp) and
// once more to write, which on Hopper mostly hits L1/L2 because the block just touched it. x/y (forward) and
// dy/x/dx (backward) may alias: a thread reads and writes only its own columns, and every read of the first
// loop finishes before the barrier inside block_sum. The weight's dtype is a template parameter: 3 dtypes x 2
// directions = 6 kernels.
#include <cuda_fp16.h>

#include <climits>
#include <cstdint>

#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "kernels/norm.h"

namespace qwenq {

namespace {

// Widens one weight element to fp32 exactly (bf16: the top half of an fp32; f16: the hardware conversion,
// subnormals included), as core's to_f32 does for the ref.
struct LoadF32 {
  __device__ static float at(const void* w, int64_t c) { return static_cast<const float*>(w)[c]; }
};
struct LoadBF16 {
  __device__ static float at(const void* w, int64_t c) {
    return cuda::bf16_bits_to_f32(static_cast<const uint16_t*>(w)[c]);
  }
};
struct LoadF16 {
  __device__ static float at(const void* w, int64_t c) {
    return cuda::f16_bits_to_f32(static_cast<const uint16_t*>(w)[c]);
  }
};

template <typename W>
__global__ void rmsnorm_forward_kernel(const float* x, int64_t C, const void* w, float eps, float* y) {
  __shared__ float scratch[32];
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * C;
  float* yr = y + static_cast<int64_t>(blockIdx.x) * C;
  float ss = 0.f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) ss += xr[c] * xr[c];
  ss = cuda::block_sum(ss, scratch);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(C) + eps);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) yr[c] = W::at(w, c) * (xr[c] * inv);
}

template <typename W>
__global__ void rmsnorm_backward_kernel(const float* dy, const float* x, int64_t C, const void* w, float eps,
                                        float* dx) {
  __shared__ float scratch[32];
  const int64_t off = static_cast<int64_t>(blockIdx.x) * C;
  const float *xr = x + off, *dyr = dy + off;
  float* dxr = dx + off;
  float ss = 0.f, dot = 0.f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const float xc = xr[c];
    ss += xc * xc;
    dot += dyr[c] * W::at(w, c) * xc;
  }
  ss = cuda::block_sum(ss, scratch);
  dot = cuda::block_sum(dot, scratch);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(C) + eps);
  const float coef = inv * inv * dot / static_cast<float>(C);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dxr[c] = inv * (dyr[c] * W::at(w, c) - xr[c] * coef);
}

// The ref's checks (norm_ref.cpp: checked_weight), plus the grid limit of one block per row.
void check_args(const char* name, int64_t rows, int64_t C, const void* weight, DType w_dtype, float eps) {
  QWENQ_CHECK(rows >= 0 && C > 0, name << ": bad shape rows=" << rows << " C=" << C);
  QWENQ_CHECK(w_dtype == DType::F32 || w_dtype == DType::BF16 || w_dtype == DType::F16,
              name << ": weight dtype " << dtype_name(w_dtype) << " is not supported (F32, BF16 or F16)");
  QWENQ_CHECK(eps >= 0.f, name << ": eps must be >= 0, got " << eps);
  QWENQ_CHECK(rows <= INT_MAX, name << ": rows=" << rows << " exceeds the grid limit " << INT_MAX);
  if (rows > 0) QWENQ_CHECK(weight != nullptr, name << ": null weight");
}

// About 4 columns per thread, whole warps, 32..1024 threads: C = 896 -> 224, 3584 -> 896, 8192 -> 1024.
unsigned threads_for(int64_t C) {
  const int64_t t = ((C + 3) / 4 + 31) / 32 * 32;
  return static_cast<unsigned>(t < 32 ? 32 : t > 1024 ? 1024 : t);
}

}  // namespace

void rmsnorm_forward_cuda(const float* x, int64_t rows, int64_t C, const void* weight, DType w_dtype, float eps,
                          float* y, CudaStream stream) {
  check_args("rmsnorm_forward_cuda", rows, C, weight, w_dtype, eps);
  if (rows == 0) return;
  QWENQ_CHECK(x != nullptr && y != nullptr, "rmsnorm_forward_cuda: null pointer");
  const dim3 grid(static_cast<unsigned>(rows)), block(threads_for(C));
  switch (w_dtype) {
    case DType::F32:
      rmsnorm_forward_kernel<LoadF32><<<grid, block, 0, stream>>>(x, C, weight, eps, y);
      break;
    case DType::BF16:
      rmsnorm_forward_kernel<LoadBF16><<<grid, block, 0, stream>>>(x, C, weight, eps, y);
      break;
    default:
      rmsnorm_forward_kernel<LoadF16><<<grid, block, 0, stream>>>(x, C, weight, eps, y);
      break;
  }
  QWENQ_CUDA_CHECK_LAUNCH("rmsnorm_forward_cuda rows=" << rows << " C=" << C << " weight " << dtype_name(w_dtype));
}

void rmsnorm_backward_cuda(const float* dy, const float* x, int64_t rows, int64_t C, const void* weight, DType w_dtype,
                           float eps, float* dx, CudaStream stream) {
  check_args("rmsnorm_backward_cuda", rows, C, weight, w_dtype, eps);
  if (rows == 0) return;
  QWENQ_CHECK(dy != nullptr && x != nullptr && dx != nullptr, "rmsnorm_backward_cuda: null pointer");
  const dim3 grid(static_cast<unsigned>(rows)), block(threads_for(C));
  switch (w_dtype) {
    case DType::F32:
      rmsnorm_backward_kernel<LoadF32><<<grid, block, 0, stream>>>(dy, x, C, weight, eps, dx);
      break;
    case DType::BF16:
      rmsnorm_backward_kernel<LoadBF16><<<grid, block, 0, stream>>>(dy, x, C, weight, eps, dx);
      break;
    default:
      rmsnorm_backward_kernel<LoadF16><<<grid, block, 0, stream>>>(dy, x, C, weight, eps, dx);
      break;
  }
  QWENQ_CUDA_CHECK_LAUNCH("rmsnorm_backward_cuda rows=" << rows << " C=" << C << " weight " << dtype_name(w_dtype));
}

}  // namespace qwenq
