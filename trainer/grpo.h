// Online reinforcement learning of a LoRA adapter from rewards (`qwen-qlora train --objective grpo`): GRPO as TRL's
// GRPOTrainer computes it, its KL term (beta; TRL's default 0: no reference model), its four loss normalisations,
// three reward scalings, num_iterations (μ: PPO's clipped ratio over a generation reused μ steps) and GSPO's
// sequence-level importance ratio (importance_sampling_level).
//
// A step takes its micro-batches' prompts (--batch-size prompts each, --grad-accum · --nproc micro-batches) and, with
// the adapter as it stands, samples G = num_generations completions o_j of each prompt (temperature T, top-k, top-p,
// min-p; at most max_completion_len tokens, ending after a stop id, which counts as a completion token as TRL's
// completion mask keeps the EOS). Each reward function f scores each completion, r_jf (NaN: f does not apply), and
//   r_j = Σ_f w_f·r_jf  over the f with a number (TRL's nansum; all NaN: 0)
//   μ_g, σ_g = the mean and the unbiased standard deviation of the G rewards of o_j's group g
//   A_j = r_j − μ_g                        scale_rewards none
//   A_j = (r_j − μ_g) / (σ_g + 1e-4)       group (TRL's default)
//   A_j = (r_j − μ_g) / (σ + 1e-4)         batch: σ the unbiased standard deviation of the step's every r_j
// log π is the log-probability at the sampling temperature, log softmax(z/T) (LoraStepOptions::logit_scale = 1/T);
// lp_t = log π(o_jt) = −nll_t. Each token's importance ratio against the policy that sampled (old):
//   ρ_t = exp(lp_t − old_t)                                   importance_sampling_level token (TRL's default)
//   ρ_t = s_j = exp(Σ_t (lp_t − old_t) / max(1, |o_j|))       sequence (GSPO), the same for every token of o_j
// and the loss, with ε_low = epsilon, ε_high = epsilon_high (epsilon when 0), clip to [1 − ε_low, 1 + ε_high]:
//   L = Σ_j c_j · Σ_t ( −min(ρ_t·A_j, clip(ρ_t)·A_j) + β·KL_t )
// num_iterations = 1 (TRL's default): every step samples anew, the old policy is the current one, ρ_t =
// exp(lp_t − sg[lp_t]) is 1 in value and the clip never binds: ∂L/∂S_j = c_j·A_j with S_j = Σ_t nll_t, the
// per-sequence weights LoraStepOptions::sequence_objective hands to the backward (trainer/lora_model.h), and in value
// L = −Σ_j c_j·A_j·|o_j|. num_iterations = μ > 1: a step at a multiple of μ samples and scores, and keeps old_t
// from its own training forward (the adapter as it sampled; ρ_t = 1 there, TRL's detached log-probabilities, with
// that forward's dropout if any); that step and the next μ − 1 train on the same completions and advantages (TRL:
// the generation batch reused num_iterations times, one optimizer step each), the gradient token by token
// (LoraStepOptions::token_objective):
//   ∂L/∂nll_t = c_j·(A_j·ρ_t·[not clipped] + β·(exp(nll_t − ref_nll_t) − 1))
// where "clipped" (the min taking the clipped branch, zero gradient) is A_j > 0 with ρ_t > 1 + ε_high or A_j < 0
// with ρ_t < 1 − ε_low, logged as TRL logs them: clip_ratio_low_mean, clip_ratio_high_mean, clip_ratio_region_mean
// (fractions of the step's counted completion tokens). delta δ > 0 (two-sided clipping, INTELLECT-2) also caps the
// unclipped branch, −min(min(ρ_t, δ)·A_j, clip(ρ_t)·A_j): a token with A_j < 0 and ρ_t > δ has no gradient either. (With the sequence ratio, ∂s_j/∂lp_t = s_j/|o_j| and the
// sequence's |o_j| equal terms give the same c_j·A_j·s_j per token.) The KL term: KL_t = exp(ref_t − lp_t) −
// (ref_t − lp_t) − 1 (ref_t the reference's: the base without the adapter, PEFT's disable_adapter, at the same
// temperature), "kl" logs the step's token mean of KL_t. A run resumed inside a generation samples that generation's
// prompts anew with the adapter as it stands (as TRL, whose buffer does not survive a restart).
// The normalisation c_j (|o_j| = the completion's counted tokens, N = the step's
// completions, n_b = the completion tokens of o_j's micro-batch, M = the step's micro-batches, L_max =
// max_completion_len, Σ|o| = the step's completion tokens):
//   grpo     c_j = 1 / (max(1, |o_j|) · N)      each completion's token mean, then the mean over completions
//   bnpo     c_j = 1 / (max(1, n_b) · M)        each micro-batch's token mean, then the mean over micro-batches
//   dr_grpo  c_j = 1 / (N · L_max)              Dr. GRPO: a constant
//   dapo     c_j = 1 / max(1, Σ|o|)             the step's token mean (TRL's default loss_type)
// TRL divides by the same quantities over a generation batch of per_device_train_batch_size · gradient accumulation
// · processes completions (with equal micro-batches), which is a step here. mask_truncated_completions: a
// completion that did not end with a stop id counts no tokens (|o_j| = 0: no gradient, not in any count).
// Logged as TRL logs them, '/' written '_': reward (mean r_j), reward_std (mean σ_g), rewards_<f>_mean / _std (over
// the completions where f gave a number), frac_reward_zero_std (groups whose σ_g is 0: no signal), completions'
// mean_length / min_length / max_length / clipped_ratio (no stop id) / mean_terminated_length.
// Where TRL differs: a string prompt is encoded as SFT's prompt-completion records encode it (with the BOS a
// Llama-style tokenizer adds; TRL adds no special tokens; Qwen's tokenizers add none either way); generation stops at
// the tokenizer's EOS and the model's generation_config.json eos ids (TRL: the tokenizer's EOS); a micro-batch holds
// whole groups (TRL may split a group over processes, which changes nothing but the order of sums).
//
// Data: one prompt per record, TRL's prompt-only types: {"prompt": "text"} or {"prompt": [messages]} (rendered with
// the chat template and its generation prompt; "tools" allowed), or GSM8K's {"question", "answer"} (the question
// as a text prompt). Every other field goes to the reward functions (trainer/grpo_reward.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/lora_model.h"
#include "trainer/sampling.h"
#include "trainer/sft_data.h"
#include "trainer/tokenizer.h"

