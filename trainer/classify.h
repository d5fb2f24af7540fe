// Sequence classification (`train --objective classify`): a text classifier made of the base model, a LoRA adapter
// and a new head of C outputs, as transformers' Qwen2ForSequenceClassification(num_labels = C, problem_type) with PEFT
// (task_type SEQ_CLS) trains one with the Trainer. z_j, the logits of example j: the score head W [C, H] times the
// final hidden state (after the final norm) at its pooled token, the last one that is not the pad id
// (LoraStepOptions::score_rows). Per problem_type (transformers' names), example j's loss ℓ_j and target:
//
//   single_label_classification   y_j a label in [0, C):     ℓ_j = logsumexp(z_j) − z_j[y_j]         (CrossEntropyLoss)
//   multi_label_classification    y_jc in {0, 1} per label:  ℓ_j = (1/C) Σ_c softplus(z_jc) − y_jc·z_jc
//                                                                                           (BCEWithLogitsLoss)
//   regression                    y_jc a value per output:   ℓ_j = (1/C) Σ_c (z_jc − y_jc)²          (MSELoss)
//
//   L = (1/N) Σ_j ℓ_j over the N examples of an optimizer step (as the reward model's pairs): each torch loss is the
//   mean over the micro-batch's B·C entries (B for cross-entropy), and transformers' Trainer divides each micro-batch's
//   by gradient_accumulation_steps (Qwen2ForSequenceClassification takes no num_items_in_batch) and averages over
//   data-parallel ranks: the same L when the step's micro-batches hold equally many texts; a short last micro-batch
//   of an epoch weighs its texts more there.
//   ∂L/∂z_jc = (softmax(z_j)_c − [c = y_j]) / N,   (σ(z_jc) − y_jc) / (N·C),   2·(z_jc − y_jc) / (N·C)
//
// Metrics (ClassifyStats): single-label accuracy, argmax_c z_jc = y_j (the first of equal maxima, as torch.argmax);
// multi-label a label is predicted when z_jc > 0 (σ > 0.5): accuracy, every label of the text right (sklearn's
// accuracy_score of multi-hot rows), and f1, the micro F1 2·tp / (2·tp + fp + fn) over every (text, label) (0 when
// no label is true or predicted); regression with one output Pearson's r of z and y over the texts (0 when either is
// constant).
//
// Records (JSON lines or a JSON array): {"text": ..., "label": ...} (the field names are --text-field /
// --label-field). problem_type: --problem-type, else a classifier base's config.json, else multi-label when a label
// is a list and single-label otherwise (regression is never guessed: an integer score would read as a class id).
//   single-label  a label is an integer in [0, C) or a name. The names: --labels a,b,c (ids in that order), else from
//                 the training file: integers give C = max + 1 (at least 2) named LABEL_<i>, names give their sorted
//                 set (as `datasets`' class_encode_column).
//   multi-label   a label is the list of the text's labels (names or ids; empty: none); names as above, C >= 1.
//   regression    a label is a number (C = 1) or a list of C numbers; --labels names the outputs (default LABEL_<i>).
// A text is tokenized as the model's tokenizer does with add_special_tokens (Llama's BOS; none for Qwen's), kept to
// its first max_len tokens (transformers' truncation). With --text-pair-field a record holds a second text (a sentence
// pair: NLI, paraphrase, similarity) and the two are encoded as tokenizer(text, text_pair, truncation=True,
// max_length) does (Tokenizer::encode_pair: Qwen's A B, Llama's <s> A <s> B; cut longest first).
// The head starts as transformers initialises a new classifier head, normal(0, initializer_range); the adapter is
// saved as PEFT saves a SEQ_CLS adapter (score.weight [C, H] beside the LoRA tensors), with the label names in
// labels.json ({"id2label": {"0": name, ...}}, and "problem_type" when it is not single-label; PEFT ignores the file;
// also in each checkpoint's adapter/), and `qwen-qlora merge` makes a Qwen2ForSequenceClassification directory of it
// (problem_type in its config.json likewise).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/sft_data.h"
#include "trainer/tokenizer.h"

