// qwen-qlora eval: the held-out loss `train` reports, for any base and adapter on any SFT data: the records read and
// rendered as train renders them (format, template flags, --max-len), optionally train's own held-out split
// (--eval-count / --eval-fraction with train's --seed), batched as train batches its evaluation, and the
// token-weighted mean next-token NLL over the loss tokens (trainer/train_loop.h, sft_eval_loss). Without --adapter
// the base alone (a zero adapter: train's step-0 evaluation of a PEFT-initialised run). Compares checkpoints,
// adapters on 4-bit and bf16 bases, or a base before and after fine-tuning on the same answers. --device cuda
// computes the losses with the GPU trainer's forward (trainer/lora_model_cuda.h), as train --device cuda evaluates.
// With --objective dpo, preference pairs (trainer/dpo.h): how often the model prefers the chosen completion (by the
// sum and by the mean of its tokens' log-probabilities), and the preference loss, margin and reward accuracy of
// train --objective dpo against a reference (--ref-adapter, or the base alone), batched as train evaluates. With
// --objective kto, labelled examples (trainer/kto.h): train --objective kto's held-out loss, KL estimate, rewards and
// log-probabilities against the reference. With --objective grpo, prompts (trainer/grpo.h): the mean reward of
// --num-generations sampled completions of each, as train --objective grpo evaluates (the same seed: a run's final
// eval_reward to the bit, on the CPU). With --objective reward, preference pairs scored by a reward model
// (trainer/reward.h): a SEQ_CLS adapter of train --objective reward on its base, or a reward model directory
// (a sequence classifier, e.g. merged from one) alone: how often the chosen completion scores higher, the mean scores
// and margin, and the loss, as train evaluates (a run's final held-out record to the bit).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "tools/cli_common.h"
#include "tools/qlora_cli.h"
#include "trainer/classify.h"
#include "trainer/dpo.h"
#include "trainer/grpo.h"
#include "trainer/grpo_reward.h"
#include "trainer/kto.h"
#include "trainer/lora_merge.h"
#include "trainer/lora_model.h"
#include "trainer/model_dir.h"
#include "trainer/sft_data.h"
#include "trainer/tokenizer.h"
#include "trainer/train_loop.h"

