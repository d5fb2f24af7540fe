// The CUDA runtime query behind choose_device (kernels/device.cpp). No kernels: nothing here depends on the
// GPU architecture the build targets. Every runtime error becomes a message (and is cleared), never a crash.
#include <cuda_runtime.h>

#include <cstdio>
#include <string>

#include "kernels/device.h"

namespace qwenq {

bool cuda_device_query(std::string* name_or_error) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    *name_or_error = std::string("cudaGetDeviceCount returned '") + cudaGetErrorString(err) + "'";
    cudaGetLastError();
    return false;
  }
  if (count <= 0) {
    *name_or_error = "cudaGetDeviceCount found no device";
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

}  // namespace qwenq
