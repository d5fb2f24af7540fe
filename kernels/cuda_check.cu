// CUDA errors as qwenq::Error, and DeviceMemory (see kernels/cuda_check.h). No kernels here.
#include <cuda_runtime.h>

#include <cstring>
#include <sstream>
#include <utility>

#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "kernels/device_allocator.h"

namespace qwenq {

namespace {

const char* base_name(const char* file) {
  const char* slash = std::strrchr(file, '/');
  return slash ? slash + 1 : file;
}

// "cudaErrorMemoryAllocation (out of memory)"
std::string describe(int code) {
  const cudaError_t err = static_cast<cudaError_t>(code);
  return std::string(cudaGetErrorName(err)) + " (" + cudaGetErrorString(err) + ")";
}

}  // namespace

void throw_cuda_failure(int code, const char* stmt, const char* func, const char* file, int line) {
  cudaGetLastError();  // a non-sticky error stays "last" otherwise, and the next launch check would report it
  std::ostringstream os;
  os << "CUDA error " << describe(code) << " from `" << stmt << "` [in " << func << " at " << base_name(file) << ":"
     << line << "]";
  throw Error(os.str());
}

void throw_cuda_launch_failure(int code, const std::string& context, const char* func, const char* file, int line) {
  std::ostringstream os;
  os << context << ": kernel launch failed: " << describe(code) << " [in " << func << " at " << base_name(file) << ":"
     << line << "]";
  throw Error(os.str());
}

DeviceMemory::DeviceMemory(size_t bytes, CudaStream stream) : bytes_(bytes), stream_(stream) {
  if (bytes == 0) return;
  cudaError_t e = cudaMallocAsync(&p_, bytes, stream_);
  if (e == cudaErrorMemoryAllocation) {
    // The caching allocator's idle blocks (kernels/device_allocator.h) may be what fills the device: release
    // them and retry once; then the allocator's message says where the memory is.
    cudaGetLastError();
    DeviceAllocator& a = cuda_device_allocator();
    a.empty_cache();
    e = cudaMallocAsync(&p_, bytes, stream_);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      p_ = nullptr;
      const OutOfMemoryError oom = a.out_of_memory_error(bytes, MemoryTag::Workspace, "kernel scratch");
      throw OutOfMemoryError(std::string(oom.what()) + " [CUDA error " + describe(e) +
                                 " from `cudaMallocAsync(&p_, bytes, stream_)`]",
                             oom.facts());
    }
  }
  if (e != cudaSuccess) {
    p_ = nullptr;
    throw_cuda_failure(e, "cudaMallocAsync(&p_, bytes, stream_)", __func__, __FILE__, __LINE__);
  }
}

DeviceMemory::~DeviceMemory() { release(); }

DeviceMemory::DeviceMemory(DeviceMemory&& other) noexcept
    : p_(std::exchange(other.p_, nullptr)), bytes_(std::exchange(other.bytes_, 0)), stream_(other.stream_) {}

DeviceMemory& DeviceMemory::operator=(DeviceMemory&& other) noexcept {
  if (this != &other) {
    release();
    p_ = std::exchange(other.p_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    stream_ = other.stream_;
  }
  return *this;
}

void DeviceMemory::release() noexcept {
  if (p_ == nullptr) return;
  // A destructor must not throw; a failure here (a dead context) has already been reported by the call that
  // broke it, so it is cleared and dropped.
  if (cudaFreeAsync(p_, stream_) != cudaSuccess) cudaGetLastError();
  p_ = nullptr;
  bytes_ = 0;
}

int cuda_sm_count() {
  static const int n = [] {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
      cudaGetLastError();
      return 132;
    }
    return v;
  }();
  return n;
}

}  // namespace qwenq
