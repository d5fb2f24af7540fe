// qwen-qlora train: LoRA/QLoRA on a frozen base (trainer/train_loop.h). Options may also come from a JSON file
// (--config run.json): {"model": "...", "lora-r": 16, "packing": true, ...}, keys spelled like the long options
// without the dashes; options on the command line win.
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/env_switch.h"
#include "core/files.h"
#include "core/json_file.h"
#include "core/process_group.h"
#include "core/progress.h"
#include "core/threads.h"
#include "kernels/device.h"
#include "tools/cli_common.h"
#include "tools/qlora_cli.h"
#include "trainer/model_dir.h"
#include "trainer/train_loop.h"

namespace qwenq::cli {

namespace {

struct TrainArgs {
  TrainOptions opt;
  SftFlags sft;
  std::string model, adapter_dtype = "fp32", cpu_matmul = "fp32";
  DpoFlags dpo;
  std::string config;
  bool no_checkpointing = false;  // a plain flag: CLI11 shows "!--flag"s as "{false}"
  bool no_eval_on_start = false;  // likewise
  bool greater = false, not_greater = false;  // --greater-is-better, --no-greater-is-better
  std::string scheduler_kwargs;               // JSON text
  std::string eval_every = "0", save_every = "0";  // a number of steps or a fraction, or "epoch"
  LoraSelectionFlags selection;  // as given, parsed in the callback
  int nproc = 1;
  CommonOptions common;
};

// The JSON config as extra command-line arguments (placed before the real ones). Keys in `given` (options on the
// command line) are left out: the command line wins, and CLI11 would refuse a single-value option given twice. A list
// of strings or numbers is the option's comma-separated value ("target": ["q_proj", "v_proj"] is --target
// q_proj,v_proj, as PEFT's target_modules list reads): train's list options take one comma-separated value, but for
// "reward", whose items may hold commas (a regex, a command): each item is one --reward.
// "scheduler-kwargs", "rank-pattern" and "alpha-pattern" take their objects as they are. A boolean is a flag: true gives it, false gives --flag=false.
std::vector<std::string> config_args(const std::string& path, const std::set<std::string>& given) {
  const nlohmann::json j = read_json_file(path);
  QWENQ_CHECK(j.is_object(), path << ": a training config must be a JSON object of option: value");
  std::vector<std::string> args;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string key = "--" + it.key();
    if (given.count(it.key())) continue;
    if (it->is_boolean()) {  // (false given as --flag=false)
      args.push_back(it->get<bool>() ? key : key + "=false");
    } else if (it->is_string()) {
      args.insert(args.end(), {key, it->get<std::string>()});
    } else if (it->is_number()) {
      args.insert(args.end(), {key, it->dump()});
    } else if (it->is_array() && !it->empty() && it.key() == "reward") {
      for (const auto& v : *it) {
        QWENQ_CHECK(v.is_string(), path << ": option \"reward\": a list of strings, not " << v.dump());
        args.insert(args.end(), {key, v.get<std::string>()});
      }
    } else if (it->is_array() && !it->empty()) {
      std::string joined;
      for (const auto& v : *it) {
        QWENQ_CHECK(v.is_string() || v.is_number(), path << ": option \"" << it.key() << "\": a list holds strings "
                                                          << "or numbers, not " << v.dump());
        joined += (joined.empty() ? "" : ",") + (v.is_string() ? v.get<std::string>() : v.dump());
      }
      args.insert(args.end(), {key, joined});
    } else if (it->is_object() && (it.key() == "scheduler-kwargs" || it.key() == "rank-pattern" ||
                                   it.key() == "alpha-pattern")) {  // lr_scheduler_kwargs, PEFT's patterns: JSON text
      args.insert(args.end(), {key, it->dump()});
    } else {
      QWENQ_FAIL(path << ": option \"" << it.key() << "\" must be a string, number, boolean or a list of strings "
                      << "or numbers");
    }
  }
  return args;
}

// With --init-adapter the adapter's own shape settings are the run's: an option that says otherwise is refused
// rather than silently overridden.
void adopt_adapter_settings(const CLI::App& c, const std::string& dir, LoraConfig* run) {
  const LoraConfig ac = load_lora_config(dir);
  auto given = [&](const char* flag) { return c.get_option(flag)->count() > 0; };
  auto refuse = [&](bool differs, const char* flag, const std::string& theirs) {
    QWENQ_CHECK(!differs, flag << " differs from --init-adapter " << dir << "'s " << theirs
                               << " (leave it out: the adapter's settings are used)");
  };
  refuse(given("--lora-r") && run->r != ac.r, "--lora-r", "r " + std::to_string(ac.r));
  std::ostringstream alpha;
  alpha << "lora_alpha " << ac.alpha;
  refuse(given("--lora-alpha") && run->alpha != ac.alpha, "--lora-alpha", alpha.str());
  refuse(given("--rslora") && run->use_rslora != ac.use_rslora, "--rslora", "use_rslora false");
  refuse(given("--use-dora") && run->use_dora != ac.use_dora, "--use-dora", "use_dora false");
  refuse(lora_selection_given(c) && !same_lora_selection(*run, ac), "the module selection (--target, ...)",
         "selection " + lora_selection_str(ac));
  run->r = ac.r;
  run->alpha = ac.alpha;
  run->use_rslora = ac.use_rslora;
  run->use_dora = ac.use_dora;
  run->target_modules = ac.target_modules;
  run->target_regex = ac.target_regex;
  run->layers_to_transform = ac.layers_to_transform;
  run->layers_pattern = ac.layers_pattern;
  run->exclude_modules = ac.exclude_modules;
  run->exclude_regex = ac.exclude_regex;
  run->rank_pattern = ac.rank_pattern;
  run->alpha_pattern = ac.alpha_pattern;
}

// --eval-every / --save-every: "epoch", or a number (checked by check_train_options: whole, or a fraction in (0, 1)).
void parse_every(const std::string& text, const char* flag, double* every, bool* per_epoch) {
  *per_epoch = text == "epoch";
  if (*per_epoch) {
    *every = 0;
    return;
  }
  size_t used = 0;
  double v = -1;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  QWENQ_CHECK(used == text.size() && used > 0,
              flag << " must be a number of steps (>= 0), a fraction of the run's steps, or 'epoch', not '" << text
                   << "'");
  QWENQ_CHECK(v >= 0, flag << ": must be at least 0, got " << text);  // (CLI11's words for the other flags)
  *every = v;
}

// --nproc N (trainer/train_loop.h's data parallelism): a process started by rank 0 finds its group in the
// environment; rank 0 starts the others (the same command line) after checking that each gets a GPU when the run
// may use one. The processes split the CPU cores unless --threads says otherwise.
struct DataParallel {
  std::unique_ptr<ProcessGroup> started;        // this process is rank >= 1
  std::unique_ptr<ProcessGroupLaunch> launched; // this process is rank 0 of a group it started
  ProcessGroup* group() const { return started ? started.get() : launched ? launched->group.get() : nullptr; }
};

DataParallel start_data_parallel(int nproc, const std::string& config, const TrainOptions& o, CommonOptions* common) {
  DataParallel dp;
  set_num_threads(0);
  const int cores = num_threads();
  dp.started = process_group_from_env();
  if (dp.started) {
    QWENQ_CHECK(dp.started->world() == nproc, "this process was started as rank " << dp.started->rank() << " of "
                                                  << dp.started->world() << " but its --nproc is " << nproc);
  } else if (nproc > 1) {
    // Every rank reads the inputs itself: a pipe (a process substitution) would give the first reader everything.
    const std::pair<const char*, const std::string*> inputs[] = {
        {"--data", &o.data_path}, {"--eval-data", &o.eval_data_path}, {"--config", &config}};
    for (const auto& [flag, path] : inputs) {
      struct stat st;
      QWENQ_CHECK(path->empty() || (::stat(path->c_str(), &st) == 0 && S_ISREG(st.st_mode)),
                  "--nproc " << nproc << ": " << flag << " " << *path << " is not a regular file, and every process "
                             << "reads it (a pipe gives its contents to one reader): write it to a file first");
    }
    int gpus = 0;
#ifdef QWENQ_HAVE_CUDA
    if (common->device != "cpu") gpus = cuda_device_count();
#endif
    const char* visible = std::getenv("CUDA_VISIBLE_DEVICES") ? " (CUDA_VISIBLE_DEVICES)" : "";
    QWENQ_CHECK(common->device != "cuda" || gpus > 0,
                "--device cuda --nproc " << nproc << ": this machine shows no GPU" << visible << " (use --device cpu)");
    // QWENQ_DP_SHARE_GPU=1: every rank on rank 0's GPU (a check of the multi-process GPU path on one GPU; slower
    // than one process).
    QWENQ_CHECK(gpus == 0 || gpus >= nproc || env_switch("QWENQ_DP_SHARE_GPU") == 1,
                "--nproc " << nproc << " trains one process per GPU, and this machine shows " << gpus << visible
                           << ": give --nproc " << gpus << " or fewer, or --device cpu");
    if (gpus == 0 && nproc > cores) {
      std::fprintf(stderr, "warning: --nproc %d on the CPU with %d cores: the processes share them (each holds the "
                   "whole model; more processes than cores only adds memory and switching)\n", nproc, cores);
    }
    dp.launched = spawn_process_group(nproc, this_program_args(), /*assign_gpus=*/common->device != "cpu");
  }
  // Every rank is here before any loads the model: a rank that failed to start is found now, not after a step.
  if (dp.group() != nullptr) {
    uint64_t h = kFingerprintStart;
    for (const std::string& a : this_program_args()) h = fingerprint(h, a.c_str(), a.size() + 1);  // with its NUL
    dp.group()->check_same(h, "the command line");
  }
  if (dp.group() != nullptr && common->threads == 0) common->threads = std::max(1, cores / nproc);
  return dp;
}

}  // namespace

