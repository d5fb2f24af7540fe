// Unpaired preference training of a LoRA adapter (`qwen-qlora train --objective kto`): KTO, and the unpaired APO-zero
// loss, as TRL's KTOTrainer defines them (loss_type "kto" and "apo_zero_unpaired"; LLaMA-Factory's `stage: kto`).
//
// An example is a prompt with one completion labelled desirable or undesirable. S = the NLL sum of its completion's
// tokens under the policy (the adapted model being trained), R = the same under the reference (the model at step 0),
// r = R − S the policy's log-ratio over the reference. KTO's reference point z estimates KL(policy ‖ reference) from
// the micro-batch's mismatched sequences (each example's prompt with another example's completion, below): with S'_k,
// R'_k their policy and reference NLL sums,
//   z = max(0, (1/B)·Σ_k (R'_k − S'_k))                    B = the micro-batch's examples; z carries no gradient
// and the example's loss and its derivative by S (σ' = σ·(1 − σ)) are
//   kto                desirable    ℓ = 1 − σ(β(r − z))      dℓ/dS = +β·σ'(β(r − z))
//                      undesirable  ℓ = 1 − σ(β(z − r))      dℓ/dS = −β·σ'(β(z − r))
//   apo_zero_unpaired  desirable    ℓ = 1 − σ(βr)            dℓ/dS = +β·σ'(βr)
//                      undesirable  ℓ = σ(βr)                dℓ/dS = −β·σ'(βr)        (no z: no KL sequences run)
// A step's loss is the weighted mean over its N examples,
//   L = (1/N)·Σ w_i·ℓ_i          w = desirable_weight or undesirable_weight (TRL's; to balance unequal counts)
// so ∂L/∂S_i = w_i·dℓ_i/dS / N: the per-sequence weights LoraStepOptions::sequence_objective hands to the backward
// (trainer/lora_model.h). TRL averages each micro-batch's mean over gradient accumulation: the same for micro-batches
// of equal size. Logged as TRL logs them: kl (z, the mean over the step's micro-batches), rewards β·r of the
// desirable ("chosen") and undesirable ("rejected") examples, their margin, the completions' log-probabilities −S.
//
// The KL sequences. TRL pairs each prompt with the completion of the example before it within consecutive blocks of
// per_device_train_batch_size (the first takes the block's last): so here, in each split's order, blocks of
// --batch-size examples (a last block of one joins the block before it), at the token level as TRL concatenates
// prompt_ids and the other completion_ids: example i's tokens up to its first scored token, then example j's from
// its first scored token on (with j's mask), cut to --max-len. Fixed once, so the reference's sums of the sequences
// the run reads are computed once before step 1 (TRL's precompute_ref_log_probs) and kept in dpo_reference.json for
// --resume. The policy's KL sums are a forward without gradient (no dropout) before each micro-batch's step.
// Where TRL differs: it gathers z over the data-parallel processes (here each micro-batch has its own z, so --nproc N
// equals --grad-accum N exactly), and runs the KL forward in train mode (dropout on).
//
// Data (TRL's unpaired preference type, LLaMA-Factory's KTO records, or paired records unpaired):
//   {"prompt": P, "completion": C, "label": true|false}          strings or message lists ("tools" allowed)
//   {"messages": [..., {"role": "assistant", ...}], "label": b}    LLaMA-Factory: the last message is the completion
//     (ShareGPT's {"conversations": [{"from", "value"}]} too; "kto_tag" is read where "label" is absent)
//   {"instruction", "input", "output", "label"}                  LLaMA-Factory's Alpaca: rendered as SFT's Alpaca
//   any preference pair trainer/dpo.h reads                        two examples: chosen desirable, rejected not
//                                                                  (TRL's unpair_preference_dataset)
// Each example is rendered as SFT's prompt-completion records (loss on the completion only, EOS after a string one).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/lora_model.h"
#include "trainer/sft_data.h"
#include "trainer/tokenizer.h"

