// Preference optimisation of a LoRA adapter (`qwen-qlora train --objective dpo`): DPO and the IPO and hinge losses
// as TRL's DPOTrainer defines them, with its label smoothing (cDPO) and RPO's NLL term; and the reference-free SimPO
// (TRL's CPOTrainer loss_type "simpo") and ORPO (TRL's ORPOTrainer), chosen like LLaMA-Factory's pref_loss.
//
// A pair i is a prompt with a chosen and a rejected completion. S = the NLL sum of a completion's tokens under the
// policy (the adapted model being trained), R = the same under the reference (the model at step 0: the base with
// the starting adapter, which is the base alone for PEFT's B = 0 start), n = its token count. Log-probabilities
// are −S and −R. With the policy's log-ratio margin over the reference's
//   h = (R_c − S_c) − (R_r − S_r)                          ipo: h = (R_c − S_c)/n_c − (R_r − S_r)/n_r
// the pair's loss and its derivative are
//   sigmoid  ℓ = −(1−ε)·log σ(βh) − ε·log σ(−βh)         dℓ/dh = β·(ε·σ(βh) − (1−ε)·σ(−βh))
//   hinge    ℓ = max(0, 1 − βh)                          dℓ/dh = −β where βh < 1, else 0
//   ipo      ℓ = (h − 1/(2β))²                            dℓ/dh = 2·(h − 1/(2β))
// and dh/dS_c = −1, dh/dS_r = +1 (ipo: −1/n_c, +1/n_r). The reference-free losses use no R (none is computed) and
// the mean token log-probabilities a = −S/n:
//   simpo    h = a_c − a_r,  ℓ = −(1−ε)·log σ(βh − γ) − ε·log σ(−(βh − γ))     (γ = simpo_gamma; TRL's
//            logits − γ/β scaled by β)   dℓ/dh = β·(ε·σ(βh − γ) − (1−ε)·σ(γ − βh))
//   orpo     h = log odds(a_c) − log odds(a_r), log odds(a) = a − log(1 − e^a),  ℓ = −β·log σ(h)
//            dℓ/dh = −β·σ(−h),  dh/da = 1/(1 − e^a)
// with da/dS = −1/n. A step's loss is the mean over its P pairs,
//   L = (1/P)·Σ ℓ_i + α·Σ S_c,i / Σ n_c,i        (α = rpo_alpha: the chosen completions' mean token NLL, TRL's RPO
//                                                 and CPO's cpo_alpha; ORPO's own NLL term is this with α = 1)
// so ∂L/∂S_c,i = (1/P)·dℓ/dh·dh/dS_c + α/Σ n_c and ∂L/∂S_r,i = (1/P)·dℓ/dh·dh/dS_r: the per-sequence weights
// LoraStepOptions::sequence_objective hands to the backward (trainer/lora_model.h).
// Logged as TRL logs them: rewards β·(R − S) of the chosen and the rejected (ipo: of the length-normalised
// log-probabilities; simpo and orpo: β·a), their margin, the share of pairs whose chosen reward is the larger
// (accuracy).
//
// Data: each record becomes two SFT examples, prompt + chosen and prompt + rejected (trainer/sft_data.h's
// prompt-completion rendering: loss on the completion only, EOS after a string completion; a conversational
// completion's assistant messages through their <|im_end|>). Formats (TRL's preference type):
//   {"prompt": P, "chosen": C, "rejected": X}                 strings or message lists ("tools" allowed)
//   {"chosen": C, "rejected": X}                              implicit prompt: the longest shared prefix (whole
//                                                             messages; for strings, characters, one shorter when
//                                                             it ends in a space, as TRL's extract_prompt)
// and LLaMA-Factory's (its ranking datasets): {"instruction", "input", "chosen", "rejected", "system", "history"}
// (rendered as SFT's Alpaca records, outputs the completions) and ShareGPT {"conversations", "chosen": {"from",
// "value"}, "rejected": {...}, "system", "tools"} (the conversation the prompt, one message each completion).
// SftTemplateOptions::max_prompt_len (`--max-prompt-len`, TRL's max_prompt_length) keeps a longer prompt's last tokens
// in both examples alike (a leading BOS stays), before the cut to --max-len.
// Where TRL differs: its DPOTrainer appends EOS after every completion, also after a chat template's closing
// "<|im_end|>\n" (a second end token); here a conversational completion ends as SFT's does.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "trainer/lora_model.h"
#include "trainer/qwen_model.h"
#include "trainer/sft_data.h"
#include "trainer/tokenizer.h"