void add_sft_data_flags(CLI::App* c, SftFlags* f, TrainOptions* o) {
  c->add_option("--format", f->format, "data format: auto, text, alpaca, chat, prompt-completion (preference with --objective dpo or kto)")
      ->capture_default_str();
  c->add_flag("--skip-bad", o->data.skip_bad, "skip malformed records (counted) instead of stopping");
  c->add_option("--alpaca-prompt", f->alpaca_prompt,
                 "Alpaca records: stanford (Stanford Alpaca's prompt) or chat (a user/assistant conversation in the "
                 "tokenizer's chat template; \"system\" and \"history\" used)")
      ->capture_default_str();
  c->add_flag("--mask-history", o->data.templ.mask_history,
              "chat data: only the last assistant message of each conversation counts in the loss");
  c->add_flag("--train-on-prompt", o->data.templ.train_on_prompt,
              "loss on every token of Alpaca and chat records (prompts, system and user turns, tool responses), not "
              "only the responses");
  c->add_flag("--no-thinking", f->no_thinking,
              "chat data with a Qwen3 template: enable_thinking=False (an empty think block is prompt, not response)");
  c->add_option("--max-len", o->data.max_len, "truncate examples to this many tokens (0: --seq-len)")
      ->check(at_least(0, "NONNEGATIVE"))
      ->capture_default_str();
  c->add_option("--eval-fraction", o->data.eval_fraction, "held-out share of the data for eval loss")->capture_default_str();
  c->add_option("--eval-count", o->data.eval_count, "or an exact number of held-out examples")->capture_default_str();
}

