// Sequence classification (trainer/classify.h): each problem type's derivatives against central differences, the
// statistics (torch.argmax's first maximum, BCE's exact match and micro F1, MSE and Pearson's r by hand), the score
// head of C outputs through lora_loss_and_grad against central differences of the loss on a tiny model, the labelled
// data's label names and targets, labels.json, and runs logging each type's metrics.
// (tests/oracle/test_classify_oracle.py checks whole runs against transformers + PEFT.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

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

const ClassifyTask kSingle3{ProblemType::kSingleLabel, 3};

// Single-label targets of these ids.
std::vector<ClassifyTarget> ids(std::initializer_list<int32_t> v) {
  std::vector<ClassifyTarget> out;
  for (int32_t id : v) out.push_back(ClassifyTarget{id, {}});
  return out;
}

// Each logit's derivative from classify_objective against central differences of classify_batch_stats' loss / N.
void expect_derivatives(const std::vector<ClassifyTarget>& targets, const ClassifyTask& task, uint64_t seed) {
  Rng rng(seed);
  std::vector<double> z(targets.size() * static_cast<size_t>(task.num_labels));
  for (double& v : z) v = 3.0 * rng.normal();
  const int64_t step_examples = static_cast<int64_t>(targets.size()) + 3;  // a micro-batch of a larger step
  ClassifyStats stats;
  const std::vector<double> d = classify_objective(targets, task, step_examples, &stats)(z);
  ASSERT_EQ(d.size(), z.size());
  EXPECT_EQ(stats.examples, static_cast<int64_t>(targets.size()));
  const auto loss = [&](const std::vector<double>& x) {
    return classify_batch_stats(x, targets, task).loss / static_cast<double>(step_examples);
  };
  for (size_t i = 0; i < z.size(); ++i) {
    std::vector<double> p = z, m = z;
    p[i] += kMathFdStep;
    m[i] -= kMathFdStep;
    EXPECT_NEAR(d[i], (loss(p) - loss(m)) / (2 * kMathFdStep), kMathFdTol)
        << problem_type_name(task.type) << " logit " << i;
  }
}

TEST(ClassifyMath, DerivativesAreTheLossDerivative) {
  const std::vector<ClassifyTarget> labels = ids({0, 3, 1, 1, 2});
  const ClassifyTask task{ProblemType::kSingleLabel, 4};
  expect_derivatives(labels, task, 5);
  // Each example's derivatives sum to 0 (softmax minus a one-hot).
  std::vector<double> z(labels.size() * 4, 0.25);
  const std::vector<double> d = classify_objective(labels, task, 8, nullptr)(z);
  for (size_t j = 0; j < labels.size(); ++j) {
    double s = 0;
    for (int64_t c = 0; c < 4; ++c) s += d[j * 4 + c];
    EXPECT_NEAR(s, 0.0, 1e-15);
  }
}

TEST(ClassifyMath, MultiLabelAndRegressionDerivativesAreTheLossDerivative) {
  const std::vector<ClassifyTarget> multi = {{-1, {1, 0, 1}}, {-1, {0, 0, 0}}, {-1, {1, 1, 1}}, {-1, {0, 1, 0}}};
  expect_derivatives(multi, ClassifyTask{ProblemType::kMultiLabel, 3}, 6);
  const std::vector<ClassifyTarget> one = {{-1, {0.5f}}, {-1, {-2.25f}}, {-1, {3}}};
  expect_derivatives(one, ClassifyTask{ProblemType::kRegression, 1}, 7);
  const std::vector<ClassifyTarget> two = {{-1, {0.5f, 1}}, {-1, {-2.25f, 0}}};
  expect_derivatives(two, ClassifyTask{ProblemType::kRegression, 2}, 8);
}

