// The GPU trainer's class as train_loop.cpp and train_eval.cpp name it: trainer/lora_model_cuda.h in CUDA builds;
// in CPU-only builds a stand-in, never constructed (train_lora refuses use_cuda first), so that the loop has one
// shape in both builds.
#pragma once

#include <cstdint>
#include <vector>

#include "trainer/lora_model.h"
#include "trainer/step_profile.h"
#ifdef QWENQ_HAVE_CUDA
#include "trainer/lora_model_cuda.h"
#endif

namespace qwenq {

#ifndef QWENQ_HAVE_CUDA
class LoraModelCuda {
 public:
  LoraStepResult loss_and_grad(const PackedBatch&, const std::vector<int32_t>&, const LoraStepOptions&) { return {}; }
  LoraStepResult loss(const PackedBatch&, const std::vector<int32_t>&, const LoraStepOptions&) { return {}; }
  float adamw_step(double, double, double, double, double, int64_t, double, double) { return 0.f; }
  void zero_grads() {}
  void download(LoraAdapter*) const {}
  void download_optimizer(LoraAdapter*, LoraAdapter*) const {}
  void upload_optimizer(const LoraAdapter&, const LoraAdapter&) {}
  StepProfile* enable_profile() { return nullptr; }
  StepProfile* profile() const { return nullptr; }
};
#endif

}  // namespace qwenq
