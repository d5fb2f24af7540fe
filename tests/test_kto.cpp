// Unpaired preference training (trainer/kto.h): each loss's derivative against central differences of its own
// formula and at points with known values; the reference point z; the labelled formats (TRL's, LLaMA-Factory's,
// pairs unpaired) read, split and given their KL sequences; a micro-batch's examples and KL sequences apart; and
// `train --objective kto` end to end on a tiny model (the first step's loss is 1/2 and its rewards 0, the margin
// rises, a resumed run is bit-identical, refusals). The gradients against PyTorch: tests/oracle/test_kto_oracle.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "kernels/loss.h"
#include "tests/support/test_models.h"
#include "tests/support/sft_fixtures.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_tokenizers.h"
#include "tests/support/test_training.h"
#include "trainer/dpo.h"
#include "trainer/kto.h"
#include "trainer/train_loop.h"

namespace qwenq {
namespace {

using test::error_of;

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// ---- the losses -------------------------------------------------------------------------------------------------

// Central differences of ℓ in double: step 1e-4 on sums of order 10 (truncation ~1e-8·ℓ''', rounding ~1e-12/1e-4).
constexpr double kFdStep = 1e-4, kFdTol = 1e-7;

TEST(KtoLoss, DerivativesAreTheFormulasCentralDifferences) {
  struct Point {
    double S, R, z;
  };
  const std::vector<Point> points = {{12.0, 15.5, 0.0}, {30.2, 18.1, 2.5}, {5.5, 5.4, 0.3}, {40.0, 10.0, 7.0}};
  std::vector<KtoOptions> opts(4);
  opts[1].beta = 0.5;
  opts[2].loss = KtoLoss::kApoZeroUnpaired;
  opts[3].loss = KtoLoss::kApoZeroUnpaired;
  opts[3].beta = 1.5;
  int checked = 0;
  for (const KtoOptions& o : opts) {
    for (const Point& p : points) {
      for (bool good : {true, false}) {
        const KtoTerms t = kto_example_terms(o, p.S, p.R, p.z, good);
        const double fd = (kto_example_terms(o, p.S + kFdStep, p.R, p.z, good).loss -
                           kto_example_terms(o, p.S - kFdStep, p.R, p.z, good).loss) / (2 * kFdStep);
        EXPECT_NEAR(t.dS, fd, kFdTol) << kto_loss_name(o.loss) << " beta " << o.beta << " S " << p.S << " good " << good;
        // Raising the log-probability (lowering S) of a desirable completion lowers its loss; of an undesirable one,
        // raises it.
        EXPECT_EQ(t.dS > 0, good);
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 32);
}

TEST(KtoLoss, KnownValues) {
  KtoOptions o;  // kto, beta 0.1
  // The policy is the reference and z = 0: every loss 1 − σ(0) = 1/2, slope ±β/4, reward 0.
  for (bool good : {true, false}) {
    const KtoTerms t = kto_example_terms(o, 10, 10, 0, good);
    EXPECT_EQ(t.loss, 0.5);
    EXPECT_DOUBLE_EQ(t.dS, good ? 0.025 : -0.025);
    EXPECT_EQ(t.reward, 0.0);
  }
  // z shifts the desirable side's argument down and the undesirable side's up: r = z is the break-even point.
  EXPECT_DOUBLE_EQ(kto_example_terms(o, 8, 10, 2, true).loss, 0.5);  // r = 2 = z
  EXPECT_DOUBLE_EQ(kto_example_terms(o, 8, 10, 2, false).loss, 0.5);
  EXPECT_DOUBLE_EQ(kto_example_terms(o, 8, 10, 2, true).reward, 0.2);
  // APO-zero has no z: the same sums give 1 − σ(βr) and σ(βr).
  KtoOptions apo;
  apo.loss = KtoLoss::kApoZeroUnpaired;
  EXPECT_DOUBLE_EQ(kto_example_terms(apo, 8, 10, 2, true).loss, 1 - 1 / (1 + std::exp(-0.2)));
  EXPECT_DOUBLE_EQ(kto_example_terms(apo, 8, 10, 2, false).loss, 1 / (1 + std::exp(-0.2)));
  // Far from the reference: no overflow, the loss saturates at 0 or 1 and the slope vanishes.
  EXPECT_EQ(kto_example_terms(o, 0, 1e5, 0, true).loss, 0.0);
  EXPECT_EQ(kto_example_terms(o, 0, 1e5, 0, false).loss, 1.0);
  EXPECT_EQ(kto_example_terms(o, 0, 1e5, 0, false).dS, 0.0);
  // z: the mean policy-over-reference log-ratio of the KL sequences (R' − S'), clamped at 0.
  EXPECT_DOUBLE_EQ(kto_reference_point({10, 20}, {11, 22}), 1.5);
  EXPECT_EQ(kto_reference_point({10, 20}, {9, 19}), 0.0);
  EXPECT_EQ(kto_reference_point({}, {}), 0.0);
  // A batch: the weighted mean loss, TRL's margin of the two sides' mean rewards, the statistics' round trip.
  o.desirable_weight = 2.0;
  o.undesirable_weight = 0.5;
  const KtoStats s = kto_batch_stats(o, {10, 10, 10}, {10, 10, 10}, {1, 1, 0}, 0.0);
  EXPECT_EQ(s.desirable, 2);
  EXPECT_EQ(s.undesirable, 1);
  EXPECT_DOUBLE_EQ(s.objective(), (2.0 * 0.5 * 2 + 0.5 * 0.5) / 3);
  EXPECT_EQ(s.margin(), 0.0);
  EXPECT_DOUBLE_EQ(s.logp_d, -20.0);
  const KtoStats back = KtoStats::unpack(s.pack());
  EXPECT_EQ(back.pack(), s.pack());
  // The objective's weights are w·dℓ/dS over the step's examples.
  KtoStats got;
  const auto f = kto_objective(o, {10, 10, 10}, {1, 1, 0}, 0.0, /*step_examples=*/6, &got);
  const std::vector<double> d = f({10, 10, 10});
  EXPECT_DOUBLE_EQ(d[0], 2.0 * 0.025 / 6);
  EXPECT_DOUBLE_EQ(d[2], -0.5 * 0.025 / 6);
  EXPECT_EQ(got.examples(), 3);
  EXPECT_EQ(got.batches, 1);
}

TEST(KtoLoss, RefusesWhatItCannotCompute) {
  KtoOptions o;
  o.beta = 0;
  EXPECT_TRUE(contains(error_of([&] { check_kto_options(o); }), "(KTO's beta) must be positive"));
  o = KtoOptions{};
  o.desirable_weight = 0;
  EXPECT_TRUE(contains(error_of([&] { check_kto_options(o); }), "--kto-desirable-weight must be positive"));
  o = KtoOptions{};
  o.undesirable_weight = NAN;
  EXPECT_TRUE(contains(error_of([&] { check_kto_options(o); }), "--kto-undesirable-weight must be positive"));
  EXPECT_TRUE(contains(error_of([&] { parse_kto_loss("sigmoid"); }), "--kto-loss must be kto or apo_zero_unpaired"));
  EXPECT_TRUE(contains(error_of([&] { kto_objective(KtoOptions{}, {1}, {1}, NAN, 1, nullptr); }), "not a finite KL"));
  EXPECT_TRUE(contains(error_of([&] { kto_objective(KtoOptions{}, {1, 2}, {1}, 0, 1, nullptr)({1, 2}); }),
                       "2 policy sums, 2 reference sums and 1 labels"));
  EXPECT_TRUE(contains(error_of([&] { kto_reference_point({1}, {}); }), "1 policy and 0 reference KL sums"));
}

// ---- data ---------------------------------------------------------------------------------------------------------

using test::kPlainChatml;
using test::masked_text;
using test::no_split;
using test::write_in_dir;

TEST(KtoData, FormatsBecomeLabelledExamples) {
  const std::string root = test::scratch_dir();
  const Tokenizer tok = test::byte_tokenizer(root + "/tok", kPlainChatml);
  // One record per file: its examples (units [example, KL sequence]) and labels.
  const auto load = [&](const std::string& line) { return load_kto_dataset(write_in_dir(root, "k.jsonl", line + "\n"), tok, no_split(), 4); };
  const SftDataset s = load(R"({"prompt": "The sky is", "completion": " blue.", "label": true})");
  ASSERT_EQ(s.train.size(), 2u);
  EXPECT_EQ(s.train_labels, std::vector<uint8_t>{1});
  EXPECT_EQ(s.stats.records, 1);
  EXPECT_EQ(s.stats.format, SftFormat::kPreference);
  EXPECT_EQ(tok.decode(s.train[0].tokens), "The sky is blue.<|im_end|>");
  EXPECT_EQ(masked_text(s.train[0], tok), " blue.<|im_end|>");
  EXPECT_EQ(s.train[1].tokens, s.train[0].tokens);  // alone: its own KL partner
  // Conversational (TRL), LLaMA-Factory's messages with "kto_tag" and ShareGPT's conversations: the same tokens.
  const SftDataset c = load(R"({"prompt": [{"role": "user", "content": "Sky?"}], "completion": [{"role": "assistant", "content": "Green."}], "label": false})");
  EXPECT_EQ(c.train_labels, std::vector<uint8_t>{0});
  EXPECT_EQ(tok.decode(c.train[0].tokens), "<|im_start|>user\nSky?<|im_end|>\n<|im_start|>assistant\nGreen.<|im_end|>\n");
  EXPECT_EQ(masked_text(c.train[0], tok), "Green.<|im_end|>");
  for (const char* line :
       {R"({"messages": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Green."}], "kto_tag": false})",
        R"({"conversations": [{"from": "human", "value": "Sky?"}, {"from": "gpt", "value": "Green."}], "label": false})"}) {
    SCOPED_TRACE(line);
    const SftDataset m = load(line);
    EXPECT_EQ(m.train[0].tokens, c.train[0].tokens);
    EXPECT_EQ(m.train[0].loss_mask, c.train[0].loss_mask);
    EXPECT_EQ(m.train_labels, std::vector<uint8_t>{0});
  }
  // LLaMA-Factory's Alpaca layout: SFT's Alpaca rendering.
  const SftDataset a = load(R"({"instruction": "Sky?", "input": "", "output": "Blue.", "label": true})");
  const SftDataset sft = load_sft_dataset(write_in_dir(root, "s.jsonl", R"({"instruction": "Sky?", "input": "", "output": "Blue."})" "\n"), tok, no_split());
  EXPECT_EQ(a.train[0].tokens, sft.train[0].tokens);
  EXPECT_EQ(a.train[0].loss_mask, sft.train[0].loss_mask);
  // A preference pair is two examples: the chosen desirable, the rejected not (TRL's unpair_preference_dataset).
  const SftDataset p = load(R"({"prompt": "The sky is", "chosen": " blue.", "rejected": " green."})");
  EXPECT_EQ(p.stats.records, 2);
  ASSERT_EQ(p.train.size(), 4u);
  int64_t desirable = 0;
  for (size_t u = 0; u < 2; ++u) {
    desirable += p.train_labels[u];
    EXPECT_EQ(masked_text(p.train[2 * u], tok), p.train_labels[u] ? " blue.<|im_end|>" : " green.<|im_end|>");
  }
  EXPECT_EQ(desirable, 1);
}

