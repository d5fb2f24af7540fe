// Whether the running device can run this build's Hopper (wgmma) kernels, and whether the models should
// (declared in kernels/cuda_check.h).
#include <cuda_runtime.h>

#include <mutex>
#include <vector>

#include "core/env_switch.h"
#include "kernels/cuda_check.h"

namespace qwenq {
namespace {

// 1 when the running device loaded this build's sm_90a code, else 0. Every .cu file is compiled for the same
// architectures, so the wgmma kernels have bodies exactly when this one does.
__global__ void wgmma_probe_kernel(int* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *out = 1;
#else
  *out = 0;
#endif
}

}  // namespace

bool cuda_wgmma_supported() {
  static std::mutex mu;
  static std::vector<int> known;  // per device ordinal: -1 unknown, 0 no, 1 yes
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  std::lock_guard<std::mutex> lock(mu);
  if (static_cast<int>(known.size()) <= dev) known.resize(dev + 1, -1);
  if (known[dev] < 0) {
    int major = 0, minor = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    if (major != 9 || minor != 0) {
      known[dev] = 0;
    } else {
      // Someone else's pending error is not ours to consume, and a transient failure (out of memory, a capture
      // in progress) must not be cached as "no": both answer false now and probe again next time.
      if (cudaPeekAtLastError() != cudaSuccess) return false;
      int yes = 0;
      int* flag = nullptr;
      cudaError_t e = cudaMalloc(&flag, sizeof(int));
      if (e == cudaSuccess) {
        wgmma_probe_kernel<<<1, 1>>>(flag);
        e = cudaGetLastError();
        if (e == cudaSuccess) e = cudaMemcpy(&yes, flag, sizeof(int), cudaMemcpyDeviceToHost);
        cudaFree(flag);
      }
      if (e == cudaErrorNoKernelImageForDevice || e == cudaErrorInvalidDeviceFunction) {
        cudaGetLastError();
        known[dev] = 0;  // no image of this file for the device: the build lacks its architecture
      } else if (e != cudaSuccess) {
        cudaGetLastError();
        return false;
      } else {
        known[dev] = yes;
      }
    }
  }
  return known[dev] == 1;
}

bool cuda_wgmma_enabled() { return env_switch("QWENQ_WGMMA") != 0 && cuda_wgmma_supported(); }

}  // namespace qwenq
