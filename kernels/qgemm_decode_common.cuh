// Pieces shared by the two decode-regime W4A16 kernels on the Q4 layout (M = 1..64, memory bound):
// kernels/qgemm.cu (fp32 FMAs, every kind, F32 or BF16 activations) and kernels/qgemm_decode_mma.cu (tensor
// cores, BF16 activations): the streaming load of packed words, a uint4's component by index, and the
// deterministic split-K reduction (which kernels/qgemm_dense.cu also uses, with one split, to scatter dx through
// perm). For .cu files only; everything is in an anonymous namespace (each file gets its own kernels).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda_check.h"

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

// Component c (0..3) of v; with c known at compile time (unrolled loops) it is a register, not a local array.
__device__ __forceinline__ uint32_t u4_get(const uint4& v, int c) {
  return c == 0 ? v.x : (c == 1 ? v.y : (c == 2 ? v.z : v.w));
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

// reduce_kernel on stream s, 256 threads per block, at most 8 blocks per SM (grid-stride). The caller checks the
// launch.
inline void launch_reduce(const float* ws, int splits, int64_t M, int64_t Mpad, int64_t ld, int64_t valid,
                          const int32_t* perm, float* out, cudaStream_t s) {
  const int blocks = static_cast<int>(std::min<int64_t>((M * valid + 255) / 256, 8 * int64_t{cuda_sm_count()}));
  reduce_kernel<<<blocks, 256, 0, s>>>(ws, splits, M, Mpad, ld, valid, perm, out);
}

}  // namespace
}  // namespace qwenq
