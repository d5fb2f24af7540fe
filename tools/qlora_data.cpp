// qwen-qlora data: what `train` makes of a dataset, without a model: the records read, each rendered with its
// template (Alpaca's prompt, or the tokenizer's chat template as transformers applies it), tokenized, and the
// tokens that count in the loss. Prints the dataset summary `train` prints; --show N prints the first N examples
// with their loss spans between ⟦ and ⟧; --dump FILE writes one JSON line per example in file order:
//   {"where": "data.jsonl:3", "ids": [...], "loss_mask": [0, 0, 1, ...], "text": the ids decoded}
// (the oracle test's entry point for loss masks: tests/oracle/test_chat_template_oracle.py).
// With --objective dpo (or --format preference), preference pairs as `train --objective dpo` reads them: each pair's
// chosen and rejected examples; --dump writes one line per pair, {"where", "chosen": {"ids", "loss_mask", "text"},
// "rejected": {...}, "kept"}. With --objective kto, labelled examples as `train --objective kto` reads them (a pair
// as its two), in file order, each with its label; --dump writes {"where", "label", "ids", "loss_mask", "text",
// "kept"} per example (the KL sequences are made after the split, in train's batches: not shown). With --objective
// grpo, the prompts (in the loader's seeded order, as train's split keeps them) as `train --objective grpo` renders them (a conversation with its generation prompt) and the
// records the reward functions get; --dump writes {"ids", "text", "record"} per kept prompt (--max-len: train's
// --seq-len minus --max-completion-len, the room a prompt may take; 0: any).
#include <algorithm>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "tools/cli_common.h"
#include "tools/qlora_cli.h"
#include "trainer/classify.h"
#include "trainer/dpo.h"
#include "trainer/grpo.h"
#include "trainer/kto.h"
#include "trainer/model_dir.h"
#include "trainer/sft_data.h"

