// Inverted dropout on the GPU, the twin of dropout_ref.cpp, bit for bit: the mask is kernels/dropout_mask.h's
// integer hash of (key, i) (the same code, compiled __host__ __device__), the scale 1/(1 − p) is computed on the
// host and passed in, the forward is one fp32 product and the backward one fmaf, as the ref's std::fma.
// Memory-bound and elementwise: a grid-stride loop with 16-byte loads and stores when both arrays are 16-byte
// aligned (element i of a float4 at j is 4j + lane, the flat index the mask needs), scalar for the tail and
// otherwise. The hash is 3 64-bit multiplies (~12 integer instructions) per element, hidden behind the loads.
// NEFTune's uniform noise (uniform_noise_add_cuda) is the forward's loop with x + a·(2u − 1) as one fmaf per element.
#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "kernels/dropout.h"
#include "kernels/dropout_mask.h"

namespace qwenq {

namespace {

constexpr unsigned kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;  // grid-stride beyond: enough blocks per SM to keep loads in flight

// out_j = f(j, in_j) for j < n (out may be in): 16-byte loads and stores when vec4 (both arrays aligned; element j of
// the float4 at q is 4q + lane, the flat index the mask needs), scalar for the tail and otherwise.
template <typename F>
__global__ void indexed_map_kernel(const float* in, int64_t n, bool vec4, float* out, F f) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t scalar_from = 0;
  if (vec4) {
    const int64_t n4 = n / 4;
    for (int64_t q = i; q < n4; q += stride) {
      const float4 v = reinterpret_cast<const float4*>(in)[q];
      const int64_t e = 4 * q;
      reinterpret_cast<float4*>(out)[q] = make_float4(f(e, v.x), f(e + 1, v.y), f(e + 2, v.z), f(e + 3, v.w));
    }
    scalar_from = n4 * 4;
  }
  for (int64_t j = scalar_from + i; j < n; j += stride) out[j] = f(j, in[j]);
}

// The forward's element: the mask factor times x.
struct DropoutElement {
  float p, scale;
  uint64_t key;
  __device__ float operator()(int64_t j, float x) const { return dropout_factor(key, j, p, scale) * x; }
};

// NEFTune's element: x + a·(2u − 1) as one fmaf (the ref's std::fma).
struct NoiseElement {
  float half_width;
  uint64_t key;
  __device__ float operator()(int64_t j, float x) const {
    return fmaf(half_width, 2.0f * dropout_uniform(key, j) - 1.0f, x);
  }
};

__global__ void dropout_backward_kernel(const float* dxd, int64_t n, float p, float scale, uint64_t key, bool vec4,
                                        float* dx) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t scalar_from = 0;
  if (vec4) {
    const int64_t n4 = n / 4;
    for (int64_t j = i; j < n4; j += stride) {
      const float4 g = reinterpret_cast<const float4*>(dxd)[j];
      float4 acc = reinterpret_cast<const float4*>(dx)[j];
      const int64_t e = 4 * j;
      acc.x = fmaf(dropout_factor(key, e, p, scale), g.x, acc.x);
      acc.y = fmaf(dropout_factor(key, e + 1, p, scale), g.y, acc.y);
      acc.z = fmaf(dropout_factor(key, e + 2, p, scale), g.z, acc.z);
      acc.w = fmaf(dropout_factor(key, e + 3, p, scale), g.w, acc.w);
      reinterpret_cast<float4*>(dx)[j] = acc;
    }
    scalar_from = n4 * 4;
  }
  for (int64_t j = scalar_from + i; j < n; j += stride) dx[j] = fmaf(dropout_factor(key, j, p, scale), dxd[j], dx[j]);
}

unsigned blocks_for(int64_t n, bool vec4) {
  const int64_t units = vec4 ? (n + 3) / 4 : n;
  const int64_t b = (units + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < kMaxBlocks ? b : kMaxBlocks);
}

void check_args(const char* fn, const void* in, int64_t n, float p, const void* out) {
  QWENQ_CHECK(p >= 0.0f && p < 1.0f, fn << ": dropout probability must be in [0, 1), got " << p);
  QWENQ_CHECK(n >= 0, fn << ": negative size " << n);
  QWENQ_CHECK(n == 0 || (in != nullptr && out != nullptr), fn << ": null pointer");
}

}  // namespace

void dropout_forward_cuda(const float* x, int64_t n, float p, uint64_t key, float* x_drop, CudaStream stream) {
  check_args("dropout_forward_cuda", x, n, p, x_drop);
  if (n == 0) return;
  const float scale = 1.0f / (1.0f - p);  // on the host, as the ref
  const bool vec4 = is_aligned(x, 16) && is_aligned(x_drop, 16);
  indexed_map_kernel<<<blocks_for(n, vec4), kThreads, 0, stream>>>(x, n, vec4, x_drop, DropoutElement{p, scale, key});
  QWENQ_CUDA_CHECK_LAUNCH("dropout_forward_cuda n=" << n << " p=" << p);
}

void dropout_backward_cuda(const float* dx_drop, int64_t n, float p, uint64_t key, float* dx, CudaStream stream) {
  check_args("dropout_backward_cuda", dx_drop, n, p, dx);
  if (n == 0) return;
  const float scale = 1.0f / (1.0f - p);
  const bool vec4 = is_aligned(dx_drop, 16) && is_aligned(dx, 16);
  dropout_backward_kernel<<<blocks_for(n, vec4), kThreads, 0, stream>>>(dx_drop, n, p, scale, key, vec4, dx);
  QWENQ_CUDA_CHECK_LAUNCH("dropout_backward_cuda n=" << n << " p=" << p);
}

void uniform_noise_add_cuda(float* x, int64_t n, float half_width, uint64_t key, CudaStream stream) {
  QWENQ_CHECK(std::isfinite(half_width) && half_width >= 0.0f,
              "uniform_noise_add_cuda: the half-width must be finite and >= 0, got " << half_width);
  QWENQ_CHECK(n >= 0, "uniform_noise_add_cuda: negative size " << n);
  QWENQ_CHECK(n == 0 || x != nullptr, "uniform_noise_add_cuda: null pointer");
  if (n == 0) return;
  const bool vec4 = is_aligned(x, 16);
  indexed_map_kernel<<<blocks_for(n, vec4), kThreads, 0, stream>>>(x, n, vec4, x, NoiseElement{half_width, key});
  QWENQ_CUDA_CHECK_LAUNCH("uniform_noise_add_cuda n=" << n);
}

}  // namespace qwenq
