// The held-out evaluations of a training run (train_lora's, at step 0, every --eval-every steps and at the end) and
// of `qwen-qlora eval`, per objective:
//   sft     eval_loss = Σ NLL / Σ counted targets over the held-out batches (token-weighted), eval_tokens
//   dpo     the pairs' DPO-family loss against the reference's sums (trainer/dpo.h), margin, accuracy, eval_pairs
//   kto     KTO's loss with each batch's own z from its KL sequences (trainer/kto.h), eval_kl, the rewards
//   reward  the Bradley-Terry loss of the pairs' scores (trainer/reward.h), margin, accuracy, eval_pairs
//   classify  the cross-entropy of the texts' logits (trainer/classify.h), eval_accuracy, eval_examples
//   grpo    completions of the held-out prompts sampled with a fixed seed and scored: eval_reward and the rest
// each on the device's adapter (a LoraModelCuda) or the CPU's, without dropout, over at most o.eval_batches batches
// (0: all). With o.group (data parallelism) every rank computes its share of the batches and the sums are gathered,
// so every rank's numbers are a single process's.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/grpo.h"
#include "trainer/lora_model_device.h"
#include "trainer/train_loop.h"

namespace qwenq {

// The options of an evaluation call (no dropout; the run's checkpoint storage and CPU products).
LoraStepOptions eval_step_options(const TrainOptions& o);
// The loss of a batch alone (no gradient) on the device's adapter (gpu) or the CPU's.
LoraStepResult batch_loss(const QwenModel& model, const LoraAdapter& adapter, LoraModelCuda* gpu, const SftBatch& b,
                          const LoraStepOptions& so);
// Each example's NLL sum (preference units of two sequences, o.batch_size units a batch, the first max_batches
// batches; 0: all) on the device's adapter (gpu) or the CPU's.
std::vector<double> pair_nll_sums(const QwenModel& model, const LoraAdapter& adapter, LoraModelCuda* gpu,
                                  const std::vector<SftExample>& examples, const TrainOptions& o, int64_t max_batches,
                                  ProcessGroup* group);
// The token-weighted mean next-token NLL of `eval` batched as the run's batches (not shuffled, at most
// o.eval_batches), and the counted targets.
std::pair<double, int64_t> sft_held_out_loss(const QwenModel& model, const LoraAdapter& adapter, LoraModelCuda* gpu,
                                             const std::vector<SftExample>& eval, const TrainOptions& o,
                                             ProcessGroup* group = nullptr);

// A run's held-out examples and what each objective keeps beside them (pointers into the run's data).
struct HeldOutSet {
  const std::vector<SftExample>* examples = nullptr;
  const std::vector<uint8_t>* labels = nullptr;          // kto: desirable, per example
  const std::vector<double>* margins = nullptr;          // reward: per pair (empty: none)
  const std::vector<std::string>* records = nullptr;     // grpo: each prompt's record (its reward functions read them)
  const std::vector<double>* ref_sums = nullptr;         // dpo, kto: the reference model's NLL sums
  const std::vector<int64_t>* target_counts = nullptr;   // dpo: each sequence's counted targets
  const std::vector<ClassifyTarget>* targets = nullptr;  // classify: each example's target
  ClassifyTask task;                                     // classify: the head's problem type and outputs
  int32_t reward_pad = -1;                               // reward, classify: the pad id pooling skips
};

// The evaluation record at `step` ({"step", "eval_loss", ...}; GRPO's "eval_reward" and the rest, no loss), or null
// when the set is empty. grpo: the run's GrpoRun (GRPO only; its sampling attaches the adapter to `model` for its
// time, hence not const).
nlohmann::json held_out_record(QwenModel& model, const LoraAdapter& adapter, LoraModelCuda* gpu,
                               const TrainOptions& o, const HeldOutSet& held_out, GrpoRun* grpo, int64_t step);

}  // namespace qwenq