void add_dpo_flags(CLI::App* c, DpoFlags* f, TrainOptions* o) {
  c->add_option("--objective", f->objective,
                "sft (next-token loss on the responses), dpo (preference pairs {prompt, chosen, rejected}; "
                "--batch-size counts pairs), kto (labelled examples {prompt, completion, label}, or pairs "
                "unpaired; --batch-size counts examples), grpo (prompts {prompt, ...} sampled and scored by --reward; "
                "--batch-size counts prompts; CPU), reward (a reward model from preference pairs: a score head and "
                "LoRA, TRL's RewardTrainer; --batch-size counts pairs; CPU) or classify (a text classifier from "
                "{text, label} records: a head of one row per label and LoRA, as Qwen2ForSequenceClassification "
                "with PEFT; CPU)")
      ->check(CLI::IsMember({"sft", "dpo", "kto", "grpo", "reward", "classify"}))
      ->capture_default_str();
  c->add_option("--labels", o->classify_data.label_names,
                "classify: the label names, comma-separated, in id order (default: the training file's: integer "
                "labels 0..max, or the sorted set of the names)")
      ->delimiter(',');
  c->add_option("--problem-type", f->problem_type,
                "classify: single_label_classification (one label per text, cross-entropy), "
                "multi_label_classification (a list of labels per text, binary cross-entropy per label) or regression "
                "(a number or a list of numbers per text, mean squared error); transformers' problem_type (default: "
                "a classifier base's, else multi-label when the data's labels are lists, else single-label)")
      ->check(CLI::IsMember({"single_label_classification", "multi_label_classification", "regression"}));
  c->add_option("--text-field", o->classify_data.text_field, "classify: the records' text field")->capture_default_str();
  c->add_option("--text-pair-field", o->classify_data.text_pair_field,
                "classify: the records' second text, for sentence pairs (NLI, paraphrase, similarity: e.g. sentence2), "
                "encoded with the first as tokenizer(text, text_pair) does");
  c->add_option("--label-field", o->classify_data.label_field, "classify: the records' label field")
      ->capture_default_str();
  c->add_option("--center-rewards-coefficient", o->reward_options.center_coefficient,
                "reward: weight of the mean squared sum of a pair's scores, which keeps them centred on 0 (TRL's "
                "center_rewards_coefficient; 0: none)")
      ->capture_default_str();
  c->add_option("--dpo-beta,--pref-beta", o->dpo_options.beta,
                "dpo and kto: beta, the strength of the pull toward the reference")
      ->capture_default_str();
  c->add_option("--max-prompt-len", o->data.templ.max_prompt_len,
                "dpo, kto and grpo: a longer prompt keeps its last N tokens (after a BOS), before --max-len cuts the end "
                "(TRL's max_prompt_length; 0: none)")
      ->check(at_least(0, "NONNEGATIVE"))
      ->capture_default_str();
  c->add_option("--kto-loss", f->kto_loss,
                "kto: kto (KTO, its KL reference point from mismatched pairs) or apo_zero_unpaired (unpaired APO-zero), "
                "as TRL's loss_type")
      ->capture_default_str();
  c->add_option("--kto-desirable-weight", o->kto_options.desirable_weight,
                "kto: weight of the desirable examples' losses (raise the rarer class's)")
      ->capture_default_str();
  c->add_option("--kto-undesirable-weight", o->kto_options.undesirable_weight,
                "kto: weight of the undesirable examples' losses")
      ->capture_default_str();
  c->add_option("--dpo-loss", f->loss,
                "dpo: sigmoid (DPO), hinge (SLiC) or ipo (IPO), as TRL's loss_type; or the reference-free simpo "
                "(SimPO) or orpo (ORPO, its chosen NLL term included), as LLaMA-Factory's pref_loss")
      ->capture_default_str();
  c->add_option("--simpo-gamma", o->dpo_options.simpo_gamma, "dpo --dpo-loss simpo: the target reward margin gamma")
      ->capture_default_str();
  c->add_option("--dpo-label-smoothing", o->dpo_options.label_smoothing,
                "dpo: the share of pairs assumed mislabelled (conservative DPO; sigmoid and simpo losses)")
      ->capture_default_str();
  c->add_option("--rpo-alpha", o->dpo_options.rpo_alpha,
                "dpo: weight of the chosen completions' mean token NLL added to the loss (RPO; 0: none)")
      ->capture_default_str();
  GrpoOptions& g = o->grpo_options;
  c->add_option("--reward", g.rewards,
                "grpo: a reward function, repeatable: accuracy, think_format, regex=PATTERN, contains=TEXT, "
                "soft_overlong=CACHE, model=DIR (a Qwen2/Qwen3ForSequenceClassification reward model) or cmd=COMMAND "
                "(one JSON line per completion in, one number per line out)");
  c->add_option("--reward-weights", g.reward_weights, "grpo: one weight per --reward, comma-separated (default: all 1)")
      ->delimiter(',');
  c->add_option("--num-generations", g.num_generations, "grpo: completions sampled per prompt (G)")->capture_default_str();
  c->add_option("--max-completion-len", g.max_completion_len, "grpo: new tokens per completion at most")
      ->capture_default_str();
  c->add_option("--temperature", g.temperature, "grpo: sampling temperature (the log-probabilities trained are at it)")
      ->capture_default_str();
  c->add_option("--top-k", g.top_k, "grpo: sample from the k likeliest tokens (0: off)")->capture_default_str();
  c->add_option("--top-p", g.top_p, "grpo: nucleus sampling mass (1: off)")->capture_default_str();
  c->add_option("--min-p", g.min_p, "grpo: drop tokens below this share of the likeliest (0: off)")->capture_default_str();
  c->add_option("--repetition-penalty", g.repetition_penalty, "grpo: sampling's repetition penalty (1: off)")
      ->capture_default_str();
  c->add_option("--grpo-loss", f->grpo_loss,
                "grpo: dapo (the step's token mean), grpo (each completion's token mean), bnpo (each micro-batch's) "
                "or dr_grpo (a constant), as TRL's loss_type")
      ->capture_default_str();
  c->add_option("--scale-rewards", f->scale_rewards,
                "grpo: advantages divided by the group's reward std (group), the step's (batch), or not (none)")
      ->capture_default_str();
  c->add_option("--grpo-beta", g.beta, "grpo: weight of the KL term to the base model (TRL's beta; 0: none, no reference pass)")
      ->capture_default_str();
  c->add_flag("--mask-truncated-completions", g.mask_truncated,
              "grpo: completions cut at --max-completion-len (no EOS) add nothing to the loss");
  c->add_option("--num-iterations", g.num_iterations,
                "grpo: optimizer steps per generation (TRL's num_iterations, PPO's epochs; > 1: the ratio to the "
                "sampling policy, clipped)")
      ->capture_default_str();
  c->add_option("--epsilon", g.epsilon, "grpo: the ratio is clipped below at 1 - epsilon (with --num-iterations > 1)")
      ->capture_default_str();
  c->add_option("--epsilon-high", g.epsilon_high, "grpo: ... and above at 1 + epsilon-high (default: --epsilon; DAPO: 0.28)");
  c->add_option("--delta", g.delta,
                "grpo: two-sided clipping (INTELLECT-2): the unclipped ratio capped at delta, > 1 + --epsilon-high "
                "(0: off)")
      ->capture_default_str();
  c->add_option("--log-completions", g.log_completions,
                "grpo: write this many completions of each generation (prompt, text, rewards, advantage) to "
                "completions.jsonl in --out (0: none)")
      ->capture_default_str();
  c->add_option("--importance-sampling-level", f->importance,
                "grpo: the ratio per token, or per sequence (GSPO: the geometric mean of its tokens' ratios)")
      ->capture_default_str();
}