// Each example's KL sequence is its own prompt with the completion of the example before it in its block of
// kl_block (the first takes the block's last), a last block of one joining the block before it; at the token level.
TEST(KtoData, KlSequencesPairEachPromptWithAnotherCompletion) {
  const std::string root = test::scratch_dir();
  const Tokenizer tok = test::byte_tokenizer(root + "/tok", "");
  std::string text;
  for (int i = 0; i < 5; ++i)
    text += "{\"prompt\": \"p" + std::to_string(i) + ":\", \"completion\": \" c" + std::to_string(i) + "\", \"label\": " +
            (i % 2 ? "false" : "true") + "}\n";
  const SftDataset ds = load_kto_dataset(write_in_dir(root, "k.jsonl", text), tok, no_split(), /*kl_block=*/2);
  ASSERT_EQ(ds.train.size(), 10u);
  // The split shuffles (seed 0) even without a held-out share: read each unit's example back to its record.
  std::vector<int> record(5);
  for (size_t u = 0; u < 5; ++u) {
    const std::string s = tok.decode(ds.train[2 * u].tokens);
    record[u] = s[1] - '0';
    EXPECT_EQ(ds.train_labels[u], record[u] % 2 ? 0 : 1);
  }
  // Blocks of the split's order: [0, 1], then [2, 3, 4] (the last block of one joined it).
  const int partner[5] = {1, 0, 4, 2, 3};
  for (size_t u = 0; u < 5; ++u) {
    SCOPED_TRACE(u);
    const SftExample& kl = ds.train[2 * u + 1];
    const std::string want = "p" + std::to_string(record[u]) + ": c" + std::to_string(record[partner[u]]) + "<|im_end|>";
    EXPECT_EQ(tok.decode(kl.tokens), want);
    EXPECT_EQ(masked_text(kl, tok), " c" + std::to_string(record[partner[u]]) + "<|im_end|>");
    EXPECT_EQ(kl.tokens, kto_kl_example(ds.train[2 * u], ds.train[2 * partner[u]], 0).tokens);
  }
  // Cut to max_len, keeping the first tokens.
  const SftExample cut = kto_kl_example(ds.train[0], ds.train[2], 5);
  EXPECT_EQ(cut.tokens.size(), 5u);
  EXPECT_EQ(cut.loss_mask[0], 0);
}