namespace qwenq::cli {

namespace {

struct EvalArgs {
  std::string model, adapter, ref_adapter, json_out;
  std::string predictions;  // classify: each text's prediction, JSON lines
  bool json = false;
  SftFlags sft;  // train's data and batching flags
  DpoFlags dpo;
  TrainOptions opt;
  CommonOptions common;
};

// The adapter directory `dir` on the model, or a zero adapter (which adds exactly 0 to every adapted Linear: the
// base's loss through the same step) when dir is "".
LoraAdapter adapter_or_zero(const std::string& dir, const QwenModel& model, const std::string& model_dir) {
  return dir.empty() ? LoraAdapter(lora_dims_of(model.config()), LoraConfig())
                     : load_adapter_for_base(dir, model_dir, model.config(), AdapterUse::Apply);
}

// A path in the JSON report, null when not given.
nlohmann::ordered_json opt_str(const std::string& v) {
  return v.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(v);
}

// split: the examples are train's held-out split (data.eval), else every record in file order (data.train).
void run_sft_eval(EvalArgs& a, const QwenModel& model, const SftDataset& data, bool split,
                  std::chrono::steady_clock::time_point t0) {
  const TrainOptions& o = a.opt;
  const std::vector<SftExample>& examples = split ? data.eval : data.train;
  const auto [loss, tokens] = sft_eval_loss(model, adapter_or_zero(a.adapter, model, o.model_dir), examples, o);
  QWENQ_CHECK(tokens > 0, o.data_path << ": no loss tokens to evaluate (" << data.stats.summary() << ")");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::ordered_json j = {{"model", o.model_dir},
                              {"adapter", opt_str(a.adapter)},
                              {"data", o.data_path},
                              {"split", split ? "eval" : "all"},
                              {"examples", examples.size()},
                              {"loss_tokens", tokens},
                              {"loss", loss},
                              {"perplexity", std::exp(loss)},
                              {"seconds", seconds},
                              {"peak_rss_bytes", peak_rss_bytes()}};
  if (a.json) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("eval loss %.4f (perplexity %.4f) over %zu %sexamples of %s, %lld loss tokens; %s%s, %.1fs, peak "
                "RSS %s\n",
                loss, std::exp(loss), examples.size(), split ? "held-out " : "", o.data_path.c_str(),
                (long long)tokens, a.adapter.empty() ? "the base alone" : "adapter ", a.adapter.c_str(), seconds,
                format_bytes(peak_rss_bytes()).c_str());
  }
  if (!a.json_out.empty()) write_file_atomic(a.json_out, j.dump(2) + "\n");
}

// --objective dpo: the pairs' sums under the model and the reference, their statistics.
void run_preference_eval(EvalArgs& a, const QwenModel& model, const SftDataset& data, bool split,
                         std::chrono::steady_clock::time_point t0) {
  const TrainOptions& o = a.opt;
  const std::vector<SftExample>& examples = split ? data.eval : data.train;
  const auto adapter_of = [&](const std::string& dir) { return adapter_or_zero(dir, model, o.model_dir); };
  const std::vector<double> policy = preference_eval_sums(model, adapter_of(a.adapter), examples, o);
  const size_t n = policy.size();  // the pairs of the first --eval-batches batches
  const bool free = dpo_reference_free(o.dpo_options.loss);
  const std::vector<double> ref =
      free ? std::vector<double>(n, 0.0) : preference_eval_sums(model, adapter_of(a.ref_adapter), examples, o);
  std::vector<int64_t> counts = example_target_counts(examples);
  counts.resize(n);
  const DpoStats st = dpo_batch_stats(o.dpo_options, policy, ref, counts);
  int64_t by_sum = 0, by_mean = 0;
  for (size_t i = 0; i + 1 < n; i += 2) {
    by_sum += policy[i] < policy[i + 1];
    by_mean += policy[i] / static_cast<double>(counts[i]) < policy[i + 1] / static_cast<double>(counts[i + 1]);
  }
  const double P = static_cast<double>(st.pairs);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::ordered_json j = {{"model", o.model_dir},
                              {"adapter", opt_str(a.adapter)},
                              {"reference_adapter", free ? nlohmann::ordered_json() : opt_str(a.ref_adapter)},
                              {"data", o.data_path},
                              {"split", split ? "eval" : "all"},
                              {"pairs", st.pairs},
                              {"prefers_chosen_sum", by_sum / P},
                              {"prefers_chosen_mean", by_mean / P},
                              {"logps_chosen", st.logp_c / P},
                              {"logps_rejected", st.logp_r / P},
                              {"dpo_loss_type", dpo_loss_name(o.dpo_options.loss)},
                              {"dpo_beta", o.dpo_options.beta},
                              {"loss", st.objective(o.dpo_options)},
                              {"rewards_margin", (st.reward_c - st.reward_r) / P},
                              {"rewards_accuracy", static_cast<double>(st.correct) / P},
                              {"seconds", seconds},
                              {"peak_rss_bytes", peak_rss_bytes()}};
  if (a.json) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%lld %spairs of %s: the model prefers the chosen completion in %.1f %% (sum of log-probabilities), "
                "%.1f %% (mean per token); log-probabilities chosen %.2f, rejected %.2f per pair; %s loss %.4f, "
                "reward margin %.4f, reward accuracy %.3f (%s); %s%s, %.1fs\n",
                (long long)st.pairs, split ? "held-out " : "", o.data_path.c_str(), 100.0 * by_sum / P,
                100.0 * by_mean / P, st.logp_c / P, st.logp_r / P, dpo_loss_name(o.dpo_options.loss),
                st.objective(o.dpo_options), (st.reward_c - st.reward_r) / P, static_cast<double>(st.correct) / P,
                free ? "reference-free" : a.ref_adapter.empty() ? "reference: the base alone"
                                                                : ("reference: " + a.ref_adapter).c_str(),
                a.adapter.empty() ? "the base alone" : "adapter ", a.adapter.c_str(), seconds);
  }
  if (!a.json_out.empty()) write_file_atomic(a.json_out, j.dump(2) + "\n");
}

