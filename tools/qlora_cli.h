// The qwen-qlora command line: each subcommand lives in its own tools/qlora_<name>.cpp and registers itself on
// the app with a register_<name>() function called from tools/qwen_qlora_main.cpp.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "trainer/train_loop.h"

namespace qwenq::cli {

void register_qlora_train(CLI::App& app);
void register_qlora_merge(CLI::App& app);     // merge
void register_qlora_generate(CLI::App& app);  // generate, chat
void register_qlora_plan(CLI::App& app);
void register_qlora_data(CLI::App& app);
void register_qlora_eval(CLI::App& app);
void register_qlora_pissa_to_lora(CLI::App& app);  // pissa-to-lora

// The flags `train` and `eval` share that decide which examples an evaluation sees and how they are batched, so that
// the same flags give `eval` the run's own held-out split and batches (tools/qlora_train.cpp).
struct SftFlags {
  std::string format = "auto", alpaca_prompt = "stanford", batch_mode = "packing";
  bool no_thinking = false, fp32_checkpoints = false;  // plain flags: CLI11 shows "!--flag"s as "{false}"
};
// --format, --skip-bad, --alpaca-prompt, --mask-history, --train-on-prompt, --no-thinking, --max-len,
// --eval-fraction, --eval-count (--batching, --fp32-checkpoints: each command places them beside its own batch flags).
void add_sft_data_flags(CLI::App* c, SftFlags* f, TrainOptions* o);
// The flags into o: data format and template switches, the split's seed (o->seed), batching, checkpoint precision.
void apply_sft_flags(const SftFlags& f, TrainOptions* o);

// --objective (sft, dpo, kto, grpo, reward, classify) and each objective's flags, train's and eval's: --dpo-beta (also
// spelt --pref-beta, kto's beta too), --max-prompt-len, --dpo-loss, --dpo-label-smoothing, --rpo-alpha, --simpo-gamma,
// --kto-loss, --kto-desirable-weight, --kto-undesirable-weight, classify's --labels, --problem-type, --text-field,
// --label-field, ...
struct DpoFlags {
  std::string objective = "sft", loss = "sigmoid", kto_loss = "kto";
  std::string grpo_loss = "dapo", scale_rewards = "group", importance = "token";  // --objective grpo
  std::string problem_type;  // --objective classify: transformers' name, "" for the data's
};
void add_dpo_flags(CLI::App* c, DpoFlags* f, TrainOptions* o);
// The flags into o (o->dpo, o->dpo_options; o->kto, o->kto_options; o->grpo, o->grpo_options); refuses a flag of
// another objective,
// --simpo-gamma without --dpo-loss simpo and --batching with dpo or kto (whose batches are units of two sequences:
// sft->batch_mode becomes padding).
void apply_dpo_flags(const CLI::App& c, const DpoFlags& f, SftFlags* sft, TrainOptions* o);

// Which Linears the adapter adapts, train's and plan's: --target (names, module paths or all-linear) or
// --target-regex, and PEFT's finer fields --layers-to-transform, --layers-pattern, --exclude-modules,
// --exclude-regex, --rank-pattern, --alpha-pattern (lora/lora_select.h), as given; parsed by apply_lora_selection.
struct LoraSelectionFlags {
  std::string targets = "all-linear";
  std::string target_regex, layers, layers_pattern, exclude, exclude_regex, rank_pattern, alpha_pattern;
};
void add_lora_selection_flags(CLI::App* c, LoraSelectionFlags* f);
// Some selection flag given on the command line (or by train --config).
bool lora_selection_given(const CLI::App& c);
// The flags into lora's selection fields; refuses --target with --target-regex, both exclusions, and what
// LoraConfig::validate refuses (PEFT's own refusals), before any work.
void apply_lora_selection(const CLI::App& c, const LoraSelectionFlags& f, LoraConfig* lora);

// `train --config FILE.json`: the file's options inserted before the command line's (which then win).
std::vector<std::string> expand_train_config(const std::vector<std::string>& args);

}  // namespace qwenq::cli
