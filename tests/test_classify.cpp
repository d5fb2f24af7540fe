// Sequence classification (trainer/classify.h): the cross-entropy's derivatives against central differences, the
// statistics (torch.argmax's first maximum), the score head of C labels through lora_loss_and_grad against central
// differences of the loss on a tiny model, the labelled data's label names, and labels.json.
// (tests/oracle/test_classify_oracle.py checks whole runs against transformers + PEFT.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/files.h"
#include "core/rng.h"
#include "lora/lora_config.h"
#include "tests/support/score_head_fd.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_training.h"
#include "trainer/classify.h"
#include "trainer/lora_model.h"
#include "trainer/reward.h"
#include "trainer/tokenizer.h"
#include "trainer/train_loop.h"

namespace qwenq {
namespace {

// Central differences of the double loss at step 1e-5: truncation ~1e-10, rounding ~1e-16 / 1e-5.
constexpr double kMathFdStep = 1e-5;
constexpr double kMathFdTol = 1e-8;

TEST(ClassifyMath, DerivativesAreTheLossDerivative) {
  Rng rng(5);
  const int64_t C = 4;
  const std::vector<int32_t> labels = {0, 3, 1, 1, 2};
  std::vector<double> z(labels.size() * C);
  for (double& v : z) v = 3.0 * rng.normal();
  const int64_t step_examples = 8;  // the micro-batch is 5 of the step's 8 texts
  ClassifyStats stats;
  const std::vector<double> d = classify_objective(labels, C, step_examples, &stats)(z);
  ASSERT_EQ(d.size(), z.size());
  EXPECT_EQ(stats.examples, 5);
  const auto loss = [&](const std::vector<double>& x) {
    return classify_batch_stats(x, labels, C).loss / static_cast<double>(step_examples);
  };
  for (size_t i = 0; i < z.size(); ++i) {
    std::vector<double> p = z, m = z;
    p[i] += kMathFdStep;
    m[i] -= kMathFdStep;
    EXPECT_NEAR(d[i], (loss(p) - loss(m)) / (2 * kMathFdStep), kMathFdTol) << "logit " << i;
  }
  // Each example's derivatives sum to 0 (softmax minus a one-hot).
  for (size_t j = 0; j < labels.size(); ++j) {
    double s = 0;
    for (int64_t c = 0; c < C; ++c) s += d[j * C + c];
    EXPECT_NEAR(s, 0.0, 1e-15);
  }
}

TEST(ClassifyMath, StatsCountTheFirstMaximumAndPackRoundTrips) {
  // Example 0: a tie between labels 1 and 2, argmax 1 (torch.argmax's first): correct for label 1 only.
  const std::vector<double> z = {0.0, 2.0, 2.0, /**/ 5.0, -1.0, 0.0, /**/ 0.0, 0.0, 1.0};
  const ClassifyStats a = classify_batch_stats(z, {1, 0, 0}, 3);
  EXPECT_EQ(a.examples, 3);
  EXPECT_EQ(a.correct, 2);
  const double l0 = std::log(1 + 2 * std::exp(2.0)) - 2.0;
  const double l1 = 5.0 + std::log(1 + std::exp(-6.0) + std::exp(-5.0)) - 5.0;
  const double l2 = 1.0 + std::log(1 + 2 * std::exp(-1.0)) - 0.0;
  EXPECT_NEAR(a.loss, l0 + l1 + l2, 1e-14);
  EXPECT_NEAR(a.objective(), (l0 + l1 + l2) / 3, 1e-14);
  EXPECT_EQ(classify_batch_stats(z, {2, 0, 0}, 3).correct, 1);
  const ClassifyStats b = ClassifyStats::unpack(a.pack());
  EXPECT_EQ(b.examples, a.examples);
  EXPECT_EQ(b.correct, a.correct);
  EXPECT_EQ(b.loss, a.loss);
  test::expect_error([&] { classify_batch_stats(z, {1, 0}, 3); }, "9 logits for 2 examples of 3 labels");
  test::expect_error([&] { classify_batch_stats(z, {1, 0, 3}, 3); }, "label 3 outside [0, 3)");
}

// The head of C = 3 labels: scores row-major [sequence, label], and the gradients of every LoRA tensor and the head
// are the loss's directional derivatives.
TEST(ClassifyModelStep, GradientsMatchFiniteDifferences) {
  const std::string dir = test::make_tiny_model(test::scratch_dir() + "/m", 32);
  QwenModel m(dir);
  const int64_t C = 3;
  const LoraAdapter a = test::seq_cls_adapter(m, C, 9);
  const PackedBatch b = PackedBatch::from_sequences({{1, 5, 9, 200, 3}, {1, 5, 9, 17, 0, 0}, {42, 17, 99}});
  const std::vector<int32_t> labels = {2, 0, 1};
  LoraStepOptions opt;
  opt.bf16_checkpoints = false;  // the exact fp32 model
  opt.score_rows = reward_pooled_rows(b, 0);
  ClassifyStats stats;
  opt.score_objective = classify_objective(labels, C, 3, &stats);
  const std::vector<float> head_grad = test::expect_score_head_gradients(
      m, a, b, opt,
      [&](const std::vector<double>& scores) {
        EXPECT_EQ(scores.size(), 9u);  // [sequence, label]
        return classify_batch_stats(scores, labels, C).loss / 3;
      },
      17);
  EXPECT_EQ(stats.examples, 3);
  for (int64_t c = 0; c < C; ++c) {  // every label's row of the head gets a gradient
    double row = 0;
    for (int64_t k = 0; k < m.config().hidden_size; ++k) row += std::fabs(head_grad[c * m.config().hidden_size + k]);
    EXPECT_GT(row, 0.0) << "label " << c;
  }
}

// The label names a file implies, the split's labels, and labels.json.
TEST(ClassifyData, LabelNamesAndLabelsJson) {
  const std::string root = test::scratch_dir();
  const std::string model = test::make_tiny_model(root + "/m", 3);
  const Tokenizer tok = Tokenizer::from_dir(model);
  SftDataOptions opt;
  opt.max_len = 64;
  opt.eval_count = 1;
  const auto load = [&](const std::string& lines, ClassifyDataOptions* o) {
    write_file_atomic(root + "/d.jsonl", lines);
    return load_classify_dataset(root + "/d.jsonl", tok, opt, o);
  };
  ClassifyDataOptions names;
  SftDataset ds = load(R"({"text": "a b", "label": "pos"}
{"text": "c d e", "label": "neg"}
{"text": "f", "label": "neutral"}
)", &names);
  EXPECT_EQ(names.label_names, (std::vector<std::string>{"neg", "neutral", "pos"}));  // sorted, as class_encode_column
  EXPECT_EQ(ds.train.size() + ds.eval.size(), 3u);
  EXPECT_EQ(ds.eval_classes.size(), 1u);
  for (const SftExample& ex : ds.train) EXPECT_EQ(std::count(ex.loss_mask.begin(), ex.loss_mask.end(), 1), 0);
  ClassifyDataOptions ids;
  load(R"({"text": "a b", "label": 0}
{"text": "c", "label": 3}
)", &ids);
  EXPECT_EQ(ids.label_names, (std::vector<std::string>{"LABEL_0", "LABEL_1", "LABEL_2", "LABEL_3"}));
  ClassifyDataOptions one_id;
  load("{\"text\": \"a\", \"label\": 0}\n{\"text\": \"b\", \"label\": 0}\n", &one_id);
  EXPECT_EQ(one_id.label_names.size(), 2u);  // a classifier of one seen id still has two classes
  ClassifyDataOptions fields;
  fields.text_field = "sentence";
  fields.label_field = "y";
  fields.label_names = {"x", "z"};
  ds = load("{\"sentence\": \"a\", \"y\": \"z\"}\n{\"sentence\": \"b\", \"y\": 0}\n", &fields);
  ClassifyDataOptions missing;
  test::expect_error([&] { load("{\"text\": \"a\", \"label\": 1}\n{\"text\": \"\", \"label\": 0}\n", &missing); },
                     {"d.jsonl:2", "\"text\" must be a non-empty string"});
  ClassifyDataOptions dup;
  dup.label_names = {"a", "a"};
  test::expect_error([&] { load("{\"text\": \"a\", \"label\": \"a\"}\n", &dup); }, "\"a\" is given twice");
  // labels.json round trip, and a file that names an id twice or skips one.
  write_label_names(root, {"neg", "pos"});
  EXPECT_EQ(read_label_names(root), (std::vector<std::string>{"neg", "pos"}));
  EXPECT_TRUE(read_label_names(root + "/m").empty());  // no file: none
  write_file_atomic(root + "/labels.json", R"({"id2label": {"0": "a", "2": "b"}})");
  test::expect_error([&] { read_label_names(root); }, "id2label must map each id 0..1 to one name");
}

// A classify run killed and resumed gives the uninterrupted run's step records bit for bit and its adapter's bytes
// (the head included); labels.json beside the final adapter names the labels the file gave.
TEST(ClassifyTrain, ResumedRunIsTheUninterruptedOne) {
  const std::string root = test::scratch_dir();
  const std::string model = test::make_tiny_model(root + "/m", 2);
  const std::string text = read_file(test::make_text_data(root + "/t.jsonl", 80));
  std::string labelled;  // each sentence labelled by its subject's animal
  size_t at = 0;
  while (at < text.size()) {
    const size_t end = text.find('\n', at);
    const std::string line = text.substr(at, end - at);
    at = end + 1;
    const char* label = line.find("cat") != std::string::npos ? "cat" : line.find("dog") != std::string::npos ? "dog"
                                                                                                             : "other";
    labelled += line.substr(0, line.size() - 1) + ", \"label\": \"" + label + "\"}\n";
  }
  write_file_atomic(root + "/d.jsonl", labelled);
  TrainOptions o = test::small_lora_options(model, root + "/d.jsonl", root + "/full", 8);
  o.classify = true;
  o.batch_mode = SftBatchMode::kPadding;
  o.data.max_len = 0;  // --seq-len
  o.save_every = 2;
  o.eval_every = 2;
  const TrainReport full = train_lora(o);
  EXPECT_GE(full.eval_accuracy, 0.0);
  test::train_interrupted(o, root + "/part", 3);
  test::expect_same_resumed_run(root + "/full", root + "/part", {"loss", "accuracy", "lr", "grad_norm"});
  EXPECT_EQ(read_label_names(root + "/full"), (std::vector<std::string>{"cat", "dog", "other"}));
  EXPECT_EQ(read_label_names(root + "/full/checkpoint-8/adapter"), (std::vector<std::string>{"cat", "dog", "other"}));
}

}  // namespace
}  // namespace qwenq
