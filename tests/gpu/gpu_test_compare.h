// Small helpers the GPU model tests (test_gptq_model_cuda, test_awq_model_cuda, test_gptq_cuda) share: a device
// array read back to the host, the relative max error they compare GPU and CPU outputs with, and a wall clock
// for the timing lines they print (printed, never asserted).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cuda_check.cuh"

namespace qwenq::test {

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// max |a − b| / max |b| (max |a − b| when b is all zero); a size mismatch is a test failure.
inline double rel_max_error(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double err = 0, scale = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    err = std::max(err, std::fabs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
  }
  return scale > 0 ? err / scale : err;
}

// n floats of device memory d, copied on stream s, which is then synchronized.
inline std::vector<float> download(const float* d, int64_t n, CudaStream s) {
  std::vector<float> h(static_cast<size_t>(n));
  QWENQ_CUDA_CHECK(cudaMemcpyAsync(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost, s));
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(s));
  return h;
}

}  // namespace qwenq::test