// A sequence classifier's scoring adapter: --adapter's (a SEQ_CLS adapter on the base), or without one a zero adapter
// (it adds exactly 0) carrying the classifier directory's own head.
LoraAdapter scoring_adapter(const EvalArgs& a, const QwenModel& model) {
  if (!a.adapter.empty()) return load_adapter_for_base(a.adapter, a.opt.model_dir, model.config(), AdapterUse::Score);
  LoraConfig lc;
  lc.num_labels = model.weights().score.shape.at(0);
  LoraAdapter z(lora_dims_of(model.config()), lc);
  z.score() = tensor_to_f32(model.weights().score);
  return z;
}

// --objective reward: the pairs' scores by the adapter's head on the base, or by a reward model directory's own
// head (no --adapter; the model was loaded as a sequence classifier).
void run_reward_eval(EvalArgs& a, const QwenModel& model, const Tokenizer& tok, const SftDataset& data, bool split,
                     std::chrono::steady_clock::time_point t0) {
  const TrainOptions& o = a.opt;
  const std::vector<SftExample>& examples = split ? data.eval : data.train;
  const LoraAdapter adapter = scoring_adapter(a, model);
  const RewardStats st =
      reward_eval_stats(model, adapter, examples, split ? data.eval_margins : data.train_margins, o,
                        reward_pad_id(o.model_dir, tok));
  QWENQ_CHECK(st.pairs > 0, o.data_path << ": no pairs to evaluate (" << data.stats.summary() << ")");
  const double P = static_cast<double>(st.pairs);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::ordered_json j = {{"model", o.model_dir},
                              {"adapter", opt_str(a.adapter)},
                              {"data", o.data_path},
                              {"split", split ? "eval" : "all"},
                              {"pairs", st.pairs},
                              {"rewards_chosen", st.reward_c / P},
                              {"rewards_rejected", st.reward_r / P},
                              {"rewards_margin", (st.reward_c - st.reward_r) / P},
                              {"rewards_accuracy", st.accuracy()},
                              {"center_rewards_coefficient", o.reward_options.center_coefficient},
                              {"loss", st.objective()},
                              {"seconds", seconds},
                              {"peak_rss_bytes", peak_rss_bytes()}};
  if (a.json) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%lld %spairs of %s: the chosen completion scores higher in %.1f %%; scores chosen %.4f, rejected "
                "%.4f, margin %.4f per pair; loss %.4f; %s%s, %.1fs\n",
                (long long)st.pairs, split ? "held-out " : "", o.data_path.c_str(), 100.0 * st.accuracy(),
                st.reward_c / P, st.reward_r / P, (st.reward_c - st.reward_r) / P, st.objective(),
                a.adapter.empty() ? "the reward model " : "adapter ",
                a.adapter.empty() ? o.model_dir.c_str() : a.adapter.c_str(), seconds);
  }
  if (!a.json_out.empty()) write_file_atomic(a.json_out, j.dump(2) + "\n");
}

