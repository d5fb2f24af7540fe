// CUDA errors as qwenq::Error, and DeviceMemory (see kernels/cuda_check.h). No kernels here.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
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

// Once per device, before its first DeviceMemory: the default stream-ordered pool keeps the memory freed into it
// (release threshold: all of it) instead of the driver's default (threshold 0), which hands it back to the OS at
// every stream, event or device synchronization, so that the next cudaMallocAsync maps fresh physical memory.
// The scratch of a product (split-K partial sums, the dense path's bf16 Ŵ, staging copies) is freed at the end
// of each call, and a decode step synchronizes once per token: with threshold 0 every call paid for new
// mappings. The memory stays usable by later DeviceMemory only; the caching allocator trims the pool to zero
// (release_unused) before it reports out of memory, and DeviceMemory's own retry goes through the same path.
void keep_freed_scratch_mapped() {
  static std::atomic<uint64_t> done{0};  // bit d: device d configured (devices 0..63; others are left as is)
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  if (dev < 0 || dev >= 64 || (done.load(std::memory_order_relaxed) >> dev & 1)) return;
  cudaMemPool_t pool = nullptr;
  uint64_t all = UINT64_MAX;
  if (cudaDeviceGetDefaultMemPool(&pool, dev) != cudaSuccess ||
      cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &all) != cudaSuccess) {
    cudaGetLastError();  // the driver's default stays: slower, not wrong
  }
  done.fetch_or(uint64_t{1} << dev, std::memory_order_relaxed);
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
  keep_freed_scratch_mapped();
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
