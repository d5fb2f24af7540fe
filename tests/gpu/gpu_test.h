// Shared by the GPU tests: skip where no CUDA device answers, and small device-buffer helpers.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/cuda_check.h"
#include "kernels/device.h"

namespace qwenq::test {

inline bool gpu_available(std::string* why) { return cuda_device_query(why); }

// A device copy of a host vector, freed on scope exit.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) { check(cudaMalloc(&p_, n * sizeof(T) + 1), "cudaMalloc"); }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() { cudaFree(p_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return p_; }
  size_t size() const { return n_; }
  // Complete when it returns. cudaMemcpy from pageable memory may return once the source is staged, before the
  // data has landed (it runs on the legacy default stream), and work on a cudaStreamNonBlocking stream does not
  // wait for that stream: the tests that launch on one (test_kernels_cuda's Stream) would race with the copy.
  void upload(const std::vector<T>& host) {
    check(cudaMemcpy(p_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), "upload");
    check(cudaDeviceSynchronize(), "upload (wait for the copy)");
  }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    check(cudaMemcpy(host.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost), "download");
    return host;
  }

 private:
  static void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
  }
  T* p_ = nullptr;
  size_t n_;
};

}  // namespace qwenq::test

// Skips the current test, with the reason, when no CUDA device is usable.
#define QWENQ_REQUIRE_GPU()                                                        \
  do {                                                                             \
    std::string qwenq_gpu_why;                                                     \
    if (!::qwenq::test::gpu_available(&qwenq_gpu_why))                             \
      GTEST_SKIP() << "no CUDA device (" << qwenq_gpu_why << "); GPU test skipped"; \
  } while (0)

// Skips the current test, with the reason, unless the device runs this build's Hopper (wgmma) kernels
// (cuda_wgmma_supported, kernels/cuda_check.h: an sm_90 GPU and the sm_90a target).
#define QWENQ_REQUIRE_WGMMA()                                                                               \
  do {                                                                                                      \
    QWENQ_REQUIRE_GPU();                                                                                    \
    if (!::qwenq::cuda_wgmma_supported()) GTEST_SKIP() << "needs an sm_90 GPU (H100/H200) and the sm_90a build"; \
  } while (0)