void apply_dpo_flags(const CLI::App& c, const DpoFlags& f, SftFlags* sft, TrainOptions* o) {
  o->dpo = f.objective == "dpo";
  o->kto = f.objective == "kto";
  o->grpo = f.objective == "grpo";
  o->reward = f.objective == "reward";
  o->classify = f.objective == "classify";
  const auto given = [&c](const char* flag) { return c.get_option(flag)->count() > 0; };
  static const char* const kGrpoFlags[] = {"--reward", "--reward-weights", "--num-generations", "--max-completion-len",
                                           "--temperature", "--top-k", "--top-p", "--min-p", "--repetition-penalty",
                                           "--grpo-loss", "--scale-rewards", "--mask-truncated-completions", "--grpo-beta",
                                           "--num-iterations", "--epsilon", "--epsilon-high", "--delta", "--importance-sampling-level",
                                           "--log-completions"};
  if (!o->grpo) {
    for (const char* flag : kGrpoFlags) QWENQ_CHECK(!given(flag), flag << " applies to --objective grpo");
  }
  if (!o->reward) {
    QWENQ_CHECK(!given("--center-rewards-coefficient"), "--center-rewards-coefficient applies to --objective reward");
  }
  if (!o->classify) {
    for (const char* flag : {"--labels", "--problem-type", "--text-field", "--text-pair-field", "--label-field"})
      QWENQ_CHECK(!given(flag), flag << " applies to --objective classify");
  } else if (!f.problem_type.empty()) {
    ProblemType t;
    QWENQ_CHECK(problem_type_from_name(f.problem_type, &t), "--problem-type " << f.problem_type << " is not a problem type");
    o->classify_data.problem_type = t;
  }
  if (!o->kto) {
    for (const char* flag : {"--kto-loss", "--kto-desirable-weight", "--kto-undesirable-weight"})
      QWENQ_CHECK(!given(flag), flag << " applies to --objective kto");
  }
  if (!o->dpo) {
    for (const char* flag : {"--dpo-loss", "--dpo-label-smoothing", "--rpo-alpha", "--simpo-gamma"})
      QWENQ_CHECK(!given(flag), flag << " applies to --objective dpo");
    if (!o->kto) {
      QWENQ_CHECK(!given("--dpo-beta"), "--dpo-beta applies to --objective dpo and kto");
      QWENQ_CHECK(o->grpo || o->reward || !given("--max-prompt-len"),
                  "--max-prompt-len applies to --objective dpo, kto, grpo and reward");
      if (!o->grpo && !o->reward && !o->classify) return;
    }
  }
  QWENQ_CHECK(!given("--batching"), "--objective " << f.objective << " batches "
                                    << (o->dpo || o->reward ? "whole pairs (--batch-size pairs, their sequences packed "
                                                              "without padding)"
                                        : o->kto  ? "whole examples with their KL sequences (--batch-size examples, their "
                                                    "sequences packed without padding)"
                                        : o->classify ? "--batch-size texts, one per row (padding)"
                                                  : "--batch-size prompts, their completions one per row")
                                    << ": leave --batching out");
  sft->batch_mode = "padding";
  if (o->grpo) {
    GrpoOptions& g = o->grpo_options;
    g.loss = parse_grpo_loss(f.grpo_loss);
    g.scale_rewards = parse_grpo_scale(f.scale_rewards);
    g.importance = parse_grpo_importance(f.importance);
    check_grpo_options(g);
    return;
  }
  if (o->reward) {
    check_reward_options(o->reward_options);
    return;
  }
  if (o->classify) return;
  if (o->kto) {
    o->kto_options.beta = o->dpo_options.beta;
    o->kto_options.loss = parse_kto_loss(f.kto_loss);
    check_kto_options(o->kto_options);
    return;
  }
  o->dpo_options.loss = parse_dpo_loss(f.loss);
  QWENQ_CHECK(c.get_option("--simpo-gamma")->count() == 0 || o->dpo_options.loss == DpoLoss::kSimpo,
              "--simpo-gamma applies to --dpo-loss simpo");
  check_dpo_options(o->dpo_options);
}

