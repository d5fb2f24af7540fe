// The options' checks, the schedule and best-model settings they imply, and the settings a resumed run must share
// (trainer/train_options.h).
#include "trainer/train_options.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/files.h"
#include "core/process_group.h"
#include "core/strings.h"
#include "trainer/train_checkpoint.h"

namespace qwenq {

// The run's schedule over `total` steps (trainer/lr_schedule.h); warm-up steps as transformers' get_warmup_steps.
LrSchedule run_schedule(const TrainOptions& o, int64_t total) {
  const int64_t warmup = o.warmup_steps > 0 ? o.warmup_steps
                                            : static_cast<int64_t>(std::ceil(o.warmup_ratio * static_cast<double>(total)));
  return make_lr_schedule(o.scheduler, o.scheduler_kwargs, o.lr, o.min_lr_ratio, warmup, total);
}

double lr_at_step(const TrainOptions& o, int64_t step, int64_t total) { return lr_at(run_schedule(o, total), step); }

int64_t run_interval(double every, int64_t total) {
  if (every <= 0) return 0;
  if (every < 1) return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(every * static_cast<double>(total))));
  return static_cast<int64_t>(every);
}

int64_t data_max_len(const TrainOptions& o) { return o.data.max_len > 0 ? o.data.max_len : o.seq_len; }

namespace {

// The evaluation record's keys a run can choose its best model by (trainer/best_model.h), per objective; counts
// (eval_tokens, eval_pairs, ...) are not metrics. GRPO's per-function means and deviations are checked when an
// evaluation first reports them.
std::vector<std::string> best_metric_choices(const TrainOptions& o) {
  if (o.dpo || o.reward) return {"eval_loss", "eval_rewards_margin", "eval_rewards_accuracy"};
  if (o.classify) return {"eval_loss", "eval_accuracy", "eval_f1", "eval_pearson"};  // (by problem type: train_loop)
  if (o.kto) return {"eval_loss", "eval_kl", "eval_rewards_chosen", "eval_rewards_rejected", "eval_rewards_margin"};
  if (o.grpo)
    return {"eval_reward", "eval_reward_std", "eval_frac_reward_zero_std", "eval_completions_mean_length",
            "eval_completions_min_length", "eval_completions_max_length", "eval_completions_clipped_ratio",
            "eval_completions_mean_terminated_length", "eval_rewards_<name>_mean", "eval_rewards_<name>_std"};
  return {"eval_loss"};
}

}  // namespace

// The metric's evaluation key: --metric-for-best-model, else the Trainer's "loss" (GRPO: "reward"; its evaluation
// samples completions and reports no loss).
bool plateau_schedule(const TrainOptions& o) { return o.scheduler == "reduce_lr_on_plateau"; }

bool watches_metric(const TrainOptions& o) { return o.best.tracking() || plateau_schedule(o); }

std::string best_metric_key(const TrainOptions& o) {
  return eval_metric_key(!o.best.metric.empty() ? o.best.metric : o.grpo ? "reward" : "loss");
}

bool best_greater_is_better(const TrainOptions& o) {
  return o.best.greater_is_better >= 0 ? o.best.greater_is_better == 1 : default_greater_is_better(best_metric_key(o));
}