namespace qwenq {

class ProcessGroup;

enum class DpoLoss { kSigmoid, kHinge, kIpo, kSimpo, kOrpo };
DpoLoss parse_dpo_loss(const std::string& name);  // "sigmoid", "hinge", "ipo", "simpo", "orpo"
const char* dpo_loss_name(DpoLoss l);
// SimPO and ORPO compare the policy's completions alone: no reference model (its sums are not computed).
inline bool dpo_reference_free(DpoLoss l) { return l == DpoLoss::kSimpo || l == DpoLoss::kOrpo; }

struct DpoOptions {
  DpoLoss loss = DpoLoss::kSigmoid;
  double beta = 0.1;             // > 0
  double label_smoothing = 0.0;  // ε in [0, 0.5): sigmoid and simpo
  double rpo_alpha = 0.0;        // >= 0 (orpo: its NLL term is always 1 and this must stay 0)
  double simpo_gamma = 0.5;      // simpo's target margin γ (TRL's simpo_gamma; the margin is γ/β in mean log-probs)
  // The weight of the chosen tokens' mean NLL in the loss: rpo_alpha, or 1 for ORPO.
  double nll_weight() const { return loss == DpoLoss::kOrpo ? 1.0 : rpo_alpha; }
};
// Throws naming the flag for a value out of range.
void check_dpo_options(const DpoOptions& o);

// One pair's sums (see the top).
struct DpoPair {
  double S_c = 0, S_r = 0, R_c = 0, R_r = 0;
  int64_t n_c = 0, n_r = 0;
};
struct DpoPairTerms {
  double loss = 0;            // ℓ
  double dS_c = 0, dS_r = 0;  // ∂ℓ/∂S_c, ∂ℓ/∂S_r
  double reward_c = 0, reward_r = 0;
};
DpoPairTerms dpo_pair_terms(const DpoOptions& o, const DpoPair& p);

// Sums over pairs (a step's, an evaluation's); means are sum / pairs.
struct DpoStats {
  int64_t pairs = 0, correct = 0;  // correct: reward_c > reward_r
  double loss = 0;                 // Σ ℓ (without the RPO term)
  double nll_c = 0;                // Σ S_c (the RPO term's numerator)
  int64_t tokens_c = 0;            // Σ n_c
  double reward_c = 0, reward_r = 0, logp_c = 0, logp_r = 0;
  void add(const DpoStats& o);
  // The step's objective value: loss / pairs + rpo_alpha · nll_c / tokens_c.
  double objective(const DpoOptions& o) const;
  // The 9 numbers in a fixed order, and back (the data-parallel all-reduce).
  std::vector<double> pack() const;
  static DpoStats unpack(const std::vector<double>& v);
};

// Pairs ordered (chosen, rejected) in consecutive sequences: the policy's and the reference's per-sequence NLL sums
// and counted targets (2P each). Returns the pairs' statistics.
DpoStats dpo_batch_stats(const DpoOptions& o, const std::vector<double>& policy, const std::vector<double>& ref,
                         const std::vector<int64_t>& counts);

// The sequence objective of one micro-batch (LoraStepOptions::sequence_objective): the weights ∂L/∂S_j of the step's
// loss L (top), for a step of `step_pairs` pairs and `step_chosen_tokens` chosen tokens in all; adds the batch's
// statistics to *stats when it runs.
std::function<std::vector<double>(const std::vector<double>&)> dpo_objective(
    const DpoOptions& o, std::vector<double> ref, std::vector<int64_t> counts, int64_t step_pairs,
    int64_t step_chosen_tokens, DpoStats* stats);

// Counted targets of each sequence of a batch.
std::vector<int64_t> sequence_target_counts(const PackedBatch& b, const std::vector<int32_t>& targets);

// ---- data (dpo_data.cpp) ------------------------------------------------------------------------------------

// One parsed preference record (see the top) -> its two prompt-completion records; "" or why it is malformed.
std::string preference_record_from_json(const nlohmann::ordered_json& j, SftRecord* chosen, SftRecord* rejected);
// Every preference record of a file (see the top) as its two prompt-completion records (chosen, rejected), in file
// order; malformed ones throw naming "file:line", or with skip_bad are counted in stats->skipped. With `margins`, each
// record's optional "margin" (a finite number: TRL's RewardTrainer column, trainer/reward.h; 0 when absent or null)
// in the same order.
std::vector<std::pair<SftRecord, SftRecord>> read_preference_records(const std::string& path, bool skip_bad,
                                                                     SftDataStats* stats,
                                                                     std::vector<double>* margins = nullptr);
// Both examples of one pair, each truncated to max_len (0: none); returns whether the pair is kept (both keep a
// completion token), counted in *stats as load_preference_dataset counts (records = pairs).
bool prepare_preference_pair(const std::pair<SftRecord, SftRecord>& rec, const Tokenizer& tok,
                             const SftTemplateOptions& templ, int64_t max_len, std::pair<SftExample, SftExample>* ex,
                             SftDataStats* stats);
// Reads preference records (see the top) and renders each pair as two examples, chosen then rejected, adjacent in
// train and eval (split by pairs with opt.seed / eval_fraction / eval_count). opt.templ's train_on_prompt and
// mask_history must be off (the sums are the completions'). A pair either of whose examples keeps no completion token
// after truncation to opt.max_len is dropped (counted in stats.dropped_no_loss); stats.records counts pairs, tokens
// both examples. Malformed records are errors naming "file:line", or skipped with opt.skip_bad. train_margins /
// eval_margins hold each kept pair's "margin" (0 where absent), in the order of the pairs.
SftDataset load_preference_dataset(const std::string& path, const Tokenizer& tok, const SftDataOptions& opt);

// ---- in a training run (dpo_run.cpp) ---------------------------------------------------------------------------

// Each example's NLL sum over its counted targets, computed by `loss` (the step's loss alone: a trainer's evaluation
// call) on batches of 2·pairs_per_batch examples in order (one sequence each, rows of at most seq_len tokens), the
// first max_batches batches (0: all): the sums of the examples those batches hold, a prefix of `examples` (whole
// pairs). With a group every rank computes every R-th batch and the sums are gathered (each slot has one nonzero
// term: exact, the same on every rank).
std::vector<double> example_nll_sums(const std::vector<SftExample>& examples, int64_t seq_len, int64_t pairs_per_batch,
                                     int64_t max_batches, ProcessGroup* group,
                                     const std::function<LoraStepResult(const SftBatch&)>& loss);
// The indices (ascending, each once) of the examples that the first `batches` batches of SftBatchIterator(examples,
// opt) read: what a run of that many micro-batches needs reference sums for.
std::vector<int64_t> examples_in_batches(const std::vector<SftExample>& examples, const SftBatchOptions& opt,
                                         int64_t batches);
// Counted targets of each example (its loss-mask ones).
std::vector<int64_t> example_target_counts(const std::vector<SftExample>& examples);
// The reference's sums of a run, kept for --resume (the model at step 0 is gone by then): out/dpo_reference.json,
// {"train": [...], "eval": [...]}, written atomically; reading checks the counts against the run's examples.
std::string dpo_reference_path(const std::string& out_dir);
void write_dpo_reference(const std::string& out_dir, const std::vector<double>& train, const std::vector<double>& eval);
void read_dpo_reference(const std::string& out_dir, size_t n_train, size_t n_eval, std::vector<double>* train,
                        std::vector<double>* eval);

}  // namespace qwenq
