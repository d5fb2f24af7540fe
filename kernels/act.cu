// SwiGLU on the GPU, the twin of act_ref.cpp, with its formulas (fp32, expf: CUDA's is within 2 ulp,
// glibc's within 1):
//   forward   out = g / (1 + e^-g) · up                      (g → −∞: e^-g = inf, silu = −0)
//   backward  e = e^-g, s = 1 / (1 + e), 1 − s taken as e·s for g >= 0 (no cancellation as s → 1),
//             dup = dout · (g·s),  dgate = dout · up · (s · (1 + g·(1 − s)))
// Memory-bound and elementwise: a grid-stride loop, 16-byte loads and stores when every array is 16-byte
// aligned (the usual case: cudaMalloc'd rows of a width divisible by 4), scalar for the tail and otherwise.
// Each element's inputs are read before its outputs are written, so outputs may alias inputs as in the ref.
#include <cstdint>

#include "core/error.h"
#include "kernels/act.h"
#include "kernels/cuda_check.cuh"

namespace qwenq {

namespace {

constexpr unsigned kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;  // grid-stride beyond: ~30 blocks per SM on an H100 keep loads in flight

__device__ __forceinline__ float silu_up(float g, float u) { return g / (1.0f + expf(-g)) * u; }

__device__ __forceinline__ void swiglu_grad(float d, float g, float u, float* dg, float* du) {
  const float e = expf(-g), s = 1.0f / (1.0f + e);
  const float one_minus_s = g >= 0.f ? e * s : 1.0f - s;
  *dg = d * u * (s * (1.0f + g * one_minus_s));
  *du = d * (g * s);
}

__global__ void swiglu_forward_kernel(const float* gate, const float* up, int64_t n, bool vec4, float* out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t scalar_from = 0;
  if (vec4) {
    const int64_t n4 = n / 4;
    for (int64_t j = i; j < n4; j += stride) {
      const float4 g = reinterpret_cast<const float4*>(gate)[j], u = reinterpret_cast<const float4*>(up)[j];
      reinterpret_cast<float4*>(out)[j] =
          make_float4(silu_up(g.x, u.x), silu_up(g.y, u.y), silu_up(g.z, u.z), silu_up(g.w, u.w));
    }
    scalar_from = n4 * 4;
  }
  for (int64_t j = scalar_from + i; j < n; j += stride) out[j] = silu_up(gate[j], up[j]);
}

__global__ void swiglu_backward_kernel(const float* dout, const float* gate, const float* up, int64_t n, bool vec4,
                                       float* dgate, float* dup) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t scalar_from = 0;
  if (vec4) {
    const int64_t n4 = n / 4;
    for (int64_t j = i; j < n4; j += stride) {
      const float4 d = reinterpret_cast<const float4*>(dout)[j], g = reinterpret_cast<const float4*>(gate)[j],
                   u = reinterpret_cast<const float4*>(up)[j];
      float4 dg, du;
      swiglu_grad(d.x, g.x, u.x, &dg.x, &du.x);
      swiglu_grad(d.y, g.y, u.y, &dg.y, &du.y);
      swiglu_grad(d.z, g.z, u.z, &dg.z, &du.z);
      swiglu_grad(d.w, g.w, u.w, &dg.w, &du.w);
      reinterpret_cast<float4*>(dgate)[j] = dg;
      reinterpret_cast<float4*>(dup)[j] = du;
    }
    scalar_from = n4 * 4;
  }
  for (int64_t j = scalar_from + i; j < n; j += stride) swiglu_grad(dout[j], gate[j], up[j], &dgate[j], &dup[j]);
}

unsigned blocks_for(int64_t n, bool vec4) {
  const int64_t units = vec4 ? (n + 3) / 4 : n;
  const int64_t b = (units + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < kMaxBlocks ? b : kMaxBlocks);
}

}  // namespace

void swiglu_forward_cuda(const float* gate, const float* up, int64_t n, float* out, CudaStream stream) {
  QWENQ_CHECK(n >= 0, "swiglu_forward_cuda: negative size " << n);
  if (n == 0) return;
  QWENQ_CHECK(gate != nullptr && up != nullptr && out != nullptr, "swiglu_forward_cuda: null pointer");
  const bool vec4 = is_aligned(gate, 16) && is_aligned(up, 16) && is_aligned(out, 16);
  swiglu_forward_kernel<<<blocks_for(n, vec4), kThreads, 0, stream>>>(gate, up, n, vec4, out);
  QWENQ_CUDA_CHECK_LAUNCH("swiglu_forward_cuda n=" << n);
}

void swiglu_backward_cuda(const float* dout, const float* gate, const float* up, int64_t n, float* dgate, float* dup,
                          CudaStream stream) {
  QWENQ_CHECK(n >= 0, "swiglu_backward_cuda: negative size " << n);
  if (n == 0) return;
  QWENQ_CHECK(dout != nullptr && gate != nullptr && up != nullptr && dgate != nullptr && dup != nullptr,
              "swiglu_backward_cuda: null pointer");
  QWENQ_CHECK(dgate != dup, "swiglu_backward_cuda: dgate and dup must be different buffers");
  const bool vec4 = is_aligned(dout, 16) && is_aligned(gate, 16) && is_aligned(up, 16) && is_aligned(dgate, 16) &&
                    is_aligned(dup, 16);
  swiglu_backward_kernel<<<blocks_for(n, vec4), kThreads, 0, stream>>>(dout, gate, up, n, vec4, dgate, dup);
  QWENQ_CUDA_CHECK_LAUNCH("swiglu_backward_cuda n=" << n);
}

}  // namespace qwenq
