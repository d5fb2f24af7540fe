// The CUDA-side half of the CUDA support (the plain-C++ half is kernels/cuda_check.h): the check macros, which
// need the runtime's cudaError_t, the block reductions the row kernels share and the exact 16-bit float widenings. Include it from .cu files and
// GPU tests only.
//
//   QWENQ_CUDA_CHECK(call)          throws qwenq::Error naming the call, the error's name and text, the
//                                   function, file and line when `call` does not return cudaSuccess (and
//                                   clears a non-sticky error, so a later launch check does not report it).
//   QWENQ_CUDA_CHECK_LAUNCH(ctx)    after a <<<...>>> launch: cudaGetLastError() (which also clears a
//                                   non-sticky error), thrown with `ctx`, a stream expression naming the kernel
//                                   and its shapes: QWENQ_CUDA_CHECK_LAUNCH("rope_forward_cuda T=" << T << ...).
// Launches are asynchronous: a fault inside a kernel surfaces at the next synchronizing call on that stream.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <sstream>

#include "kernels/cuda_check.h"

#define QWENQ_CUDA_CHECK(call)                                                                             \
  do {                                                                                                     \
    const cudaError_t qwenq_cuda_err_ = (call);                                                            \
    if (qwenq_cuda_err_ != cudaSuccess)                                                                    \
      ::qwenq::throw_cuda_failure(static_cast<int>(qwenq_cuda_err_), #call, __func__, __FILE__, __LINE__); \
  } while (0)

#define QWENQ_CUDA_CHECK_LAUNCH(ctx)                                                                                  \
  do {                                                                                                                \
    const cudaError_t qwenq_cuda_err_ = cudaGetLastError();                                                           \
    if (qwenq_cuda_err_ != cudaSuccess) {                                                                             \
      std::ostringstream qwenq_cuda_os_;                                                                              \
      qwenq_cuda_os_ << ctx;                                                                                          \
      ::qwenq::throw_cuda_launch_failure(static_cast<int>(qwenq_cuda_err_), qwenq_cuda_os_.str(), __func__, __FILE__, \
                                         __LINE__);                                                                   \
    }                                                                                                                 \
  } while (0)

#ifdef __CUDACC__
namespace qwenq::cuda {

constexpr int kWarp = 32;

// Sum over the 32 lanes of a warp; every lane gets the total (butterfly, fixed order: deterministic).
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total. `scratch` holds
// 32 values. It starts with a barrier (consecutive calls may share `scratch`) and passes another once every
// thread has arrived, so after it a thread may overwrite data other threads read before the call (the in-place
// kernels rely on this).
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : T(0);
  return warp_sum(v);
}

// 16-bit floats widened exactly as core/dtype.h's bf16_to_f32 / f16_to_f32, NaN payloads included. An F16 NaN
// is rebuilt from its bits rather than through cvt.f32.f16, whose NaN output the PTX ISA does not promise to keep
// the payload of; every other value converts exactly either way.
__device__ __forceinline__ float bf16_bits_to_f32(uint16_t h) { return __uint_as_float(static_cast<uint32_t>(h) << 16); }

__device__ __forceinline__ float f16_bits_to_f32(uint16_t h) {
  if ((h & 0x7c00u) == 0x7c00u && (h & 0x03ffu) != 0u)
    return __uint_as_float((static_cast<uint32_t>(h & 0x8000u) << 16) | 0x7f800000u |
                           (static_cast<uint32_t>(h & 0x03ffu) << 13));
  return __half2float(__ushort_as_half(h));
}

}  // namespace qwenq::cuda
#endif  // __CUDACC__