namespace qwenq {

enum class GrpoLoss { kGrpo, kBnpo, kDrGrpo, kDapo };
GrpoLoss parse_grpo_loss(const std::string& name);  // "grpo", "bnpo", "dr_grpo", "dapo"
const char* grpo_loss_name(GrpoLoss l);
enum class GrpoScale { kGroup, kBatch, kNone };
GrpoScale parse_grpo_scale(const std::string& name);  // "group", "batch", "none"
const char* grpo_scale_name(GrpoScale s);
enum class GrpoImportance { kToken, kSequence };
GrpoImportance parse_grpo_importance(const std::string& name);  // "token", "sequence"
const char* grpo_importance_name(GrpoImportance l);

struct GrpoOptions {
  int64_t num_generations = 8;        // G (TRL's default)
  int64_t max_completion_len = 256;   // TRL's max_completion_length
  float temperature = 1.f;            // TRL's defaults: plain sampling at temperature 1
  int64_t top_k = 0;
  float top_p = 1.f;
  float min_p = 0.f;
  float repetition_penalty = 1.f;
  GrpoLoss loss = GrpoLoss::kDapo;
  GrpoScale scale_rewards = GrpoScale::kGroup;
  bool mask_truncated = false;        // TRL's mask_truncated_completions
  double beta = 0.0;                  // the KL term's weight (TRL's default 0: no reference model)
  int64_t num_iterations = 1;         // μ: steps that train on one generation (TRL's num_iterations)
  double epsilon = 0.2;               // ε_low (TRL's epsilon)
  double epsilon_high = 0.0;          // ε_high; 0: epsilon (TRL's None)
  double delta = 0.0;                 // δ: two-sided clipping (INTELLECT-2, TRL's delta); 0: off (TRL's None)
  GrpoImportance importance = GrpoImportance::kToken;  // TRL's importance_sampling_level
  int64_t log_completions = 0;        // per generation, this many of the lead rank's completions logged (TRL's
                                      // log_completions / num_completions_to_print; 0: none)
  double eps_high() const { return epsilon_high > 0 ? epsilon_high : epsilon; }
  std::vector<std::string> rewards;   // reward function specs (trainer/grpo_reward.h), at least one
  std::vector<double> reward_weights; // one per reward, or empty (all 1)
};
void check_grpo_options(const GrpoOptions& o);  // ranges, naming the flags

// The mean and the unbiased standard deviation (torch.std's) of the values of v[0, n) that are numbers (NaN: a reward
// that does not apply); NaN for the mean without any, for the deviation with fewer than two.
std::pair<double, double> grpo_mean_std(const double* v, size_t n);
// The advantages A_j of a step's rewards r (consecutive groups of G) as scale says; group_std gets σ_g per
// completion (its group's) when not null.
std::vector<double> grpo_advantages(const std::vector<double>& rewards, int64_t G, GrpoScale scale,
                                    std::vector<double>* group_std = nullptr);
// r_j = Σ_f w_f·r_jf over the f with a number (per_func: [n, F] row-major; weights: F values).
std::vector<double> grpo_combined_rewards(const std::vector<double>& per_func, int64_t F,
                                          const std::vector<double>& weights);
// The normalisation c_j of every completion of a step (0 where |o_j| = 0), from the counted completion tokens |o_j|
// and each completion's micro-batch (0 .. micro_batches − 1), as the table above. Without the KL term, c_j·A_j is
// the sequence objective's ∂L/∂S_j.
std::vector<double> grpo_normalizers(GrpoLoss loss, const std::vector<int64_t>& lengths,
                                     const std::vector<int64_t>& micro_of, int64_t micro_batches,
                                     int64_t max_completion_len);
// The policy term of the loss in value, −Σ_j c_j·A_j·|o_j|.
double grpo_loss_value(const std::vector<double>& c, const std::vector<double>& advantages,
                       const std::vector<int64_t>& lengths);
// The token terms of a step's micro-batches, summed as each runs.
struct GrpoTokenTerms {
  double policy = 0;       // Σ_j c_j·Σ_t −min(ρ_t·A_j, clip(ρ_t)·A_j)
  double weighted_kl = 0;  // Σ_j c_j·Σ_t KL_t
  double kl_sum = 0;       // Σ KL_t
  double tokens = 0, clipped_low = 0, clipped_high = 0;  // counted tokens; those clipped below / above (top)
};
// ∂L/∂nll_t of a micro-batch's counted completion tokens (row order: its completions in turn, |o_j| tokens each; c,
// advantages, lengths: its completions'), nll the policy's: c_j·(A_j·ρ_t·[not clipped] + β·(exp(nll_t − ref_nll_t)
// − 1)) as the top says. old_nll null: on-policy (ρ_t = 1, never clipped); ref_nll null: no KL term (o.beta is then
// not read). Adds the micro-batch's part of each sum to *terms.
std::vector<double> grpo_token_weights(const GrpoOptions& o, const std::vector<double>& c,
                                       const std::vector<double>& advantages, const std::vector<int64_t>& lengths,
                                       const std::vector<float>& nll, const std::vector<float>* old_nll,
                                       const std::vector<float>* ref_nll, GrpoTokenTerms* terms);

// The seeds of a run's sampling (from --seed): the rollouts of micro-batch `micro` of step `step` (0-based), and
// every evaluation's (fixed, so that two evaluations differ by the adapter only; `qwen-qlora eval --objective grpo`
// uses it too).
uint64_t grpo_rollout_seed(uint64_t run_seed, int64_t step, int64_t micro);
uint64_t grpo_eval_seed(uint64_t run_seed);

// The prompts of a GRPO run: SftDataset's examples hold each prompt's tokens (every token counted, so the batcher
// keeps them; the trainer reads only the tokens), train_records / eval_records each unit's record as JSON text. A
// prompt longer than max_prompt_len (opt.templ) keeps its end as trainer/sft_data.h cuts prompts; one that leaves
// fewer than max_completion_len tokens of max_len is dropped and counted (dropped_long_prompts).
SftDataset load_grpo_dataset(const std::string& path, const Tokenizer& tok, const SftDataOptions& opt,
                             int64_t max_completion_len);

// ---- rollouts and their statistics (grpo_run.cpp) ------------------------------------------------------------

class ProcessGroup;
class RewardFunction;
struct LoraInferenceLayout;

// The adapter being trained attached to the model, unmerged (QwenModel::attach_adapter), for as long as this lives.
class AttachedAdapter {
 public:
  AttachedAdapter(QwenModel& model, const LoraAdapter& adapter);
  ~AttachedAdapter();
  AttachedAdapter(const AttachedAdapter&) = delete;
  AttachedAdapter& operator=(const AttachedAdapter&) = delete;

