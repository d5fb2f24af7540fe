// Where a whole-model GPTQ run's time goes: `qwen-quant gptq` prints one line of it at the end, for both drivers.
//
//   upload     the model's weights to the device (--device cuda)
//   forwards   the blocks over the calibration chunks: the embedding, each group's pass up to its input, and the
//              quantized block's pass that gives the next block its input
//   hessians   H += x xᵀ over each group's input (HessianAccumulator / hessian_accumulate_cuda)
//   transfers  each Hessian to the host and each replaced weight to the device (--device cuda)
//   solves     the GPTQ solver per Linear (gptq_quantize / gptq_quantize_cuda: damping, Cholesky, error feedback)
//   packing    the codes into the checkpoint's tensors and the dequantized weight handed back
//   writing    the pass-through tensors and the shards flushed to disk
//
// A pass over the chunks is timed on a StepClock (trainer/step_profile.h): the host's clock on the CPU, CUDA events
// on the driver's stream on the GPU, where the host queues a pass ahead of the device. Marks around each Hessian
// accumulation split the pass: hessians = the time inside them, forwards = the rest of the pass. The other stages
// are host wall time around calls that finish before they return.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "trainer/step_profile.h"

namespace qwenq {

struct GptqStageTimes {
  double upload = 0, forwards = 0, hessians = 0, transfers = 0, solves = 0, packing = 0, writing = 0;  // seconds
  // "forwards 4.1 s, hessians 2.3 s, ..., other 0.2 s of 11.1 s": the stages with time, largest first, then what the
  // wall time `total` leaves over (argument checks, tokenizing the calibration text, the config).
  std::string line(double total) const;
};

// Host wall time of a scope, added to `into` (seconds) when it ends.
class StageScope {
 public:
  explicit StageScope(double& into) : into_(into), t0_(std::chrono::steady_clock::now()) {}
  ~StageScope() { into_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }
  StageScope(const StageScope&) = delete;
  StageScope& operator=(const StageScope&) = delete;

 private:
  double& into_;
  std::chrono::steady_clock::time_point t0_;
};

// One pass over the calibration chunks: begin(), then around each accumulation hessian_begin() / hessian_end(),
// then end() (waits for the clock) adds the pass's forwards and hessians to `times`.
class CalibPassTimer {
 public:
  explicit CalibPassTimer(std::unique_ptr<StepClock> clock);
  void begin();
  void hessian_begin();
  void hessian_end();
  // accumulate() between a hessian_begin() and a hessian_end(): the drivers' form.
  template <typename F>
  void hessian(F&& accumulate) {
    hessian_begin();
    accumulate();
    hessian_end();
  }
  void end(GptqStageTimes& times);

 private:
  std::unique_ptr<StepClock> clock_;
  std::vector<int> hessian_marks_;  // clock indices: begin, end, begin, end, ...
  int first_ = -1;
};

}  // namespace qwenq
