// The LoRA/QLoRA training loop behind `qwen-qlora train`: a frozen base (bf16/fp32, or 4-bit GPTQ/AWQ/NF4 from
// our tools or the Python ones) plus a PEFT-initialised adapter, trained with AdamW on SFT data.
//
// One optimizer step = grad_accum micro-batches (each batch_size rows of at most seq_len tokens). The loss of a
// step is the mean next-token cross-entropy over all counted targets of its micro-batches (token-weighted, like
// transformers' Trainer with num_items_in_batch), so gradient accumulation gives the same update as one big batch.
// Then: clip the global gradient norm to max_grad_norm (torch semantics), lr(step) from the schedule, AdamW
// (decoupled weight decay, kernels/optim.h) on every A and B in fp32.
//   lr(s) = lr · s / warmup                                   for s < warmup        (s = 0, 1, ...)
//   cosine: lr · (min_ratio + (1 − min_ratio) · ½(1 + cos(π·p)))   linear: lr · (1 − (1 − min_ratio)·p)
//   p = (s − warmup) / max(1, total − warmup); constant: lr.
// These are transformers' get_cosine_schedule_with_warmup (cosine_with_min_lr), get_linear_schedule_with_warmup and
// get_constant_schedule_with_warmup as its Trainer steps them: the first warm-up step has lr 0 (AdamW then moves only
// its moments), the last warm-up step lr·(warmup − 1)/warmup. trainer/lr_schedule.h has the rest of transformers'
// schedules (cosine_with_restarts, polynomial, inverse_sqrt, warmup_stable_decay, ...) and their kwargs.
//
// The run directory `out`:
//   adapter_config.json, adapter_model.safetensors   the final adapter (PEFT layout; PeftModel.from_pretrained(out))
//   metrics.jsonl        one JSON object per step {"step","epoch","loss","lr","grad_norm","tokens","tokens_per_s",...},
//                        per evaluation {"step","eval_loss","eval_tokens"}, and at the end of a completed run one
//                        summary {"step","final":true,"tokens_per_s","elapsed_s","peak_rss_bytes"} with, on the GPU,
//                        "device_peak_allocated_bytes" and "device_peak_reserved_bytes" (the caching allocator's
//                        peaks over the run, kernels/device_allocator.h)
//   loss_curve.svg       train and eval loss against steps
//   checkpoint-<step>/   adapter/ (fp32 PEFT files), optimizer.safetensors (m, v), trainer_state.json (step,
//                        data cursor, options); written atomically (staged, renamed), the newest save_total_limit kept
// The run directory is created (or, with overwrite, the previous run removed) only after the model, the data and
// the LoRA settings have been read and checked: a refused run leaves nothing and destroys nothing. Training examples
// longer than seq_len (possible when data.max_len > seq_len) are cut by the batcher; a warning on stderr counts
// them and those left without a counted target.
// resume: continues from the newest complete checkpoint with the same data order, optimizer state and schedule;
// the losses after it are bit-identical to an uninterrupted run's (dropout masks are a function of (seed, step)).
// A step whose loss or gradient norm is not finite stops the run with the step and batch named; the last good
// checkpoint stays. On the GPU, running out of device memory throws OutOfMemoryError whose message adds this run's
// `qwen-qlora plan` breakdown next to what was live (trainer/oom_report.h).
//
// Data parallelism (TrainOptions::group, `qwen-qlora train --nproc R`; core/process_group.h): R processes train one
// adapter, each on its own GPU (or its share of the CPU cores). A step is R · grad_accum micro-batches, the ones a
// single process with grad_accum' = R · grad_accum would take, in the same order: every rank walks the same batch
// iterator and computes micro-batches i with i mod R == rank (dropout keyed by the global index i, the loss
// normalized by the step's counted targets over all of them). The ranks then sum their gradients and NLL sums
// (ProcessGroup::all_reduce_sum: the same bits everywhere), so each applies the same clipping and AdamW update and
// the adapters stay identical without being sent. The result is the single process's up to the order of the fp32
// gradient sums (tests/cli/test_qlora_data_parallel_cli.sh). Evaluations are shared the same way (every R-th batch
// per rank, the per-batch sums gathered exactly and added in batch order: a single process's eval loss to the bit, at
// the same threads per process).
// Rank 0 alone writes the run directory (metrics, checkpoints, the final adapter) and prints progress; every rank
// reads a checkpoint to resume. Before anything is written the ranks check that they agree on what each decided or
// read alone (ProcessGroup::check_same: the device, the examples, the step count, the adapter's starting weights):
// a CPU rank beside GPU ranks would exchange gradients of the right shape and drift apart without it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "lora/lora_config.h"
#include "trainer/best_model.h"
#include "trainer/classify.h"
#include "trainer/dpo.h"
#include "trainer/grpo.h"
#include "trainer/kto.h"
#include "trainer/qwen_model.h"
#include "trainer/reward.h"
#include "trainer/sft_data.h"