 private:
  QwenModel& model_;
  std::unique_ptr<LoraInferenceLayout> layout_;
};

// How a run samples: o's temperature, top-k, top-p, min-p and repetition penalty, max_completion_len new tokens,
// ending at the tokenizer's EOS or the model's generation_config.json eos ids.
SamplingOptions grpo_sampling(const GrpoOptions& o, const QwenModel& model, const Tokenizer& tok);

// One completion of a prompt.
struct GrpoSample {
  int64_t prompt = 0;              // index into the split's examples / records
  std::vector<int32_t> completion; // the sampled ids, a final stop id included
  bool truncated = false;          // ended without a stop id
};

// Every completion of a set of samples scored: per_func [n, F] (NaN: not applied), and per completion its length
// and whether it was truncated (doubles, so that data-parallel ranks sum their parts: each fills its own rows).
struct GrpoScores {
  int64_t F = 0;
  std::vector<double> per_func, length, truncated;
  void resize(size_t n, int64_t functions);
  size_t size() const { return length.size(); }
  // Every rank's rows summed into every rank's (each rank filled its own rows, zeros elsewhere); nothing without a
  // group.
  void sum_over(ProcessGroup* group);
};

// G completions of each of `prompts` (indices into examples, each repeated G times in a row, so a group is
// consecutive) sampled from `model` as it stands (its attached adapter), completion k with the seed
// dropout_mix64(seed + k), up to kMaxDecodeBatch decoding together. Then scored by every reward function into rows
// [row0, row0 + n) of *scores.
std::vector<GrpoSample> grpo_rollouts(const QwenModel& model, const Tokenizer& tok,
                                      const std::vector<SftExample>& examples, const std::vector<std::string>& records,
                                      const std::vector<int64_t>& prompts, int64_t G, const SamplingOptions& sampling,
                                      uint64_t seed, std::vector<std::unique_ptr<RewardFunction>>& rewards,
                                      GrpoScores* scores, size_t row0);

// The training batch of samples: each prompt ++ completion a sequence (one per row, as padding mode), targets the
// completion's tokens (none for a truncated one with mask_truncated).
SftBatch grpo_batch(const std::vector<SftExample>& examples, const std::vector<GrpoSample>& samples,
                    bool mask_truncated);

// The counted completion tokens |o_j| of the step's rows (0 for a truncated one with mask_truncated).
std::vector<int64_t> grpo_lengths(const GrpoScores& s, bool mask_truncated);

// TRL's logged statistics of scored completions in groups of G (see the top), their keys prefixed ("" or "eval_"):
// reward, reward_std, rewards_<name>_mean / _std, frac_reward_zero_std, completions_mean_length / _min_length /
// _max_length / _clipped_ratio / _mean_terminated_length.
nlohmann::json grpo_metrics(const GrpoScores& s, int64_t G, const std::vector<double>& weights,
                            const std::vector<std::unique_ptr<RewardFunction>>& rewards, const std::string& prefix);

// A GRPO run's state across steps (train_lora's `--objective grpo`, `qwen-qlora eval --objective grpo`): the reward
// functions (an external scorer starts with it and ends with it) and their weights, the sampling options, and with
// beta > 0 the KL term's reference (an all-zero adapter: the base alone through the trainer's own forward).
class GrpoRun {
 public:
  GrpoRun(const GrpoOptions& o, const QwenModel& model, const Tokenizer& tok, const LoraAdapter& adapter);
  ~GrpoRun();
  // Every record of a split checked by every reward function (accuracy's reference answer), refused naming `file`
  // and the prompt, before a step runs.
  void check_records(const std::vector<std::string>& records, const std::string& file) const;