TEST(KtoData, MalformedRecordsAreNamed) {
  const std::string root = test::scratch_dir();
  const Tokenizer tok = test::byte_tokenizer(root + "/tok", kPlainChatml);
  const std::string good = R"({"prompt": "a", "completion": " b", "label": true})";
  const auto err = [&](const std::string& bad) {
    return error_of([&] { load_kto_dataset(write_in_dir(root, "k.jsonl", good + "\n" + bad + "\n"), tok, no_split(), 2); });
  };
  EXPECT_TRUE(contains(err(R"({"prompt": "a", "completion": " b", "label": "yes"})"), "k.jsonl:2: \"label\" must be true or false"));
  EXPECT_TRUE(contains(err(R"({"prompt": "a", "completion": " b"})"), "k.jsonl:2: expected a \"label\""));
  EXPECT_TRUE(contains(err(R"({"prompt": "a", "label": true})"), "expected both \"prompt\" and \"completion\""));
  EXPECT_TRUE(contains(err(R"({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "label": true})"),
                       "last message must be the assistant's"));
  EXPECT_TRUE(contains(err(R"({"text": "a", "label": true})"), "expected {\"prompt\", \"completion\", \"label\"}"));
  // --skip-bad counts them instead.
  SftDataOptions skip = no_split();
  skip.skip_bad = true;
  const SftDataset ds = load_kto_dataset(write_in_dir(root, "k.jsonl", good + "\n{\"label\": 3}\n" + good + "\n"), tok, skip, 2);
  EXPECT_EQ(ds.stats.skipped, 1);
  EXPECT_EQ(ds.stats.records, 2);
  // SFT and DPO refuse labelled records, naming the objective that reads them.
  const std::string path = write_in_dir(root, "k.jsonl", good + "\n");
  EXPECT_TRUE(contains(error_of([&] { load_sft_dataset(path, tok, no_split()); }), "train on it with --objective kto"));
  EXPECT_TRUE(contains(error_of([&] { load_preference_dataset(path, tok, no_split()); }), "train on it with --objective kto"));
  SftDataOptions train_on_prompt = no_split();
  train_on_prompt.templ.train_on_prompt = true;
  EXPECT_TRUE(contains(error_of([&] { load_kto_dataset(path, tok, train_on_prompt, 2); }), "--train-on-prompt"));
}

