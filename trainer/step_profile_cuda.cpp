// The CUDA-event clock of StepProfile (trainer/step_profile_cuda.h): one event per mark, recorded on the stream,
// from a pool reused step after step; milliseconds() waits for the last one.
#ifdef QWENQ_HAVE_CUDA

#include "trainer/step_profile_cuda.h"

#include <cuda_runtime.h>

#include <vector>

#include "kernels/cuda_check.cuh"

namespace qwenq {

namespace {

class CudaEventClock final : public StepClock {
 public:
  explicit CudaEventClock(CudaStream s) : stream_(s) {}
  ~CudaEventClock() override {
    for (cudaEvent_t e : pool_)
      if (cudaEventDestroy(e) != cudaSuccess) cudaGetLastError();  // a destructor reports nothing
  }
  int record() override {
    if (used_ == pool_.size()) {
      cudaEvent_t e = nullptr;
      QWENQ_CUDA_CHECK(cudaEventCreate(&e));
      pool_.push_back(e);
    }
    QWENQ_CUDA_CHECK(cudaEventRecord(pool_[used_], stream_));
    return static_cast<int>(used_++);
  }
  std::vector<double> milliseconds() override {
    std::vector<double> ms(used_, 0.0);
    if (used_ == 0) return ms;
    QWENQ_CUDA_CHECK(cudaEventSynchronize(pool_[used_ - 1]));
    for (size_t i = 1; i < used_; ++i) {
      float t = 0.f;
      QWENQ_CUDA_CHECK(cudaEventElapsedTime(&t, pool_[0], pool_[i]));
      ms[i] = t;
    }
    return ms;
  }
  void reset() override { used_ = 0; }

 private:
  CudaStream stream_;
  std::vector<cudaEvent_t> pool_;
  size_t used_ = 0;
};

}  // namespace

std::unique_ptr<StepClock> make_cuda_step_clock(CudaStream stream) {
  return std::make_unique<CudaEventClock>(stream);
}

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