// --objective classify: the texts' logits by the adapter's head on the base, or by a classifier directory's own head
// (no --adapter); the label names and problem type as train had them (--labels / --problem-type, else the adapter's
// labels.json or the classifier's config.json id2label / problem_type, else the data's).
void run_classify_eval(EvalArgs& a, const QwenModel& model, const Tokenizer& tok, std::chrono::steady_clock::time_point t0) {
  TrainOptions& o = a.opt;
  const LoraAdapter adapter = scoring_adapter(a, model);
  const int64_t C = adapter.config().num_labels;
  ClassifyDataOptions labels = o.classify_data;
  std::string names_from = "--labels";
  if (!a.adapter.empty() && file_exists(path_join(a.adapter, "labels.json"))) {
    ProblemType t;
    const std::vector<std::string> names = read_label_names(a.adapter, &t);
    if (!labels.problem_type) labels.problem_type = t;
    if (labels.label_names.empty()) {
      labels.label_names = names;
      names_from = a.adapter + "/labels.json";
    }
  }
  if (a.adapter.empty() && !labels.problem_type) {
    ProblemType t;
    if (config_problem_type(o.model_dir, &t)) labels.problem_type = t;
  }
  if (labels.label_names.empty() && a.adapter.empty()) {
    labels.label_names = config_label_names(o.model_dir);
    names_from = o.model_dir + "/config.json id2label";
  }
  if (labels.label_names.empty()) names_from = "the data";
  // Predicting texts without labels needs a problem type: where none is named, transformers' own rule for a
  // classifier's config (one output: regression, else single-label).
  labels.unlabelled_ok = !a.predictions.empty();
  if (labels.unlabelled_ok && !labels.problem_type)
    labels.problem_type = C == 1 ? ProblemType::kRegression : ProblemType::kSingleLabel;
  SftDataOptions dopt = o.data;
  dopt.max_len = std::min(data_max_len(o), o.seq_len);  // never cut by the batcher
  const SftDataset data = load_classify_dataset(o.data_path, tok, dopt, &labels);
  QWENQ_CHECK(static_cast<int64_t>(labels.label_names.size()) == C,
              o.data_path << ": " << labels.label_names.size() << " labels (from " << names_from << ") for a head of "
                          << C << "; give --labels in the order train used");
  const ClassifyTask task{*labels.problem_type, C};
  const bool split = o.data.eval_fraction > 0 || o.data.eval_count > 0;
  const std::vector<SftExample>& texts = split ? data.eval : data.train;
  const std::vector<ClassifyTarget>& targets = split ? data.eval_targets : data.train_targets;
  const std::vector<double> logits = classify_eval_logits(model, adapter, texts, o, reward_pad_id(o.model_dir, tok));
  const int64_t covered = static_cast<int64_t>(logits.size()) / C;  // (the first --eval-batches batches)
  QWENQ_CHECK(covered > 0, o.data_path << ": no texts to evaluate (" << data.stats.summary() << ")");
  const char* by = a.adapter.empty() ? "the classifier " : "adapter ";
  const std::string& who = a.adapter.empty() ? o.model_dir : a.adapter;
  if (!a.predictions.empty()) {  // each text's record with its prediction, in file order
    const std::vector<int64_t>& index = split ? data.eval_index : data.train_index;
    const std::vector<std::string>& records = split ? data.eval_records : data.train_records;
    std::vector<size_t> order(static_cast<size_t>(covered));
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t x, size_t y) { return index[x] < index[y]; });
    std::string lines;
    for (size_t i : order) {
      nlohmann::ordered_json rec = nlohmann::ordered_json::parse(records[i]);
      rec.update(classify_prediction(logits.data() + i * static_cast<size_t>(C), task, labels.label_names));
      lines += rec.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
    }
    write_file_atomic(a.predictions, lines);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::ordered_json j = {{"model", o.model_dir},
                              {"adapter", opt_str(a.adapter)},
                              {"data", o.data_path},
                              {"split", split ? "eval" : "all"},
                              {"labels", labels.label_names},
                              {"problem_type", problem_type_name(task.type)},
                              {"examples", covered}};
  if (!a.predictions.empty()) j["predictions"] = a.predictions;
  if (data.unlabelled) {  // texts to predict: no statistics
    j["seconds"] = seconds;
    j["peak_rss_bytes"] = peak_rss_bytes();
    if (a.json) std::printf("%s\n", j.dump().c_str());
    else
      std::printf("%lld %stexts of %s (no labels) predicted into %s; %s%s, %.1fs\n", (long long)covered,
                  split ? "held-out " : "", o.data_path.c_str(), a.predictions.c_str(), by, who.c_str(), seconds);
    if (!a.json_out.empty()) write_file_atomic(a.json_out, j.dump(2) + "\n");
    return;
  }
  const std::vector<ClassifyTarget> seen(targets.begin(), targets.begin() + static_cast<std::ptrdiff_t>(covered));
  const ClassifyStats st = classify_batch_stats(logits, seen, task);
  nlohmann::json metrics;
  add_classify_metrics(st, task, "", &metrics);
  for (const std::string& m : classify_metric_names(task)) j[m] = metrics[m];
  j["loss"] = st.objective();
  const ClassifyLabelReport report = classify_label_report(logits, seen, task);  // per label (or output)
  j.update(classify_report_json(report, task, labels.label_names));
  j["seconds"] = seconds;
  j["peak_rss_bytes"] = peak_rss_bytes();
  if (a.json) {
    std::printf("%s\n", j.dump().c_str());
  } else if (task.type == ProblemType::kSingleLabel) {
    std::printf("%lld %stexts of %s: accuracy %.1f %%, loss %.4f (%lld labels); %s%s, %.1fs\n", (long long)st.examples,
                split ? "held-out " : "", o.data_path.c_str(), 100.0 * st.accuracy(), st.objective(), (long long)C, by,
                who.c_str(), seconds);
  } else {
    const std::string text = classify_metrics_text(st, task);
    std::printf("%lld %stexts of %s: %s%sloss %.4f (%s, %lld %s); %s%s, %.1fs\n", (long long)st.examples,
                split ? "held-out " : "", o.data_path.c_str(), text.c_str(), text.empty() ? "" : ", ", st.objective(),
                problem_type_name(task.type), (long long)C, task.type == ProblemType::kRegression ? "outputs" : "labels",
                by, who.c_str(), seconds);
  }
  if (!a.json) std::printf("%s", classify_report_text(report, task, labels.label_names).c_str());
  if (!a.json_out.empty()) write_file_atomic(a.json_out, j.dump(2) + "\n");
}

