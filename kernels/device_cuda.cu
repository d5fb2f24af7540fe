// The CUDA runtime query behind choose_device (kernels/device.cpp). No kernels: nothing here depends on the
// GPU architecture the build targets. Every runtime error becomes a message (and is cleared), never a crash.
#include <cuda_runtime.h>

#include <cstdio>
#include <string>

#include "kernels/device.h"

namespace qwenq {

namespace {

// "13.0" from CUDA's 13000.
std::string cuda_version_string(int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); }

// Why there is no usable device, in words a user can act on. The runtime's own strings read like advice for
// every machine ("CUDA driver version is insufficient for CUDA runtime version" on a machine with no driver).
std::string no_device_reason(cudaError_t err) {
  int driver = 0, runtime = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;
  if (cudaRuntimeGetVersion(&runtime) != cudaSuccess) runtime = 0;
  cudaGetLastError();
  if (err == cudaErrorNoDevice) return "no NVIDIA GPU found";
  if (driver == 0) return "no NVIDIA driver installed";
  if (err == cudaErrorInsufficientDriver) {
    return "the NVIDIA driver supports CUDA " + cuda_version_string(driver) + ", this build needs CUDA " +
           cuda_version_string(runtime) + ": update the driver to use the GPU";
  }
  return std::string("the CUDA runtime failed: ") + cudaGetErrorString(err);
}

}  // namespace

bool cuda_device_query(std::string* name_or_error) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    *name_or_error = no_device_reason(err);
    return false;
  }
  if (count <= 0) {
    *name_or_error = no_device_reason(cudaErrorNoDevice);
    return false;
  }
  cudaDeviceProp prop;
  err = cudaGetDeviceProperties(&prop, 0);
  if (err != cudaSuccess) {
    *name_or_error = std::string("cudaGetDeviceProperties(0) returned '") + cudaGetErrorString(err) + "'";
    cudaGetLastError();
    return false;
  }
  char buf[320];
  std::snprintf(buf, sizeof(buf), "%s, sm_%d%d, %.1f GiB", prop.name, prop.major, prop.minor,
                static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  *name_or_error = buf;
  if (count > 1) *name_or_error += "; " + std::to_string(count) + " devices";
  return true;
}

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

bool cuda_device_memory(uint64_t* free_bytes, uint64_t* total_bytes, std::string* error) {
  size_t f = 0, t = 0;
  const cudaError_t err = cudaMemGetInfo(&f, &t);
  if (err != cudaSuccess) {
    *error = std::string("cudaMemGetInfo returned '") + cudaGetErrorString(err) + "'";
    cudaGetLastError();
    return false;
  }
  *free_bytes = f;
  *total_bytes = t;
  return true;
}

}  // namespace qwenq