// What a resumed run must share with the run it continues (anything else would change the numbers).
nlohmann::json resume_key(const TrainOptions& o) {
  nlohmann::json k = {{"model", o.model_dir},        {"data", o.data_path},          {"r", o.lora.r},
          {"alpha", o.lora.alpha},       {"dropout", o.lora.dropout},    {"rslora", o.lora.use_rslora},
          {"dora", o.lora.use_dora},     {"targets", o.lora.target_modules},
          {"seq_len", o.seq_len},        {"batch_size", o.batch_size},   {"grad_accum", o.grad_accum},
          {"packing", o.batch_mode == SftBatchMode::kPacking},           {"epochs", o.epochs},
          {"max_steps", o.max_steps},    {"lr", o.lr},                   {"weight_decay", o.weight_decay},
          {"scheduler", o.scheduler},    {"warmup_steps", o.warmup_steps}, {"warmup_ratio", o.warmup_ratio},
          {"max_grad_norm", o.max_grad_norm}, {"seed", o.seed},          {"max_len", data_max_len(o)},
          {"eval_fraction", o.data.eval_fraction}, {"eval_count", o.data.eval_count},
          {"checkpoints", o.bf16_checkpoints ? "bf16" : "fp32"},
          {"thinking", o.data.templ.enable_thinking},     {"train_on_prompt", o.data.templ.train_on_prompt},
          {"alpaca_chat", o.data.templ.alpaca_chat},    {"mask_history", o.data.templ.mask_history}};
  if (!o.eval_data_path.empty()) k["eval_data"] = o.eval_data_path;  // absent otherwise: older checkpoints still match
  if (o.lora.selects_finely()) k["lora_selection"] = lora_selection_str(o.lora);  // likewise
  if (o.cpu_bf16_matmul) k["cpu_matmul"] = "bf16";  // likewise
  if (o.group != nullptr && o.group->world() > 1) k["nproc"] = o.group->world();  // the same: a step's micro-batches
  if (o.dpo) {  // absent for the token loss: older checkpoints still match
    k["objective"] = "dpo";
    k["dpo_loss"] = dpo_loss_name(o.dpo_options.loss);
    k["dpo_beta"] = o.dpo_options.beta;
    k["dpo_label_smoothing"] = o.dpo_options.label_smoothing;
    k["rpo_alpha"] = o.dpo_options.rpo_alpha;
    k["simpo_gamma"] = o.dpo_options.simpo_gamma;
  }
  if (o.data.templ.max_prompt_len > 0) k["max_prompt_len"] = o.data.templ.max_prompt_len;  // absent: older runs match
  if (o.loraplus_lr_ratio != 1.0) k["loraplus_lr_ratio"] = o.loraplus_lr_ratio;  // likewise
  if (o.neftune_noise_alpha > 0) k["neftune_noise_alpha"] = o.neftune_noise_alpha;  // likewise
  if (o.min_lr_ratio > 0) k["min_lr_ratio"] = o.min_lr_ratio;  // likewise
  if (o.beta1 != 0.9) k["adam_beta1"] = o.beta1;  // likewise
  if (o.beta2 != 0.999) k["adam_beta2"] = o.beta2;  // likewise
  if (o.adam_eps != 1e-8) k["adam_epsilon"] = o.adam_eps;  // likewise
  if (!o.scheduler_kwargs.is_null() && !o.scheduler_kwargs.empty()) k["scheduler_kwargs"] = o.scheduler_kwargs;  // likewise
  if (o.best.tracking()) {  // likewise; patience and threshold may change on resume
    const std::string key = best_metric_key(o);
    k["best_model"] = {{"metric", key}, {"greater_is_better", best_greater_is_better(o)}, {"load_best", o.best.load_best}};
  }
  if (plateau_schedule(o)) k["plateau_metric"] = best_metric_key(o);  // likewise
  if (o.kto) {
    k["objective"] = "kto";
    k["kto_loss"] = kto_loss_name(o.kto_options.loss);
    k["dpo_beta"] = o.kto_options.beta;
    k["kto_desirable_weight"] = o.kto_options.desirable_weight;
    k["kto_undesirable_weight"] = o.kto_options.undesirable_weight;
  }
  if (o.classify) {
    k["objective"] = "classify";
    k["labels"] = o.classify_data.label_names;  // (given ones; else the data's, the same file)
    if (o.classify_data.problem_type)  // absent when the data decides: older checkpoints still match
      k["problem_type"] = problem_type_name(*o.classify_data.problem_type);
    if (!o.classify_data.text_pair_field.empty()) k["text_pair_field"] = o.classify_data.text_pair_field;  // likewise
  }
  if (o.reward) {
    k["objective"] = "reward";
    k["center_rewards_coefficient"] = o.reward_options.center_coefficient;
  }
  if (o.grpo) {
    const GrpoOptions& g = o.grpo_options;
    k["objective"] = "grpo";
    k["grpo_loss"] = grpo_loss_name(g.loss);
    k["scale_rewards"] = grpo_scale_name(g.scale_rewards);
    k["num_generations"] = g.num_generations;
    k["max_completion_len"] = g.max_completion_len;
    k["sampling"] = {g.temperature, g.top_k, g.top_p, g.min_p, g.repetition_penalty};
    k["mask_truncated"] = g.mask_truncated;
    k["grpo_beta"] = g.beta;
    k["rewards"] = g.rewards;
    k["reward_weights"] = g.reward_weights;
    if (g.num_iterations > 1) {  // (absent at 1, as before these existed: older checkpoints still resume)
      k["num_iterations"] = g.num_iterations;
      k["clip"] = {g.epsilon, g.eps_high(), grpo_importance_name(g.importance), g.delta};
    }
  }
  return k;
}

