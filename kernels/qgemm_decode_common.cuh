// Pieces shared by the two decode-regime W4A16 kernels on the Q4 layout (M = 1..64, memory bound):
// kernels/qgemm.cu (fp32 FMAs, every kind, F32 or BF16 activations) and kernels/qgemm_decode_mma.cu (tensor
// cores, Int kinds, BF16 activations): the streaming load of packed words and the deterministic split-K
// reduction. For .cu files only; everything is in an anonymous namespace (each file gets its own kernels).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace qwenq {
namespace {

// Streaming load of 4 packed words: read once, so keep them out of L1 (L1::no_allocate) and leave L1 to the
// activations and meta words, which every thread re-reads. .nc: read-only for the kernel's lifetime.
__device__ __forceinline__ uint4 ld_stream(const uint32_t* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// out[m, idx(j)] = Σ_s ws[s, m, j] for m < M, j < valid (idx = perm or identity), the splits added in order
// (deterministic, unlike atomicAdd). ws is [splits, Mpad, ld].
__global__ void reduce_kernel(const float* ws, int splits, int64_t M, int64_t Mpad, int64_t ld, int64_t valid,
                              const int32_t* perm, float* out) {
  const int64_t total = M * valid;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = i / valid, j = i % valid;
    float s = 0.0f;
    for (int k = 0; k < splits; ++k) s += ws[(k * Mpad + m) * ld + j];
    out[m * valid + (perm ? perm[j] : j)] = s;
  }
}

}  // namespace
}  // namespace qwenq