// The losses and metrics by hand: BCE with logits and its exact-match accuracy and micro F1; MSE and Pearson's r.
TEST(ClassifyMath, MultiLabelAndRegressionStatsByHand) {
  const ClassifyTask multi{ProblemType::kMultiLabel, 2};
  // example 0: z (2, -1), y (1, 0): both right; example 1: z (0.5, 3), y (0, 1): label 0 a false positive
  const ClassifyStats m = classify_batch_stats({2, -1, 0.5, 3}, {{-1, {1, 0}}, {-1, {0, 1}}}, multi);
  const auto sp = [](double x) { return std::log1p(std::exp(x)); };
  const double l0 = (sp(2) - 2 + sp(-1)) / 2, l1 = (sp(0.5) + sp(3) - 3) / 2;
  EXPECT_NEAR(m.loss, l0 + l1, 1e-14);
  EXPECT_EQ(m.correct, 1);
  EXPECT_EQ(m.tp, 2);
  EXPECT_EQ(m.fp, 1);
  EXPECT_EQ(m.fn, 0);
  EXPECT_DOUBLE_EQ(m.f1(), 4.0 / 5.0);
  EXPECT_DOUBLE_EQ(m.accuracy(), 0.5);
  EXPECT_EQ(classify_batch_stats({-3, -3}, {{-1, {0, 0}}}, multi).f1(), 0.0);  // no label true or predicted
  EXPECT_TRUE(std::isfinite(classify_batch_stats({800, -800}, {{-1, {0, 1}}}, multi).loss));  // softplus, not log(1+e^z)

  const ClassifyTask reg{ProblemType::kRegression, 1};
  const std::vector<double> z = {1.0, 2.0, 2.5, 4.0};
  const std::vector<ClassifyTarget> y = {{-1, {1.5f}}, {-1, {1.0f}}, {-1, {3.0f}}, {-1, {4.5f}}};
  const ClassifyStats r = classify_batch_stats(z, y, reg);
  EXPECT_NEAR(r.loss, 0.25 + 1.0 + 0.25 + 0.25, 1e-14);
  EXPECT_NEAR(r.objective(), 1.75 / 4, 1e-14);
  // Pearson's r of (1, 2, 2.5, 4) and (1.5, 1, 3, 4.5): means 2.375 and 2.5
  double szy = 0, szz = 0, syy = 0;
  for (size_t j = 0; j < 4; ++j) {
    const double dz = z[j] - 2.375, dy = y[j].values[0] - 2.5;
    szy += dz * dy;
    szz += dz * dz;
    syy += dy * dy;
  }
  EXPECT_NEAR(r.pearson(), szy / std::sqrt(szz * syy), 1e-12);
  EXPECT_EQ(classify_batch_stats({1, 1}, {{-1, {0}}, {-1, {2}}}, reg).pearson(), 0.0);  // a constant prediction
  // The metrics each problem type reports, under their record names.
  nlohmann::json rec;
  add_classify_metrics(r, reg, "eval_", &rec);
  EXPECT_EQ(rec.size(), 1u);
  EXPECT_NEAR(rec.at("eval_pearson").get<double>(), r.pearson(), 0);
  EXPECT_TRUE(classify_metric_names(ClassifyTask{ProblemType::kRegression, 2}).empty());
  EXPECT_EQ(classify_metric_names(multi), (std::vector<std::string>{"accuracy", "f1"}));
  EXPECT_EQ(classify_metrics_text(m, multi), "accuracy 0.500, f1 0.800");
  // Every sum survives the data-parallel pack.
  ClassifyStats both = m;
  both.add(r);
  const ClassifyStats back = ClassifyStats::unpack(both.pack());
  EXPECT_EQ(back.pack(), both.pack());
  EXPECT_EQ(both.examples, 6);
  EXPECT_EQ(both.szy, r.szy);
  test::expect_error([&] { classify_batch_stats({1, 2}, {{-1, {1}}}, multi); }, "a target of 1 values for 2 outputs");
}

