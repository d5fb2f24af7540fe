// The plain-C++ half of the CUDA support: no CUDA header, so the op headers (norm.h, loss.h, ...) can declare
// their `_cuda` launchers with it inside `#ifdef QWENQ_HAVE_CUDA` and CPU-only code never sees CUDA types.
//
//   CudaStream      the runtime's cudaStream_t under another name: both are `CUstream_st*`, so a cudaStream_t
//                   passes as is; nullptr is the legacy default stream.
//   DeviceMemory    RAII for one stream-ordered device allocation (cudaMallocAsync / cudaFreeAsync on its
//                   stream): the library's scratch buffers. Move-only; a failed allocation throws (out of
//                   memory: the caching allocator's idle blocks are released and it retries once, then
//                   OutOfMemoryError with kernels/device_allocator.h's message). The device's default pool keeps
//                   freed scratch mapped for the next allocation rather than unmapping it at each
//                   synchronization; the caching allocator trims it before it reports out of memory.
//   throw_cuda_failure / throw_cuda_launch_failure
//                   build the qwenq::Error behind QWENQ_CUDA_CHECK and QWENQ_CUDA_CHECK_LAUNCH, which live in
//                   kernels/cuda_check.cuh with the other CUDA-side helpers (they need cudaError_t).
// Errors read like the rest of the project's:
//   "CUDA error cudaErrorMemoryAllocation (out of memory) from `cudaMallocAsync(&p_, bytes, stream_)` [in
//    DeviceMemory at cuda_check.cu:40]"
//   "rmsnorm_forward_cuda rows=512 C=8192: kernel launch failed: cudaErrorInvalidConfiguration (invalid
//    configuration argument) [in rmsnorm_forward_cuda at norm.cu:120]"
#pragma once

#include <cstddef>
#include <string>

struct CUstream_st;  // the CUDA runtime's opaque stream; cudaStream_t is `CUstream_st*`

namespace qwenq {

using CudaStream = ::CUstream_st*;

// Whether p is a multiple of `bytes` (the launchers' test for their vector loads and stores).
inline bool is_aligned(const void* p, size_t bytes) { return reinterpret_cast<size_t>(p) % bytes == 0; }

// `code` is a cudaError_t. Out of line (kernels/cuda_check.cu) so that no header needs the runtime's names.
[[noreturn]] void throw_cuda_failure(int code, const char* stmt, const char* func, const char* file, int line);
// For launches: `context` names the kernel and its shapes ("rmsnorm_forward_cuda rows=3 C=896").
[[noreturn]] void throw_cuda_launch_failure(int code, const std::string& context, const char* func, const char* file,
                                            int line);

// One device allocation of `bytes` (0 allowed: no allocation, get() == nullptr), ordered on `stream`: it may
// be used by work queued on `stream` after the constructor and is released after that work (cudaFreeAsync).
class DeviceMemory {
 public:
  DeviceMemory() = default;
  explicit DeviceMemory(size_t bytes, CudaStream stream = nullptr);
  ~DeviceMemory();
  DeviceMemory(DeviceMemory&& other) noexcept;
  DeviceMemory& operator=(DeviceMemory&& other) noexcept;
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  void* get() const { return p_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void release() noexcept;
  void* p_ = nullptr;
  size_t bytes_ = 0;
  CudaStream stream_ = nullptr;
};

// Streaming multiprocessors of the current device, read once per process (the launch-shape heuristics of the
// kernels; 132, an H100 SXM's, when the query fails).
int cuda_sm_count();

// The Hopper kernels (wgmma: kernels/qgemm_wgmma.cu, kernels/flash_attention_wgmma.cu) run only on an sm_90 device
// that loaded this build's sm_90a code: cuda_wgmma_supported() probes that once per device (kernels/wgmma_probe.cu;
// false without a device, on other GPUs, or with a build lacking 90a). cuda_wgmma_enabled(): supported and the
// environment does not say QWENQ_WGMMA=0; the models' dispatchers (qgemm_int4_cuda, qgemm_int4_t_cuda,
// attention_forward_cuda, attention_backward_cuda) read it. Default on since the H200 run of 2026-12-04 (every wgmma
// test against the CPU twins passed; flash attention 1.6x the mma.sync kernels, the 4-bit GEMMs 1.1x:
// benchmarks/results/2026-12-04-h200-first-gpu-run.md).
bool cuda_wgmma_supported();
bool cuda_wgmma_enabled();

}  // namespace qwenq