namespace qwenq::cli {

namespace {

struct DataArgs {
  std::string model, data, format = "auto", dump, alpaca_prompt = "stanford", objective = "sft";
  int64_t max_len = 0, show = 0, max_prompt_len = 0;
  ClassifyDataOptions classify;  // --objective classify: the fields and label names
  std::string problem_type;      // --objective classify: transformers' name, "" for the data's
  bool skip_bad = false, no_thinking = false, train_on_prompt = false, mask_history = false;
};

// The example's text with each run of loss tokens between ⟦ and ⟧.
std::string marked_text(const SftExample& ex, const Tokenizer& tok) {
  std::string out;
  size_t i = 0;
  while (i < ex.tokens.size()) {
    size_t j = i;
    while (j < ex.tokens.size() && ex.loss_mask[j] == ex.loss_mask[i]) ++j;
    const std::string piece = tok.decode(std::vector<int32_t>(ex.tokens.begin() + i, ex.tokens.begin() + j), false);
    out += ex.loss_mask[i] ? "\u27e6" + piece + "\u27e7" : piece;
    i = j;
  }
  return out;
}

nlohmann::json example_json(const SftExample& ex, const Tokenizer& tok) {
  return {{"ids", ex.tokens}, {"loss_mask", ex.loss_mask}, {"text", tok.decode(ex.tokens, false)}};
}

// --objective dpo: the pairs in file order.
void run_preference_data(const DataArgs& a, const Tokenizer& tok, const SftTemplateOptions& to) {
  QWENQ_CHECK(a.format == "auto" || a.format == "preference",
              "data --objective dpo reads preference records, not --format " << a.format);
  SftDataStats st;
  std::string dump;
  int64_t shown = 0;
  for (const auto& rec : read_preference_records(a.data, a.skip_bad, &st)) {
    std::pair<SftExample, SftExample> ex;
    const bool kept = prepare_preference_pair(rec, tok, to, a.max_len, &ex, &st);  // a dropped pair is shown too
    if (shown < a.show) {
      std::printf("--- %s%s\n", rec.first.where.c_str(), kept ? "" : " (dropped: a completion lost to --max-len)");
      for (const auto& [name, e] : {std::make_pair("chosen", &ex.first), std::make_pair("rejected", &ex.second)}) {
        const long long loss = std::count(e->loss_mask.begin(), e->loss_mask.end(), 1);
        std::printf("[%s: %zu tokens, %lld in the sum] %s\n", name, e->tokens.size(), loss, marked_text(*e, tok).c_str());
      }
      ++shown;
    }
    if (!a.dump.empty()) {
      const nlohmann::json j = {{"where", rec.first.where}, {"chosen", example_json(ex.first, tok)},
                                {"rejected", example_json(ex.second, tok)}, {"kept", kept}};
      dump += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    }
  }
  st.train_examples = st.records;
  if (!a.dump.empty()) write_file_atomic(a.dump, dump);
  std::printf("%s\n", st.summary().c_str());
}

// --objective kto: the labelled examples in file order.
void run_kto_data(const DataArgs& a, const Tokenizer& tok, const SftTemplateOptions& to) {
  QWENQ_CHECK(a.format == "auto" || a.format == "preference",
              "data --objective kto reads labelled records, not --format " << a.format);
  QWENQ_CHECK(!to.train_on_prompt && !to.mask_history,
              "preference training scores the completions only: --train-on-prompt and --mask-history do not apply");
  SftDataStats st;
  std::string dump;
  int64_t shown = 0, desirable = 0;
  for (const KtoRecord& rec : read_kto_records(a.data, a.skip_bad, &st)) {
    SftExample ex;
    const bool kept = prepare_sft_example(rec.record, tok, to, a.max_len, &ex, &st);  // a dropped one is shown too
    desirable += kept && rec.desirable;
    const char* label = rec.desirable ? "desirable" : "undesirable";
    if (shown < a.show) {
      const long long loss = std::count(ex.loss_mask.begin(), ex.loss_mask.end(), 1);
      std::printf("--- %s%s\n[%s: %zu tokens, %lld in the sum] %s\n", rec.record.where.c_str(),
                  kept ? "" : " (dropped: its completion lost to --max-len)", label, ex.tokens.size(), loss,
                  marked_text(ex, tok).c_str());
      ++shown;
    }
    if (!a.dump.empty()) {
      nlohmann::json j = example_json(ex, tok);
      j["where"] = rec.record.where;
      j["label"] = rec.desirable;
      j["kept"] = kept;
      dump += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    }
  }
  st.train_examples = st.records;
  if (!a.dump.empty()) write_file_atomic(a.dump, dump);
  std::printf("%s\n%lld desirable, %lld undesirable\n", st.summary().c_str(), (long long)desirable,
              (long long)(st.records - desirable));
}

// "cat, dog" (or "none") of a multi-hot target; "0.5, 1.25" of a regression one.
std::string target_text(const ClassifyTarget& y, ProblemType type, const std::vector<std::string>& names) {
  std::string out;
  char buf[32];
  for (size_t c = 0; c < y.values.size(); ++c) {
    if (type == ProblemType::kMultiLabel) {
      if (y.values[c] > 0.5f) out += (out.empty() ? "" : ", ") + names[c];
    } else {
      std::snprintf(buf, sizeof buf, "%s%.6g", out.empty() ? "" : ", ", static_cast<double>(y.values[c]));
      out += buf;
    }
  }
  return out.empty() ? "none" : out;
}

// --objective classify: the labelled texts in file order, each with its label's id and name (multi-label: its
// labels; regression: its values).
void run_classify_data(const DataArgs& a, const Tokenizer& tok) {
  SftDataOptions opt;
  QWENQ_CHECK(a.format == "auto" || a.format == "text", "data --objective classify reads labelled texts, not --format "
                                                          << a.format);
  opt.skip_bad = a.skip_bad;
  opt.max_len = a.max_len > 0 ? a.max_len : std::numeric_limits<int64_t>::max();
  ClassifyDataOptions labels = a.classify;
  if (!a.problem_type.empty()) {
    ProblemType t;
    QWENQ_CHECK(problem_type_from_name(a.problem_type, &t), "--problem-type " << a.problem_type << " is not a problem type");
    labels.problem_type = t;
  }
  const SftDataset ds = load_classify_dataset(a.data, tok, opt, &labels);
  const std::vector<std::string>& names = labels.label_names;
  const ProblemType type = *labels.problem_type;
  std::vector<int64_t> count(names.size(), 0);  // texts per label (regression: none)
  // The loader's split shuffles (no held-out part here): its order undone, the texts in file order.
  std::vector<size_t> at(ds.train.size());
  for (size_t i = 0; i < at.size(); ++i) at[static_cast<size_t>(ds.train_index[i])] = i;
  std::string dump;
  for (size_t i = 0; i < ds.train.size(); ++i) {
    const SftExample& ex = ds.train[at[i]];
    const ClassifyTarget& y = ds.train_targets[at[i]];
    if (type == ProblemType::kSingleLabel) ++count[static_cast<size_t>(y.id)];
    if (type == ProblemType::kMultiLabel)
      for (size_t c = 0; c < names.size(); ++c) count[c] += y.values[c] > 0.5f;
    if (static_cast<int64_t>(i) < a.show) {
      const std::string what = type == ProblemType::kSingleLabel ? "label " + std::to_string(y.id) + " " + names[static_cast<size_t>(y.id)]
                               : type == ProblemType::kMultiLabel ? "labels " + target_text(y, type, names)
                                                                  : "values " + target_text(y, type, names);
      std::printf("--- text %zu [%s: %zu tokens] %s\n", i + 1, what.c_str(), ex.tokens.size(),
                  tok.decode(ex.tokens, false).c_str());
    }
    if (!a.dump.empty()) {
      nlohmann::json j = example_json(ex, tok);
      if (type == ProblemType::kSingleLabel) {
        j["label"] = y.id;
        j["label_name"] = names[static_cast<size_t>(y.id)];
      } else {
        j["label"] = y.values;  // multi-hot, or the regression targets
      }
      dump += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    }
  }
  if (!a.dump.empty()) write_file_atomic(a.dump, dump);
  std::string per_label;
  for (size_t c = 0; c < names.size(); ++c) {
    per_label += (c ? ", " : "") + std::to_string(c) + " " + names[c];
    if (type != ProblemType::kRegression) per_label += ": " + std::to_string(count[c]);
  }
  std::printf("%s\n%s, %zu %s (%s)\n", ds.stats.summary().c_str(), problem_type_name(type), names.size(),
              type == ProblemType::kRegression ? "outputs" : "labels", per_label.c_str());
}

// --objective grpo: the prompts train would keep, in the loader's seeded order.
void run_grpo_data(const DataArgs& a, const Tokenizer& tok, const SftTemplateOptions& to) {
  QWENQ_CHECK(a.format == "auto" || a.format == "prompt-completion",
              "data --objective grpo reads prompt records, not --format " << a.format);
  SftDataOptions d;
  d.templ = to;
  d.skip_bad = a.skip_bad;
  d.max_len = a.max_len > 0 ? a.max_len + 1 : int64_t{1} << 40;  // room for the prompt, plus one completion token
  const SftDataset ds = load_grpo_dataset(a.data, tok, d, /*max_completion_len=*/1);
  std::string dump;
  for (size_t i = 0; i < ds.train.size(); ++i) {
    const std::vector<int32_t>& ids = ds.train[i].tokens;
    if (static_cast<int64_t>(i) < a.show)
      std::printf("--- prompt %zu (%zu tokens; record %s)\n%s\n", i + 1, ids.size(), ds.train_records[i].c_str(),
                  tok.decode(ids, false).c_str());
    if (!a.dump.empty()) {
      const nlohmann::json j = {{"ids", ids}, {"text", tok.decode(ids, false)},
                                {"record", nlohmann::json::parse(ds.train_records[i])}};
      dump += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    }
  }
  if (!a.dump.empty()) write_file_atomic(a.dump, dump);
  std::printf("%s\n", ds.stats.summary().c_str());
}

void run_data(const DataArgs& a) {
  QWENQ_CHECK(a.max_len >= 0 && a.show >= 0, "data: --max-len and --show must be >= 0");
  // A local directory is used as it is (it may hold only tokenizer files); anything else is a repo id.
  const Tokenizer tok = Tokenizer::from_model(dir_exists(a.model) ? a.model : resolve_model_dir(a.model));
  warn_if_no_thinking_switch(tok, a.no_thinking, "data");
  SftTemplateOptions to;
  to.enable_thinking = !a.no_thinking;
  to.train_on_prompt = a.train_on_prompt;
  to.alpaca_chat = parse_alpaca_prompt(a.alpaca_prompt);
  to.mask_history = a.mask_history;
  to.max_prompt_len = a.max_prompt_len;
  QWENQ_CHECK(a.max_prompt_len == 0 || a.objective != "sft",
              "--max-prompt-len applies to --objective dpo, kto, grpo and reward");
  if (a.objective == "kto") return run_kto_data(a, tok, to);
  if (a.objective == "classify") return run_classify_data(a, tok);
  const ClassifyDataOptions defaults;
  QWENQ_CHECK(a.classify.label_names.empty() && a.problem_type.empty() && a.classify.text_field == defaults.text_field &&
                  a.classify.text_pair_field.empty() && a.classify.label_field == defaults.label_field,
              "--labels, --problem-type, --text-field, --text-pair-field and --label-field apply to --objective "
              "classify");
  if (a.objective == "grpo") return run_grpo_data(a, tok, to);
  if (a.objective == "dpo" || a.objective == "reward" || a.format == "preference") return run_preference_data(a, tok, to);
  SftDataStats st;
  const std::vector<SftRecord> records = read_sft_records(a.data, parse_sft_format(a.format), a.skip_bad, &st);
  std::string dump;
  int64_t shown = 0;
  for (const SftRecord& rec : records) {
    SftExample ex;
    prepare_sft_example(rec, tok, to, a.max_len, &ex, &st);  // a dropped example is shown and dumped too
    if (shown < a.show) {
      const long long loss = std::count(ex.loss_mask.begin(), ex.loss_mask.end(), 1);
      std::printf("--- %s (%zu tokens, %lld in the loss)\n%s\n", rec.where.c_str(), ex.tokens.size(), loss,
                  marked_text(ex, tok).c_str());
      ++shown;
    }
    if (!a.dump.empty()) {
      nlohmann::json j = example_json(ex, tok);
      j["where"] = rec.where;
      dump += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    }
  }
  st.train_examples = st.records;
  if (!a.dump.empty()) write_file_atomic(a.dump, dump);
  std::printf("%s\n", st.summary().c_str());
}

}  // namespace

void register_qlora_data(CLI::App& app) {
  auto a = std::make_shared<DataArgs>();
  CLI::App* c = app.add_subcommand("data", "Show what train makes of a dataset: rendered examples, tokens, loss spans");
  c->add_option("--model,-m", a->model, "model directory or repo id (its tokenizer and chat template)")->required();
  c->add_option("--data,-d", a->data, "training data: JSONL/JSON with text, Alpaca or chat messages")->required();
  c->add_option("--format", a->format, "data format: auto, text, alpaca, chat, prompt-completion, preference")
      ->capture_default_str();
  c->add_option("--objective", a->objective,
                "sft; dpo: preference pairs as train --objective dpo reads them; kto: labelled examples as train "
                "--objective kto reads them; grpo: prompts as train --objective grpo renders them; reward: preference "
                "pairs, as dpo; classify: labelled texts as train --objective classify reads them (in file order)")
      ->check(CLI::IsMember({"sft", "dpo", "kto", "grpo", "reward", "classify"}))
      ->capture_default_str();
  c->add_flag("--skip-bad", a->skip_bad, "skip malformed records (counted) instead of stopping");
  c->add_option("--labels", a->classify.label_names, "classify: the label names in id order (as train --labels)")
      ->delimiter(',');
  c->add_option("--problem-type", a->problem_type, "classify: the problem type (as train --problem-type)")
      ->check(CLI::IsMember({"single_label_classification", "multi_label_classification", "regression"}));
  c->add_option("--text-field", a->classify.text_field, "classify: the records' text field")->capture_default_str();
  c->add_option("--text-pair-field", a->classify.text_pair_field, "classify: the records' second text (as train)");
  c->add_option("--label-field", a->classify.label_field, "classify: the records' label field")->capture_default_str();
  c->add_option("--max-len", a->max_len, "truncate examples to this many tokens, as train does (0: none)")
      ->capture_default_str();
  c->add_option("--max-prompt-len", a->max_prompt_len,
                "dpo, kto and grpo: a longer prompt keeps its last N tokens (after a BOS), as train --max-prompt-len")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  c->add_flag("--no-thinking", a->no_thinking,
              "chat data with a Qwen3 template: enable_thinking=False (an empty think block is prompt, not response)");
  c->add_option("--alpaca-prompt", a->alpaca_prompt, "Alpaca records: stanford or chat (as train --alpaca-prompt)")
      ->capture_default_str();
  c->add_flag("--mask-history", a->mask_history, "chat data: only the last assistant message counts (as train)");
  c->add_flag("--train-on-prompt", a->train_on_prompt, "loss on every token, prompts included, as train --train-on-prompt");
  c->add_option("--show", a->show, "print the first N examples, loss spans between \u27e6 and \u27e7")->capture_default_str();
  c->add_option("--dump", a->dump, "write every example as a JSON line: where, ids, loss_mask, text");
  c->callback([a]() { run_data(*a); });
}

}  // namespace qwenq::cli
