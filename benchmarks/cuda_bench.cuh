// Device-side helpers of the CUDA benchmarks (.cu files only): filling inputs with values whose exact size does
// not matter for speed but must be finite. Host helpers: benchmarks/cuda_bench.h.
#pragma once

#include <cstdint>

#include "benchmarks/cuda_bench.h"

namespace qwenq::bench {

// p[i] = bf16 of amplitude·(u − 0.5), u in [0, 1) from a multiplicative hash of (i, seed): uniform-ish, fixed.
__global__ void fill_bf16_kernel(uint16_t* p, int64_t n, uint32_t seed, float amplitude) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    const float v = (static_cast<float>(h & 0xFFFF) / 65536.0f - 0.5f) * amplitude;
    p[i] = static_cast<uint16_t>(__float_as_uint(v) >> 16);
  }
}

inline void fill_bf16(uint16_t* p, int64_t n, uint32_t seed, float amplitude) {
  fill_bf16_kernel<<<1024, 256>>>(p, n, seed, amplitude);
  ck(cudaGetLastError(), "fill_bf16");
}

}  // namespace qwenq::bench