// --max-prompt-len (TRL's max_prompt_length): a long prompt keeps its last tokens, both examples of a pair alike, and a
// pair whose prompt alone would fill --max-len is kept with its completions; a leading BOS stays.
TEST(PreferencePrompts, ALongPromptKeepsItsEnd) {
  const std::string root = test::scratch_dir();
  const Tokenizer tok = test::byte_tokenizer(root + "/tok", "");
  const std::string line = R"({"prompt": "0123456789abcdef:", "chosen": " yes", "rejected": " no"})";
  const std::string path = write_in_dir(root, "p.jsonl", line + "\n" + R"({"prompt": "x:", "chosen": " yes", "rejected": " no"})" "\n");
  SftDataOptions d = no_split();
  d.max_len = 12;  // the first pair's 17-byte prompt fills it: dropped without a prompt limit
  EXPECT_EQ(load_preference_dataset(path, tok, d).stats.dropped_no_loss, 1);
  d.templ.max_prompt_len = 5;
  const SftDataset ds = load_preference_dataset(path, tok, d);
  EXPECT_EQ(ds.stats.records, 2);
  EXPECT_EQ(ds.stats.prompts_cut, 1);  // the pair once
  EXPECT_EQ(ds.stats.prompt_cut_tokens, 12);
  EXPECT_TRUE(contains(ds.stats.summary(), "1 prompts cut to their end by 12 tokens"));
  bool seen = false;
  for (size_t i = 0; i < ds.train.size(); i += 2) {
    if (tok.decode(ds.train[i].tokens).rfind("cdef:", 0) != 0) continue;
    seen = true;
    EXPECT_EQ(tok.decode(ds.train[i].tokens), "cdef: yes<|im_end|>");
    EXPECT_EQ(tok.decode(ds.train[i + 1].tokens), "cdef: no<|im_end|>");
    EXPECT_EQ(masked_text(ds.train[i], tok), " yes<|im_end|>");
  }
  EXPECT_TRUE(seen);
  // KTO's examples the same way, and their KL sequences are made from the cut prompts.
  const SftDataset k = load_kto_dataset(path, tok, d, 2);
  EXPECT_EQ(k.stats.prompts_cut, 2);  // the examples of the first pair, each
  for (const SftExample& ex : k.train) EXPECT_LE(ex.tokens.size(), 12u);
  // A BOS stays in front (stories260K's tokenizer adds one).
  if (test::shared_data_dir().empty()) GTEST_SKIP() << "../shared absent: the BOS case needs stories260K's tokenizer";
  const Tokenizer sp = Tokenizer::from_llama2c(test::shared_data_dir() + "/stories260K/tok512.bin");
  SftRecord rec;
  rec.format = SftFormat::kPromptCompletion;
  rec.prompt = "Once upon a time there was a little girl named Lily who";
  rec.completion = " liked the park.";
  SftTemplateOptions templ;
  SftDataStats st;
  SftExample full, cut;
  ASSERT_TRUE(prepare_sft_example(rec, sp, templ, 0, &full, &st));
  templ.max_prompt_len = 3;
  ASSERT_TRUE(prepare_sft_example(rec, sp, templ, 0, &cut, &st));
  ASSERT_EQ(full.tokens[0], sp.bos_id());
  size_t f = 0;
  while (!full.loss_mask[f]) ++f;
  ASSERT_GT(f, 4u);
  EXPECT_EQ(cut.tokens.size(), full.tokens.size() - (f - 4));
  EXPECT_EQ(cut.tokens[0], sp.bos_id());
  EXPECT_TRUE(std::equal(cut.tokens.begin() + 1, cut.tokens.end(), full.tokens.begin() + (f - 3)));
  EXPECT_TRUE(std::equal(cut.loss_mask.begin() + 1, cut.loss_mask.end(), full.loss_mask.begin() + (f - 3)));
}