namespace qwenq {

class ProcessGroup;

// The data options of a run: SftDataOptions with max_len 0, which train_lora reads as seq_len (the batches' row
// length), so an example whose response does not fit a row is dropped when the data loads (and counted) rather than
// cut by the batcher into a row without targets.
inline SftDataOptions train_data_options() {
  SftDataOptions d;
  d.max_len = 0;
  return d;
}

struct TrainOptions {
  std::string model_dir, data_path, out_dir;
  std::string eval_data_path;  // the held-out examples: every record of this file ("" : data's split, if any)
  LoraConfig lora;
  // format, skip_bad, max_len (0: seq_len; above seq_len the batcher still cuts examples to seq_len, warned), seed
  // (split), eval_fraction / eval_count
  SftDataOptions data = train_data_options();
  SftBatchMode batch_mode = SftBatchMode::kPacking;
  int64_t seq_len = 1024, batch_size = 1, grad_accum = 1;
  int64_t epochs = 1, max_steps = 0;  // max_steps > 0 wins over epochs
  double lr = 2e-4, weight_decay = 0.0, beta1 = 0.9, beta2 = 0.999, adam_eps = 1e-8, max_grad_norm = 1.0;
  // LoRA+ (Hayou et al. 2024; PEFT's create_loraplus_optimizer, LLaMA-Factory's loraplus_lr_ratio): every B, and
  // every one-dimensional tensor (DoRA's magnitudes), learns at loraplus_lr_ratio · lr; A and a reward model's score
  // head at lr. The schedule scales both rates alike; weight decay is weight_decay for all. 1: plain AdamW.
  double loraplus_lr_ratio = 1.0;
  // NEFTune (Jain et al. 2023; transformers' neftune_noise_alpha), SFT only: each training micro-batch's embeddings
  // get U[−a, a) noise, a = neftune_half_width(α, L, hidden_size) with L the micro-batch's row length (packing:
  // seq_len, as LLaMA-Factory's and TRL's fixed-length packed rows; padding: its longest example, or seq_len with
  // pad_to_seq_len), keyed by the micro-batch's dropout seed (LoraStepOptions::neftune_half_width). Evaluation has
  // none. 0: off.
  double neftune_noise_alpha = 0.0;
  std::string scheduler = "cosine";  // trainer/lr_schedule.h's names (transformers' lr_scheduler_type)
  nlohmann::json scheduler_kwargs;   // null or an object: transformers' lr_scheduler_kwargs (trainer/lr_schedule.h)
  int64_t warmup_steps = 0;
  double warmup_ratio = 0.0, min_lr_ratio = 0.0;
  // Steps between evaluations (0: at the end only, when there is an eval split) and between checkpoints (0: none
  // but the final adapter); a value in (0, 1) is a fraction of the run's steps, ceil(f · steps) (transformers'
  // eval_steps / save_steps below 1); above 1 a whole number (run_interval).
  double eval_every = 0;
  int64_t eval_batches = 0; // 0: the whole eval split
  // The evaluation before the first step (the report's "eval loss X -> Y"); false skips it (`--no-eval-on-start`:
  // transformers' default eval_on_start=False), the first evaluation then being step eval_every's.
  bool eval_on_start = true;
  double save_every = 0;
  // transformers' eval_strategy / save_strategy "epoch" (`--eval-every epoch`, `--save-every epoch`): an evaluation
  // (a checkpoint) after the step that takes the last micro-batch of each epoch, besides any of eval_every's
  // (save_every's). Epochs run on without a break here (a step may hold the end of one and the start of the next),
  // so that step is the epoch's end; with --max-steps the epochs the steps reach. Not with GRPO.
  bool eval_per_epoch = false, save_per_epoch = false;
  int64_t save_total_limit = 2;
  // The best model and early stopping (trainer/best_model.h: transformers' load_best_model_at_end,
  // metric_for_best_model, greater_is_better, EarlyStoppingCallback): every evaluation after step 0 (eval_every and
  // the end) is scored by the metric; with load_best a new best is checkpointed (besides save_every's) and kept by the
  // rotation, and the final adapter is the best evaluation's; with patience the run ends after `patience` evaluations
  // without an improvement above threshold (its final adapter and summary written as at the end; a resume of it
  // trains no further). Needs a held-out set and eval_every > 0. metrics.jsonl's summary adds best_step,
  // best_metric (and early_stopped).
  BestModelOptions best;
  bool checkpointing = true;
  bool bf16_checkpoints = true;  // LoraStepOptions::bf16_checkpoints (CPU and GPU alike)
  bool cpu_bf16_matmul = false;  // LoraStepOptions::bf16_matmul (--cpu-matmul bf16; the CPU trainer only)
  bool resume = false, overwrite = false, quiet = false;
  int64_t stop_after = 0;  // > 0: end after this many steps of this invocation, as a kill would (no final adapter)
  uint64_t seed = 42;  // adapter init, data order, dropout
  // Where the adapter starts (trainer/adapter_init.h): the weights of a PEFT adapter directory, or LoftQ's one-shot
  // initialisation from the original model the 4-bit base was quantized from. At most one; neither on resume (the
  // checkpoint holds the adapter).
  std::string init_adapter, loftq_model;
  DType adapter_dtype = DType::F32;  // of the final adapter (checkpoints are always fp32)
  // Train on the GPU (trainer/lora_model_cuda.h: forward, backward, clipping and AdamW on the device; the
  // adapter comes to the host for checkpoints, evaluation stays on the device; dropout masks are the CPU's). Set
  // by `--device cuda`, or by `--device auto` when a GPU is there (then choose_device has the last word).
  bool use_cuda = false;
  // When set, decides use_cuda once the model is loaded (tools/cli_common.h's DevicePick: `auto` keeps the CPU for
  // a model the GPU trainer cannot run) and prints the device line; train_lora only reads its answer.
  std::function<bool(const QwenModel&)> choose_device;
  // Time each GPU training step's phases (trainer/step_profile.h; --profile): TrainReport::profile and the run's
  // summary record get the milliseconds per step, the first step of the invocation (a warm-up) left out.
  bool profile = false;
  // Data parallelism (see the top): this process's rank in the group training one adapter; null: a single process.
  // Not owned; every rank passes the same options.
  ProcessGroup* group = nullptr;
  // Preference training (`--objective dpo`, trainer/dpo.h) instead of the token loss: data_path (and eval_data_path)
  // hold preference records; a micro-batch is batch_size pairs (their 2·batch_size sequences packed without padding,
  // each at most seq_len tokens; data.max_len must not exceed seq_len); the reference is the model at step 0 (base +
  // the starting adapter), its NLL sums of every training and held-out sequence (with max_steps short of the epochs,
  // of the training sequences those steps read; the others 0) computed once before the first step
  // (TRL's precompute_ref_log_probs) and kept in out/dpo_reference.json for --resume (none for the reference-free
  // SimPO and ORPO). A step's "loss" is the mean
  // preference loss (plus RPO's term); metrics.jsonl adds rewards_chosen / rewards_rejected / rewards_margin /
  // rewards_accuracy / logps_chosen / logps_rejected (per-pair means, TRL's names with '_' for '/'), and each
  // evaluation eval_loss, eval_rewards_margin, eval_rewards_accuracy and eval_pairs.
  bool dpo = false;
  DpoOptions dpo_options;
  // Unpaired preference training (`--objective kto`, trainer/kto.h): data_path holds labelled examples (or pairs,
  // unpaired); a micro-batch is batch_size examples, each with its KL sequence (2·batch_size sequences, as a DPO
  // run's pairs; the step runs on the examples, the KL sequences only forward); the reference as for dpo (its sums
  // of both sequences of every unit, in out/dpo_reference.json). A step's "loss" is the weighted mean KTO loss;
  // metrics.jsonl adds kl, rewards_chosen / rewards_rejected / rewards_margin, logps_chosen / logps_rejected (means
  // over the desirable / undesirable examples, TRL's names with '_' for '/'), desirable and undesirable (counts), and
  // each evaluation eval_loss, eval_kl, eval_rewards_chosen / _rejected / _margin and eval_examples.
  bool kto = false;
  KtoOptions kto_options;
  bool preference() const { return dpo || kto; }  // a reference model
  // Reward modelling (`--objective reward`, trainer/reward.h), on the CPU: data_path (and eval_data_path) hold
  // preference records (each pair's optional "margin" read), batched as dpo's (batch_size pairs a micro-batch); the
  // adapter is a SEQ_CLS one whose score head (lora.num_labels = 1; started as transformers starts a new head, or the
  // model's own when model_dir is already a reward model, or read with init_adapter) is trained with A and B. A step's "loss" is the mean Bradley-Terry loss; metrics.jsonl adds pairs, rewards_chosen /
  // rewards_rejected / rewards_margin (per-pair means of the scores) and rewards_accuracy, and each evaluation
  // eval_loss, eval_rewards_margin, eval_rewards_accuracy and eval_pairs. No reference model.
  bool reward = false;
  RewardOptions reward_options;
  bool paired_batches() const { return dpo || kto || reward; }  // batches of units of two sequences
  // Reinforcement learning from rewards (`--objective grpo`, trainer/grpo.h), on the CPU: data_path (and
  // eval_data_path) hold prompts; a micro-batch is batch_size prompts, each sampled num_generations times with the
  // adapter as the step starts (unmerged on the base: QwenModel::attach_adapter), the completions scored by the
  // reward functions and trained on as one batch of prompt + completion sequences. A step's "loss" is GRPO's
  // (about 0: the advantages are centred); metrics.jsonl adds TRL's reward statistics (trainer/grpo.h) and each
  // evaluation eval_reward and the rest with "eval_" (the held-out prompts sampled with a fixed seed); the curve in
  // loss_curve.svg is the reward's.
  bool grpo = false;
  GrpoOptions grpo_options;
  // Sequence classification (`--objective classify`, trainer/classify.h), on the CPU: data_path (and eval_data_path)
  // hold labelled texts; a micro-batch is batch_size texts, one per row; the adapter is a SEQ_CLS one whose score head
  // has one row per label (lora.num_labels = C, started as transformers starts a new head, or the model's own when
  // model_dir is already a classifier of C labels). A step's "loss" is the mean cross-entropy; metrics.jsonl adds
  // examples and accuracy, and each evaluation eval_loss, eval_accuracy and eval_examples; labels.json beside the
  // final adapter names the labels.
  bool classify = false;
  ClassifyDataOptions classify_data;
  bool sequence_classifier() const { return reward || classify; }  // a score head instead of the lm_head
};

struct TrainReport {
  int64_t steps = 0, start_step = 0;
  double eval_accuracy = -1, first_eval_accuracy = -1;  // dpo and reward: the held-out pairs' reward accuracy; classify
  bool has_eval_reward = false;                           // GRPO runs with held-out prompts: their mean reward
  bool evaluated_at_start = false;                        // the first_eval_* come from an evaluation at start_step
  double eval_reward = 0, first_eval_reward = 0;
  bool stopped = false;    // ended by stop_after: no final evaluation or adapter
  std::string checkpoint;  // with stopped: the newest complete checkpoint ("" when none)
  double last_loss = 0, eval_loss = -1;  // eval_loss < 0: no eval split
  double first_eval_loss = -1;           // before any update (or at resume)
  double seconds = 0, tokens_per_s = 0;
  uint64_t peak_rss = 0;
  // The caching allocator's peaks over a GPU run (kernels/device_allocator.h); -1 on the CPU.
  int64_t device_peak_allocated = -1, device_peak_reserved = -1;
  std::string profile;  // with TrainOptions::profile: StepProfile::table()
  // With TrainOptions::best tracking: the best evaluation's step (-1: none) and value of the metric `best_key`;
  // early_stopped: the run ended there by early stopping.
  int64_t best_step = -1;
  double best_metric = 0;
  std::string best_key;
  bool early_stopped = false;
};

TrainReport train_lora(const TrainOptions& opt);
// The checks train_lora makes before it reads anything big (flags, the run directory; `lead`: also that a fresh run
// would not overwrite a previous one, rank 0's check). qwen-qlora train makes them before it starts other ranks.
void check_train_options(const TrainOptions& o, bool lead = true);

// The held-out evaluations (trainer/train_eval.cpp, which also builds train_lora's evaluation records).
// The held-out loss train_lora reports (`qwen-qlora eval`): the token-weighted mean next-token NLL over the counted
// targets of `examples`, batched as o.batch_mode / seq_len / batch_size (at most o.eval_batches batches), without
// dropout, with o.checkpointing / bf16_checkpoints; on the GPU with o.use_cuda (LoraModelCuda's loss, as train
// --device cuda evaluates, DoRA included). Returns the loss and the counted targets.
std::pair<double, int64_t> sft_eval_loss(const QwenModel& model, const LoraAdapter& adapter,
                                         const std::vector<SftExample>& examples, const TrainOptions& o);
// Each example's NLL sum over its counted targets, as a preference run (o.dpo, o.kto) evaluates its held-out set:
// batches of o.batch_size units of two sequences (pairs; examples with their KL sequences), at most o.eval_batches of
// them (0: all; the sums of the units they cover), no dropout; on the GPU with o.use_cuda (`qwen-qlora eval
// --objective dpo|kto`).
std::vector<double> preference_eval_sums(const QwenModel& model, const LoraAdapter& adapter,
                                         const std::vector<SftExample>& examples, const TrainOptions& o);
// A reward model's held-out statistics (o.reward; `qwen-qlora eval --objective reward`): the scores of the pairs of
// `examples` (chosen, rejected, ...) in batches of o.batch_size pairs, at most o.eval_batches batches (0: all), no
// dropout, pooled at the last token that is not pad_id; the statistics of trainer/reward.h with each pair's margin
// (`margins`: one per pair of `examples`, or empty for none).
RewardStats reward_eval_stats(const QwenModel& model, const LoraAdapter& adapter,
                              const std::vector<SftExample>& examples, const std::vector<double>& margins,
                              const TrainOptions& o, int32_t pad_id, ProcessGroup* group = nullptr);
// A classifier's logits [text, output] of `examples` in batches of o.batch_size texts in order, at most o.eval_batches
// batches (0: all), no dropout, pooled at the last token that is not pad_id (the texts covered: the first
// size / num_labels).
std::vector<double> classify_eval_logits(const QwenModel& model, const LoraAdapter& adapter,
                                         const std::vector<SftExample>& examples, const TrainOptions& o,
                                         int32_t pad_id, ProcessGroup* group = nullptr);
// A classifier's held-out statistics (o.classify; `qwen-qlora eval --objective classify`): the logits of `examples`
// (one target each in `targets`, of `task`) in batches of o.batch_size texts in order, at most o.eval_batches batches
// (0: all), no dropout, pooled at the last token that is not pad_id; the statistics of trainer/classify.h.
ClassifyStats classify_eval_stats(const QwenModel& model, const LoraAdapter& adapter,
                                  const std::vector<SftExample>& examples, const std::vector<ClassifyTarget>& targets,
                                  const ClassifyTask& task, const TrainOptions& o, int32_t pad_id,
                                  ProcessGroup* group = nullptr);
// The steps between evaluations or checkpoints of a run of `total` steps for TrainOptions::eval_every / save_every:
// 0 for 0, ceil(every · total) for a fraction, else every.
int64_t run_interval(double every, int64_t total);
// The example length train_lora's data loader keeps: o.data.max_len, or seq_len when it is 0.
int64_t data_max_len(const TrainOptions& o);

// NEFTune's half-width α/√(L·d) in fp32, as transformers' hook computes it (torch.sqrt of the int64 L·d as fp32, then
// α over it in fp32).
float neftune_half_width(double alpha, int64_t row_len, int64_t hidden);

// The learning rate of step s (0-based) out of total.
double lr_at_step(const TrainOptions& opt, int64_t step, int64_t total);

}  // namespace qwenq