namespace qwenq {

enum class ProblemType { kSingleLabel, kMultiLabel, kRegression };
// transformers' config.problem_type: "single_label_classification", "multi_label_classification", "regression".
const char* problem_type_name(ProblemType t);
bool problem_type_from_name(const std::string& name, ProblemType* out);

// What the head is trained for: the problem type and C, the head's outputs (labels, or regression outputs).
struct ClassifyTask {
  ProblemType type = ProblemType::kSingleLabel;
  int64_t num_labels = 0;
};

struct ClassifyDataOptions {
  std::string text_field = "text", label_field = "label";
  std::string text_pair_field;                 // a second text per record (sentence pairs); empty: none
  std::vector<std::string> label_names;        // empty: read from the training file (top), then set
  std::optional<ProblemType> problem_type;     // unset: from the training file (top), then set
  // A file whose records hold no label at all is read as texts to predict (SftDataset::unlabelled; their targets
  // placeholders), when label_names and problem_type are set (`eval --predictions`).
  bool unlabelled_ok = false;
};

// The examples of a labelled file (loss masks all 0: the head's objective reads no token target) and their targets
// (SftDataset::train_targets / eval_targets), split as the SFT data is (opt.seed, eval_fraction / eval_count).
// labels->label_names and problem_type unset: resolved from this file and written back. Malformed records (not an
// object, no text or an empty one, a label of the wrong kind for the problem type) throw naming file:line, or with
// opt.skip_bad are counted; a label outside the names (an id out of range, an unknown name) and a regression list of
// another length always throw naming file:line. Throws when no example is left, when a single-label file has fewer
// than 2 labels and when a file of another problem type has none. With unlabelled_ok a file without any label is read
// as texts to predict; one where some records have a label and others not throws naming the first without.
SftDataset load_classify_dataset(const std::string& path, const Tokenizer& tok, const SftDataOptions& opt,
                                 ClassifyDataOptions* labels);

// Sums over examples, for every problem type (each reads its own; top).
struct ClassifyStats {
  int64_t examples = 0, correct = 0;  // correct: the example's label (single), every label of it (multi) right
  double loss = 0;                     // Σ ℓ_j
  int64_t tp = 0, fp = 0, fn = 0;      // multi-label: over (example, label)
  double sz = 0, sy = 0, szz = 0, syy = 0, szy = 0;  // regression: Σ z, y, z², y², z·y over examples and outputs
  double objective() const { return examples > 0 ? loss / static_cast<double>(examples) : 0.0; }
  double accuracy() const { return examples > 0 ? static_cast<double>(correct) / static_cast<double>(examples) : 0.0; }
  double f1() const;
  double pearson() const;
  void add(const ClassifyStats& o);
  // The 11 numbers in a fixed order, and back (the data-parallel all-reduce).
  std::vector<double> pack() const;
  static ClassifyStats unpack(const std::vector<double>& v);
};

// The statistics of examples with logits `logits` (row-major [example, output]) and targets.
ClassifyStats classify_batch_stats(const std::vector<double>& logits, const std::vector<ClassifyTarget>& targets,
                                   const ClassifyTask& task);

// The score objective of one micro-batch (LoraStepOptions::score_objective): ∂L/∂z_jc of the step's loss L (top) for
// a step of `step_examples` examples; adds the batch's statistics to *stats when it runs.
std::function<std::vector<double>(const std::vector<double>&)> classify_objective(std::vector<ClassifyTarget> targets,
                                                                                  const ClassifyTask& task,
                                                                                  int64_t step_examples,
                                                                                  ClassifyStats* stats);

// Per label (classification) or per output (regression), over evaluated texts, as sklearn's classification_report
// and confusion_matrix define them: a label's precision tp / (tp + fp), recall tp / (tp + fn) and F1
// 2·tp / (2·tp + fp + fn), each 0 when its denominator is (sklearn's zero_division), support tp + fn; macro F1 their
// unweighted mean over the labels. Single-label: a text predicts its argmax label (tp, fp, fn of that label) and the
// confusion matrix counts [true label][predicted label]; multi-label: each label decided at logit > 0. Regression: each
// output's mean squared error, Pearson's r and Spearman's rho (Pearson's r of the ranks, tied values given their mean
// rank, as scipy.stats.spearmanr; STS-B's second metric).
struct ClassifyLabelReport {
  std::vector<int64_t> tp, fp, fn;              // per label (classification)
  std::vector<std::vector<int64_t>> confusion;  // single-label: [true][predicted]
  std::vector<double> mse, pearson, spearman;   // regression: per output
  int64_t support(size_t c) const { return tp[c] + fn[c]; }
  double precision(size_t c) const;
  double recall(size_t c) const;
  double f1(size_t c) const;
  double macro_f1() const;
};
ClassifyLabelReport classify_label_report(const std::vector<double>& logits, const std::vector<ClassifyTarget>& targets,
                                          const ClassifyTask& task);
// The report as JSON: "per_label" [{"label", "precision", "recall", "f1", "support"}], "macro_f1" and single-label's
// "confusion"; regression's "per_output" [{"output", "mse", "pearson", "spearman"}]. `names` the labels or outputs.
nlohmann::ordered_json classify_report_json(const ClassifyLabelReport& r, const ClassifyTask& task,
                                            const std::vector<std::string>& names);
// The same as a text table (a confusion matrix too for single-label heads of at most 12 labels).
std::string classify_report_text(const ClassifyLabelReport& r, const ClassifyTask& task,
                                 const std::vector<std::string>& names);

// What the head predicts from one text's logits z [C]: {"predicted", "scores", "probabilities"}; single-label the
// argmax label's name and softmax(z), multi-label the names with z > 0 (σ > 0.5) and σ(z) per label, regression the
// output's value (a list for several) and no probabilities. `names` the labels or outputs.
nlohmann::ordered_json classify_prediction(const double* z, const ClassifyTask& task,
                                           const std::vector<std::string>& names);

// The metrics a task reports beside its loss (top): "accuracy" (single-label), "accuracy" and "f1" (multi-label),
// "pearson" (regression with one output; none with more).
std::vector<std::string> classify_metric_names(const ClassifyTask& task);
// Those metrics of `s` into *record as prefix + name ("eval_accuracy").
void add_classify_metrics(const ClassifyStats& s, const ClassifyTask& task, const std::string& prefix,
                          nlohmann::json* record);
// "accuracy 0.950", "accuracy 0.700, f1 0.812", "pearson 0.874" (a log line's part; "" for none).
std::string classify_metrics_text(const ClassifyStats& s, const ClassifyTask& task);

// labels.json of an adapter directory: writes the names and a problem type other than single-label (atomically),
// reads them back (names {} when the file is absent; the type single-label unless the file names another).
void write_label_names(const std::string& dir, const std::vector<std::string>& names, ProblemType type);
std::vector<std::string> read_label_names(const std::string& dir, ProblemType* type = nullptr);
// A sequence classifier directory's label names: its config.json id2label in id order ({} without one).
std::vector<std::string> config_label_names(const std::string& model_dir);
// Whether config.json of model_dir names a problem_type (which, in *type); an unknown one throws naming the file.
bool config_problem_type(const std::string& model_dir, ProblemType* type);

}  // namespace qwenq