// The keys of resume_key that differ, each with the flag that sets it: '"lr" (--lr): saved 0.0002, now 0.01; ...'
// (one line; the two whole objects were two long lines to compare by eye).
std::string settings_difference(const nlohmann::json& saved, const nlohmann::json& now) {
  static const std::map<std::string, std::string> kFlag = {
      {"model", "--model"}, {"data", "--data"}, {"r", "--lora-r"}, {"alpha", "--lora-alpha"},
      {"dropout", "--lora-dropout"}, {"rslora", "--rslora"}, {"dora", "--use-dora"}, {"targets", "--target"},
      {"seq_len", "--seq-len"},
      {"batch_size", "--batch-size"}, {"grad_accum", "--grad-accum"}, {"packing", "--batching"},
      {"epochs", "--epochs"}, {"max_steps", "--max-steps"}, {"lr", "--lr"}, {"weight_decay", "--weight-decay"},
      {"scheduler", "--scheduler"}, {"warmup_steps", "--warmup-steps"}, {"warmup_ratio", "--warmup-ratio"},
      {"max_grad_norm", "--max-grad-norm"}, {"seed", "--seed"}, {"max_len", "--max-len"},
      {"eval_fraction", "--eval-fraction"}, {"eval_count", "--eval-count"}, {"checkpoints", "--fp32-checkpoints"},
      {"thinking", "--no-thinking"}, {"train_on_prompt", "--train-on-prompt"}, {"alpaca_chat", "--alpaca-prompt"},
      {"mask_history", "--mask-history"}, {"eval_data", "--eval-data"}, {"nproc", "--nproc"},
      {"cpu_matmul", "--cpu-matmul"}, {"objective", "--objective"}, {"dpo_loss", "--dpo-loss"},
      {"dpo_beta", "--dpo-beta"}, {"dpo_label_smoothing", "--dpo-label-smoothing"}, {"rpo_alpha", "--rpo-alpha"},
      {"simpo_gamma", "--simpo-gamma"}, {"labels", "--labels"}, {"kto_loss", "--kto-loss"}, {"kto_desirable_weight", "--kto-desirable-weight"},
      {"kto_undesirable_weight", "--kto-undesirable-weight"}, {"max_prompt_len", "--max-prompt-len"},
      {"loraplus_lr_ratio", "--loraplus-lr-ratio"}, {"neftune_noise_alpha", "--neftune-noise-alpha"},
      {"min_lr_ratio", "--min-lr-ratio"}, {"adam_beta1", "--adam-beta1"}, {"adam_beta2", "--adam-beta2"},
      {"adam_epsilon", "--adam-epsilon"}, {"scheduler_kwargs", "--scheduler-kwargs"},
      {"best_model", "--load-best-model-at-end/--metric-for-best-model/--greater-is-better/--early-stopping-patience"},
      {"plateau_metric", "--metric-for-best-model"},
      {"grpo_loss", "--grpo-loss"}, {"grpo_beta", "--grpo-beta"}, {"scale_rewards", "--scale-rewards"}, {"num_generations", "--num-generations"},
      {"max_completion_len", "--max-completion-len"}, {"sampling", "--temperature/--top-k/--top-p/--min-p/--repetition-penalty"},
      {"mask_truncated", "--mask-truncated-completions"}, {"rewards", "--reward"}, {"reward_weights", "--reward-weights"},
      {"num_iterations", "--num-iterations"}, {"clip", "--epsilon/--epsilon-high/--importance-sampling-level/--delta"}};
  std::set<std::string> keys;
  for (const nlohmann::json* j : {&saved, &now}) {
    if (!j->is_object()) continue;
    for (auto it = j->begin(); it != j->end(); ++it) keys.insert(it.key());
  }
  std::string out;
  for (const std::string& k : keys) {
    const auto value = [&k](const nlohmann::json& j) { return j.is_object() && j.contains(k) ? j[k].dump() : "(none)"; };
    if (value(saved) == value(now)) continue;
    const auto flag = kFlag.find(k);
    out += (out.empty() ? "" : "; ") + ("\"" + k + "\"") + (flag == kFlag.end() ? "" : " (" + flag->second + ")") +
           ": saved " + value(saved) + ", now " + value(now);
  }
  return out.empty() ? "(none that can be named)" : out;
}

