#include "trainer/train_loop.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <memory>
#include <set>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/heap_reuse.h"
#include "core/files.h"
#include "core/process_group.h"
#include "core/progress.h"
#include "kernels/device_allocator.h"
#include "kernels/gemm_bf16.h"
#include "kernels/dropout_mask.h"
#include "kernels/optim.h"
#include "lora/peft_io.h"
#include "trainer/adapter_init.h"
#include "trainer/best_model.h"
#include "trainer/dpo.h"
#include "trainer/grpo.h"
#include "trainer/lora_model.h"
#include "trainer/lora_model_device.h"
#include "trainer/lr_plateau.h"
#include "trainer/lr_schedule.h"
#include "trainer/oom_report.h"
#include "trainer/qwen_model.h"
#include "trainer/step_profile.h"
#include "trainer/tokenizer.h"
#include "trainer/train_checkpoint.h"
#include "trainer/train_eval.h"
#include "trainer/train_log.h"
#include "trainer/train_options.h"

namespace qwenq {

float neftune_half_width(double alpha, int64_t row_len, int64_t hidden) {
  return static_cast<float>(alpha) / std::sqrt(static_cast<float>(row_len * hidden));
}

namespace {

LoraAdapter zeros_like(const LoraAdapter& a) {
  LoraAdapter z = a;
  for (size_t i = 0; i < z.slots().size(); ++i) {
    for (std::vector<float>* v : {&z.weights(i).A, &z.weights(i).B, &z.weights(i).m}) std::fill(v->begin(), v->end(), 0.f);
  }
  std::fill(z.score().begin(), z.score().end(), 0.f);
  return z;
}

// Every A and B (and DoRA's m) of an adapter as (pointer, size) pairs, in a fixed order, then a reward model's score
// head. The magnitudes and the head are trained like A and B (AdamW with weight decay: transformers' Trainer decays
// every parameter but biases and norms). group_b: the tensor is in PEFT's LoRA+ "groupB" (every lora_B and every
// one-dimensional tensor: DoRA's m), trained at loraplus_lr_ratio times the rate of "groupA" (every lora_A and the
// score head).
struct Tensors {
  std::vector<float*> ptr;
  std::vector<int64_t> size;
  std::vector<uint8_t> group_b;
};
Tensors tensors_of(LoraAdapter& a) {
  Tensors t;
  const auto add = [&t](std::vector<float>* v, bool group_b) {
    if (v->empty()) return;  // m without DoRA, a causal LM's (absent) score head
    t.ptr.push_back(v->data());
    t.size.push_back(static_cast<int64_t>(v->size()));
    t.group_b.push_back(group_b ? 1 : 0);
  };
  for (size_t i = 0; i < a.slots().size(); ++i) {
    add(&a.weights(i).A, false);
    add(&a.weights(i).B, true);
    add(&a.weights(i).m, true);
  }
  add(&a.score(), false);
  return t;
}

// Data parallelism's agreement checks: the fingerprint of adapters' tensors (A, B, DoRA's m), in tensors_of's order.
uint64_t fingerprint_of(std::initializer_list<LoraAdapter*> adapters) {
  uint64_t h = kFingerprintStart;
  for (LoraAdapter* a : adapters) {
    const Tensors t = tensors_of(*a);
    for (size_t i = 0; i < t.ptr.size(); ++i) h = fingerprint(h, t.ptr[i], static_cast<size_t>(t.size[i]) * sizeof(float));
  }
  return h;
}

// Examples longer than seq_len are cut to it by the batcher (a row holds at most seq_len tokens). When max_len >
// seq_len that happens after the dataset's own truncation, so it is said here, with the examples it leaves without
// any counted target: their steps train on nothing (loss 0).
void warn_cut_to_seq_len(const std::vector<SftExample>& train, int64_t seq_len) {
  int64_t cut = 0, no_loss = 0;
  for (const SftExample& ex : train) {
    if (static_cast<int64_t>(ex.tokens.size()) <= seq_len) continue;
    ++cut;
    no_loss += std::none_of(ex.loss_mask.begin() + 1, ex.loss_mask.begin() + seq_len, [](uint8_t m) { return m != 0; });
  }
  if (cut == 0) return;
  std::fprintf(stderr, "warning: %lld of %zu training examples are longer than --seq-len %lld and are cut to it",
               (long long)cut, train.size(), (long long)seq_len);
  if (no_loss > 0) {
    std::fprintf(stderr, "; %lld of them keep no response token and add nothing to the loss (raise --seq-len, or "
                 "give --max-len %lld or less to drop those)\n", (long long)no_loss, (long long)seq_len);
  } else {
    std::fprintf(stderr, " (raise --seq-len to keep them whole)\n");
  }
}

// The GPU trainer ran out of memory: the allocator's message with `context`, then this run's plan next to what
// was live (trainer/oom_report.h).
[[noreturn]] void throw_training_oom(const OutOfMemoryError& e, const std::string& context, const TrainOptions& o,
                                     const QwenConfig& config, const LoraConfig& lora) {
  const OutOfMemoryFacts& f = e.facts();
  PlanInput in;
  try {
    in = plan_input_for_training(o.model_dir, config, lora, o.batch_size, o.seq_len,
                                 f.device_known ? f.device_total : in.device_bytes);
    in.bf16_checkpoints = o.bf16_checkpoints;
  } catch (const Error& pe) {
    throw OutOfMemoryError(context + e.what() + "\n(no plan for this run: " + pe.what() + ")", f);
  }
  throw training_out_of_memory(e, context, in);
}

}  // namespace

TrainReport train_lora(const TrainOptions& o) {
  const auto t_start = std::chrono::steady_clock::now();
  // Data parallelism: rank 0 ("lead") alone writes the run directory and prints; the other ranks only read a
  // checkpoint to resume. They skip the checks of a fresh run directory, which rank 0 may have started writing.
  const int rank = o.group ? o.group->rank() : 0, world = o.group ? o.group->world() : 1;
  const bool lead = rank == 0;
  check_train_options(o, lead);
  QWENQ_CHECK(!o.profile || o.use_cuda, "--profile times the GPU trainer's phases: it needs --device cuda");
#ifndef QWENQ_HAVE_CUDA
  QWENQ_CHECK(!o.use_cuda, "--device cuda: this build has no CUDA backend (configure with -DQWENQ_CUDA=ON)");
#endif

  // A reward or classify run on a sequence classifier directory (a reward model, a text classifier) continues it: its
  // decoder and its head.
  const bool classifier_base = o.sequence_classifier() && sequence_classifier_dir(o.model_dir);
  QwenModel model(o.model_dir, classifier_base ? ModelHead::kSequenceScore : ModelHead::kLanguageModel);
  const bool use_cuda = o.grpo || o.sequence_classifier() ? false : o.choose_device ? o.choose_device(model) : o.use_cuda;
  QWENQ_CHECK(!o.profile || use_cuda, "--profile times the GPU trainer's phases: it needs the GPU, and this run trains "
                                      "on the CPU");
  const Tokenizer tok = Tokenizer::from_dir(o.model_dir);
  SftDataOptions dopt = o.data;
  dopt.max_len = data_max_len(o);
  // classify: the label names (--labels, else a classifier base's id2label, else read from --data), the problem type
  // likewise (--problem-type, a classifier base's, the data's).
  ClassifyDataOptions labels = o.classify_data;
  if (o.classify && classifier_base && labels.label_names.empty()) labels.label_names = config_label_names(o.model_dir);
  if (o.classify && classifier_base && !labels.problem_type) {
    ProblemType t;
    if (config_problem_type(o.model_dir, &t)) labels.problem_type = t;
  }
  const auto load = [&](const std::string& path, const SftDataOptions& d) {
    return o.classify ? load_classify_dataset(path, tok, d, &labels)
           : o.dpo || o.reward ? load_preference_dataset(path, tok, d)
           : o.kto  ? load_kto_dataset(path, tok, d, o.batch_size)
           : o.grpo ? load_grpo_dataset(path, tok, d, o.grpo_options.max_completion_len)
                    : load_sft_dataset(path, tok, d);
  };
  const SftDataset data = load(o.data_path, dopt);
  if (!o.quiet) std::fprintf(stderr, "data: %s\n", data.stats.summary().c_str());
  if (lead) warn_cut_to_seq_len(data.train, o.seq_len);
  // The held-out examples: the split of --data, or every record of --eval-data (file order, rendered as --data's).
  const std::vector<SftExample>* eval_set = &data.eval;
  const std::vector<uint8_t>* eval_labels = &data.eval_labels;  // kto: desirable, per held-out unit
  const std::vector<double>* eval_margins = &data.eval_margins;  // reward: per held-out pair (empty: none)
  const std::vector<ClassifyTarget>* eval_targets = &data.eval_targets;  // classify: per held-out text
  SftDataset eval_file;
  if (!o.eval_data_path.empty()) {
    SftDataOptions eopt = dopt;
    eopt.eval_fraction = 0;
    eopt.eval_count = 0;
    eval_file = load(o.eval_data_path, eopt);
    if (!o.quiet) std::fprintf(stderr, "eval data: %s\n", eval_file.stats.summary().c_str());
    QWENQ_CHECK(!eval_file.train.empty(),
                "--eval-data " << o.eval_data_path << ": no examples (" << eval_file.stats.summary() << ")");
    eval_set = &eval_file.train;
    eval_labels = &eval_file.train_labels;
    eval_margins = &eval_file.train_margins;
    eval_targets = &eval_file.train_targets;
  }
  QWENQ_CHECK(!watches_metric(o) || !eval_set->empty(),
              (o.best.load_best ? "--load-best-model-at-end"
               : o.best.tracking() ? "--early-stopping-patience"
                                   : "--scheduler reduce_lr_on_plateau")
                  << ": the held-out set is empty (" << (o.eval_data_path.empty() ? o.data_path : o.eval_data_path)
                  << "); give more records to --eval-fraction / --eval-count or a file to --eval-data");
  if (o.kto && !o.quiet && lead) kto_report_balance(data.train_labels, o.kto_options);
  // GRPO: the reward functions (an external scorer starts here), each checked against every prompt's record now.
  const std::vector<std::string>& eval_records = o.eval_data_path.empty() ? data.eval_records : eval_file.train_records;
  LoraConfig lcfg = o.lora;
  lcfg.base_model = o.model_dir;
  if (o.reward) lcfg.num_labels = 1;  // a SEQ_CLS adapter: LoRA plus the score head
  ClassifyTask task;  // classify: the head's problem type and outputs
  if (o.classify) {
    task.type = *labels.problem_type;
    task.num_labels = static_cast<int64_t>(labels.label_names.size());
    lcfg.num_labels = task.num_labels;
    if (watches_metric(o)) {  // the metric must be one this problem type reports
      const std::vector<std::string> names = classify_metric_names(task);
      const std::string key = best_metric_key(o);
      std::string choices = "eval_loss";
      for (const std::string& n : names) choices += ", eval_" + n;
      QWENQ_CHECK(key == "eval_loss" || std::find(names.begin(), names.end(), key.substr(5)) != names.end(),
                  "--metric-for-best-model " << key << ": a " << problem_type_name(task.type) << " head of "
                                             << task.num_labels << " output(s) reports " << choices);
    }
    if (!o.quiet && lead) {
      std::string names;
      for (size_t i = 0; i < labels.label_names.size(); ++i)
        names += (i ? ", " : "") + std::to_string(i) + " " + labels.label_names[i];
      std::fprintf(stderr, "classify: %s, %zu %s: %s\n", problem_type_name(task.type), labels.label_names.size(),
                   task.type == ProblemType::kRegression ? "outputs" : "labels", names.c_str());
    }
  }
  const int32_t reward_pad = o.sequence_classifier() ? reward_pad_id(o.model_dir, tok) : -1;
  LoraAdapter adapter(lora_dims_of(model.config()), lcfg);
  std::unique_ptr<GrpoRun> grpo;
  if (o.grpo) {
    grpo = std::make_unique<GrpoRun>(o.grpo_options, model, tok, adapter);
    grpo->check_records(data.train_records, o.data_path);
    grpo->check_records(eval_records, o.eval_data_path.empty() ? o.data_path : o.eval_data_path);
  }

  SftBatchOptions bo;
  bo.mode = o.grpo ? SftBatchMode::kPadding : o.batch_mode;  // GRPO: batch_size prompts, one per row
  bo.seq_len = o.seq_len;
  // Preference runs: both sequences of each pair (dpo), each example and its KL sequence (kto).
  bo.batch_size = o.paired_batches() ? 2 * o.batch_size : o.batch_size;
  bo.group = o.paired_batches() ? 2 : 1;
  bo.seed = o.seed;
  bo.epochs = o.max_steps > 0 ? 0 : o.epochs;
  // The number of optimizer steps: max_steps, or what the epochs hold (counted by a dry pass over the batches). A
  // step takes world · grad_accum micro-batches.
  const int64_t per_step = o.grad_accum * world;
  int64_t total = o.max_steps;
  // --eval-every / --save-every epoch: the steps that take an epoch's last micro-batch (counted by the same dry pass,
  // over max_steps' micro-batches with --max-steps).
  const bool per_epoch = o.eval_per_epoch || o.save_per_epoch;
  std::set<int64_t> epoch_end_steps;
  if (total <= 0 || per_epoch) {
    SftBatchIterator dry(data.train, bo);
    SftBatch b;
    int64_t batches = 0, last_epoch = -1;
    const int64_t limit = total > 0 ? total * per_step : -1;
    while ((limit < 0 || batches < limit) && dry.next(&b)) {
      if (b.epoch != last_epoch && batches > 0) epoch_end_steps.insert((batches - 1) / per_step + 1);
      last_epoch = b.epoch;
      ++batches;
    }
    if (total <= 0) {
      total = (batches + per_step - 1) / per_step;
      epoch_end_steps.insert(total);  // the last epoch ends with the run
      if (o.grpo) total *= o.grpo_options.num_iterations;  // each generation trains num_iterations steps
    }
  }
  const auto epoch_end = [&](int64_t step) { return epoch_end_steps.count(step) > 0; };
  SftBatchIterator it(data.train, bo);
  // The schedule, checked again now that the step count is known (e.g. warmup_stable_decay's phases within the run).
  const LrSchedule schedule = run_schedule(o, total);
  // reduce_lr_on_plateau: the rates of groups A and (with LoRA+) B, reduced by the evaluations (trainer/lr_plateau.h).
  std::unique_ptr<LrPlateau> plateau;
  if (plateau_schedule(o)) {
    std::vector<double> groups = {o.lr};
    if (o.loraplus_lr_ratio != 1.0) groups.push_back(o.lr * o.loraplus_lr_ratio);
    const PlateauOptions po = plateau_options(o.scheduler_kwargs);
    plateau = std::make_unique<LrPlateau>(po, groups);
    if (lead && po.max_mode != best_greater_is_better(o))
      std::fprintf(stderr, "warning: --scheduler reduce_lr_on_plateau runs in mode \"%s\" while %s is better when %s "
                   "(transformers passes the mode as given, \"min\" by default): give --scheduler-kwargs "
                   "'{\"mode\": \"%s\"}' if it should follow the metric\n", po.max_mode ? "max" : "min",
                   best_metric_key(o).c_str(), best_greater_is_better(o) ? "greater" : "smaller",
                   po.max_mode ? "min" : "max");
  }
  const int64_t eval_every = run_interval(o.eval_every, total), save_every = run_interval(o.save_every, total);

  adapter.init_peft(o.seed);
  if (classifier_base) {  // the classifier's own head
    const TensorView& head = model.weights().score;
    QWENQ_CHECK(head.shape.at(0) == lcfg.num_labels,
                o.model_dir << ": the classifier has " << head.shape.at(0) << " labels; "
                            << (o.reward ? "a reward model (and --objective reward) has one"
                                         : "the data has " + std::to_string(lcfg.num_labels)));
    adapter.score() = tensor_to_f32(head);
  } else if (o.sequence_classifier()) {
    adapter.init_score_head(o.seed, reward_head_init_std(o.model_dir));
  }
  if (!o.resume && !o.init_adapter.empty()) {
    init_adapter_from_dir(o.init_adapter, &adapter);  // DoRA's m included
  } else {
    if (!o.resume && !o.loftq_model.empty()) loftq_init_adapter(model, o.loftq_model, &adapter, o.quiet);
    if (lcfg.use_dora) init_dora_magnitudes(model, &adapter);  // m = ‖W + s·B A‖ per row, as PEFT's
  }
  if (o.grpo) AttachedAdapter refusals_now(model, adapter);  // an adapter the model cannot attach fails here
  // Data parallelism: what each process decided or read alone must be the same everywhere, or the ranks would train
  // different things and still exchange gradients of the same shape (checked before anything is written).
  if (o.group != nullptr) {
    // Each process decides or reads these alone, and they must agree.
    o.group->check_same(use_cuda ? 1 : 0, "the device (--device auto decides per process: give --device cpu or cuda)");
    uint64_t h = kFingerprintStart;
    for (const std::vector<SftExample>* set : {&data.train, eval_set}) {
      h = fingerprint(h, set->size());
      for (const SftExample& ex : *set) {
        h = fingerprint(h, ex.tokens.size());
        h = fingerprint(h, ex.tokens.data(), ex.tokens.size() * sizeof(int32_t));
        h = fingerprint(h, ex.loss_mask.data(), ex.loss_mask.size());
      }
    }
    o.group->check_same(h, "the training and evaluation examples");
    o.group->check_same(static_cast<uint64_t>(total), "the number of steps");
    o.group->check_same(fingerprint_of({&adapter}), "the adapter's starting weights");
  }
  // The run directory is made (or a previous run removed, with overwrite) only now that the model, the data and
  // the adapter settings are known to be good: a refused run leaves nothing behind and destroys nothing.
  if (lead && !o.resume && o.overwrite) remove_tree(o.out_dir);
  const int mkdir_err = lead ? make_dirs(o.out_dir) : 0;
  QWENQ_CHECK(mkdir_err == 0, "cannot create output directory " << o.out_dir << ": " << std::strerror(mkdir_err));
  LoraAdapter m = zeros_like(adapter), v = zeros_like(adapter), grads = zeros_like(adapter);
  TrainState st;
  st.options = resume_key(o);
  const std::string metrics_path = path_join(o.out_dir, "metrics.jsonl");
  TrainReport rep;
  if (o.resume) {
    const std::string ck = latest_checkpoint(o.out_dir);
    QWENQ_CHECK(!ck.empty(), "--resume: no complete checkpoint in " << o.out_dir << " (save with --save-every)");
    TrainState saved;
    load_train_checkpoint(ck, lora_dims_of(model.config()), &adapter, &m, &v, &saved);
    add_legacy_resume_keys(&saved.options);
    QWENQ_CHECK(saved.options == st.options, "--resume: " << ck << " was made with other settings: "
                                                          << settings_difference(saved.options, st.options));
    st = saved;
    it.restore(st.cursor);
    if (plateau && !st.lr_plateau.is_null()) plateau->restore(st.lr_plateau, path_join(ck, "trainer_state.json"));
    // Every rank read the same files, and must hold the same state now.
    if (o.group != nullptr) o.group->check_same(fingerprint_of({&adapter, &m, &v}), "the adapter and AdamW state read from " + ck);
    if (lead) truncate_metrics(metrics_path, st.step);
    rep.start_step = st.step;
    if (!o.quiet && lead) std::fprintf(stderr, "resuming from %s (step %lld of %lld)\n", ck.c_str(), (long long)st.step, (long long)total);
  } else if (lead && file_exists(metrics_path)) {
    write_file_atomic(metrics_path, std::string());
  }
  // GRPO's --log-completions: the logged completions of each generation, one JSON line each with its step (resumed
  // and restarted as metrics.jsonl is).
  const std::string completions_path = path_join(o.out_dir, "completions.jsonl");
  if (lead && o.grpo && o.grpo_options.log_completions > 0) {
    if (o.resume) truncate_metrics(completions_path, st.step);
    else if (file_exists(completions_path)) write_file_atomic(completions_path, std::string());
  }
  Tensors P = tensors_of(adapter), G = tensors_of(grads), M = tensors_of(m), V = tensors_of(v);
  std::unique_ptr<LoraModelCuda> gpu;  // set: every step, evaluation included, runs on the device
#ifdef QWENQ_HAVE_CUDA
  if (use_cuda) {
    cuda_device_allocator().reset_peak();  // the peaks reported at the end are this run's
    try {
      gpu = std::make_unique<LoraModelCuda>(model, adapter);
      if (o.resume) gpu->upload_optimizer(m, v);
      if (o.profile) gpu->enable_profile();
    } catch (const OutOfMemoryError& e) {
      throw_training_oom(e, "setting up the GPU trainer: ", o, model.config(), lcfg);
    }
  }
#endif
  // Brings the device's adapter and optimizer state to the host arrays (before anything is saved).
  // Data parallelism: the ranks' adapters and optimizer states must be the same bits (each applied the same update to
  // the same sums); checked whenever they are on the host anyway (checkpoints, the end), before rank 0 writes them.
  const auto check_in_step = [&](const std::string& when) {
    if (o.group == nullptr) return;
    o.group->check_same(fingerprint_of({&adapter, &m, &v}), "the adapter and AdamW state " + when +
                        " (the same update of the same gradient sums must give the same bits: the exchange failed)");
  };
  const auto sync_host = [&] {
    if (!gpu) return;
    gpu->download(&adapter);
    gpu->download_optimizer(&m, &v);
  };
  // The other ranks' stream stays closed: what they would write goes nowhere.
  std::ofstream metrics, completions;
  if (lead) {
    metrics.open(metrics_path, std::ios::app);
    QWENQ_CHECK(metrics.good(), "cannot write " << metrics_path);
    if (o.grpo && o.grpo_options.log_completions > 0) {
      completions.open(completions_path, std::ios::app);
      QWENQ_CHECK(completions.good(), "cannot write " << completions_path);
    }
  }
  if (!use_cuda) keep_heap_for_reuse();  // every step frees and takes the same large buffers (core/heap_reuse.h)
  if (!o.quiet && lead) {
    const std::string procs = world > 1 ? " (" + std::to_string(world) + " processes x " + std::to_string(o.grad_accum) + ")" : "";
    const std::string where = lcfg.selects_finely()  // PEFT's finer selection: how many Linears, and which
                                  ? std::to_string(adapter.slots().size()) + " Linears (" + lora_selection_str(lcfg) + ")"
                                  : std::to_string(adapter.targets().size()) + " Linears per layer";
    std::fprintf(stderr, "train: %lld steps of %lld micro-batch(es)%s of <= %lld x %lld tokens; adapter r=%lld on %s, "
                 "%lld parameters\n", (long long)total, (long long)per_step, procs.c_str(), (long long)o.batch_size,
                 (long long)o.seq_len, (long long)lcfg.r, where.c_str(), (long long)adapter.num_parameters());
    if (o.neftune_noise_alpha > 0)
      std::fprintf(stderr, "train: NEFTune: embedding noise alpha %g (half-width %.3g per element at %lld-token rows)\n",
                   o.neftune_noise_alpha, neftune_half_width(o.neftune_noise_alpha, o.seq_len, model.config().hidden_size),
                   (long long)o.seq_len);
    if (o.loraplus_lr_ratio != 1.0)
      std::fprintf(stderr, "train: LoRA+: B%s at %g x the learning rate (peak %.3g), A at %.3g\n",
                   lcfg.use_dora ? " and DoRA's magnitudes" : "", o.loraplus_lr_ratio, o.lr * o.loraplus_lr_ratio, o.lr);
    if (o.cpu_bf16_matmul && !use_cuda)
      std::fprintf(stderr, "train: base products on bf16 operands (--cpu-matmul bf16)%s\n",
                   bf16_gemm_uses_avx512() ? ", AVX512_BF16"
                                           : ": this CPU has no AVX512_BF16, so they take the portable path, slower "
                                             "than --cpu-matmul fp32");
  }
  // Preference runs: the sequences' NLL sums (the reference's, evaluations) on this run's device and adapter.
  const auto sequence_sums = [&](const std::vector<SftExample>& examples, int64_t max_batches) {
    return pair_nll_sums(model, adapter, gpu.get(), examples, o, max_batches, o.group);
  };
  const LoraStepOptions eval_so = eval_step_options(o);
  const auto eval_call = [&](const SftBatch& b) { return batch_loss(model, adapter, gpu.get(), b, eval_so); };
  // The reference model's sums (the adapter at step 0), once, or read back on resume.
  std::vector<double> ref_train, ref_eval;
  std::vector<int64_t> eval_counts;
  if (o.preference()) {
    if (o.dpo) eval_counts = example_target_counts(*eval_set);
    try {
      if (o.dpo && dpo_reference_free(o.dpo_options.loss)) {  // SimPO, ORPO: no reference model
        ref_train.assign(data.train.size(), 0.0);
        ref_eval.assign(eval_set->size(), 0.0);
      } else if (o.resume) {
        read_dpo_reference(o.out_dir, data.train.size(), eval_set->size(), &ref_train, &ref_eval);
      } else {
        // The training sequences the run's steps read: every one, or with --max-steps short of the epochs those of
        // its first total·per_step micro-batches (the rest keep 0: no step reads them).
        const std::vector<int64_t> used = o.max_steps > 0 ? examples_in_batches(data.train, bo, total * per_step)
                                                          : std::vector<int64_t>();
        const bool subset = o.max_steps > 0 && used.size() < data.train.size();
        if (!o.quiet && lead)
          std::fprintf(stderr, "%s: the reference model's log-probabilities of %zu sequences%s\n", o.dpo ? "dpo" : "kto",
                       (subset ? used.size() : data.train.size()) + eval_set->size(),
                       subset ? " (the training ones its steps read)" : "");
        if (subset) {
          std::vector<SftExample> read;
          read.reserve(used.size());
          for (int64_t i : used) read.push_back(data.train[static_cast<size_t>(i)]);
          const std::vector<double> sums = sequence_sums(read, 0);
          ref_train.assign(data.train.size(), 0.0);
          for (size_t k = 0; k < used.size(); ++k) ref_train[static_cast<size_t>(used[k])] = sums[k];
        } else {
          ref_train = sequence_sums(data.train, 0);
        }
        ref_eval = sequence_sums(*eval_set, 0);
        if (lead) write_dpo_reference(o.out_dir, ref_train, ref_eval);
      }
    } catch (const OutOfMemoryError& e) {
      throw_training_oom(e, "the reference model's log-probabilities: ", o, model.config(), lcfg);
    }
  }
  // The evaluation at `step`: its record (null without held-out examples) written to metrics.jsonl, the report's
  // numbers from it. Every rank takes its share of the batches; rank 0 writes the record.
  HeldOutSet held_out;
  held_out.examples = eval_set;
  held_out.labels = eval_labels;
  held_out.margins = eval_margins;
  held_out.records = &eval_records;
  held_out.ref_sums = &ref_eval;
  held_out.target_counts = &eval_counts;
  held_out.targets = eval_targets;
  held_out.task = task;
  held_out.reward_pad = reward_pad;
  const auto run_eval = [&](int64_t step) -> nlohmann::json {
    nlohmann::json record;
    try {
      record = held_out_record(model, adapter, gpu.get(), o, held_out, grpo.get(), step);
    } catch (const OutOfMemoryError& e) {
      throw_training_oom(e, "evaluation at step " + std::to_string(step) + ": ", o, model.config(), lcfg);
    }
    if (record.is_null()) return record;
    const bool first = step == rep.start_step;
    if (o.grpo) {  // the held-out prompts' mean reward; GRPO's evaluation reports no loss
      rep.eval_reward = record["eval_reward"].get<double>();
      if (first) rep.first_eval_reward = rep.eval_reward;
      rep.has_eval_reward = true;
    } else {
      rep.eval_loss = record["eval_loss"].get<double>();
      if (first) rep.first_eval_loss = rep.eval_loss;
    }
    const char* accuracy_key = o.classify ? "eval_accuracy" : "eval_rewards_accuracy";  // (none for regression)
    if ((o.dpo || o.reward || o.classify) && record.contains(accuracy_key)) {
      rep.eval_accuracy = record[accuracy_key].get<double>();
      if (first) rep.first_eval_accuracy = rep.eval_accuracy;
    }
    if (lead) metrics << record.dump() << "\n" << std::flush;
    return record;
  };
  const nlohmann::json first_eval = o.resume || !o.eval_on_start ? nlohmann::json() : run_eval(0);
  rep.evaluated_at_start = !first_eval.is_null();
  // The best model and early stopping (trainer/best_model.h), from the evaluations after step 0; a resumed run
  // continues the checkpoint's decisions.
  std::unique_ptr<BestModelTracker> best;
  if (o.best.tracking()) {
    best = std::make_unique<BestModelTracker>(best_metric_key(o), best_greater_is_better(o), o.best.patience,
                                              o.best.threshold);
    if (o.resume && !st.best_model.is_null())
      best->restore(st.best_model, path_join(latest_checkpoint(o.out_dir), "trainer_state.json"));
    rep.best_key = best->key();
  }
  // The evaluation reports the metric (e.g. a KTO held-out set without desirable examples has no
  // eval_rewards_chosen): checked on step 0's evaluation too, which is no candidate, before any training.
  const std::string metric_key = best_metric_key(o);
  const auto check_reports_metric = [&](const nlohmann::json& record, int64_t step) {
    QWENQ_CHECK(record.contains(metric_key) && record[metric_key].is_number(),
                "--metric-for-best-model: the evaluation at step " << step << " reports no " << metric_key
                    << " (it reports " << [&] {
                         std::string keys;
                         for (auto it = record.begin(); it != record.end(); ++it)
                           if (it.key().rfind("eval_", 0) == 0) keys += (keys.empty() ? "" : ", ") + it.key();
                         return keys;
                       }() << ")");
  };
  if (watches_metric(o) && !first_eval.is_null()) check_reports_metric(first_eval, 0);
  // Scores an evaluation's record; true when the run stops here (early stopping). With load_best a new best is
  // checkpointed now (unless save_every does it at this step), so that the end can return to it. An evaluation
  // during the run (not the end's: no step follows it) also steps reduce_lr_on_plateau, for the steps after it.
  const auto judge = [&](const nlohmann::json& record, int64_t step, bool in_run) {
    if (!watches_metric(o) || record.is_null()) return false;
    check_reports_metric(record, step);
    const double value = record[metric_key].get<double>();
    if (plateau && in_run) {
      const double before = plateau->lrs()[0];
      if (plateau->observe(value) && lead && !o.quiet)
        std::fprintf(stderr, "\ntrain: reduce_lr_on_plateau: %s has not improved on %.6g for %lld evaluations; the "
                     "learning rate goes from %.3g to %.3g at step %lld\n", metric_key.c_str(), plateau->best(),
                     (long long)(plateau->options().patience + 1), before, plateau->lrs()[0],
                     (long long)step + 1);
    }
    return best && best->observe(step, value).stop;
  };
  bool early_stop = best && best->stopped() && st.step < total;  // a resumed run that had stopped trains no further

  Progress bar("train", total, "steps", o.quiet || !lead);
  bar.update(st.step);
  LoraStepOptions so;
  so.checkpointing = o.checkpointing;
  so.bf16_checkpoints = o.bf16_checkpoints;
  so.bf16_matmul = o.cpu_bf16_matmul;
  const double t_prev = st.elapsed_s;
  std::vector<float> flat;  // data parallelism on the CPU: the gradients in one array for the all-reduce
  // Sums the ranks' gradients and NLL sums: every rank then holds the step's whole gradient.
  const auto all_reduce = [&](double* nll) {
    o.group->all_reduce_sum(nll, 1);
    if (gpu) {
#ifdef QWENQ_HAVE_CUDA
      gpu->all_reduce_grads(*o.group);
#endif
      return;
    }
    int64_t n = 0;
    for (int64_t k : G.size) n += k;
    flat.resize(static_cast<size_t>(n));
    float* p = flat.data();
    for (size_t i = 0; i < G.ptr.size(); p += G.size[i], ++i) std::copy(G.ptr[i], G.ptr[i] + G.size[i], p);
    o.group->all_reduce_sum(flat.data(), n);
    p = flat.data();
    for (size_t i = 0; i < G.ptr.size(); p += G.size[i], ++i) std::copy(p, p + G.size[i], G.ptr[i]);
  };
  // GRPO with num_iterations μ > 1: a step inside a generation (step mod μ ≠ 0) trains on the last step's prompts
  // again (GrpoRun keeps their completions), and a checkpoint there keeps the cursor from before they were drawn, so
  // that a resumed run draws them again.
  const int64_t reuse = o.grpo ? o.grpo_options.num_iterations : 1;
  std::vector<SftBatch> micro;
  SftBatchIterator::State generation_cursor = it.state();
  while (st.step < total && !early_stop) {
    const auto t0 = std::chrono::steady_clock::now();
    if (reuse == 1 || st.step % reuse == 0 || micro.empty()) {
      generation_cursor = it.state();
      micro.clear();
      for (int64_t i = 0; i < per_step; ++i) {
        SftBatch b;
        if (!it.next(&b)) break;
        micro.push_back(std::move(b));
      }
    }
    if (micro.empty()) break;  // the epochs are done
    int64_t targets = 0, tokens = 0, pairs = 0, chosen_tokens = 0, texts = 0;
    for (const auto& b : micro) {
      targets += b.num_targets, tokens += b.packed.num_tokens(), pairs += b.num_examples / 2;
      texts += b.num_examples;  // classify: the step's examples
    }
    if (o.kto) {  // the examples' targets; their tokens and, when they run, the KL sequences'
      targets = tokens = 0;
      for (const auto& b : micro) {
        const std::vector<int64_t> n = sequence_target_counts(b.packed, b.targets);
        for (int64_t j = 0; j < b.packed.num_seqs(); j += 2) {
          targets += n[static_cast<size_t>(j)];
          tokens += b.packed.cu_seqlens[j + (o.kto_options.uses_kl() ? 2 : 1)] - b.packed.cu_seqlens[j];
        }
      }
    }
    if (gpu) gpu->zero_grads();
    else for (size_t i = 0; i < G.ptr.size(); ++i) std::fill(G.ptr[i], G.ptr[i] + G.size[i], 0.f);
    double nll = 0;
    so.grad_scale = targets > 0 ? 1.0 / targets : 0.0;
    // Preference runs: each micro-batch's sequences (chosen, rejected, ...) in its epoch's order, their counted
    // targets and reference sums; the step's pairs and chosen tokens normalise the loss (trainer/dpo.h).
    DpoStats step_stats;
    RewardStats reward_stats;  // reward: the step's pairs
    ClassifyStats classify_stats;  // classify: the step's texts
    KtoStats kto_stats;  // kto: the step's examples; each micro-batch's z from its KL sequences (trainer/kto.h)
    std::vector<std::vector<int64_t>> counts(micro.size());
    if (o.dpo) {
      for (size_t i = 0; i < micro.size(); ++i) {
        counts[i] = sequence_target_counts(micro[i].packed, micro[i].targets);
        for (size_t k = 0; k < counts[i].size(); k += 2) chosen_tokens += counts[i][k];
      }
    }
    std::vector<int64_t> order;  // of the epoch of the micro-batch being run (preference runs)
    int64_t order_epoch = -1;
    SftBatch kto_batch;  // kto: the micro-batch's examples without their KL sequences (the batch the step runs)
    // GRPO (trainer/grpo.h): each micro-batch's prompts in its epoch's order; the rollouts, advantages and backward
    // passes are GrpoRun::step's.
    GrpoRun::StepResult grpo_step;
    if (o.grpo) {
      std::vector<std::vector<int64_t>> prompts(micro.size());
      for (size_t i = 0; i < micro.size(); ++i) {
        if (micro[i].epoch != order_epoch) order = it.epoch_order(order_epoch = micro[i].epoch);
        for (int64_t k = 0; k < micro[i].num_examples; ++k)
          prompts[i].push_back(order[static_cast<size_t>(micro[i].first_index + k)]);
      }
      try {
        grpo_step = grpo->step(model, adapter, &grads, data.train, data.train_records, prompts, st.step, o.seed, so,
                               eval_so, o.group);
      } catch (const Error& e) {
        QWENQ_FAIL("step " << st.step + 1 << " (epoch " << micro[0].epoch << ", prompts from " << micro[0].first_index
                           << "), " << e.what() << "; the last good checkpoint is "
                           << (latest_checkpoint(o.out_dir).empty() ? "none" : latest_checkpoint(o.out_dir)));
      }
      tokens = grpo_step.tokens;
      targets = grpo_step.targets;
    }
    const nlohmann::json& grpo_stats = grpo_step.stats;
    for (size_t i = static_cast<size_t>(rank); i < micro.size() && !o.grpo; i += static_cast<size_t>(world)) {
      // One seed per (run seed, step, micro-batch), each part mixed in turn: two pairs share a seed only by a 64-bit
      // hash accident (the former step·64 + i gave micro-batch 64 of a step the masks of micro-batch 0 of the next).
      so.dropout_seed = micro_batch_dropout_seed(o.seed, st.step, static_cast<int64_t>(i));
      if (o.neftune_noise_alpha > 0) {
        const int64_t row_len = o.batch_mode == SftBatchMode::kPacking ? o.seq_len : micro[i].padded_len;
        so.neftune_half_width = neftune_half_width(o.neftune_noise_alpha, row_len, model.config().hidden_size);
      }
      if ((o.paired_batches() || o.classify) && micro[i].epoch != order_epoch)
        order = it.epoch_order(order_epoch = micro[i].epoch);
      if (o.reward) {
        so.score_rows = reward_pooled_rows(micro[i].packed, reward_pad);
        std::vector<double> mu;  // the micro-batch's pairs' margins (example positions 2k, 2k + 1: pair k)
        for (int64_t k = 0; k < micro[i].num_examples; k += 2) {
          const int64_t ex = order[static_cast<size_t>(micro[i].first_index + k)];
          mu.push_back(data.train_margins[static_cast<size_t>(ex / 2)]);
        }
        so.score_objective = reward_objective(o.reward_options, std::move(mu), pairs, &reward_stats);
      }
      if (o.classify) {
        so.score_rows = reward_pooled_rows(micro[i].packed, reward_pad);
        std::vector<ClassifyTarget> y;  // the micro-batch's texts' targets
        for (int64_t k = 0; k < micro[i].num_examples; ++k)
          y.push_back(data.train_targets[static_cast<size_t>(order[static_cast<size_t>(micro[i].first_index + k)])]);
        so.score_objective = classify_objective(std::move(y), task, texts, &classify_stats);
      }
      if (o.dpo) {
        std::vector<double> ref(static_cast<size_t>(micro[i].num_examples));
        for (int64_t k = 0; k < micro[i].num_examples; ++k)
          ref[static_cast<size_t>(k)] = ref_train[static_cast<size_t>(order[static_cast<size_t>(micro[i].first_index + k)])];
        so.sequence_objective = dpo_objective(o.dpo_options, std::move(ref), counts[i], pairs, chosen_tokens, &step_stats);
      }
      const SftBatch* run = &micro[i];
      try {
        if (o.kto) {
          so.sequence_objective = kto_step_objective(o.kto_options, micro[i], order, ref_train, data.train_labels,
                                                     pairs, &kto_stats, eval_call);
          kto_batch = select_batch_sequences(micro[i], 2, 0);
          run = &kto_batch;
        }
        nll += (gpu ? gpu->loss_and_grad(run->packed, run->targets, so)
                    : lora_loss_and_grad(model, adapter, run->packed, run->targets, &grads, so)).nll_sum;
      } catch (const OutOfMemoryError& e) {
        const std::string where = "step " + std::to_string(st.step + 1) + ", micro-batch " + std::to_string(i + 1);
        throw_training_oom(e, where + ": ", o, model.config(), lcfg);
      } catch (const Error& e) {
        QWENQ_FAIL("step " << st.step + 1 << ", micro-batch " << i + 1 << " (epoch " << micro[i].epoch
                           << ", examples " << micro[i].first_index << ".." << micro[i].first_index + micro[i].num_examples - 1
                           << "): " << e.what() << "; the last good checkpoint is "
                           << (latest_checkpoint(o.out_dir).empty() ? "none" : latest_checkpoint(o.out_dir)));
      }
    }
    if (o.group) all_reduce(&nll);
    // Every rank's pairs / examples.
    const auto sum_over_ranks = [&](auto* stats) {
      std::vector<double> v = stats->pack();
      o.group->all_reduce_sum(v.data(), static_cast<int64_t>(v.size()));
      *stats = std::decay_t<decltype(*stats)>::unpack(v);
    };
    if (o.group && o.dpo) sum_over_ranks(&step_stats);
    if (o.group && o.kto) sum_over_ranks(&kto_stats);
    if (o.group && o.reward) sum_over_ranks(&reward_stats);
    if (o.group && o.classify) sum_over_ranks(&classify_stats);
    const double loss = o.dpo    ? step_stats.objective(o.dpo_options)
                        : o.reward ? reward_stats.objective()
                        : o.classify ? classify_stats.objective()
                        : o.kto  ? kto_stats.objective()
                        : o.grpo ? grpo_step.loss
                                 : targets > 0 ? nll / targets : 0.0;
    // The rates of the step: group A's (the one logged, as the Trainer logs its first group's) and group B's.
    const double lr = plateau ? plateau->lrs()[0] : lr_at(schedule, st.step);
    const double lr_b = plateau ? plateau->lrs().back() : lr * o.loraplus_lr_ratio;
    // On the GPU, clipping and AdamW are one call, which updates nothing when the norm is not finite.
    const auto gpu_step = [&] {
      try {
        return gpu->adamw_step(lr, o.beta1, o.beta2, o.adam_eps, o.weight_decay,
                               st.step + 1, o.max_grad_norm, plateau ? lr_b / lr : o.loraplus_lr_ratio);
      } catch (const OutOfMemoryError& e) {
        throw_training_oom(e, "step " + std::to_string(st.step + 1) + ", the optimizer: ", o, model.config(), lcfg);
      }
    };
    const float gnorm = gpu ? gpu_step()
                            : clip_grad_norm_ref(G.ptr.data(), G.size.data(), static_cast<int>(G.ptr.size()),
                                                 static_cast<float>(o.max_grad_norm > 0 ? o.max_grad_norm : INFINITY));
    // The first step of the invocation is a warm-up (cuBLASLt plans, the allocator's first blocks): left out
    // unless it is the only one.
    if (StepProfile* prof = gpu ? gpu->profile() : nullptr)
      prof->end_step(st.step > rep.start_step || total - rep.start_step == 1);
    QWENQ_CHECK(std::isfinite(loss) && std::isfinite(gnorm),
                "step " << st.step + 1 << " (epoch " << micro[0].epoch << ", examples from " << micro[0].first_index
                        << "): loss " << loss << ", gradient norm " << gnorm << " is not finite; stopping. The last good "
                        << "checkpoint is " << (latest_checkpoint(o.out_dir).empty() ? "none" : latest_checkpoint(o.out_dir)));
    for (size_t i = 0; i < P.ptr.size() && !gpu; ++i) {
      adamw_step_ref(P.ptr[i], G.ptr[i], M.ptr[i], V.ptr[i], P.size[i], P.group_b[i] ? lr_b : lr, o.beta1, o.beta2,
                     o.adam_eps, o.weight_decay, st.step + 1);
    }
    ++st.step;
    st.cursor = st.step % reuse == 0 ? it.state() : generation_cursor;
    st.tokens_seen += tokens;
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    st.elapsed_s = t_prev + std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    rep.last_loss = loss;
    StepLog log;
    log.step = st.step;
    log.epoch = micro.back().epoch;
    log.loss = loss;
    log.lr = lr;
    log.grad_norm = gnorm;
    log.tokens = tokens;
    log.targets = targets;
    log.seconds = dt;
    log.elapsed_s = st.elapsed_s;
    if (o.dpo) log.dpo = &step_stats;
    if (o.reward) log.reward = &reward_stats;
    if (o.classify) {
      log.classify = &classify_stats;
      log.classify_task = &task;
    }
    if (o.kto) log.kto = &kto_stats;
    if (o.grpo) log.grpo = &grpo_stats;
    metrics << step_record(log).dump() << "\n" << std::flush;
    for (const nlohmann::ordered_json& c : grpo_step.completions) {  // (a closed stream on the other ranks)
      nlohmann::ordered_json line = {{"step", st.step}};
      line.update(c);
      // (a completion cut mid-character is not UTF-8: its bytes become U+FFFD rather than stop the run)
      completions << line.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
    }
    if (!grpo_step.completions.empty()) completions << std::flush;
    bar.update(st.step, step_progress_text(log));
    const bool eval_now = (eval_every > 0 && st.step % eval_every == 0) || (o.eval_per_epoch && epoch_end(st.step));
    if (eval_now && st.step < total) early_stop = judge(run_eval(st.step), st.step, true);
    const bool keep_best = best && o.best.load_best && best->best_step() == st.step;
    if ((save_every > 0 && st.step % save_every == 0) || (o.save_per_epoch && epoch_end(st.step)) || keep_best) {
      sync_host();
      check_in_step("after step " + std::to_string(st.step));
      if (best) st.best_model = best->state();
      if (plateau) st.lr_plateau = plateau->state();
      if (lead) {
        save_train_checkpoint(o.out_dir, adapter, m, v, st, o.save_total_limit,
                              best && o.best.load_best ? best->best_step() : -1);
        // classify: the names beside each checkpoint's adapter too (`eval --adapter checkpoint-N/adapter` reads them).
        if (o.classify)
          write_label_names(path_join(checkpoint_dir(o.out_dir, st.step), "adapter"), labels.label_names, task.type);
      }
    }
    if (early_stop) break;
    if (o.stop_after > 0 && st.step - rep.start_step >= o.stop_after) {
      rep.steps = st.step;
      rep.stopped = true;
      rep.checkpoint = latest_checkpoint(o.out_dir);
      return rep;  // as if killed here: no final evaluation or adapter
    }
  }
  bar.finish();
  if (early_stop && !o.quiet && lead) {
    char by[64] = "";
    if (o.best.threshold > 0) std::snprintf(by, sizeof by, " by more than %g", o.best.threshold);
    std::fprintf(stderr, "train: early stopping at step %lld of %lld: %s has not improved%s for %lld evaluations "
                 "(best %.6g at step %lld)\n", (long long)st.step, (long long)total, best->key().c_str(), by,
                 (long long)best->counter(), best->best(), (long long)best->best_step());
  }
  // The end's evaluation, unless this step's was the last (early stopping, or a resumed run that had stopped).
  if (!best || best->last_step() != st.step) {
    const nlohmann::json record = run_eval(st.step);
    if (st.step > 0) judge(record, st.step, false);
  }
  if (best) {
    rep.best_step = best->best_step();
    rep.best_metric = best->best();
    rep.early_stopped = best->stopped() && st.step < total;  // (the last evaluation may run out of patience too)
  }
  sync_host();
  check_in_step("at the end");
  if (!lead) {  // rank 0 writes the adapter and the summary
    rep.steps = st.step;
    rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    rep.tokens_per_s = st.tokens_seen / std::max(st.elapsed_s, 1e-9);
    return rep;
  }
  // The final adapter at the top of the run directory: staged, then each file renamed into place. With load_best,
  // the best evaluation's (its checkpoint's, unless it is the end's).
  const std::string staging = path_join(o.out_dir, "adapter.staging");
  remove_tree(staging);
  PeftSaveOptions po;
  po.dtype = o.adapter_dtype;
  if (best && o.best.load_best && best->has_best() && best->best_step() != st.step) {
    const std::string from = path_join(checkpoint_dir(o.out_dir, best->best_step()), "adapter");
    save_peft_adapter(staging, load_peft_adapter(from, lora_dims_of(model.config())), po);
    if (!o.quiet)
      std::fprintf(stderr, "train: the final adapter is the best evaluation's, step %lld (%s %.6g; %s)\n",
                   (long long)best->best_step(), best->key().c_str(), best->best(), from.c_str());
  } else {
    save_peft_adapter(staging, adapter, po);
  }
  for (const char* f : {"adapter_model.safetensors", "adapter_config.json"}) {
    QWENQ_CHECK(std::rename(path_join(staging, f).c_str(), path_join(o.out_dir, f).c_str()) == 0,
                "cannot move " << f << " into " << o.out_dir);
  }
  remove_tree(staging);
  if (o.classify) write_label_names(o.out_dir, labels.label_names, task.type);  // beside the adapter (trainer/classify.h)
  rep.steps = st.step;
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  rep.tokens_per_s = st.tokens_seen / std::max(st.elapsed_s, 1e-9);
  rep.peak_rss = peak_rss_bytes();
#ifdef QWENQ_HAVE_CUDA
  if (gpu) {
    const DeviceAllocatorStats ds = cuda_device_allocator().stats();
    rep.device_peak_allocated = static_cast<int64_t>(ds.peak_allocated);
    rep.device_peak_reserved = static_cast<int64_t>(ds.peak_reserved);
  }
#endif
  // The run's summary, the last record of metrics.jsonl (no "loss": readers of the step records skip it).
  nlohmann::json summary = {{"step", st.step},           {"final", true},
                            {"tokens_per_s", rep.tokens_per_s}, {"elapsed_s", st.elapsed_s},
                            {"peak_rss_bytes", rep.peak_rss}};
  if (plateau) summary["lr_plateau"] = plateau->state();
  if (best) {
    summary["best_metric_name"] = best->key();
    summary["best_step"] = best->best_step();
    summary["best_metric"] = best->has_best() ? nlohmann::json(best->best()) : nlohmann::json(nullptr);
    summary["early_stopped"] = rep.early_stopped;
    summary["final_adapter_step"] = o.best.load_best && best->has_best() ? best->best_step() : st.step;
  }
  if (rep.device_peak_allocated >= 0) {
    summary["device_peak_allocated_bytes"] = rep.device_peak_allocated;
    summary["device_peak_reserved_bytes"] = rep.device_peak_reserved;
  }
  if (const StepProfile* prof = gpu ? gpu->profile() : nullptr) {
    rep.profile = prof->table();
    nlohmann::json ms;
    for (const auto& [name, t] : prof->per_step_ms()) ms[name] = t;
    summary["profile_ms_per_step"] = ms;
    summary["profile_steps"] = prof->steps();
  }
  metrics << summary.dump() << "\n" << std::flush;
  // The curve over the whole run, from metrics.jsonl (which also holds the steps before a resume); GRPO's loss is
  // about 0 by construction: its curve is the reward's.
  write_run_curve(metrics_path, path_join(o.out_dir, "loss_curve.svg"), o.grpo ? "reward" : "loss");
  return rep;
}

}  // namespace qwenq