TEST(ClassifyMath, StatsCountTheFirstMaximumAndPackRoundTrips) {
  // Example 0: a tie between labels 1 and 2, argmax 1 (torch.argmax's first): correct for label 1 only.
  const std::vector<double> z = {0.0, 2.0, 2.0, /**/ 5.0, -1.0, 0.0, /**/ 0.0, 0.0, 1.0};
  const ClassifyStats a = classify_batch_stats(z, ids({1, 0, 0}), kSingle3);
  EXPECT_EQ(a.examples, 3);
  EXPECT_EQ(a.correct, 2);
  const double l0 = std::log(1 + 2 * std::exp(2.0)) - 2.0;
  const double l1 = 5.0 + std::log(1 + std::exp(-6.0) + std::exp(-5.0)) - 5.0;
  const double l2 = 1.0 + std::log(1 + 2 * std::exp(-1.0)) - 0.0;
  EXPECT_NEAR(a.loss, l0 + l1 + l2, 1e-14);
  EXPECT_NEAR(a.objective(), (l0 + l1 + l2) / 3, 1e-14);
  EXPECT_EQ(classify_batch_stats(z, ids({2, 0, 0}), kSingle3).correct, 1);
  const ClassifyStats b = ClassifyStats::unpack(a.pack());
  EXPECT_EQ(b.examples, a.examples);
  EXPECT_EQ(b.correct, a.correct);
  EXPECT_EQ(b.loss, a.loss);
  test::expect_error([&] { classify_batch_stats(z, ids({1, 0}), kSingle3); }, "9 logits for 2 examples of 3 labels");
  test::expect_error([&] { classify_batch_stats(z, ids({1, 0, 3}), kSingle3); }, "label 3 outside [0, 3)");
}

