// Where a training step's time goes (`qwen-qlora train --device cuda --profile`): the step is cut into consecutive
// phases by marks, each mark a timestamp on the clock that runs the work, and each phase's time is the time from
// its mark to the next one:
//
//   marks    (phase_0, t_0), (phase_1, t_1), ..., (end, t_n)      consecutive marks of one phase are one mark
//   phase_i  gets t_{i+1} − t_i;   a stop (end) closes the open phase; time from a stop to the next mark is
//            counted as unattributed (the step's wall time, first mark to last, minus the phases' sum)
//
// On the GPU the clock is CUDA events recorded on the trainer's stream (StepClock from make_cuda_step_clock), so a
// phase's time is the device time between the work queued before its mark and the work queued before the next
// one: its kernels, and any idle gap while the host prepares them (the MoE routing on the host lands in `moe`).
// Nothing waits for the device until end_step. A mark costs one cudaEventRecord (a microsecond of host time or
// so); the trainer marks a few dozen times per layer and step, so --profile slows a step by well under 1 %.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace qwenq {

enum class StepPhase : int {
  Embed,       // the embedding rows, the batch's uploads
  Base,        // the frozen base Linears' products (4-bit or dense), with their bf16 casts and bias
  Lora,        // the adapters' products and gradients, dropout
  Dora,        // DoRA's norms, combine and split gradient
  Attention,   // attention forward / backward (with flash attention's bf16 casts)
  Norm,        // RMSNorm forward / backward (q/k norms included)
  Rope,        // rotary embedding forward / backward
  Activation,  // SwiGLU forward / backward
  Residual,    // residual additions and the accumulate paths' sums
  Moe,         // routing, dispatch, combine of mixture-of-experts layers (the experts' Linears are Base / Lora)
  Head,        // the final norm's output through the lm_head, cross-entropy and dhidden
  Optimizer,   // gradient clipping and AdamW
  Checkpoint,  // the block inputs kept for recomputation (bf16 round trips)
  Gaps,        // between the phases of the layers' loops: the device waiting for the host to queue the next op
  kCount
};
const char* step_phase_name(StepPhase p);
constexpr int kStepPhases = static_cast<int>(StepPhase::kCount);

// A clock of marks: record() takes a timestamp and returns its index (0, 1, ... since the last reset);
// milliseconds() waits until every recorded mark has its time and returns each one's milliseconds since mark 0.
class StepClock {
 public:
  virtual ~StepClock() = default;
  virtual int record() = 0;
  virtual std::vector<double> milliseconds() = 0;
  virtual void reset() = 0;
};
// The host's steady clock.
std::unique_ptr<StepClock> make_host_step_clock();

class StepProfile {
 public:
  explicit StepProfile(std::unique_ptr<StepClock> clock);

  // Starts `phase` (ending the open one); a mark of the phase already open does nothing.
  void mark(StepPhase phase);
  // Ends the open phase (nothing is open until the next mark).
  void stop();
  // Ends a step: its phases' times (waiting for the clock) are added to the totals; keep = false drops them (a
  // warm-up step).
  void end_step(bool keep = true);

  int64_t steps() const { return steps_; }
  double total_ms(StepPhase p) const { return totals_[static_cast<int>(p)]; }
  double wall_ms() const { return wall_; }  // first mark to last, summed over the steps
  double unattributed_ms() const;           // wall minus the phases
  // Milliseconds per step: each phase with time (in StepPhase order, by step_phase_name), then "unattributed" and
  // "step" (the wall time): metrics.jsonl's profile_ms_per_step.
  std::vector<std::pair<std::string, double>> per_step_ms() const;
  // A table of per_step_ms() with each row's share of the wall time: the phases largest first, then the sums.
  std::string table() const;

 private:
  std::unique_ptr<StepClock> clock_;
  std::vector<std::pair<int, int>> marks_;  // (phase or -1 for a stop, clock index)
  int open_ = -1;
  std::array<double, kStepPhases> totals_{};
  double wall_ = 0;
  int64_t steps_ = 0;
};

}  // namespace qwenq