// --objective kto: the labelled examples' sums (with their KL sequences) under the model and the reference, and
// train's held-out statistics of them (each batch of --batch-size examples with its own z).
void run_kto_eval(EvalArgs& a, const QwenModel& model, const SftDataset& data, bool split,
                  std::chrono::steady_clock::time_point t0) {
  const TrainOptions& o = a.opt;
  const std::vector<SftExample>& examples = split ? data.eval : data.train;
  std::vector<uint8_t> labels = split ? data.eval_labels : data.train_labels;
  const auto adapter_of = [&](const std::string& dir) { return adapter_or_zero(dir, model, o.model_dir); };
  const std::vector<double> policy = preference_eval_sums(model, adapter_of(a.adapter), examples, o);
  const std::vector<double> ref = preference_eval_sums(model, adapter_of(a.ref_adapter), examples, o);
  labels.resize(ref.size() / 2);  // the examples of the first --eval-batches batches
  const KtoStats st = kto_eval_stats(o.kto_options, policy, ref, labels, o.batch_size);
  const double kl = st.batches > 0 ? st.kl / static_cast<double>(st.batches) : 0.0;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::ordered_json j = {{"model", o.model_dir},
                              {"adapter", opt_str(a.adapter)},
                              {"reference_adapter", opt_str(a.ref_adapter)},
                              {"data", o.data_path},
                              {"split", split ? "eval" : "all"},
                              {"examples", st.examples()},
                              {"kto_loss_type", kto_loss_name(o.kto_options.loss)},
                              {"beta", o.kto_options.beta},
                              {"loss", st.objective()},
                              {"kl", kl}};
  nlohmann::json rewards;
  add_kto_rewards(st, "", &rewards);
  for (auto it = rewards.begin(); it != rewards.end(); ++it) j[it.key()] = it.value();
  j["seconds"] = seconds;
  j["peak_rss_bytes"] = peak_rss_bytes();
  if (a.json) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    const auto mean = [](double sum, int64_t n) { return n > 0 ? sum / static_cast<double>(n) : 0.0; };
    std::printf("%lld %sexamples of %s (%lld desirable, %lld undesirable): log-probabilities %.2f desirable, %.2f "
                "undesirable per example; %s loss %.4f, kl %.4f, reward margin %.4f (%s); %s%s, %.1fs\n",
                (long long)st.examples(), split ? "held-out " : "", o.data_path.c_str(), (long long)st.desirable,
                (long long)st.undesirable, mean(st.logp_d, st.desirable), mean(st.logp_u, st.undesirable),
                kto_loss_name(o.kto_options.loss), st.objective(), kl, st.margin(),
                a.ref_adapter.empty() ? "reference: the base alone" : ("reference: " + a.ref_adapter).c_str(),
                a.adapter.empty() ? "the base alone" : "adapter ", a.adapter.c_str(), seconds);
  }
  if (!a.json_out.empty()) write_file_atomic(a.json_out, j.dump(2) + "\n");
}

