// StepProfile's clock on the device (trainer/step_profile.h): CUDA events on `stream`.
#pragma once

#ifdef QWENQ_HAVE_CUDA

#include <memory>

#include "kernels/cuda_check.h"
#include "trainer/step_profile.h"

namespace qwenq {

std::unique_ptr<StepClock> make_cuda_step_clock(CudaStream stream);

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
