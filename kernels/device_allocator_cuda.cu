// The CUDA backend of the caching allocator (kernels/device_allocator.h) and the process's allocator for the
// current device. Blocks are plain cudaMalloc allocations (not stream-ordered): the allocator's per-stream cache
// gives the ordering, and a synchronous cudaMalloc keeps "reserved" exactly the bytes this allocator holds.
//   allocate         cudaMalloc; cudaErrorMemoryAllocation -> nullptr (the error is cleared, it is not sticky),
//                    any other error throws with the call
//   release          cudaFree (a destructor path: a failure is cleared and dropped; the call that broke the
//                    context has reported it)
//   memory_info      cudaMemGetInfo: free and total of the whole device, every process included
//   synchronize      cudaDeviceSynchronize: a cached block may be the operand of work queued on any stream
//   release_unused   trims the device's default stream-ordered pool to zero, which keeps the freed scratch of
//                    the kernels' DeviceMemory (cudaMallocAsync) mapped for reuse (kernels/cuda_check.cu)
#include <cuda_runtime.h>

#include <string>

#include "kernels/cuda_check.cuh"
#include "kernels/device_allocator.h"

namespace qwenq {

namespace {

class CudaBackend final : public DeviceMemoryBackend {
 public:
  explicit CudaBackend(int device) : device_(device) {}

  void* allocate(size_t bytes) override {
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e == cudaSuccess) return p;
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear it: the next launch check must not report it
      return nullptr;
    }
    throw_cuda_failure(e, "cudaMalloc(&p, bytes)", __func__, __FILE__, __LINE__);
  }

  void release(void* p) noexcept override {
    if (cudaFree(p) != cudaSuccess) cudaGetLastError();
  }

  bool memory_info(size_t* free_bytes, size_t* total_bytes) override {
    if (cudaMemGetInfo(free_bytes, total_bytes) == cudaSuccess) return true;
    cudaGetLastError();
    return false;
  }

  void synchronize() noexcept override {
    if (cudaDeviceSynchronize() != cudaSuccess) cudaGetLastError();
  }

  void release_unused() noexcept override {
    cudaMemPool_t pool = nullptr;
    if (cudaDeviceGetDefaultMemPool(&pool, device_) != cudaSuccess || cudaMemPoolTrimTo(pool, 0) != cudaSuccess) {
      cudaGetLastError();
    }
  }

  std::string name() const override { return "cuda:" + std::to_string(device_); }

 private:
  int device_ = 0;
};

}  // namespace

DeviceAllocator& cuda_device_allocator() {
  static DeviceAllocator* const allocator = [] {
    int device = 0;
    QWENQ_CUDA_CHECK(cudaGetDevice(&device));
    return new DeviceAllocator(std::make_unique<CudaBackend>(device));
  }();
  return *allocator;
}

void cuda_release_stream(CudaStream stream) noexcept {
  try {
    cuda_device_allocator().release_stream(stream);
  } catch (const Error&) {
    cudaGetLastError();
  }
}

OwnedCudaStream::OwnedCudaStream() {
  cudaStream_t s = nullptr;
  QWENQ_CUDA_CHECK(cudaStreamCreate(&s));
  s_ = s;
}

OwnedCudaStream::~OwnedCudaStream() {
  cuda_release_stream(s_);
  if (cudaStreamDestroy(static_cast<cudaStream_t>(s_)) != cudaSuccess) cudaGetLastError();
}

}  // namespace qwenq