// --objective grpo: train's evaluation of held-out prompts (its seed, its batches), on the CPU.
void run_grpo_eval(EvalArgs& a, QwenModel& model, const Tokenizer& tok, const SftDataset& data, bool split,
                   std::chrono::steady_clock::time_point t0) {
  const TrainOptions& o = a.opt;
  const GrpoOptions& g = o.grpo_options;
  const LoraAdapter adapter = adapter_or_zero(a.adapter, model, o.model_dir);
  GrpoRun run(g, model, tok, adapter);
  const std::vector<std::string>& records = split ? data.eval_records : data.train_records;
  run.check_records(records, o.data_path);
  const nlohmann::json m = run.evaluate(model, adapter, split ? data.eval : data.train, records, o.batch_size,
                                        o.eval_batches, o.seed, nullptr);
  const auto& rewards = run.rewards();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::ordered_json j = {{"model", o.model_dir},
                              {"adapter", opt_str(a.adapter)},
                              {"data", o.data_path},
                              {"split", split ? "eval" : "all"},
                              {"num_generations", g.num_generations},
                              {"rewards", g.rewards}};
  for (auto it = m.begin(); it != m.end(); ++it) j[it.key().substr(5)] = it.value();  // "eval_" dropped
  j["seconds"] = seconds;
  j["peak_rss_bytes"] = peak_rss_bytes();
  if (a.json) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%lld %sprompts of %s x %lld completions: reward %.4f (group std %.4f)", (long long)j["prompts"].get<int64_t>(),
                split ? "held-out " : "", o.data_path.c_str(), (long long)g.num_generations, j["reward"].get<double>(),
                j["reward_std"].get<double>());
    for (const auto& f : rewards) {
      const nlohmann::ordered_json& v = j["rewards_" + f->name() + "_mean"];
      if (v.is_number()) std::printf(", %s %.4f", f->name().c_str(), v.get<double>());
    }
    std::printf("; completions %.1f tokens on average, %.0f%% cut at --max-completion-len; %s%s, %.1fs\n",
                j["completions_mean_length"].get<double>(), 100.0 * j["completions_clipped_ratio"].get<double>(),
                a.adapter.empty() ? "the base alone" : "adapter ", a.adapter.c_str(), seconds);
  }
  if (!a.json_out.empty()) write_file_atomic(a.json_out, j.dump(2) + "\n");
}

// Both kinds: the model, the records rendered as train renders them, then the report.
void run_eval(EvalArgs& a) {
  DevicePick pick(a.common, "qwen-qlora eval");
  if (!a.json_out.empty()) check_output_dir_exists("--json-out", a.json_out);
  TrainOptions& o = a.opt;
  QWENQ_CHECK(a.predictions.empty() || o.classify, "--predictions applies to --objective classify");
  if (!a.predictions.empty()) check_output_dir_exists("--predictions", a.predictions);
  o.model_dir = resolve_model_dir(a.model);
  apply_sft_flags(a.sft, &o);
  const auto t0 = std::chrono::steady_clock::now();
  // --objective reward without --adapter: the model is a reward model directory (a sequence classifier).
  const bool classifier = o.sequence_classifier() && (a.adapter.empty() || sequence_classifier_dir(o.model_dir));
  QwenModel model(o.model_dir, classifier ? ModelHead::kSequenceScore : ModelHead::kLanguageModel);
  // LoraModelCuda's loss on the GPU, as train evaluates there (GRPO: the CPU's decoding, as train's; a reward model's
  // head: the CPU's).
  QWENQ_CHECK(!(o.grpo || o.sequence_classifier()) || a.common.device != "cuda",
              "eval --objective " << (o.grpo ? "grpo samples" : o.reward ? "reward scores" : "classify scores")
                                  << " on the CPU, as train does: give --device cpu or auto");
  o.use_cuda = !o.grpo && !o.sequence_classifier() && pick.settle_for_model(model, GpuUse::Train, adapter_gpu_refusal(a.adapter, model.config())) ==
                                                                 Device::Cuda;
  const Tokenizer tok = Tokenizer::from_model(o.model_dir);
  if (o.classify) return run_classify_eval(a, model, tok, t0);
  SftDataOptions dopt = o.data;
  dopt.max_len = data_max_len(o);
  if (o.paired_batches()) dopt.max_len = std::min(dopt.max_len, o.seq_len);  // never cut by the batcher
  const SftDataset data = o.dpo || o.reward ? load_preference_dataset(o.data_path, tok, dopt)
                          : o.kto ? load_kto_dataset(o.data_path, tok, dopt, o.batch_size)
                          : o.grpo ? load_grpo_dataset(o.data_path, tok, dopt, o.grpo_options.max_completion_len)
                                   : load_sft_dataset(o.data_path, tok, dopt);
  const bool split = o.data.eval_fraction > 0 || o.data.eval_count > 0;
  if (o.grpo) run_grpo_eval(a, model, tok, data, split, t0);
  else if (o.reward) run_reward_eval(a, model, tok, data, split, t0);
  else if (o.dpo) run_preference_eval(a, model, data, split, t0);
  else if (o.kto) run_kto_eval(a, model, data, split, t0);
  else run_sft_eval(a, model, data, split, t0);
}

}  // namespace

