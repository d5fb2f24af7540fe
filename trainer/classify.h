// Sequence classification (`train --objective classify`): a text classifier made of the base model, a LoRA adapter
// and a new head of C labels, as transformers' Qwen2ForSequenceClassification(num_labels = C) with PEFT
// (task_type SEQ_CLS) trains one with the Trainer:
//
//   z_j        the logits of example j: the score head W [C, H] times the final hidden state (after the final norm)
//              at its pooled token, the last one that is not the pad id (LoraStepOptions::score_rows)
//   ℓ_j        = −log softmax(z_j)[y_j] = logsumexp(z_j) − z_j[y_j]       y_j: the example's label in [0, C)
//   L          = (1/N) Σ_j ℓ_j over the N examples of an optimizer step (as the reward model's pairs). transformers'
//              Trainer takes each micro-batch's mean CrossEntropyLoss divided by gradient_accumulation_steps
//              (Qwen2ForSequenceClassification takes no num_items_in_batch), averaged over data-parallel ranks: the
//              same L when the step's micro-batches hold equally many texts; a short last micro-batch of an epoch
//              weighs its texts more there.
//   ∂L/∂z_jc   = (softmax(z_j)_c − [c = y_j]) / N
// accuracy: argmax_c z_jc = y_j (the first of equal maxima, as torch.argmax).
//
// Records (JSON lines or a JSON array): {"text": ..., "label": ...} (the field names are --text-field /
// --label-field); a label is an integer in [0, C) or a name. The label names: --labels a,b,c (ids in that order),
// else read from the training file: integers give C = max + 1 (at least 2) named LABEL_<i>, names give their sorted
// set (as `datasets`' class_encode_column). A text is tokenized as the model's tokenizer does with
// add_special_tokens (Llama's BOS; none for Qwen's), kept to its first max_len tokens (transformers' truncation).
// The head starts as transformers initialises a new classifier head, normal(0, initializer_range); the adapter is
// saved as PEFT saves a SEQ_CLS adapter (score.weight [C, H] beside the LoRA tensors), with the label names in
// labels.json ({"id2label": {"0": name, ...}}; PEFT ignores the file; also in each checkpoint's adapter/), and
// `qwen-qlora merge` makes a
// Qwen2ForSequenceClassification directory of it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "trainer/sft_data.h"
#include "trainer/tokenizer.h"

namespace qwenq {

struct ClassifyDataOptions {
  std::string text_field = "text", label_field = "label";
  std::vector<std::string> label_names;  // empty: read from the training file (top), then set
};

// The examples of a labelled file (loss masks all 0: the head's objective reads no token target) and their labels
// (SftDataset::train_classes / eval_classes), split as the SFT data is (opt.seed, eval_fraction / eval_count).
// labels->label_names empty: resolved from this file and written back. Malformed records (not an object, no text or
// an empty one, a label that is neither an integer nor a string) throw naming file:line, or with opt.skip_bad are
// counted; a label outside the names (an id out of range, an unknown name) always throws naming file:line. Throws
// when no example is left or there are fewer than 2 labels.
SftDataset load_classify_dataset(const std::string& path, const Tokenizer& tok, const SftDataOptions& opt,
                                 ClassifyDataOptions* labels);

struct ClassifyStats {
  int64_t examples = 0, correct = 0;
  double loss = 0;  // Σ ℓ_j
  double objective() const { return examples > 0 ? loss / static_cast<double>(examples) : 0.0; }
  double accuracy() const { return examples > 0 ? static_cast<double>(correct) / static_cast<double>(examples) : 0.0; }
  void add(const ClassifyStats& o);
  // The 3 numbers in a fixed order, and back (the data-parallel all-reduce).
  std::vector<double> pack() const;
  static ClassifyStats unpack(const std::vector<double>& v);
};

// The statistics of examples with logits `logits` (row-major [example, label]) and labels.
ClassifyStats classify_batch_stats(const std::vector<double>& logits, const std::vector<int32_t>& labels,
                                   int64_t num_labels);

// The score objective of one micro-batch (LoraStepOptions::score_objective): ∂L/∂z_jc of the step's loss L (top) for
// a step of `step_examples` examples; adds the batch's statistics to *stats when it runs.
std::function<std::vector<double>(const std::vector<double>&)> classify_objective(std::vector<int32_t> labels,
                                                                                  int64_t num_labels,
                                                                                  int64_t step_examples,
                                                                                  ClassifyStats* stats);

// labels.json of an adapter directory: writes the names (atomically), reads them back ({} when the file is absent).
void write_label_names(const std::string& dir, const std::vector<std::string>& names);
std::vector<std::string> read_label_names(const std::string& dir);
// A sequence classifier directory's label names: its config.json id2label in id order ({} without one).
std::vector<std::string> config_label_names(const std::string& model_dir);

}  // namespace qwenq