namespace qwenq {

enum class KtoLoss { kKto, kApoZeroUnpaired };
KtoLoss parse_kto_loss(const std::string& name);  // "kto", "apo_zero_unpaired"
const char* kto_loss_name(KtoLoss l);

struct KtoOptions {
  KtoLoss loss = KtoLoss::kKto;
  double beta = 0.1;                // > 0
  double desirable_weight = 1.0;    // > 0
  double undesirable_weight = 1.0;  // > 0
  // Whether the loss has KTO's reference point z (and so runs the KL sequences).
  bool uses_kl() const { return loss == KtoLoss::kKto; }
};
// Throws naming the flag for a value out of range.
void check_kto_options(const KtoOptions& o);

// One example's loss ℓ (unweighted), dℓ/dS and reward β·r (see the top).
struct KtoTerms {
  double loss = 0, dS = 0, reward = 0;
};
KtoTerms kto_example_terms(const KtoOptions& o, double S, double R, double z, bool desirable);

// z of one micro-batch from its KL sequences' policy and reference sums: max(0, mean(R' − S')); 0 without any.
double kto_reference_point(const std::vector<double>& policy_kl, const std::vector<double>& ref_kl);

// Sums over examples (a step's, an evaluation's); means are sum / count.
struct KtoStats {
  int64_t desirable = 0, undesirable = 0;
  double loss = 0;          // Σ w·ℓ
  double reward_d = 0, reward_u = 0, logp_d = 0, logp_u = 0;
  double kl = 0;            // Σ z over micro-batches
  int64_t batches = 0;      // micro-batches (for kl's mean)
  void add(const KtoStats& o);
  int64_t examples() const { return desirable + undesirable; }
  double objective() const { return examples() > 0 ? loss / static_cast<double>(examples()) : 0.0; }
  // The mean z over the micro-batches (TRL's logged "kl"; 0 without any).
  double mean_kl() const { return batches > 0 ? kl / static_cast<double>(batches) : 0.0; }
  // rewards/margins: the mean desirable reward minus the mean undesirable one (a side without examples counts 0).
  double margin() const;
  // The 9 numbers in a fixed order, and back (the data-parallel all-reduce).
  std::vector<double> pack() const;
  static KtoStats unpack(const std::vector<double>& v);
};

// One micro-batch's statistics from its examples' policy and reference sums and labels, z its reference point.
KtoStats kto_batch_stats(const KtoOptions& o, const std::vector<double>& policy, const std::vector<double>& ref,
                         const std::vector<uint8_t>& desirable, double z);

// The sequence objective of one micro-batch (LoraStepOptions::sequence_objective) over its examples' sequences alone:
// the weights ∂L/∂S_i of the step's loss L (top) for a step of `step_examples` examples; adds the batch's statistics
// (with z) to *stats when it runs.
std::function<std::vector<double>(const std::vector<double>&)> kto_objective(
    const KtoOptions& o, std::vector<double> ref, std::vector<uint8_t> desirable, double z, int64_t step_examples,
    KtoStats* stats);

// ---- data (kto_data.cpp) ---------------------------------------------------------------------------------------

struct KtoRecord {
  SftRecord record;  // a prompt-completion (or Alpaca) record
  bool desirable = false;
};
// Every record of a file (see the top) as labelled examples, in file order (a pair: chosen, then rejected);
// malformed ones throw naming "file:line", or with skip_bad are counted in stats->skipped.
std::vector<KtoRecord> read_kto_records(const std::string& path, bool skip_bad, SftDataStats* stats);

// The KL sequence of example `prompt_from` with the completion of `completion_from` (see the top), cut to max_len
// (0: none).
SftExample kto_kl_example(const SftExample& prompt_from, const SftExample& completion_from, int64_t max_len);

// Reads the records, renders each (dropped when truncation to opt.max_len leaves no completion token), splits them
// (opt.seed / eval_fraction / eval_count) and gives every example its KL sequence in blocks of `kl_block` of each
// split's order (see the top): train and eval hold units of two examples, [the example, its KL sequence], and
// train_labels / eval_labels one flag per unit (desirable). stats.records counts examples. opt.templ's
// train_on_prompt and mask_history must be off.
SftDataset load_kto_dataset(const std::string& path, const Tokenizer& tok, const SftDataOptions& opt, int64_t kl_block);

// The sequences of a padding-mode batch whose index is `member` modulo `group` (a KTO micro-batch's examples: 0, its
// KL sequences: 1), as a batch of their own (epoch and first_index kept).
SftBatch select_batch_sequences(const SftBatch& b, int64_t group, int64_t member);

// ---- in a training run (kto_run.cpp) ---------------------------------------------------------------------------

// One line on stderr: the desirable and undesirable counts, and when they differ and neither weight is in the range
// TRL's KTOTrainer recommends (Eq. 8 of the KTO paper: w_d·n_d / (w_u·n_u) in [1, 4/3]), the ranges it suggests.
void kto_report_balance(const std::vector<uint8_t>& desirable, const KtoOptions& o);

// The objective of one training micro-batch of units [example, KL sequence] (`order`: its epoch's example order;
// ref_train and desirable: the run's reference sums per sequence and labels per unit): the KL sequences' policy
// sums from `forward` (a call without gradient, skipped for a loss without z), z, then kto_objective over the
// examples for a step of step_examples examples.
std::function<std::vector<double>(const std::vector<double>&)> kto_step_objective(
    const KtoOptions& o, const SftBatch& micro, const std::vector<int64_t>& order, const std::vector<double>& ref_train,
    const std::vector<uint8_t>& desirable, int64_t step_examples, KtoStats* stats,
    const std::function<LoraStepResult(const SftBatch&)>& forward);

// The held-out statistics: `policy` the sums of a prefix of the held-out units' sequences (whole batches of
// batch_size units), `ref` all of theirs; each batch with its own z, as a training micro-batch.
KtoStats kto_eval_stats(const KtoOptions& o, const std::vector<double>& policy, const std::vector<double>& ref,
                        const std::vector<uint8_t>& desirable, int64_t batch_size);

// TRL's reward and log-probability means into a metrics record, each key prefixed: rewards_chosen, logps_chosen
// (when the statistics have desirable examples), rewards_rejected, logps_rejected (undesirable ones), rewards_margin
// (KtoStats::margin, as earlier TRL KTOTrainers logged it: a side without examples counts 0; the newest omit it),
// desirable, undesirable (counts).
void add_kto_rewards(const KtoStats& s, const std::string& prefix, nlohmann::json* record);

}  // namespace qwenq