// Per-label precision, recall, F1, support and the confusion matrix by hand (sklearn's definitions: 0 for an empty
// denominator), multi-label's per label, regression's per output.
TEST(ClassifyMath, LabelReportByHand) {
  // true 0 0 1 2 2 2, predicted (argmax) 0 1 1 2 0 2: label 0 tp 1 fp 1 fn 1; 1 tp 1 fp 1 fn 0; 2 tp 2 fp 0 fn 1
  const std::vector<double> z = {3, 0, 0, /**/ 0, 3, 0, /**/ 0, 3, 0, /**/ 0, 0, 3, /**/ 3, 0, 0, /**/ 0, 0, 3};
  const ClassifyLabelReport r = classify_label_report(z, ids({0, 0, 1, 2, 2, 2}), kSingle3);
  EXPECT_EQ(r.confusion, (std::vector<std::vector<int64_t>>{{1, 1, 0}, {0, 1, 0}, {1, 0, 2}}));
  EXPECT_DOUBLE_EQ(r.precision(0), 0.5);
  EXPECT_DOUBLE_EQ(r.recall(0), 0.5);
  EXPECT_DOUBLE_EQ(r.precision(1), 0.5);
  EXPECT_DOUBLE_EQ(r.recall(1), 1.0);
  EXPECT_DOUBLE_EQ(r.f1(1), 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(r.precision(2), 1.0);
  EXPECT_DOUBLE_EQ(r.recall(2), 2.0 / 3.0);
  EXPECT_EQ(r.support(2), 3);
  EXPECT_DOUBLE_EQ(r.macro_f1(), (0.5 + 2.0 / 3.0 + 0.8) / 3);
  const nlohmann::ordered_json j = classify_report_json(r, kSingle3, {"a", "b", "c"});
  EXPECT_EQ(j.at("per_label").at(2).at("label"), "c");
  EXPECT_EQ(j.at("per_label").at(2).at("support"), 3);
  EXPECT_EQ(j.at("confusion").at(2).at(0), 1);
  const std::string text = classify_report_text(r, kSingle3, {"a", "b", "c"});
  EXPECT_NE(text.find("macro F1 0.656"), std::string::npos) << text;
  // A label never true nor predicted: every ratio 0, as sklearn's zero_division.
  const ClassifyLabelReport none = classify_label_report({3, 0, 0}, ids({0}), kSingle3);
  EXPECT_EQ(none.f1(1), 0.0);
  EXPECT_EQ(none.precision(1), 0.0);

  const ClassifyTask multi{ProblemType::kMultiLabel, 2};
  const ClassifyLabelReport m =
      classify_label_report({1, -1, /**/ 1, 1, /**/ -1, 1}, {{-1, {1, 0}}, {-1, {0, 1}}, {-1, {1, 1}}}, multi);
  EXPECT_EQ(m.tp, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(m.fp, (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(m.fn, (std::vector<int64_t>{1, 0}));
  EXPECT_TRUE(m.confusion.empty());

  const ClassifyTask reg{ProblemType::kRegression, 2};
  const ClassifyLabelReport g =
      classify_label_report({1, 0, /**/ 2, 1, /**/ 3, 5}, {{-1, {1, 1}}, {-1, {2, 0}}, {-1, {4, 2}}}, reg);
  EXPECT_NEAR(g.mse[0], 1.0 / 3.0, 1e-12);
  EXPECT_NEAR(g.mse[1], (1.0 + 1.0 + 9.0) / 3.0, 1e-12);
  EXPECT_NEAR(g.pearson[0], classify_batch_stats({1, 2, 3}, {{-1, {1}}, {-1, {2}}, {-1, {4}}},
                                                 ClassifyTask{ProblemType::kRegression, 1}).pearson(), 1e-15);
  EXPECT_EQ(classify_report_json(g, reg, {"x", "y"}).at("per_output").at(1).at("output"), "y");
  // Spearman's rho: Pearson's r of the ranks, ties at their mean rank (z 1, 2, 2, 4 -> 1, 2.5, 2.5, 4; y -> 1, 3, 2, 4)
  const ClassifyLabelReport ranks = classify_label_report(
      {1, 2, 2, 4}, {{-1, {10}}, {-1, {30}}, {-1, {20}}, {-1, {40}}}, ClassifyTask{ProblemType::kRegression, 1});
  EXPECT_NEAR(ranks.spearman[0], 4.5 / std::sqrt(4.5 * 5.0), 1e-12);
}

// The head of C outputs: scores row-major [sequence, output], and the gradients of every LoRA tensor and the head
// are the loss's directional derivatives, for each problem type.
void expect_model_step_gradients(const ClassifyTask& task, const std::vector<ClassifyTarget>& targets, uint64_t seed) {
  const std::string dir = test::make_tiny_model(test::scratch_dir() + "/m", 32);
  QwenModel m(dir);
  const int64_t C = task.num_labels;
  const LoraAdapter a = test::seq_cls_adapter(m, C, seed);
  const PackedBatch b = PackedBatch::from_sequences({{1, 5, 9, 200, 3}, {1, 5, 9, 17, 0, 0}, {42, 17, 99}});
  LoraStepOptions opt;
  opt.bf16_checkpoints = false;  // the exact fp32 model
  opt.score_rows = reward_pooled_rows(b, 0);
  ClassifyStats stats;
  opt.score_objective = classify_objective(targets, task, 3, &stats);
  const std::vector<float> head_grad = test::expect_score_head_gradients(
      m, a, b, opt,
      [&](const std::vector<double>& scores) {
        EXPECT_EQ(scores.size(), static_cast<size_t>(3 * C));  // [sequence, output]
        return classify_batch_stats(scores, targets, task).loss / 3;
      },
      seed + 8);
  EXPECT_EQ(stats.examples, 3);
  for (int64_t c = 0; c < C; ++c) {  // every output's row of the head gets a gradient
    double row = 0;
    for (int64_t k = 0; k < m.config().hidden_size; ++k) row += std::fabs(head_grad[c * m.config().hidden_size + k]);
    EXPECT_GT(row, 0.0) << problem_type_name(task.type) << " output " << c;
  }
}

TEST(ClassifyModelStep, GradientsMatchFiniteDifferences) { expect_model_step_gradients(kSingle3, ids({2, 0, 1}), 9); }

TEST(ClassifyModelStep, MultiLabelAndRegressionGradientsMatchFiniteDifferences) {
  expect_model_step_gradients(ClassifyTask{ProblemType::kMultiLabel, 3}, {{-1, {1, 0, 1}}, {-1, {0, 0, 0}}, {-1, {0, 1, 0}}},
                              10);
  expect_model_step_gradients(ClassifyTask{ProblemType::kRegression, 1}, {{-1, {0.75f}}, {-1, {-1.5f}}, {-1, {2}}}, 11);
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
  EXPECT_EQ(ds.eval_targets.size(), 1u);
  EXPECT_EQ(names.problem_type, ProblemType::kSingleLabel);
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
  ClassifyDataOptions fraction;  // a number that is no id: a hint at regression
  test::expect_error([&] { load("{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": 0.5}\n", &fraction); },
                     {"d.jsonl:2", "0.5 is not a label id or name", "--problem-type regression"});
  // labels.json round trip (the problem type only when not single-label), and a file that names an id twice or skips
  // one.
  write_label_names(root, {"neg", "pos"}, ProblemType::kSingleLabel);
  ProblemType type = ProblemType::kRegression;
  EXPECT_EQ(read_label_names(root, &type), (std::vector<std::string>{"neg", "pos"}));
  EXPECT_EQ(type, ProblemType::kSingleLabel);
  EXPECT_EQ(read_file(root + "/labels.json").find("problem_type"), std::string::npos);
  write_label_names(root, {"a", "b"}, ProblemType::kMultiLabel);
  EXPECT_EQ(read_label_names(root, &type), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(type, ProblemType::kMultiLabel);
  EXPECT_TRUE(read_label_names(root + "/m").empty());  // no file: none
  write_file_atomic(root + "/labels.json", R"({"id2label": {"0": "a", "2": "b"}})");
  test::expect_error([&] { read_label_names(root); }, "id2label must map each id 0..1 to one name");
}

// Multi-label records (lists of names or ids; inferred from a list) and regression records (a number or a list of
// them; given), their targets, and what each refuses.
TEST(ClassifyData, MultiLabelAndRegressionTargets) {
  const std::string root = test::scratch_dir();
  const std::string model = test::make_tiny_model(root + "/m", 3);
  const Tokenizer tok = Tokenizer::from_dir(model);
  SftDataOptions opt;
  opt.max_len = 64;
  const auto load = [&](const std::string& lines, ClassifyDataOptions* o) {
    write_file_atomic(root + "/d.jsonl", lines);
    return load_classify_dataset(root + "/d.jsonl", tok, opt, o);
  };
  // The target of the example whose text is `text` (the split shuffles the file's order).
  const auto target_of = [&](const SftDataset& d, const std::string& text) {
    for (size_t i = 0; i < d.train.size(); ++i)
      if (tok.decode(d.train[i].tokens, false) == text) return d.train_targets[i].values;
    ADD_FAILURE() << "no text " << text;
    return std::vector<float>{};
  };
  ClassifyDataOptions multi;
  SftDataset ds = load(R"({"text": "a b", "label": ["sad", "angry"]}
{"text": "c", "label": []}
{"text": "d", "label": ["happy"]}
)", &multi);
  EXPECT_EQ(multi.problem_type, ProblemType::kMultiLabel);
  EXPECT_EQ(multi.label_names, (std::vector<std::string>{"angry", "happy", "sad"}));
  ASSERT_EQ(ds.train_targets.size(), 3u);
  EXPECT_EQ(target_of(ds, "a b"), (std::vector<float>{1, 0, 1}));
  EXPECT_EQ(target_of(ds, "c"), (std::vector<float>{0, 0, 0}));
  EXPECT_EQ(target_of(ds, "d"), (std::vector<float>{0, 1, 0}));
  ClassifyDataOptions multi_ids;
  ds = load("{\"text\": \"a\", \"label\": [2]}\n{\"text\": \"b\", \"label\": [0, 2]}\n", &multi_ids);
  EXPECT_EQ(multi_ids.label_names, (std::vector<std::string>{"LABEL_0", "LABEL_1", "LABEL_2"}));
  EXPECT_EQ(target_of(ds, "b"), (std::vector<float>{1, 0, 1}));
  ClassifyDataOptions mixed;  // one list: every label must be a list
  test::expect_error([&] { load("{\"text\": \"a\", \"label\": [\"x\"]}\n{\"text\": \"b\", \"label\": \"x\"}\n", &mixed); },
                     {"d.jsonl:2", "must be the list of the text's labels", "multi_label_classification"});
  ClassifyDataOptions unknown;
  unknown.label_names = {"x", "y"};
  test::expect_error([&] { load("{\"text\": \"a\", \"label\": [\"x\", \"z\"]}\n", &unknown); },
                     {"d.jsonl:1", "label \"z\" is not one of the 2 labels (x, y)"});

  ClassifyDataOptions reg;
  reg.problem_type = ProblemType::kRegression;
  ds = load("{\"text\": \"a\", \"label\": 0.5}\n{\"text\": \"b\", \"label\": -3}\n", &reg);
  EXPECT_EQ(reg.label_names, (std::vector<std::string>{"LABEL_0"}));
  EXPECT_EQ(target_of(ds, "a"), (std::vector<float>{0.5f}));
  EXPECT_EQ(target_of(ds, "b"), (std::vector<float>{-3.0f}));
  ClassifyDataOptions reg2;
  reg2.problem_type = ProblemType::kRegression;
  reg2.label_names = {"valence", "arousal"};
  ds = load("{\"text\": \"a\", \"label\": [0.5, 1]}\n", &reg2);
  EXPECT_EQ(ds.train_targets[0].values, (std::vector<float>{0.5f, 1.0f}));
  ClassifyDataOptions short_list = reg2;
  short_list.label_names = {"valence", "arousal"};
  test::expect_error([&] { load("{\"text\": \"a\", \"label\": [0.5, 1]}\n{\"text\": \"b\", \"label\": 2}\n", &short_list); },
                     {"d.jsonl:2", "1 value(s) for a regression head of 2 output(s) (valence, arousal)"});
  ClassifyDataOptions reg_name;
  reg_name.problem_type = ProblemType::kRegression;
  test::expect_error([&] { load("{\"text\": \"a\", \"label\": \"high\"}\n", &reg_name); },
                     {"d.jsonl:1", "must be a number or a list of numbers for regression"});
  // --skip-bad skips a record of the wrong kind when the type is given
  SftDataOptions skip = opt;
  skip.skip_bad = true;
  ClassifyDataOptions reg_skip;
  reg_skip.problem_type = ProblemType::kRegression;
  write_file_atomic(root + "/d.jsonl", "{\"text\": \"a\", \"label\": \"high\"}\n{\"text\": \"b\", \"label\": 2.5}\n");
  ds = load_classify_dataset(root + "/d.jsonl", tok, skip, &reg_skip);
  EXPECT_EQ(ds.train_targets.size(), 1u);
  EXPECT_EQ(ds.stats.skipped, 1);
}

// Sentence pairs (--text-pair-field): the two texts' ids joined (Qwen's tokenizer adds no special token), cut longest
// first as the tokenizers library does (the shorter kept whole while the longer keeps at least as many, else both to
// half, the longer the odd one); a record without its second text refused.
TEST(ClassifyData, SentencePairs) {
  const std::string root = test::scratch_dir();
  const std::string model = test::make_tiny_model(root + "/m", 3);
  const Tokenizer tok = Tokenizer::from_dir(model);
  const std::string a = "the cat sat on the mat", b = "a dog";
  const std::vector<int32_t> ia = tok.encode(a, false), ib = tok.encode(b, false);
  ASSERT_GT(ia.size(), ib.size() + 2);
  std::vector<int32_t> joined = ia;
  joined.insert(joined.end(), ib.begin(), ib.end());
  EXPECT_EQ(tok.encode_pair(a, b), joined);
  // room for the short text whole and as much of the long one: the long one gets the rest
  const int64_t n = 2 * static_cast<int64_t>(ib.size()) + 3;
  std::vector<int32_t> cut(ia.begin(), ia.begin() + static_cast<std::ptrdiff_t>(ib.size()) + 3);
  cut.insert(cut.end(), ib.begin(), ib.end());
  EXPECT_EQ(tok.encode_pair(a, b, n), cut);
  // less room: both to half, the longer (the first here) the odd one
  const std::vector<int32_t> halves = {ia[0], ia[1], ib[0]};
  EXPECT_EQ(tok.encode_pair(a, b, 3), halves);
  test::expect_error([&] { tok.encode_pair(a, b, 1); }, "special tokens leave no room for both texts");

  SftDataOptions opt;
  opt.max_len = n;
  write_file_atomic(root + "/d.jsonl", "{\"text\": \"" + a + "\", \"second\": \"" + b + "\", \"label\": 1}\n"
                                       "{\"text\": \"" + b + "\", \"second\": \"" + b + "\", \"label\": 0}\n");
  ClassifyDataOptions pairs;
  pairs.text_pair_field = "second";
  const SftDataset ds = load_classify_dataset(root + "/d.jsonl", tok, opt, &pairs);
  bool seen_cut = false;
  for (const SftExample& ex : ds.train) seen_cut = seen_cut || ex.tokens == cut;
  EXPECT_TRUE(seen_cut);
  EXPECT_EQ(ds.stats.truncated, 1);
  write_file_atomic(root + "/d.jsonl", "{\"text\": \"x\", \"label\": 1}\n");
  test::expect_error([&] { load_classify_dataset(root + "/d.jsonl", tok, opt, &pairs); },
                     {"d.jsonl:1", "no \"second\" (the pair's second text, --text-pair-field)"});
}

// Texts without labels (eval --predictions): read when the names and the problem type are known, each with its record
// and its place in the file; a file where only some records have a label is refused at the first without one.
TEST(ClassifyData, UnlabelledTextsToPredict) {
  const std::string root = test::scratch_dir();
  const std::string model = test::make_tiny_model(root + "/m", 3);
  const Tokenizer tok = Tokenizer::from_dir(model);
  SftDataOptions opt;
  opt.max_len = 64;
  write_file_atomic(root + "/d.jsonl", "{\"text\": \"a b\", \"id\": 7}\n{\"text\": \"c\"}\n{\"text\": \"d e f\"}\n");
  ClassifyDataOptions o;
  o.unlabelled_ok = true;
  test::expect_error([&] { load_classify_dataset(root + "/d.jsonl", tok, opt, &o); },
                     {"d.jsonl: no record has a \"label\"", "--labels and --problem-type"});
  o.label_names = {"neg", "pos"};
  o.problem_type = ProblemType::kSingleLabel;
  const SftDataset ds = load_classify_dataset(root + "/d.jsonl", tok, opt, &o);
  EXPECT_TRUE(ds.unlabelled);
  ASSERT_EQ(ds.train.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {  // each record beside its place in the file
    const int64_t k = ds.train_index[i];
    EXPECT_EQ(tok.decode(ds.train[i].tokens, false), (std::vector<std::string>{"a b", "c", "d e f"}[k]));
    if (k == 0) {
      EXPECT_EQ(ds.train_records[i], "{\"text\":\"a b\",\"id\":7}");
    }
  }
  write_file_atomic(root + "/d.jsonl", "{\"text\": \"a\", \"label\": \"pos\"}\n{\"text\": \"c\"}\n");
  test::expect_error([&] { load_classify_dataset(root + "/d.jsonl", tok, opt, &o); },
                     {"d.jsonl:2: no \"label\", where other records have one"});
  ClassifyDataOptions strict;  // without unlabelled_ok, as train reads
  test::expect_error([&] { load_classify_dataset(root + "/d.jsonl", tok, opt, &strict); },
                     {"d.jsonl:2", "no \"label\" (the label; --label-field names it)"});
}

// What each head predicts from its logits.
TEST(ClassifyMath, PredictionsByHand) {
  const double z[3] = {0.5, 2.0, -1.0};
  const nlohmann::ordered_json single = classify_prediction(z, kSingle3, {"a", "b", "c"});
  EXPECT_EQ(single.at("predicted"), "b");
  const double e = std::exp(0.5) + std::exp(2.0) + std::exp(-1.0);
  EXPECT_NEAR(single.at("probabilities").at(1).get<double>(), std::exp(2.0) / e, 1e-15);
  EXPECT_EQ(single.at("scores").at(2).get<double>(), -1.0);
  const nlohmann::ordered_json multi = classify_prediction(z, ClassifyTask{ProblemType::kMultiLabel, 3}, {"a", "b", "c"});
  EXPECT_EQ(multi.at("predicted"), (nlohmann::ordered_json{"a", "b"}));
  EXPECT_NEAR(multi.at("probabilities").at(2).get<double>(), 1 / (1 + std::exp(1.0)), 1e-15);
  const nlohmann::ordered_json one = classify_prediction(z, ClassifyTask{ProblemType::kRegression, 1}, {"LABEL_0"});
  EXPECT_EQ(one.at("predicted").get<double>(), 0.5);
  EXPECT_FALSE(one.contains("probabilities"));
  const nlohmann::ordered_json two = classify_prediction(z, ClassifyTask{ProblemType::kRegression, 2}, {"x", "y"});
  EXPECT_EQ(two.at("predicted"), (nlohmann::ordered_json{0.5, 2.0}));
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

// A regression run (the data's numbers, --problem-type given) and a multi-label run (lists of labels, inferred) log
// their own metrics, keep their problem type in labels.json, and refuse a best-model metric they do not report.
TEST(ClassifyTrain, RegressionAndMultiLabelRunsLogTheirMetrics) {
  const std::string root = test::scratch_dir();
  const std::string model = test::make_tiny_model(root + "/m", 2);
  const std::string text = read_file(test::make_text_data(root + "/t.jsonl", 24));
  std::string scored, tagged;  // a score per sentence (its length), and its animals
  size_t at = 0;
  while (at < text.size()) {
    const size_t end = text.find('\n', at);
    const std::string line = text.substr(at, end - at);
    at = end + 1;
    const std::string head = line.substr(0, line.size() - 1);
    scored += head + ", \"label\": " + std::to_string(static_cast<double>(line.size()) / 40.0) + "}\n";
    std::string tags;
    for (const char* animal : {"cat", "dog"})
      if (line.find(animal) != std::string::npos) tags += std::string(tags.empty() ? "" : ", ") + "\"" + animal + "\"";
    tagged += head + ", \"label\": [" + tags + "]}\n";
  }
  write_file_atomic(root + "/scored.jsonl", scored);
  write_file_atomic(root + "/tagged.jsonl", tagged);
  const auto records = [](const std::string& path) {
    std::vector<nlohmann::json> out;
    const std::string all = read_file(path);
    size_t p = 0;
    while (p < all.size()) {
      const size_t e = all.find('\n', p);
      out.push_back(nlohmann::json::parse(all.substr(p, e - p)));
      p = e + 1;
    }
    return out;
  };
  for (const bool regression : {true, false}) {
    TrainOptions o = test::small_lora_options(model, root + (regression ? "/scored.jsonl" : "/tagged.jsonl"),
                                              root + (regression ? "/reg" : "/multi"), 4);
    o.classify = true;
    o.batch_mode = SftBatchMode::kPadding;
    o.data.max_len = 0;
    o.eval_every = 2;
    if (regression) o.classify_data.problem_type = ProblemType::kRegression;
    train_lora(o);
    ProblemType type;
    const std::vector<std::string> names = read_label_names(o.out_dir, &type);
    EXPECT_EQ(type, regression ? ProblemType::kRegression : ProblemType::kMultiLabel);
    const std::vector<std::string> expected_names =
        regression ? std::vector<std::string>{"LABEL_0"} : std::vector<std::string>{"cat", "dog"};
    EXPECT_EQ(names, expected_names);
    int steps = 0, evals = 0;
    for (const nlohmann::json& r : records(o.out_dir + "/metrics.jsonl")) {
      if (r.contains("loss")) {
        ++steps;
        EXPECT_EQ(r.contains("pearson"), regression) << r.dump();
        EXPECT_EQ(r.contains("f1") && r.contains("accuracy"), !regression) << r.dump();
      }
      if (r.contains("eval_loss")) {
        ++evals;
        EXPECT_EQ(r.contains("eval_pearson"), regression) << r.dump();
        EXPECT_EQ(r.contains("eval_f1"), !regression) << r.dump();
      }
    }
    EXPECT_EQ(steps, 4);
    EXPECT_GE(evals, 2);
    o.out_dir = root + "/refused";
    o.best.metric = regression ? "accuracy" : "pearson";
    o.best.patience = 5;  // (judged by the metric)
    test::expect_error([&] { train_lora(o); }, {"--metric-for-best-model eval_" + o.best.metric,
                                               regression ? "reports eval_loss, eval_pearson"
                                                          : "reports eval_loss, eval_accuracy, eval_f1"});
  }
}

}  // namespace
}  // namespace qwenq
