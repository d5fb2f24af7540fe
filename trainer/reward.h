// Reward modelling (`train --objective reward`): a sequence classifier trained on preference pairs with the
// Bradley-Terry loss of TRL's RewardTrainer (LLaMA-Factory's `stage: rm`; InstructGPT §3.5):
//
//   r_c, r_r   the scores of a pair's chosen and rejected sequences: the score head's first row times the final hidden
//              state (after the final norm) at each sequence's pooled token, the last one that is not the pad id
//              (transformers' Qwen2ForSequenceClassification pooling; LoraStepOptions::score_rows)
//   ℓ          = −log σ(r_c − r_r − μ) = softplus(r_r − r_c + μ)        μ: the record's "margin" (0 without one)
//   L          = (1/P) Σ_pairs [ ℓ + η·(r_c + r_r)² ]                     η: center_rewards_coefficient (0: off)
// over the P pairs of an optimizer step (TRL: the mean over a batch, its micro-batches of equal pairs averaged).
// Its derivatives, with σ_k = σ(r_r − r_c + μ):
//   ∂L/∂r_c = (−σ_k + 2η(r_c + r_r)) / P          ∂L/∂r_r = (σ_k + 2η(r_c + r_r)) / P
//
// The head starts as transformers initialises a classifier head that a causal LM checkpoint lacks, normal(0,
// initializer_range) (TRL loads the model with AutoModelForSequenceClassification, num_labels = 1), and is trained
// whole with the LoRA adapter (PEFT's modules_to_save for task_type SEQ_CLS); the adapter is saved as PEFT saves a
// SEQ_CLS adapter (lora/peft_io.h), and `qwen-qlora merge` turns base + adapter into a reward model directory
// (Qwen2ForSequenceClassification: trainer/reward_model.h reads it, GRPO's `--reward model=DIR`).
//
// The pad id pooling skips: config.json's pad_token_id, else the tokenizer's pad token, else its EOS (TRL sets the
// model's pad_token_id to the tokenizer's, whose pad falls back to EOS); `merge` writes it into the reward model's
// config.json, so the merged model pools where training did.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "trainer/qwen_model.h"
#include "trainer/tokenizer.h"

namespace qwenq {

struct RewardOptions {
  double center_coefficient = 0;  // η, TRL's center_rewards_coefficient (`--center-rewards-coefficient`)
};
void check_reward_options(const RewardOptions& o);

struct RewardStats {
  int64_t pairs = 0, correct = 0;  // correct: r_c > r_r
  double loss = 0;                 // Σ ℓ + η(r_c + r_r)²
  double reward_c = 0, reward_r = 0;
  double objective() const { return pairs > 0 ? loss / static_cast<double>(pairs) : 0.0; }
  double accuracy() const { return pairs > 0 ? static_cast<double>(correct) / static_cast<double>(pairs) : 0.0; }
  void add(const RewardStats& o);
  // The 5 numbers in a fixed order, and back (the data-parallel all-reduce).
  std::vector<double> pack() const;
  static RewardStats unpack(const std::vector<double>& v);
};

// Scores of pairs in consecutive sequences (chosen, rejected) and each pair's margin μ (empty: 0): the statistics.
RewardStats reward_batch_stats(const RewardOptions& o, const std::vector<double>& scores,
                               const std::vector<double>& margins);

// The score objective of one micro-batch (LoraStepOptions::score_objective): ∂L/∂r_j of the step's loss L (top) for a
// step of `step_pairs` pairs; adds the batch's statistics to *stats when it runs.
std::function<std::vector<double>(const std::vector<double>&)> reward_objective(const RewardOptions& o,
                                                                                std::vector<double> margins,
                                                                                int64_t step_pairs, RewardStats* stats);

// The position transformers' sequence classifiers pool in tokens[0, n): the last token that is not `pad_id` (0 when
// every one is; pad_id < 0: the last token). Training's rows and RewardModel's scoring share it.
int64_t last_non_pad(const int32_t* tokens, int64_t n, int32_t pad_id);
// The batch row each sequence of `b` is pooled at (last_non_pad within the sequence).
std::vector<int64_t> reward_pooled_rows(const PackedBatch& b, int32_t pad_id);

// The pad id of a reward model trained on the model at `model_dir` with tokenizer `tok` (top of this file); -1: none.
int32_t reward_pad_id(const std::string& model_dir, const Tokenizer& tok);

// Whether `dir` holds a sequence classifier's checkpoint (score.weight and no lm_head.weight, as a reward model
// directory: `train --objective reward` then continues it, its head included).
bool sequence_classifier_dir(const std::string& dir);

// The score head's starting standard deviation: config.json's initializer_range, 0.02 (transformers' default)
// without one.
double reward_head_init_std(const std::string& model_dir);

}  // namespace qwenq