// A checkpoint from before block inputs could be bf16 has no "checkpoints" key: those runs kept them in fp32, so
// they resume (bit for bit) with --fp32-checkpoints, and the refusal below names the difference otherwise. One
// from before DoRA has no "dora" key: it was plain LoRA. One from before the chat options has no "thinking",
// "train_on_prompt", "alpaca_chat" or "mask_history": the defaults.
void add_legacy_resume_keys(nlohmann::json* saved) {
  if (!saved->is_object()) return;
  const nlohmann::json defaults = {{"checkpoints", "fp32"}, {"dora", false},        {"thinking", true},
                                   {"train_on_prompt", false}, {"alpaca_chat", false}, {"mask_history", false}};
  for (auto it = defaults.begin(); it != defaults.end(); ++it)
    if (!saved->contains(it.key())) (*saved)[it.key()] = it.value();
}

void check_train_options(const TrainOptions& o, bool lead) {
  QWENQ_CHECK(o.grad_accum >= 1 && o.batch_size >= 1 && o.seq_len >= 2,
              "--grad-accum, --batch-size must be >= 1 and --seq-len >= 2");
  run_schedule(o, 0);  // the name and kwargs (the checks that need the step count follow when it is known)
  QWENQ_CHECK(o.epochs >= 1 || o.max_steps > 0, "give --epochs >= 1 or --max-steps > 0");
  QWENQ_CHECK(o.lr > 0 && std::isfinite(o.lr), "--lr must be positive");
  QWENQ_CHECK(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1,
              "--adam-beta1 and --adam-beta2 must be in [0, 1) (torch's AdamW), got " << o.beta1 << ", " << o.beta2);
  QWENQ_CHECK(o.adam_eps >= 0 && std::isfinite(o.adam_eps), "--adam-epsilon must be >= 0, got " << o.adam_eps);
  QWENQ_CHECK(o.loraplus_lr_ratio > 0 && std::isfinite(o.loraplus_lr_ratio), "--loraplus-lr-ratio must be positive");
  QWENQ_CHECK(o.neftune_noise_alpha >= 0 && std::isfinite(o.neftune_noise_alpha),
              "--neftune-noise-alpha must be >= 0");
  QWENQ_CHECK(o.neftune_noise_alpha == 0 || !(o.dpo || o.kto || o.grpo || o.reward || o.classify),
              "--neftune-noise-alpha applies to --objective sft (NEFTune is noise for instruction tuning; the "
              "preference, reward and GRPO steps here take none)");
  QWENQ_CHECK(o.init_adapter.empty() || o.loftq_model.empty(), "give --init-adapter or --loftq-model, not both");
  o.lora.validate();
  QWENQ_CHECK(o.eval_data_path.empty() || (o.data.eval_fraction <= 0 && o.data.eval_count <= 0),
              "--eval-data " << o.eval_data_path << " is the held-out set: give it or --eval-fraction / --eval-count, "
                             << "not both");
  QWENQ_CHECK(static_cast<int>(o.dpo) + static_cast<int>(o.kto) + static_cast<int>(o.grpo) +
                      static_cast<int>(o.reward) + static_cast<int>(o.classify) <= 1,
              "give one objective: dpo, kto, grpo, reward or classify");
  if (o.classify) {
    QWENQ_CHECK(!o.use_cuda || o.choose_device, "--objective classify trains on the CPU for now (the GPU trainer has no "
                                                "score head): give --device cpu");
    QWENQ_CHECK(o.batch_mode == SftBatchMode::kPadding, "--objective classify batches one text per row (padding): "
                                                        "leave --batching out");
    QWENQ_CHECK(data_max_len(o) <= o.seq_len, "--objective classify: --max-len " << o.data.max_len << " exceeds --seq-len "
                                              << o.seq_len << " (a text is kept to its first --max-len tokens, never "
                                              << "cut again by the batcher)");
    QWENQ_CHECK(!o.classify_data.text_field.empty() && !o.classify_data.label_field.empty(),
                "--text-field and --label-field must not be empty");
  }
  if (o.reward) {
    check_reward_options(o.reward_options);
    QWENQ_CHECK(!o.use_cuda || o.choose_device, "--objective reward trains on the CPU for now (the GPU trainer has no "
                                                "score head): give --device cpu");
  }
  if (o.grpo) {
    check_grpo_options(o.grpo_options);
    QWENQ_CHECK(!o.use_cuda || o.choose_device, "--objective grpo trains on the CPU for now (its rollouts decode with "
                                                "the CPU model): give --device cpu");
  }
  if (o.dpo) check_dpo_options(o.dpo_options);
  if (o.kto) {
    check_kto_options(o.kto_options);
    QWENQ_CHECK(o.batch_size >= 2 || !o.kto_options.uses_kl(),
                "--objective kto estimates its KL reference point from the other examples of a micro-batch: give "
                "--batch-size >= 2 (or --kto-loss apo_zero_unpaired, which has none)");
  }
  if (o.paired_batches()) {
    const char* name = o.dpo ? "dpo" : o.kto ? "kto" : "reward";
    QWENQ_CHECK(data_max_len(o) <= o.seq_len, "--objective " << name << ": --max-len " << o.data.max_len
                                              << " exceeds --seq-len " << o.seq_len
                                              << " (a preference sequence is never cut by the batcher)");
    QWENQ_CHECK(o.batch_mode == SftBatchMode::kPadding, "--objective " << name << " batches whole "
                                                        << (o.kto ? "examples with their KL sequences" : "pairs")
                                                        << " (packed without padding): leave --batching out");
  }
  for (const auto& [every, flag] : {std::pair<double, const char*>{o.eval_every, "--eval-every"},
                                    std::pair<double, const char*>{o.save_every, "--save-every"}}) {
    QWENQ_CHECK(std::isfinite(every) && every >= 0 && (every < 1 || every == std::floor(every)),
                flag << " must be a whole number of steps, or a fraction of the run's steps in (0, 1), not " << every);
  }
  QWENQ_CHECK(!o.grpo || !(o.eval_per_epoch || o.save_per_epoch),
              "--objective grpo: --eval-every / --save-every epoch are not supported (a GRPO step count is the prompts' "
              "generations times --num-iterations): give a number of steps");
  if (plateau_schedule(o)) {  // (a warm-up step count is refused by the schedule's own check above)
    QWENQ_CHECK(o.warmup_ratio == 0, "--scheduler reduce_lr_on_plateau has no warm-up (transformers' Trainer passes it "
                                     "none): leave --warmup-ratio out");
  }
  // The metric's flags without anything that watches the metric would be ignored (a forgotten
  // --early-stopping-patience, say): refused rather than silently dropped.
  QWENQ_CHECK(watches_metric(o) || (o.best.metric.empty() && o.best.greater_is_better < 0 && o.best.threshold == 0),
              (!o.best.metric.empty() ? "--metric-for-best-model"
               : o.best.greater_is_better >= 0 ? "--greater-is-better / --no-greater-is-better"
                                               : "--early-stopping-threshold")
                  << " has no effect without --load-best-model-at-end, --early-stopping-patience or --scheduler "
                     "reduce_lr_on_plateau");
  if (watches_metric(o)) {
    const char* what = o.best.load_best ? "--load-best-model-at-end"
                       : o.best.tracking() ? "--early-stopping-patience"
                                           : "--scheduler reduce_lr_on_plateau";
    QWENQ_CHECK(o.eval_every > 0 || o.eval_per_epoch,
                what << " compares the evaluations during the run: give --eval-every N (or epoch)");
    QWENQ_CHECK(!o.eval_data_path.empty() || o.data.eval_fraction > 0 || o.data.eval_count > 0,
                what << " needs held-out examples: give --eval-fraction, --eval-count or --eval-data");
    QWENQ_CHECK(o.best.patience >= 0, "--early-stopping-patience must be >= 0");
    QWENQ_CHECK(o.best.threshold >= 0 && std::isfinite(o.best.threshold), "--early-stopping-threshold must be >= 0");
    const std::string key = best_metric_key(o);
    const std::vector<std::string> choices = best_metric_choices(o);
    bool known = std::find(choices.begin(), choices.end(), key) != choices.end();
    if (o.grpo && key.rfind("eval_rewards_", 0) == 0 && (has_proper_suffix(key, "_mean") || has_proper_suffix(key, "_std")))
      known = true;
    std::string list;
    for (const std::string& c : choices) list += (list.empty() ? "" : ", ") + c;
    QWENQ_CHECK(known, "--metric-for-best-model " << (o.best.metric.empty() ? "(default)" : o.best.metric) << ": "
                       << key << " is not among this objective's evaluation metrics (" << list << ")");
  }
  QWENQ_CHECK(!o.resume || !latest_checkpoint(o.out_dir).empty(),
              "--resume: no complete checkpoint in " << o.out_dir << " (save with --save-every)");
  QWENQ_CHECK(!file_exists(o.out_dir),
              "--out " << o.out_dir << " is a file, not a run directory");
  if (lead && !o.resume && dir_exists(o.out_dir) && !o.overwrite) {
    QWENQ_CHECK(!file_exists(path_join(o.out_dir, "metrics.jsonl")) && latest_checkpoint(o.out_dir).empty(),
                "output directory " << o.out_dir << " holds a previous run (pass --resume to continue it, or --overwrite)");
  }
}

}  // namespace qwenq