TEST(KtoData, ABatchSplitsIntoExamplesAndKlSequences) {
  const std::vector<std::vector<int32_t>> seqs = {{1, 2, 3}, {4, 5}, {6, 7, 8, 9}, {10, 11}};
  SftBatch b;
  b.packed = PackedBatch::from_sequences(seqs);
  b.targets = next_token_targets(b.packed);
  b.targets[1] = kIgnoreIndex;  // one uncounted target in the first example
  b.cu_rows = b.packed.cu_seqlens;
  b.num_examples = 4;
  b.epoch = 3;
  b.first_index = 6;
  const SftBatch ex = select_batch_sequences(b, 2, 0), kl = select_batch_sequences(b, 2, 1);
  EXPECT_EQ(ex.packed.tokens, (std::vector<int32_t>{1, 2, 3, 6, 7, 8, 9}));
  EXPECT_EQ(ex.packed.positions, (std::vector<int32_t>{0, 1, 2, 0, 1, 2, 3}));
  EXPECT_EQ(ex.packed.cu_seqlens, (std::vector<int32_t>{0, 3, 7}));
  EXPECT_EQ(ex.targets, (std::vector<int32_t>{2, kIgnoreIndex, kIgnoreIndex, 7, 8, 9, kIgnoreIndex}));
  EXPECT_EQ(ex.num_targets, 4);
  EXPECT_EQ(ex.num_examples, 2);
  EXPECT_EQ(ex.padded_len, 4);
  EXPECT_EQ(ex.epoch, 3);
  EXPECT_EQ(kl.packed.tokens, (std::vector<int32_t>{4, 5, 10, 11}));
  EXPECT_EQ(kl.cu_rows, (std::vector<int32_t>{0, 2, 4}));
  SftBatch packed = b;
  packed.cu_rows = {0, 11};  // packing: several sequences a row
  EXPECT_TRUE(contains(error_of([&] { select_batch_sequences(packed, 2, 0); }), "padding mode: one each"));
}

