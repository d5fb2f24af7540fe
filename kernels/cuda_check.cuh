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
//   download_sync(src, n, stream)   a device array copied to a host vector, complete on return (index checks)
//   upload_owned_async(dst, host, stream)
//                                   copies a host vector to device memory on `stream` and keeps the vector alive
//                                   until the copy has read it (see below): for host data that dies when the
//                                   launcher returns (a tile table, a copy of the caller's cu_seqlens).
// Launches are asynchronous: a fault inside a kernel surfaces at the next synchronizing call on that stream.
#pragma once

#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <sstream>
#include <utility>
#include <vector>

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

namespace qwenq {

// `host` -> device memory `dst` on `stream`, the vector's lifetime ordered on the stream: it moves to the heap and
// a host function queued right after the copy deletes it, so it lives until the copy has read it and the caller
// waits for nothing. cudaMemcpyAsync from pageable memory only "might be synchronous" (CUDA's API sync behaviour):
// a source that dies or is overwritten when the call returns relies on staging the runtime does not promise (and
// that a device reading host memory in place, HMM/ATS, need not do). On a failure to queue the deletion the
// stream is waited for before the vector goes.
template <typename T>
void upload_owned_async(void* dst, std::vector<T> host, cudaStream_t stream) {
  if (host.empty()) return;
  auto* keep = new std::vector<T>(std::move(host));
  cudaError_t e = cudaMemcpyAsync(dst, keep->data(), keep->size() * sizeof(T), cudaMemcpyHostToDevice, stream);
  if (e == cudaSuccess) {
    e = cudaLaunchHostFunc(stream, [](void* p) { delete static_cast<std::vector<T>*>(p); }, keep);
    if (e == cudaSuccess) return;
    cudaStreamSynchronize(stream);  // the queued copy may still read *keep
  }
  delete keep;
  throw_cuda_failure(static_cast<int>(e), "cudaMemcpyAsync / cudaLaunchHostFunc (upload_owned_async)", __func__,
                     __FILE__, __LINE__);
}

// n values from device memory `src`, on the host when this returns: the copy waits for the work queued before it on
// `stream` (which may be producing them), then the stream is waited for. The launchers that check device-side
// indices with their ref's messages (targets, token ids, row indices) read them so.
template <typename T>
std::vector<T> download_sync(const T* src, int64_t n, cudaStream_t stream) {
  std::vector<T> host(static_cast<size_t>(n));
  if (host.empty()) return host;
  QWENQ_CUDA_CHECK(cudaMemcpyAsync(host.data(), src, host.size() * sizeof(T), cudaMemcpyDeviceToHost, stream));
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

}  // namespace qwenq

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

// A running arg-max: the value and its index, i = -1 before any value.
struct ArgMax {
  float m;
  int64_t i;
};

// b (value bm at index bi; bi < 0: nothing) replaces a when larger, or equal at a smaller index: merged in any order,
// the first index of the largest value (torch.argmax's tie rule). NaNs are the caller's to skip.
__device__ __forceinline__ void merge_argmax(ArgMax& a, float bm, int64_t bi) {
  if (bi < 0) return;
  if (a.i < 0 || bm > a.m || (bm == a.m && bi < a.i)) {
    a.m = bm;
    a.i = bi;
  }
}

// Offers value x at index v to a thread's running arg-max, v increasing: a NaN is skipped, only a strictly larger
// value replaces the kept one (so the first index of a tie stays).
__device__ __forceinline__ void offer_argmax(ArgMax& a, float x, int64_t v) {
  if (x == x && (a.i < 0 || x > a.m)) a = {x, v};
}

// The index an arg-max settled on, 0 when it saw no value (a row of NaN): the refs' first_argmax_ref.
__device__ __forceinline__ int64_t argmax_index(const ArgMax& a) { return a.i < 0 ? 0 : a.i; }

// The block's arg-max of every thread's (blockDim.x a multiple of 32); every thread gets it. sm, si hold 32 entries;
// barriers as block_sum's (consecutive calls may share them).
__device__ __forceinline__ ArgMax block_argmax(ArgMax a, float* sm, int64_t* si) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) {
    const float m2 = __shfl_xor_sync(0xffffffffu, a.m, o);
    const int64_t i2 = __shfl_xor_sync(0xffffffffu, a.i, o);
    merge_argmax(a, m2, i2);
  }
  __syncthreads();
  if (lane == 0) {
    sm[warp] = a.m;
    si[warp] = a.i;
  }
  __syncthreads();
  a.m = lane < warps ? sm[lane] : 0.f;
  a.i = lane < warps ? si[lane] : -1;
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) {
    const float m2 = __shfl_xor_sync(0xffffffffu, a.m, o);
    const int64_t i2 = __shfl_xor_sync(0xffffffffu, a.i, o);
    merge_argmax(a, m2, i2);
  }
  return a;
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
