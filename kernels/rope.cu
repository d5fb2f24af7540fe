// Rotary embedding on the GPU, the twin of rope_ref.cpp (formulas in rope.h):
//   inv_freq[i], s = rope_table(spec, D) on the host, the ref's very function, passed in the kernel's parameters
//                    (at most 256 floats and s), so they are bit-identical to the ref's
//   angle       = (float)pos · inv_freq[i], one fp32 product as the ref
//   cos, sin    = of the fp32 angle in double (CUDA's sincos is within 1 ulp in double; rounded to fp32 this
//                 is the correctly rounded value but in rare near-tie cases, as the ref's double cos/sin), then
//                 times s in fp32 (one rounding, as the ref; exact for s = 1)
//   x'[i] = x[i]·cos − x[i+D/2]·sin,  x'[i+D/2] = x[i+D/2]·cos + x[i]·sin; the backward negates sin
// One block per token: its D/2 cos/sin pairs are computed once into shared memory and applied to all H heads
// (the double sincos is then T·D/2 evaluations, not T·H·D/2). In place, like the ref.
#include <climits>
#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "kernels/rope.h"

namespace qwenq {

namespace {

constexpr int kMaxHalf = static_cast<int>(kRopeMaxHeadDim / 2);

// By value in the kernel parameters (1 KB of the 4 KB parameter space): no allocation, no copy per call.
struct RopeFreqs {
  float inv_freq[kMaxHalf];
  float scale;  // attention_scaling
};

__global__ void rope_kernel(float* x, int64_t H, int half, const int32_t* pos, RopeFreqs freqs, float sign) {
  __shared__ float cs[kMaxHalf], sn[kMaxHalf];
  const int64_t t = blockIdx.x;
  const float p = static_cast<float>(pos[t]);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float angle = p * freqs.inv_freq[i];
    double s, c;
    sincos(static_cast<double>(angle), &s, &c);
    cs[i] = static_cast<float>(c) * freqs.scale;
    sn[i] = sign * (static_cast<float>(s) * freqs.scale);
  }
  __syncthreads();
  const int64_t D = 2 * static_cast<int64_t>(half);
  float* xt = x + t * H * D;
  for (int64_t k = threadIdx.x; k < H * half; k += blockDim.x) {
    const int64_t h = k / half;
    const int i = static_cast<int>(k - h * half);
    float* xh = xt + h * D;
    const float a = xh[i], b = xh[i + half];
    xh[i] = a * cs[i] - b * sn[i];
    xh[i + half] = b * cs[i] + a * sn[i];
  }
}

// The ref's checks (rope_ref.cpp: rotate) and its table, then the launch.
void rotate(const char* name, float* x, int64_t T, int64_t H, int64_t D, const int32_t* pos, const RopeSpec& rope,
            float sign, CudaStream stream) {
  QWENQ_CHECK(T >= 0 && H > 0 && D > 0, name << ": bad shape T=" << T << " H=" << H << " D=" << D);
  QWENQ_CHECK(D % 2 == 0, name << ": head dim D=" << D << " must be even");
  QWENQ_CHECK(D <= kRopeMaxHeadDim, name << ": head dim D=" << D << " exceeds the kernel's limit " << kRopeMaxHeadDim);
  QWENQ_CHECK(T <= INT_MAX, name << ": T=" << T << " exceeds the grid limit " << INT_MAX);
  const RopeTable table = rope_table(rope, D, name);
  if (T == 0) return;
  QWENQ_CHECK(x != nullptr && pos != nullptr, name << ": null pointer");

  const int half = static_cast<int>(D / 2);
  RopeFreqs freqs{};
  for (int i = 0; i < half; ++i) freqs.inv_freq[i] = table.inv_freq[i];
  freqs.scale = table.attention_scaling;
  // Enough whole warps for the H·D/2 pairs of a token, at most 256 (Qwen2.5-72B q: 64·64 = 4096 pairs, 16 each).
  const int64_t pairs = H * half;
  const unsigned threads = static_cast<unsigned>(pairs >= 256 ? 256 : (pairs + 31) / 32 * 32);
  rope_kernel<<<static_cast<unsigned>(T), threads, 0, stream>>>(x, H, half, pos, freqs, sign);
  QWENQ_CUDA_CHECK_LAUNCH(name << " T=" << T << " H=" << H << " D=" << D);
}

}  // namespace

void rope_forward_cuda(float* x, int64_t T, int64_t H, int64_t D, const int32_t* pos, const RopeSpec& rope,
                       CudaStream stream) {
  rotate("rope_forward_cuda", x, T, H, D, pos, rope, 1.f, stream);
}

void rope_backward_cuda(float* dx, int64_t T, int64_t H, int64_t D, const int32_t* pos, const RopeSpec& rope,
                        CudaStream stream) {
  rotate("rope_backward_cuda", dx, T, H, D, pos, rope, -1.f, stream);
}

}  // namespace qwenq