void register_qlora_eval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  TrainOptions& o = a->opt;
  CLI::App* c = app.add_subcommand(
      "eval", "Held-out loss of a base (plus a LoRA adapter) on SFT data, as train computes its eval loss (or, with "
              "--objective dpo, how often it prefers the chosen completion of preference pairs; with --objective kto, the "
              "KTO statistics of labelled examples; with --objective grpo, the mean reward of sampled completions of "
              "prompts; with --objective reward, how a reward model (an adapter of train --objective reward, or a "
              "reward model directory alone) scores preference pairs; with --objective classify, the accuracy of a "
              "text classifier on labelled texts)");
  c->add_option("--model,-m", a->model, "base model directory or repo id (any layout train reads); default: the base "
                                       "--adapter's adapter_config.json names");
  c->add_option("--adapter,-a", a->adapter, "LoRA adapter directory (PEFT layout); without it, the base alone");
  c->add_option("--ref-adapter", a->ref_adapter,
                "--objective dpo and kto: the reference model's adapter (train's starting adapter); without it, the base alone");
  c->add_option("--data,-d", o.data_path,
                "SFT data: JSONL/JSON with text, Alpaca or chat messages (preference pairs with --objective dpo)")
      ->required()
      ->check(CLI::ExistingFile);
  add_sft_data_flags(c, &a->sft, &o);  // --eval-fraction / --eval-count: train's held-out split, not every record
  c->add_option("--seed", o.seed, "train's --seed (its held-out split)")->capture_default_str();
  c->add_option("--seq-len", o.seq_len, "tokens per row (as train)")->capture_default_str();
  c->add_option("--batch-size", o.batch_size, "rows per batch, pairs with --objective dpo, examples with kto (as train)")
      ->check(at_least(1, "POSITIVE"))
      ->capture_default_str();
  c->add_option("--batching", a->sft.batch_mode, "packing or padding (as train)")->capture_default_str();
  c->add_option("--eval-batches", o.eval_batches, "at most N batches (0: all)")
      ->check(at_least(0, "NONNEGATIVE"))
      ->capture_default_str();
  c->add_flag("--fp32-checkpoints", a->sft.fp32_checkpoints, "block inputs kept in fp32, as train --fp32-checkpoints");
  c->add_flag("--json", a->json, "print one JSON object instead of the human line");
  c->add_option("--json-out", a->json_out, "also write the JSON result to this file");
  c->add_option("--predictions", a->predictions,
                "classify: write each evaluated text's record with its prediction (predicted, scores, probabilities) "
                "as JSON lines in file order; the records may then hold no label at all (texts to label)");
  add_dpo_flags(c, &a->dpo, &o);
  add_common_options(c, &a->common);
  c->callback([a, c]() {
    apply_dpo_flags(*c, a->dpo, &a->sft, &a->opt);
    QWENQ_CHECK(a->opt.preference() || a->ref_adapter.empty(), "--ref-adapter applies to --objective dpo and kto");
    a->model = model_or_adapter_base(a->model, a->adapter, false);
    run_eval(*a);
  });
}

}  // namespace qwenq::cli