  struct StepResult {
    double loss = 0;                 // the policy term plus beta·Σ c_j·KL_t, in value
    int64_t tokens = 0, targets = 0;  // the step's prompt and completion tokens; its counted completion tokens
    nlohmann::json stats;            // grpo_metrics, rollout_s (this rank's sampling and scoring), kl (beta > 0)
    // A generation's first step (log_completions > 0): its first log_completions completions on this rank, each
    // {"prompt" (the record's), "completion" (the text the rewards scored), "rewards" {name: value or null},
    // "reward" (r_j), "advantage" (A_j), "length" (tokens), "truncated"}.
    std::vector<nlohmann::ordered_json> completions;
  };
  // One optimizer step on this rank: micro-batch i's prompts are prompts[i] (indices into examples / records) and
  // this rank runs the i ≡ rank (mod world) ones: their rollouts with `adapter` attached (seeds grpo_rollout_seed(
  // run_seed, step, i)), the scores summed over the group so that every rank has the step's advantages, then their
  // backward passes, the gradients added to *grads (so: the run's step options, dropout keyed by (run_seed, step, i)
  // as train_lora keys it; eval_so: the reference's and the old policy's forward). With num_iterations μ > 1 a step
  // that is not a multiple of μ trains on the generation kept from the last one that was (the same prompts, which
  // the caller passes again; sampled anew when none is kept: a resumed run) and its stats repeat that
  // generation's, rollout_s 0.
  StepResult step(QwenModel& model, const LoraAdapter& adapter, LoraAdapter* grads,
                  const std::vector<SftExample>& examples, const std::vector<std::string>& records,
                  const std::vector<std::vector<int64_t>>& prompts, int64_t step, uint64_t run_seed,
                  const LoraStepOptions& so, const LoraStepOptions& eval_so, ProcessGroup* group);
  // The held-out prompts' statistics (grpo_metrics with "eval_", and eval_prompts): the first max_batches batches of
  // batch_size prompts of examples in order (0: all), G completions each with the adapter attached, seeded by
  // grpo_eval_seed(run_seed) (fixed, so that two evaluations differ by the adapter only); with a group, prompt p on
  // rank p mod world and the scores summed.
  nlohmann::json evaluate(QwenModel& model, const LoraAdapter& adapter, const std::vector<SftExample>& examples,
                          const std::vector<std::string>& records, int64_t batch_size, int64_t max_batches,
                          uint64_t run_seed, ProcessGroup* group);
  const std::vector<std::unique_ptr<RewardFunction>>& rewards() const { return rewards_; }

 private:
  GrpoOptions o_;
  const Tokenizer& tok_;
  SamplingOptions sampling_;
  std::vector<std::unique_ptr<RewardFunction>> rewards_;
  std::vector<double> weights_;
  std::unique_ptr<LoraAdapter> reference_;
  struct Generation;
  // A generation: the rollouts of this rank's micro-batches, the step's scores summed over the group, advantages,
  // normalisations and stats (its old log-probabilities come from the first step's forward).
  std::unique_ptr<Generation> sample(QwenModel& model, const LoraAdapter& adapter,
                                     const std::vector<SftExample>& examples, const std::vector<std::string>& records,
                                     const std::vector<std::vector<int64_t>>& prompts, int64_t step, uint64_t run_seed,
                                     ProcessGroup* group);  // the completions a step sampled, their scores and old log-probabilities (num_iterations > 1)
  std::unique_ptr<Generation> gen_;
};

}  // namespace qwenq