// ---- training end to end ------------------------------------------------------------------------------------------

// n examples "<name> is" -> " kind." (desirable) or " mean." (undesirable), alternating, over 6 names.
std::string make_kto_data(const std::string& path, int n) {
  static const char* kNames[] = {"Ann", "Bob", "Cid", "Dee", "Eve", "Fay"};
  Rng rng(13);
  std::string text;
  for (int i = 0; i < n; ++i) {
    const bool good = i % 2 == 0;
    text += std::string("{\"prompt\": \"") + kNames[rng.below(6)] + " is\", \"completion\": \"" +
            (good ? " kind." : " mean.") + "\", \"label\": " + (good ? "true" : "false") + "}\n";
  }
  write_file_atomic(path, text);
  return path;
}

// The last record of a metrics file that has `key`.
nlohmann::json last_record_with(const std::string& metrics, const std::string& key) {
  nlohmann::json last;
  std::istringstream in(read_file(metrics));
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains(key)) last = j;
  }
  return last;
}

TrainOptions kto_options(const std::string& model, const std::string& data, const std::string& out, int64_t steps) {
  TrainOptions o = test::small_lora_options(model, data, out, steps);
  o.kto = true;
  o.batch_mode = SftBatchMode::kPadding;
  o.kto_options.beta = 0.5;
  o.batch_size = 4;
  o.lr = 1e-2;
  return o;
}