void apply_sft_flags(const SftFlags& f, TrainOptions* o) {
  o->data.format = parse_sft_format(f.format);
  o->data.seed = o->seed;
  o->data.templ.enable_thinking = !f.no_thinking;
  o->data.templ.alpaca_chat = parse_alpaca_prompt(f.alpaca_prompt);
  QWENQ_CHECK(f.batch_mode == "packing" || f.batch_mode == "padding", "--batching must be packing or padding");
  o->batch_mode = f.batch_mode == "padding" ? SftBatchMode::kPadding : SftBatchMode::kPacking;
  o->bf16_checkpoints = !f.fp32_checkpoints;
}

void register_qlora_train(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  TrainOptions& o = a->opt;
  CLI::App* c = app.add_subcommand("train", "Train a LoRA adapter on a frozen bf16 or 4-bit (GPTQ/AWQ/NF4) base");
  c->add_option("--config", a->config, "JSON file of options (keys = long option names without dashes, a list for a comma-separated value; the command line wins)");
  c->add_option("--model,-m", a->model, "base model directory or repo id (bf16/fp32, GPTQ/AWQ/bnb-4bit, or block-wise FP8)");
  c->add_option("--data,-d", o.data_path,
                "training data: JSONL/JSON with text, Alpaca or chat messages (preference pairs with --objective dpo, "
                "labelled examples with --objective kto)");
  c->add_option("--eval-data", o.eval_data_path,
                "held-out data in a file of its own (every record, rendered as --data's; instead of --eval-fraction "
                "or --eval-count)")
      ->check(CLI::ExistingFile);
  c->add_option("--out,-o", o.out_dir, "run directory: adapter, metrics.jsonl, loss_curve.svg, checkpoints");
  add_sft_data_flags(c, &a->sft, &o);
  add_dpo_flags(c, &a->dpo, &o);
  c->add_option("--lora-r", o.lora.r, "adapter rank")->capture_default_str();
  c->add_option("--lora-alpha", o.lora.alpha, "scaling numerator (s = alpha / r)")
      ->check(greater_than(0, "POSITIVE"))
      ->capture_default_str();
  c->add_option("--lora-dropout", o.lora.dropout, "dropout on the adapter branch's input")->capture_default_str();
  c->add_flag("--rslora", o.lora.use_rslora, "rank-stabilized scaling s = alpha / sqrt(r)");
  c->add_flag("--use-dora", o.lora.use_dora,
              "DoRA (PEFT use_dora=True): a trained magnitude per output row of each adapted Linear");
  add_lora_selection_flags(c, &a->selection);
  c->add_option("--lr", o.lr, "peak learning rate")->capture_default_str();
  c->add_option("--weight-decay", o.weight_decay, "AdamW decoupled weight decay")
      ->check(at_least(0, "NONNEGATIVE"))
      ->capture_default_str();
  c->add_option("--adam-beta1", o.beta1, "AdamW's first-moment decay (transformers' adam_beta1)")
      ->check(in_range(0, 1, "[0, 1)"))
      ->capture_default_str();
  c->add_option("--adam-beta2", o.beta2, "AdamW's second-moment decay (transformers' adam_beta2)")
      ->check(in_range(0, 1, "[0, 1)"))
      ->capture_default_str();
  c->add_option("--adam-epsilon", o.adam_eps, "AdamW's epsilon (transformers' adam_epsilon)")
      ->check(at_least(0, "NONNEGATIVE"))
      ->capture_default_str();
  c->add_option("--loraplus-lr-ratio", o.loraplus_lr_ratio,
                "LoRA+: each B (and DoRA magnitude) learns at this times --lr, each A at --lr (PEFT's "
                "create_loraplus_optimizer; 16 is the paper's usual value)")
      ->check(greater_than(0, "POSITIVE"))
      ->capture_default_str();
  c->add_option("--neftune-noise-alpha", o.neftune_noise_alpha,
                "NEFTune: uniform noise of half-width alpha/sqrt(L*hidden) on the embeddings in training, L the "
                "rows' length (transformers' neftune_noise_alpha; 5 is the paper's usual value; SFT only)")
      ->check(at_least(0, "NONNEGATIVE"))
      ->capture_default_str();
  c->add_option("--max-grad-norm", o.max_grad_norm, "clip the global gradient norm (0: no clipping)")
      ->check(at_least(0, "NONNEGATIVE"))
      ->capture_default_str();
  c->add_option("--scheduler", o.scheduler,
                "linear, cosine, cosine_with_restarts, polynomial, constant (after the warm-up), "
                "constant_with_warmup, inverse_sqrt, cosine_with_min_lr, warmup_stable_decay or reduce_lr_on_plateau "
                "(the rate cut at evaluations that do not improve --metric-for-best-model; needs --eval-every) "
                "(transformers' lr_scheduler_type)")
      ->capture_default_str();
  c->add_option("--scheduler-kwargs", a->scheduler_kwargs,
                "the schedule's keyword arguments as a JSON object (transformers' lr_scheduler_kwargs), e.g. "
                "'{\"num_cycles\": 3}' for cosine_with_restarts, '{\"num_decay_steps\": 100}' for "
                "warmup_stable_decay, '{\"patience\": 2, \"factor\": 0.5}' for reduce_lr_on_plateau");
  c->add_option("--min-lr-ratio", o.min_lr_ratio,
                "the learning rate the decay ends at, as a fraction of --lr (linear, cosine, cosine_with_min_lr, "
                "warmup_stable_decay)")
      ->capture_default_str();
  c->add_option("--warmup-steps", o.warmup_steps, "linear warm-up steps (transformers': lr 0 at the first)")
      ->check(at_least(0, "NONNEGATIVE"))
      ->capture_default_str();
  c->add_option("--warmup-ratio", o.warmup_ratio, "or a share of the steps")
      ->check(in_range(0, 1, "[0, 1]"))
      ->capture_default_str();
  c->add_option("--epochs", o.epochs, "passes over the training split")
      ->check(at_least(0, "NONNEGATIVE"))
      ->capture_default_str();
  c->add_option("--max-steps", o.max_steps, "optimizer steps (wins over --epochs when > 0)")
      ->check(at_least(0, "NONNEGATIVE"))
      ->capture_default_str();
  c->add_option("--batch-size", o.batch_size, "rows per micro-batch (pairs with --objective dpo, examples with kto)")->capture_default_str();
  c->add_option("--grad-accum", o.grad_accum, "micro-batches per optimizer step")->capture_default_str();
  c->add_option("--seq-len", o.seq_len, "tokens per row")->capture_default_str();
  c->add_option("--batching", a->sft.batch_mode, "packing (examples back to back, attention kept apart) or padding")
      ->capture_default_str();
  c->add_flag("--no-checkpointing", a->no_checkpointing, "keep every block's activations instead of recomputing them");
  c->add_flag("--fp32-checkpoints", a->sft.fp32_checkpoints,
              "keep the block inputs in fp32 (the exact fp32 model; default: rounded to bf16, half the GPU memory)");
  add_cpu_matmul_option(c, &a->cpu_matmul,
                        "on the CPU, the base Linears' and the lm_head's products: fp32 (the reference) or bf16 (bf16 "
                        "operands, fp32 sums, as the GPU and torch's bf16 autocast compute them; fast with AVX512_BF16)");
  c->add_option("--eval-every", a->eval_every,
                "evaluate every N steps (0: at the end; below 1: that fraction of the run's steps, as transformers' "
                "eval_steps), or 'epoch': at the end of each epoch (transformers' eval_strategy=\"epoch\")")
      ->capture_default_str();
  c->add_flag("--no-eval-on-start", a->no_eval_on_start,
              "skip the evaluation before the first step (transformers' default eval_on_start=False): the first is "
              "then --eval-every's");
  c->add_option("--eval-batches", o.eval_batches, "limit each evaluation to N batches (0: all)")
      ->check(at_least(0, "NONNEGATIVE"))
      ->capture_default_str();
  c->add_option("--save-every", a->save_every,
                "checkpoint every N steps (0: only the final adapter; below 1: that fraction of the run's steps), or "
                "'epoch': at the end of each epoch (transformers' save_strategy=\"epoch\")")
      ->capture_default_str();
  c->add_option("--save-total-limit", o.save_total_limit, "checkpoints kept (0: all)")
      ->check(at_least(0, "NONNEGATIVE"))
      ->capture_default_str();
  c->add_flag("--load-best-model-at-end", o.best.load_best,
              "the final adapter is the best evaluation's (each new best is checkpointed and kept; transformers' "
              "load_best_model_at_end); needs --eval-every and held-out examples");
  c->add_option("--metric-for-best-model", o.best.metric,
                "the evaluation metric that ranks them (and that reduce_lr_on_plateau watches): loss (default; "
                "GRPO: reward), rewards_accuracy, rewards_margin, ... (with or without eval_)");
  c->add_flag("--greater-is-better", a->greater, "a larger metric is better (default: unless its name ends in loss)");
  c->add_flag("--no-greater-is-better", a->not_greater, "a smaller metric is better");
  c->add_option("--early-stopping-patience", o.best.patience,
                "stop after N evaluations without improvement (transformers' EarlyStoppingCallback; 0: never)")
      ->check(at_least(0, "NONNEGATIVE"))
      ->capture_default_str();
  c->add_option("--early-stopping-threshold", o.best.threshold,
                "the improvement that counts must exceed this")
      ->capture_default_str();
  c->add_option("--adapter-dtype", a->adapter_dtype, "fp32 (PEFT's own) or bf16")->capture_default_str();
  c->add_option("--seed", o.seed, "adapter init, data order, dropout")->capture_default_str();
  c->add_option("--init-adapter", o.init_adapter,
                "start from this PEFT adapter's weights (e.g. the loftq_init/ of `qwen-quant nf4 --loftq-rank`); its "
                "rank, alpha, rsLoRA, DoRA and targets are used");
  c->add_option("--loftq-model", o.loftq_model,
                "LoftQ: start the adapter at the rank-r part of W - Q, W the weights of this original (unquantized) "
                "model, Q the 4-bit base's (PEFT's replace_lora_weights_loftq)");
  c->add_flag("--resume", o.resume, "continue from the newest checkpoint in --out");
  c->add_flag("--overwrite", o.overwrite, "replace a previous run in --out");
  c->add_option("--stop-after", o.stop_after, "end after N steps of this invocation, without the final adapter (time-boxed runs, resume tests)")
      ->check(at_least(1, "POSITIVE"));
  c->add_flag("--profile", o.profile,
              "time each GPU step's phases (base Linears, LoRA, attention, norms, ...; CUDA events) and print them "
              "at the end, also in metrics.jsonl's last record (--device cuda)");
  c->add_flag("--quiet,-q", o.quiet, "no progress bar");
  c->add_option("--nproc", a->nproc,
                "data-parallel processes training one adapter: one per GPU (the first N of CUDA_VISIBLE_DEVICES), or "
                "each on its share of the CPU cores; a step is then N x --grad-accum micro-batches")
      ->check(at_least(1, "POSITIVE"))
      ->capture_default_str();
  add_common_options(c, &a->common);
  c->callback([a, c]() {
    TrainOptions& o = a->opt;
    o.checkpointing = !a->no_checkpointing;
    parse_every(a->eval_every, "--eval-every", &o.eval_every, &o.eval_per_epoch);
    parse_every(a->save_every, "--save-every", &o.save_every, &o.save_per_epoch);
    o.eval_on_start = !a->no_eval_on_start;
    QWENQ_CHECK(!(a->greater && a->not_greater), "give --greater-is-better or --no-greater-is-better, not both");
    o.best.greater_is_better = a->greater ? 1 : a->not_greater ? 0 : -1;
    if (!a->scheduler_kwargs.empty()) {
      o.scheduler_kwargs = nlohmann::json::parse(a->scheduler_kwargs, nullptr, false);
      QWENQ_CHECK(!o.scheduler_kwargs.is_discarded() && o.scheduler_kwargs.is_object(),
                  "--scheduler-kwargs must be a JSON object, e.g. '{\"num_cycles\": 3}', not " << a->scheduler_kwargs);
    }
    QWENQ_CHECK(!a->model.empty() && !o.data_path.empty() && !o.out_dir.empty(),
                "train needs --model, --data and --out (on the command line or in --config)");
    o.model_dir = resolve_model_dir(a->model);
    apply_lora_selection(*c, a->selection, &o.lora);
    if (!o.init_adapter.empty()) adopt_adapter_settings(*c, o.init_adapter, &o.lora);
    if (o.init_adapter.empty() && o.loftq_model.empty() && !o.resume) {
      warn_if_pissa_residual(o.model_dir, "--init-adapter");  // B = 0 on a residual starts far from the original
    }
    apply_dpo_flags(*c, a->dpo, &a->sft, &o);
    if (o.grpo) {  // the rollouts decode with the CPU model (trainer/grpo.h): the whole run stays there for now
      QWENQ_CHECK(a->common.device != "cuda", "--objective grpo trains on the CPU for now (its rollouts decode with "
                                              "the CPU model): give --device cpu or auto");
      a->common.device = "cpu";
    }
    if (o.sequence_classifier()) {  // the GPU trainer has no score head yet
      QWENQ_CHECK(a->common.device != "cuda", "--objective " << a->dpo.objective << " trains on the CPU for now (the GPU "
                                              "trainer has no score head): give --device cpu or auto");
      a->common.device = "cpu";
    }
    if (o.preference()) {
      // The GPU step of a preference loss (trainer/lora_model_cuda.h: the head twice, per-row loss weights) is
      // written and compiled but has not run on a GPU yet: opt-in until it has (issue 5).
      if (a->common.device != "cpu" && env_switch("QWENQ_GPU_DPO") != 1) {
        QWENQ_CHECK(a->common.device != "cuda",
                    "--objective " << a->dpo.objective << " --device cuda: the GPU preference step has not run on a "
                    "GPU yet; set QWENQ_GPU_DPO=1 to use it anyway, or give --device cpu");
        a->common.device = "cpu";
#ifdef QWENQ_HAVE_CUDA
        if (cuda_device_count() > 0) {
          std::fprintf(stderr, "%s: training on the CPU (the GPU preference step has not run on a GPU yet; "
                               "QWENQ_GPU_DPO=1 uses it)\n", a->dpo.objective.c_str());
        }
#endif
      }
    }
    apply_sft_flags(a->sft, &o);
    QWENQ_CHECK(a->adapter_dtype == "fp32" || a->adapter_dtype == "bf16", "--adapter-dtype must be fp32 or bf16");
    o.adapter_dtype = a->adapter_dtype == "bf16" ? DType::BF16 : DType::F32;
    o.cpu_bf16_matmul = a->cpu_matmul == "bf16";
    // Once the cheap checks have passed, rank 0 starts the other ranks (--nproc) and every rank meets them.
    check_train_options(o, /*lead=*/std::getenv("QWENQ_DP_RANK") == nullptr);
    DataParallel dp = start_data_parallel(a->nproc, a->config, o, &a->common);
    o.group = dp.group();
    struct Forget {  // o outlives this call (the app keeps it): no pointer into dp is left behind
      TrainOptions* o;
      ~Forget() { o->group = nullptr; }
    } forget{&o};
    const int rank = o.group ? o.group->rank() : 0;
    if (rank > 0) o.quiet = true;
    // The GPU trainer (trainer/lora_model_cuda.h) when there is a GPU and it can run the model, decided once
    // train_lora has loaded the model (which prints the device line then).
    auto pick = std::make_shared<DevicePick>(a->common, "training");
    if (o.group) pick->set_line_prefix("rank " + std::to_string(rank) + ": ");
    o.use_cuda = pick->gpu_possible();
    o.choose_device = [pick, lora = o.lora](const QwenModel& m) {
      return pick->settle_for_model(m, GpuUse::Train, lora_config_gpu_refusal(lora, m.config(), "the LoRA flags")) ==
             Device::Cuda;
    };
    const TrainReport r = train_lora(o);
    if (rank > 0) return;  // rank 0 reports the run
    if (dp.launched) dp.launched->wait_all();
    if (r.stopped) {  // --stop-after: no final adapter, no final evaluation; the checkpoints are what there is
      std::printf("stopped after %lld steps (--stop-after, step %lld of the run): last loss %.4f; no final adapter; "
                  "continue with --resume (%s)\n",
                  (long long)(r.steps - r.start_step), (long long)r.steps, r.last_loss,
                  r.checkpoint.empty() ? "no checkpoint yet: it starts over" : ("from " + r.checkpoint).c_str());
      return;
    }
    std::printf("trained %lld steps (from step %lld): last loss %.4f", (long long)r.steps, (long long)r.start_step,
                r.last_loss);
    if (r.eval_loss >= 0) {
      if (r.first_eval_loss >= 0) std::printf(", eval loss %.4f -> %.4f", r.first_eval_loss, r.eval_loss);
      else std::printf(", eval loss %.4f", r.eval_loss);
    }
    if (r.has_eval_reward) {
      if (r.steps > r.start_step && r.evaluated_at_start) std::printf(", eval reward %.4f -> %.4f", r.first_eval_reward, r.eval_reward);
      else std::printf(", eval reward %.4f", r.eval_reward);
    }
    if (r.eval_accuracy >= 0) {
      const char* what = o.classify ? "eval accuracy" : "eval reward accuracy";
      if (r.first_eval_accuracy >= 0) std::printf(", %s %.3f -> %.3f", what, r.first_eval_accuracy, r.eval_accuracy);
      else std::printf(", %s %.3f", what, r.eval_accuracy);
    }
    std::printf("; %.0f tokens/s, %.1fs, peak RSS %s", r.tokens_per_s, r.seconds, format_bytes(r.peak_rss).c_str());
    if (r.device_peak_allocated >= 0) {
      std::printf(", peak device memory %s allocated, %s reserved",
                  format_bytes(static_cast<uint64_t>(r.device_peak_allocated)).c_str(),
                  format_bytes(static_cast<uint64_t>(r.device_peak_reserved)).c_str());
    }
    if (r.early_stopped) std::printf("; stopped early");
    if (r.best_step >= 0)
      std::printf("; best %s %.4f at step %lld%s", r.best_key.c_str(), r.best_metric, (long long)r.best_step,
                  o.best.load_best ? " (the final adapter)" : "");
    std::printf("; adapter in %s\n", o.out_dir.c_str());
    if (!r.profile.empty()) std::printf("GPU time per step by phase (--profile; the first step, a warm-up, left out when there are more):\n%s", r.profile.c_str());
  });
}

std::vector<std::string> expand_train_config(const std::vector<std::string>& args) {
  if (args.size() < 2 || args[1] != "train") return args;
  std::string path;
  for (size_t i = 2; i < args.size(); ++i) {
    if (args[i] == "--config" && i + 1 < args.size()) path = args[i + 1];
    if (args[i].rfind("--config=", 0) == 0) path = args[i].substr(9);
  }
  if (path.empty()) return args;
  // The long names of the options on the command line (the short ones spelled out).
  std::set<std::string> given;
  for (size_t i = 2; i < args.size(); ++i) {
    const std::string& s = args[i];
    if (s == "-m") given.insert("model");
    else if (s == "-d") given.insert("data");
    else if (s == "-o") given.insert("out");
    else if (s == "-q") given.insert("quiet");
    else if (s.rfind("--", 0) == 0 && s.size() > 2) given.insert(s.substr(2, s.find('=') - 2));  // npos - 2: all
  }
  std::vector<std::string> out(args.begin(), args.begin() + 2);
  for (auto& s : config_args(path, given)) out.push_back(s);
  out.insert(out.end(), args.begin() + 2, args.end());
  return out;
}

}  // namespace qwenq::cli