TEST(KtoTrain, LearnsFromAStartAtTheReference) {
  const std::string root = test::scratch_dir();
  const std::string model = test::make_tiny_model(root + "/m", /*seed=*/2);
  const std::string data = make_kto_data(root + "/k.jsonl", 80);
  const TrainOptions o = kto_options(model, data, root + "/run", 20);
  const TrainReport r = train_lora(o);
  const std::string metrics = o.out_dir + "/metrics.jsonl";
  const std::vector<double> loss = test::step_metric(metrics, "loss"), margin = test::step_metric(metrics, "rewards_margin");
  ASSERT_EQ(loss.size(), 20u);
  // Step 1 runs the reference itself (B = 0): r = 0 and z = 0 up to the batches' fp32 summation orders.
  EXPECT_NEAR(loss[0], 0.5, 1e-5);
  EXPECT_NEAR(margin[0], 0.0, 1e-5);
  EXPECT_NEAR(test::step_metric(metrics, "kl")[0], 0.0, 1e-5);
  EXPECT_LT(loss.back(), 0.2);
  EXPECT_GT(margin.back(), 2.0);
  const std::vector<double> d = test::step_metric(metrics, "desirable"), u = test::step_metric(metrics, "undesirable");
  EXPECT_EQ(d[0] + u[0], 4.0);  // batch_size examples
  EXPECT_NEAR(r.first_eval_loss, 0.5, 1e-5);
  EXPECT_LT(r.eval_loss, 0.2);
  const nlohmann::json last = last_record_with(metrics, "eval_loss");
  EXPECT_EQ(last["eval_examples"], 8);
  EXPECT_GT(last["eval_rewards_margin"].get<double>(), 2.0);
  EXPECT_TRUE(last.contains("eval_kl"));
  EXPECT_TRUE(file_exists(o.out_dir + "/dpo_reference.json"));
  EXPECT_TRUE(file_exists(o.out_dir + "/adapter_model.safetensors"));
}

TEST(KtoTrain, ResumeIsBitExact) {
  const std::string root = test::scratch_dir();
  const std::string model = test::make_tiny_model(root + "/m", /*seed=*/2);
  const std::string data = make_kto_data(root + "/k.jsonl", 40);
  TrainOptions full = kto_options(model, data, root + "/full", 8);
  full.save_every = 3;
  full.lora.dropout = 0.1;
  full.grad_accum = 2;
  full.kto_options.undesirable_weight = 1.33;
  train_lora(full);
  EXPECT_EQ(test::train_interrupted(full, root + "/part", 5).start_step, 3);  // the newest checkpoint is step 3
  test::expect_same_resumed_run(full.out_dir, root + "/part", {"loss", "kl", "rewards_margin", "grad_norm"});
  TrainOptions other = full;
  other.out_dir = root + "/part";
  other.resume = true;
  other.kto_options.undesirable_weight = 1.0;
  EXPECT_TRUE(contains(error_of([&] { train_lora(other); }),
                       "\"kto_undesirable_weight\" (--kto-undesirable-weight): saved 1.33, now 1.0"));
}

TEST(KtoTrain, RefusesWhatItCannotRun) {
  const std::string root = test::scratch_dir();
  const std::string model = test::make_tiny_model(root + "/m", /*seed=*/2);
  const std::string data = make_kto_data(root + "/k.jsonl", 20);
  TrainOptions o = kto_options(model, data, root + "/run", 2);
  o.batch_size = 1;
  EXPECT_TRUE(contains(error_of([&] { train_lora(o); }), "give --batch-size >= 2"));
  o.kto_options.loss = KtoLoss::kApoZeroUnpaired;  // no reference point: one example a batch is fine
  o.out_dir = root + "/apo";
  EXPECT_EQ(train_lora(o).steps, 2);
  o = kto_options(model, data, root + "/run", 2);
  o.batch_mode = SftBatchMode::kPacking;
  EXPECT_TRUE(contains(error_of([&] { train_lora(o); }), "batches whole examples with their KL sequences"));
  o = kto_options(model, data, root + "/run", 2);
  o.dpo = true;
  EXPECT_TRUE(contains(error_of([&] { train_lora(o); }), "give one objective"));
  o = kto_options(model, data, root + "/run", 2);
  o.kto_options.desirable_weight = -1;
  EXPECT_TRUE(contains(error_of([&] { train_lora(o); }), "--kto-desirable-weight must be positive"));
  EXPECT_FALSE(dir_exists(root + "/run"));  // refused before anything was written
}

}  // namespace
}  // namespace qwenq
