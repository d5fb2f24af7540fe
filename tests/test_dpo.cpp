// Preference training (trainer/dpo.h): each loss's derivatives against central differences of its own formula and
// at points with known values; the sequence objective of lora_loss_and_grad against the token loss it generalises
// (the same weights give the same bits); the preference formats read and split by pairs; the batcher's pairs; and
// `train --objective dpo` end to end on a tiny model (the first step's loss is ln 2 and its rewards 0, the reward
// accuracy rises, the reference is the starting adapter, a resumed run is bit-identical, refusals). The gradients
// against PyTorch: tests/oracle/test_dpo_oracle.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "kernels/loss.h"
#include "lora/peft_io.h"
#include "tests/support/test_models.h"
#include "tests/support/sft_fixtures.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_tokenizers.h"
#include "tests/support/test_training.h"
#include "trainer/dpo.h"
#include "trainer/lora_model.h"
#include "trainer/train_loop.h"

namespace qwenq {
namespace {

using test::error_of;

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// ---- the losses -------------------------------------------------------------------------------------------------

// Central differences of ℓ in double: step 1e-4 on sums of order 10 (truncation ~1e-8·ℓ''', rounding ~1e-12/1e-4).
constexpr double kFdStep = 1e-4, kFdTol = 1e-6;

TEST(DpoLoss, DerivativesAreTheFormulasCentralDifferences) {
  const std::vector<DpoPair> points = {{12.0, 15.5, 12.3, 14.9, 7, 9}, {30.2, 18.1, 25.0, 21.4, 11, 4},
                                       {5.5, 5.4, 5.6, 5.45, 3, 3},
                                       {0.2, 0.9, 0.25, 0.8, 7, 9}};  // p̄ of the chosen 0.97: ORPO's 1 − e^a small
  std::vector<DpoOptions> opts(8);
  opts[1].label_smoothing = 0.2;
  opts[2].loss = DpoLoss::kHinge;
  opts[2].beta = 0.05;  // βh < 1 at every point: the hinge's sloped side (its flat side below)
  opts[3].loss = DpoLoss::kIpo;
  opts[3].beta = 0.5;
  opts[4].beta = 2.0;
  opts[5].loss = DpoLoss::kSimpo;
  opts[5].beta = 2.0;
  opts[5].label_smoothing = 0.1;
  opts[6].loss = DpoLoss::kOrpo;
  opts[6].beta = 0.1;
  opts[7].loss = DpoLoss::kOrpo;  // mean log-probabilities near 0 (p̄ near 1): log(1 − e^a) stays finite
  opts[7].beta = 1.0;
  for (const DpoOptions& o : opts) {
    for (const DpoPair& p : points) {
      SCOPED_TRACE(std::string(dpo_loss_name(o.loss)) + " beta " + std::to_string(o.beta) + " S_c " + std::to_string(p.S_c));
      const DpoPairTerms t = dpo_pair_terms(o, p);
      DpoPair a = p, b = p;
      a.S_c += kFdStep, b.S_c -= kFdStep;
      EXPECT_NEAR(t.dS_c, (dpo_pair_terms(o, a).loss - dpo_pair_terms(o, b).loss) / (2 * kFdStep), kFdTol);
      a = p, b = p;
      a.S_r += kFdStep, b.S_r -= kFdStep;
      EXPECT_NEAR(t.dS_r, (dpo_pair_terms(o, a).loss - dpo_pair_terms(o, b).loss) / (2 * kFdStep), kFdTol);
      // Rewards: β times the log-ratio over the reference (length-normalised for IPO), or β times the mean
      // log-probability for the reference-free losses.
      const bool free = dpo_reference_free(o.loss), mean = free || o.loss == DpoLoss::kIpo;
      const double nc = mean ? p.n_c : 1, nr = mean ? p.n_r : 1;
      EXPECT_DOUBLE_EQ(t.reward_c, o.beta * ((free ? 0 : p.R_c) - p.S_c) / nc);
      EXPECT_DOUBLE_EQ(t.reward_r, o.beta * ((free ? 0 : p.R_r) - p.S_r) / nr);
      // The reference-free losses ignore R.
      if (free) {
        DpoPair q = p;
        q.R_c += 3, q.R_r -= 2;
        EXPECT_EQ(dpo_pair_terms(o, q).loss, t.loss);
      }
    }
  }
}

TEST(DpoLoss, KnownValues) {
  DpoOptions o;  // sigmoid, beta 0.1
  const DpoPair same{10, 20, 10, 20, 5, 6};  // the policy is the reference: h = 0
  DpoPairTerms t = dpo_pair_terms(o, same);
  EXPECT_DOUBLE_EQ(t.loss, std::log(2.0));
  EXPECT_DOUBLE_EQ(t.dS_c, 0.05);  // β·σ(0): lowering S_c (raising the chosen's log-probability) lowers the loss
  EXPECT_DOUBLE_EQ(t.dS_r, -0.05);
  EXPECT_EQ(t.reward_c, 0.0);
  // Label smoothing ε at h = 0: still ln 2, the slope (1 − 2ε)·β/2.
  o.label_smoothing = 0.25;
  t = dpo_pair_terms(o, same);
  EXPECT_DOUBLE_EQ(t.loss, std::log(2.0));
  EXPECT_NEAR(t.dS_c, 0.025, 1e-15);
  // Far apart: −log σ(βh) = log1p(e^(−βh)) without overflow either way.
  const DpoPair far{0, 5000, 0, 0, 5, 6};  // h = 5000
  EXPECT_NEAR(dpo_pair_terms(DpoOptions{}, far).loss, std::log1p(std::exp(-500.0)), 1e-300);
  const DpoPair wrong{5000, 0, 0, 0, 5, 6};  // h = −5000
  EXPECT_DOUBLE_EQ(dpo_pair_terms(DpoOptions{}, wrong).loss, 500.0);
  EXPECT_DOUBLE_EQ(dpo_pair_terms(DpoOptions{}, wrong).dS_c, 0.1);
  // Hinge: flat (loss and gradient 0) once βh >= 1.
  DpoOptions h;
  h.loss = DpoLoss::kHinge;
  h.beta = 1.0;
  t = dpo_pair_terms(h, DpoPair{0, 2, 0, 0, 5, 6});  // h = 2
  EXPECT_EQ(t.loss, 0.0);
  EXPECT_EQ(t.dS_c, 0.0);
  EXPECT_EQ(t.dS_r, 0.0);
  // IPO: zero at h = 1/(2β) of the length-normalised log-ratios.
  DpoOptions ipo;
  ipo.loss = DpoLoss::kIpo;
  ipo.beta = 0.5;
  t = dpo_pair_terms(ipo, DpoPair{0, 2, 0, 0, 4, 2});  // h = 0/4 − (−2)/2 = 1 = 1/(2·0.5)
  EXPECT_EQ(t.loss, 0.0);
  // SimPO at h = γ/β: −log σ(0) = ln 2; ORPO at equal mean log-probabilities: β·ln 2.
  DpoOptions simpo;
  simpo.loss = DpoLoss::kSimpo;
  simpo.beta = 2.0;
  simpo.simpo_gamma = 1.0;
  EXPECT_DOUBLE_EQ(dpo_pair_terms(simpo, DpoPair{4.0, 6.0, 0, 0, 4, 4}).loss, std::log(2.0));  // h = −1 + 1.5 = 0.5
  DpoOptions orpo;
  orpo.loss = DpoLoss::kOrpo;
  orpo.beta = 0.1;
  t = dpo_pair_terms(orpo, DpoPair{6.0, 9.0, 0, 0, 4, 6});  // a_c = a_r = −1.5
  EXPECT_NEAR(t.loss, 0.1 * std::log(2.0), 1e-15);
  EXPECT_NEAR(t.dS_c, 0.1 * 0.5 / (1 - std::exp(-1.5)) / 4, 1e-15);
  EXPECT_NEAR(t.dS_r, -0.1 * 0.5 / (1 - std::exp(-1.5)) / 6, 1e-15);
  // ORPO's NLL term is its own (weight 1), RPO's is rpo_alpha.
  EXPECT_EQ(orpo.nll_weight(), 1.0);
  // RPO adds the chosen tokens' mean NLL.
  DpoOptions rpo;
  rpo.rpo_alpha = 0.5;
  const DpoStats s = dpo_batch_stats(rpo, {10, 20, 4, 8}, {10, 20, 4, 8}, {5, 6, 3, 2});
  EXPECT_EQ(s.pairs, 2);
  EXPECT_EQ(s.correct, 0);  // equal rewards are not a win (TRL's >)
  EXPECT_DOUBLE_EQ(s.objective(rpo), std::log(2.0) + 0.5 * (10.0 + 4.0) / (5 + 3));
}

TEST(DpoLoss, RefusesWhatItCannotCompute) {
  DpoOptions o;
  o.beta = 0;
  EXPECT_TRUE(contains(error_of([&] { check_dpo_options(o); }), "--dpo-beta must be positive"));
  o = DpoOptions{};
  o.label_smoothing = 0.5;
  EXPECT_TRUE(contains(error_of([&] { check_dpo_options(o); }), "--dpo-label-smoothing must be in [0, 0.5)"));
  o.label_smoothing = 0.1;
  o.loss = DpoLoss::kIpo;
  EXPECT_TRUE(contains(error_of([&] { check_dpo_options(o); }), "applies to --dpo-loss sigmoid and simpo"));
  o = DpoOptions{};
  o.loss = DpoLoss::kOrpo;
  o.rpo_alpha = 0.5;
  EXPECT_TRUE(contains(error_of([&] { check_dpo_options(o); }), "--rpo-alpha does not apply to --dpo-loss orpo"));
  o = DpoOptions{};
  o.simpo_gamma = -1;
  EXPECT_TRUE(contains(error_of([&] { check_dpo_options(o); }), "--simpo-gamma must be >= 0"));
  o = DpoOptions{};
  o.rpo_alpha = -1;
  EXPECT_TRUE(contains(error_of([&] { check_dpo_options(o); }), "--rpo-alpha must be >= 0"));
  EXPECT_TRUE(contains(error_of([&] { parse_dpo_loss("kto"); }), "--dpo-loss must be sigmoid, hinge, ipo, simpo or orpo"));
  EXPECT_TRUE(contains(error_of([&] { dpo_pair_terms(DpoOptions{}, DpoPair{1, 1, 1, 1, 0, 3}); }),
                       "needs tokens in both completions"));
  EXPECT_TRUE(contains(error_of([&] { dpo_batch_stats(DpoOptions{}, {1, 2, 3}, {1, 2, 3}, {1, 1, 1}); }),
                       "need the same even number"));
}

// ---- the sequence objective in the trainer ----------------------------------------------------------------------

// Every sequence weighted by the token loss's own grad_scale: the same bits as the token loss (the same dlogits
// through the same backward), and the per-sequence sums add up to its NLL.
TEST(SequenceObjective, ConstantWeightsAreTheTokenLoss) {
  const std::string root = test::scratch_dir();
  const QwenModel model(test::make_tiny_model(root + "/m", /*seed=*/3));
  const LoraAdapter adapter =
      test::adapter_with_random_b(model.config(), {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"}, 4, 8.0, false, /*seed=*/5, 0.05f);
  const PackedBatch batch = test::random_batch({9, 14, 6, 11}, model.config().vocab_size, /*seed=*/7);
  std::vector<int32_t> targets = next_token_targets(batch);
  for (size_t t = 0; t < targets.size(); t += 3) targets[t] = kIgnoreIndex;  // prompt-like holes
  int64_t counted = 0;
  for (int32_t t : targets) counted += t != kIgnoreIndex;
  LoraStepOptions token;
  token.grad_scale = 1.0 / counted;
  LoraAdapter g1 = test::zeros_like(adapter), g2 = test::zeros_like(adapter);
  const LoraStepResult r1 = lora_loss_and_grad(model, adapter, batch, targets, &g1, token);
  LoraStepOptions seq = token;
  seq.grad_scale = 123.0;  // unused with an objective
  std::vector<double> seen;
  seq.sequence_objective = [&](const std::vector<double>& s) {
    seen = s;
    return std::vector<double>(s.size(), 1.0 / counted);
  };
  const LoraStepResult r2 = lora_loss_and_grad(model, adapter, batch, targets, &g2, seq);
  EXPECT_EQ(r2.counted, r1.counted);
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_EQ(r2.seq_nll, seen);
  double sum = 0;
  for (double v : r1.seq_nll) sum += v;
  EXPECT_NEAR(sum, r1.nll_sum, 1e-9 * r1.nll_sum);
  for (size_t j = 0; j < seen.size(); ++j) EXPECT_NEAR(seen[j], r1.seq_nll[j], 1e-5 * r1.seq_nll[j]) << j;
  for (size_t i = 0; i < g1.slots().size(); ++i) {
    EXPECT_EQ(g1.weights(i).A, g2.weights(i).A) << i;
    EXPECT_EQ(g1.weights(i).B, g2.weights(i).B) << i;
  }
  // Weighting one sequence alone gives that sequence's share of the token gradient: zero weight elsewhere.
  LoraStepOptions one = token;
  one.sequence_objective = [&](const std::vector<double>& s) {
    std::vector<double> w(s.size(), 0.0);
    w[1] = 1.0;
    return w;
  };
  LoraAdapter g3 = test::zeros_like(adapter);
  lora_loss_and_grad(model, adapter, batch, targets, &g3, one);
  std::vector<int32_t> only = targets;
  for (int32_t t = 0; t < static_cast<int32_t>(only.size()); ++t)
    if (t < batch.cu_seqlens[1] || t >= batch.cu_seqlens[2]) only[t] = kIgnoreIndex;
  LoraStepOptions plain = token;
  plain.grad_scale = 1.0;
  LoraAdapter g4 = test::zeros_like(adapter);
  lora_loss_and_grad(model, adapter, batch, only, &g4, plain);
  for (size_t i = 0; i < g3.slots().size(); ++i) {
    EXPECT_EQ(g3.weights(i).A, g4.weights(i).A) << i;
    EXPECT_EQ(g3.weights(i).B, g4.weights(i).B) << i;
  }
  // An objective that answers with the wrong count, or a non-finite weight, is refused.
  seq.sequence_objective = [](const std::vector<double>& s) { return std::vector<double>(s.size() + 1, 0.0); };
  EXPECT_TRUE(contains(error_of([&] { lora_loss_and_grad(model, adapter, batch, targets, &g2, seq); }),
                       "5 derivatives for a batch of 4 sequences"));
  seq.sequence_objective = [](const std::vector<double>& s) { return std::vector<double>(s.size(), NAN); };
  EXPECT_TRUE(contains(error_of([&] { lora_loss_and_grad(model, adapter, batch, targets, &g2, seq); }),
                       "the derivative of sequence 0 is nan"));
}

// ---- data ---------------------------------------------------------------------------------------------------------

using test::kPlainChatml;
using test::masked_text;
using test::no_split;
using test::write_in_dir;

std::string text_of(const std::vector<int32_t>& ids, const Tokenizer& tok) { return tok.decode(ids); }

TEST(PreferenceData, FormatsBecomeChosenThenRejected) {
  const std::string root = test::scratch_dir();
  const Tokenizer tok = test::byte_tokenizer(root + "/tok", kPlainChatml);
  // One record per file: its two examples, chosen then rejected.
  const auto pair_of = [&](const std::string& line) {
    const SftDataset ds = load_preference_dataset(write_in_dir(root, "p.jsonl", line + "\n"), tok, no_split());
    EXPECT_EQ(ds.stats.records, 1);
    EXPECT_EQ(ds.stats.format, SftFormat::kPreference);
    EXPECT_EQ(ds.train.size(), 2u);
    return std::make_pair(ds.train.at(0), ds.train.at(1));
  };
  // Explicit and implicit prompts, strings and conversations: each pair's two examples share the prompt, and only
  // the completions (a string completion's EOS too; a conversation's through <|im_end|>) are scored.
  const auto s = pair_of(R"({"prompt": "The sky is", "chosen": " blue.", "rejected": " green."})");
  EXPECT_EQ(text_of(s.first.tokens, tok), "The sky is blue.<|im_end|>");
  EXPECT_EQ(masked_text(s.first, tok), " blue.<|im_end|>");
  EXPECT_EQ(masked_text(s.second, tok), " green.<|im_end|>");
  // The implicit prompt is TRL's: the shared prefix less its trailing space.
  const auto si = pair_of(R"({"chosen": "The sky is blue.", "rejected": "The sky is green."})");
  EXPECT_EQ(si.first.tokens, s.first.tokens);
  EXPECT_EQ(si.first.loss_mask, s.first.loss_mask);
  EXPECT_EQ(si.second.tokens, s.second.tokens);
  EXPECT_EQ(si.second.loss_mask, s.second.loss_mask);
  const auto c = pair_of(R"({"prompt": [{"role": "user", "content": "Sky?"}], "chosen": [{"role": "assistant", "content": "Blue."}], "rejected": [{"role": "assistant", "content": "Green."}]})");
  EXPECT_EQ(text_of(c.first.tokens, tok), "<|im_start|>user\nSky?<|im_end|>\n<|im_start|>assistant\nBlue.<|im_end|>\n");
  EXPECT_EQ(masked_text(c.first, tok), "Blue.<|im_end|>");
  EXPECT_EQ(masked_text(c.second, tok), "Green.<|im_end|>");
  // Implicit in a conversation: the shared messages are the prompt.
  const auto ci = pair_of(R"({"chosen": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}], "rejected": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Green."}]})");
  EXPECT_EQ(ci.first.tokens, c.first.tokens);
  EXPECT_EQ(ci.first.loss_mask, c.first.loss_mask);
  EXPECT_EQ(ci.second.loss_mask, c.second.loss_mask);
  // LLaMA-Factory's ShareGPT preference record: the conversation is the prompt, one message each completion.
  const auto lf = pair_of(R"({"conversations": [{"from": "human", "value": "Sky?"}], "chosen": {"from": "gpt", "value": "Blue."}, "rejected": {"from": "gpt", "value": "Green."}})");
  EXPECT_EQ(lf.first.tokens, c.first.tokens);
  EXPECT_EQ(lf.first.loss_mask, c.first.loss_mask);
  EXPECT_EQ(lf.second.tokens, c.second.tokens);
  EXPECT_EQ(lf.second.loss_mask, c.second.loss_mask);
  // LLaMA-Factory's Alpaca preference record: SFT's Alpaca rendering with the completions as outputs (the Stanford
  // prompt; with alpaca_chat, LLaMA-Factory's conversation, here the conversational pair's tokens).
  const std::string alpaca = R"({"instruction": "Sky?", "input": "", "chosen": "Blue.", "rejected": "Green."})";
  const auto la = pair_of(alpaca);
  const SftDataset sft = load_sft_dataset(write_in_dir(root, "s.jsonl", R"({"instruction": "Sky?", "input": "", "output": "Blue."})" "\n"), tok, no_split());
  EXPECT_EQ(la.first.tokens, sft.train.at(0).tokens);
  EXPECT_EQ(la.first.loss_mask, sft.train.at(0).loss_mask);
  EXPECT_EQ(masked_text(la.second, tok), "Green.<|im_end|>");
  SftDataOptions chat = no_split();
  chat.templ.alpaca_chat = true;
  const SftDataset lac = load_preference_dataset(write_in_dir(root, "p.jsonl", alpaca + "\n"), tok, chat);
  EXPECT_EQ(lac.train.at(0).tokens, c.first.tokens);
  EXPECT_EQ(lac.train.at(1).loss_mask, c.second.loss_mask);
  // A multi-byte character at the first difference is not split, and the space before it goes to the completions
  // (TRL compares characters: "Sky: été" / "Sky: ère" differ at 'é' / 'è', after a space).
  const auto u = pair_of("{\"chosen\": \"Sky: \xC3\xA9t\xC3\xA9\", \"rejected\": \"Sky: \xC3\xA8re\"}");
  EXPECT_EQ(masked_text(u.first, tok), " \xC3\xA9t\xC3\xA9<|im_end|>");
  EXPECT_EQ(masked_text(u.second, tok), " \xC3\xA8re<|im_end|>");
}

TEST(PreferenceData, SplitsByPairsAndDropsAPairThatLosesACompletion) {
  const std::string root = test::scratch_dir();
  const Tokenizer tok = test::byte_tokenizer(root + "/tok", "");
  std::string text;
  for (int i = 0; i < 10; ++i) {  // pair 7's prompt alone is longer than max_len: its completions are cut away
    const std::string prompt = "p" + std::to_string(i) + ":" + std::string(i == 7 ? 30 : 0, '.');
    text += "{\"prompt\": \"" + prompt + "\", \"chosen\": \" yes\", \"rejected\": \" no\"}\n";
  }
  const std::string path = write_in_dir(root, "p.jsonl", text);
  SftDataOptions d = no_split();
  d.max_len = 20;
  d.eval_count = 3;
  d.seed = 4;
  const SftDataset ds = load_preference_dataset(path, tok, d);
  EXPECT_EQ(ds.stats.records, 9);
  EXPECT_EQ(ds.stats.dropped_no_loss, 1);
  EXPECT_EQ(ds.stats.truncated, 2);  // both of pair 7's examples
  EXPECT_EQ(ds.stats.train_examples, 6);
  EXPECT_EQ(ds.stats.eval_examples, 3);
  ASSERT_EQ(ds.train.size(), 12u);
  ASSERT_EQ(ds.eval.size(), 6u);
  for (const auto* set : {&ds.train, &ds.eval}) {
    for (size_t i = 0; i < set->size(); i += 2) {  // each pair is adjacent: the same prompt "pN:", yes then no
      EXPECT_EQ(std::vector<int32_t>((*set)[i].tokens.begin(), (*set)[i].tokens.begin() + 3),
                std::vector<int32_t>((*set)[i + 1].tokens.begin(), (*set)[i + 1].tokens.begin() + 3));
      EXPECT_EQ(masked_text((*set)[i], tok), " yes<|im_end|>");
      EXPECT_EQ(masked_text((*set)[i + 1], tok), " no<|im_end|>");
    }
  }
  d.max_len = 3;  // every prompt fills it
  EXPECT_TRUE(contains(error_of([&] { load_preference_dataset(path, tok, d); }), "every pair lost a completion to max_len 3"));
}

TEST(PreferenceData, MalformedRecordsAreNamed) {
  const std::string root = test::scratch_dir();
  const Tokenizer tok = test::byte_tokenizer(root + "/tok", kPlainChatml);
  const auto err = [&](const std::string& line) {
    return error_of([&] { load_preference_dataset(write_in_dir(root, "bad.jsonl", "{\"prompt\": \"a\", \"chosen\": \"b\", "
                                                         "\"rejected\": \"c\"}\n" + line + "\n"), tok, no_split()); });
  };
  EXPECT_TRUE(contains(err(R"({"prompt": "a", "chosen": "b"})"), "bad.jsonl:2: expected \"chosen\" and \"rejected\""));
  EXPECT_TRUE(contains(err(R"({"chosen": "b", "rejected": "b"})"), "bad.jsonl:2: \"chosen\" and \"rejected\" are the same"));
  EXPECT_TRUE(contains(err(R"({"chosen": "b", "rejected": [{"role": "assistant", "content": "c"}]})"),
                       "must both be strings or both be message lists"));
  EXPECT_TRUE(contains(err(R"({"prompt": [{"role": "user", "content": "a"}], "chosen": [{"role": "user", "content": "b"}], "rejected": [{"role": "assistant", "content": "c"}]})"),
                       "bad.jsonl:2: chosen: no assistant message"));
  EXPECT_TRUE(contains(err("not json"), "bad.jsonl:2:"));
  EXPECT_TRUE(contains(err(R"({"conversations": [{"from": "human", "value": "a"}], "chosen": {"from": "bot", "value": "b"}, "rejected": {"from": "gpt", "value": "c"}})"),
                       "bad.jsonl:2: chosen: conversations[0]: \"from\": \"bot\" is not human, gpt"));
  EXPECT_TRUE(contains(err(R"({"instruction": "a", "chosen": 1, "rejected": "c"})"), "bad.jsonl:2: chosen: field \"output\""));
  EXPECT_TRUE(contains(err("{\"prompt\": 1, \"chosen\": \"b\", \"rejected\": \"c\"}"), "bad.jsonl:2: chosen:"));
  // --skip-bad skips and counts them.
  SftDataOptions skip = no_split();
  skip.skip_bad = true;
  const SftDataset ds = load_preference_dataset(
      write_in_dir(root, "mixed.jsonl", "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n{\"chosen\": 1}\n"), tok, skip);
  EXPECT_EQ(ds.stats.records, 1);
  EXPECT_EQ(ds.stats.skipped, 1);
  // Preference records given to SFT, and SFT records given to preference training, say what to do.
  const std::string pref = write_in_dir(root, "pref.jsonl", "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n");
  EXPECT_TRUE(contains(error_of([&] { load_sft_dataset(pref, tok, no_split()); }), "train on it with --objective dpo"));
  const std::string sft = write_in_dir(root, "sft.jsonl", "{\"text\": \"a\"}\n");
  EXPECT_TRUE(contains(error_of([&] { load_preference_dataset(sft, tok, no_split()); }),
                       "sft.jsonl:1: expected \"chosen\" and \"rejected\" fields"));
  SftDataOptions prompt_loss = no_split();
  prompt_loss.templ.train_on_prompt = true;
  EXPECT_TRUE(contains(error_of([&] { load_preference_dataset(pref, tok, prompt_loss); }),
                       "--train-on-prompt and --mask-history do not apply"));
}

TEST(PreferenceData, BatchesHoldWholePairsShuffledAsUnits) {
  std::vector<SftExample> ex;
  for (int i = 0; i < 14; ++i) {
    SftExample e;
    e.tokens = {i, 1000 + i, 2000 + i};
    e.loss_mask = {0, 1, 1};
    ex.push_back(e);
  }
  SftBatchOptions bo;
  bo.mode = SftBatchMode::kPadding;
  bo.batch_size = 4;
  bo.group = 2;
  bo.seed = 9;
  bo.epochs = 2;
  SftBatchIterator it(ex, bo);
  SftBatch b;
  int batches = 0;
  std::vector<int32_t> firsts;
  while (it.next(&b)) {
    ++batches;
    EXPECT_EQ(b.num_examples % 2, 0);
    for (int64_t s = 0; s < b.packed.num_seqs(); s += 2) {
      const int32_t c = b.packed.tokens[b.packed.cu_seqlens[s]], r = b.packed.tokens[b.packed.cu_seqlens[s + 1]];
      EXPECT_EQ(c % 2, 0);  // a chosen (even index) and its rejected (the next)
      EXPECT_EQ(r, c + 1);
      firsts.push_back(c);
    }
  }
  EXPECT_EQ(batches, 8);  // 7 pairs = 2 + 2 + 2 + 1 per epoch
  EXPECT_NE(std::vector<int32_t>(firsts.begin(), firsts.begin() + 7), (std::vector<int32_t>{0, 2, 4, 6, 8, 10, 12}));
  bo.mode = SftBatchMode::kPacking;
  EXPECT_TRUE(contains(error_of([&] { SftBatchIterator bad(ex, bo); }), "groups of 2 need padding mode"));
}

// ---- training end to end ------------------------------------------------------------------------------------------

// n pairs "<name> is" -> " kind." (chosen) / " mean." (rejected) over 6 names: a preference a tiny model learns.
std::string make_preference_data(const std::string& path, int n) {
  static const char* kNames[] = {"Ann", "Bob", "Cid", "Dee", "Eve", "Fay"};
  Rng rng(11);
  std::string text;
  for (int i = 0; i < n; ++i) {
    text += std::string("{\"prompt\": \"") + kNames[rng.below(6)] + " is\", \"chosen\": \" kind.\", \"rejected\": \" mean.\"}\n";
  }
  write_file_atomic(path, text);
  return path;
}

std::vector<double> metric(const std::string& metrics, const std::string& field) {
  return test::step_metric(metrics, field);
}

TrainOptions dpo_options(const std::string& model, const std::string& data, const std::string& out, int64_t steps) {
  TrainOptions o = test::small_lora_options(model, data, out, steps);
  o.dpo = true;
  o.batch_mode = SftBatchMode::kPadding;
  o.dpo_options.beta = 0.5;
  o.lr = 1e-2;
  return o;
}

TEST(DpoTrain, LearnsThePreferenceFromAStartAtTheReference) {
  const std::string root = test::scratch_dir();
  const std::string model = test::make_tiny_model(root + "/m", /*seed=*/2);
  const std::string data = make_preference_data(root + "/p.jsonl", 60);
  const TrainOptions o = dpo_options(model, data, root + "/run", 20);
  const TrainReport r = train_lora(o);
  const std::string metrics = o.out_dir + "/metrics.jsonl";
  const std::vector<double> loss = metric(metrics, "loss"), margin = metric(metrics, "rewards_margin");
  ASSERT_EQ(loss.size(), 20u);
  // Step 1 runs the reference itself (B = 0): h = 0 up to the batches' fp32 summation orders.
  EXPECT_NEAR(loss[0], std::log(2.0), 1e-5);
  EXPECT_NEAR(margin[0], 0.0, 1e-5);
  EXPECT_LT(loss.back(), 0.2);
  EXPECT_GT(margin.back(), 2.0);
  EXPECT_EQ(metric(metrics, "rewards_accuracy").back(), 1.0);
  EXPECT_EQ(metric(metrics, "pairs")[0], 2.0);  // batch_size pairs
  EXPECT_EQ(r.first_eval_accuracy, 0.0);        // equal rewards are no win
  EXPECT_EQ(r.eval_accuracy, 1.0);
  EXPECT_LT(r.eval_loss, 0.2);
  EXPECT_TRUE(file_exists(o.out_dir + "/dpo_reference.json"));
  EXPECT_TRUE(file_exists(o.out_dir + "/adapter_model.safetensors"));
}

// The reference-free losses train without a reference model (no dpo_reference.json, nothing to read on resume) and
// learn the same preference; ORPO's loss carries the chosen tokens' mean NLL, so its first step is above β·ln 2.
TEST(DpoTrain, SimpoAndOrpoNeedNoReference) {
  const std::string root = test::scratch_dir();
  const std::string model = test::make_tiny_model(root + "/m", /*seed=*/2);
  const std::string data = make_preference_data(root + "/p.jsonl", 60);
  for (DpoLoss loss : {DpoLoss::kSimpo, DpoLoss::kOrpo}) {
    SCOPED_TRACE(dpo_loss_name(loss));
    TrainOptions o = dpo_options(model, data, root + "/" + dpo_loss_name(loss), 20);
    o.dpo_options.loss = loss;
    o.dpo_options.beta = loss == DpoLoss::kSimpo ? 2.0 : 0.5;
    o.save_every = 10;
    o.stop_after = 10;  // then resumed from checkpoint-10: nothing to read but the checkpoint
    train_lora(o);
    o.stop_after = 0;
    o.resume = true;
    const TrainReport r = train_lora(o);
    EXPECT_EQ(r.start_step, 10);
    EXPECT_FALSE(file_exists(o.out_dir + "/dpo_reference.json"));
    const std::vector<double> margin = metric(o.out_dir + "/metrics.jsonl", "rewards_margin");
    ASSERT_EQ(margin.size(), 20u);
    EXPECT_GT(margin.back(), margin.front() + 0.5);
    EXPECT_EQ(r.eval_accuracy, 1.0);
    if (loss == DpoLoss::kOrpo) {
      EXPECT_GT(metric(o.out_dir + "/metrics.jsonl", "loss")[0], 0.5 * std::log(2.0) + 1.0);
    }
  }
}

// The reference is the model at step 0: with a starting adapter (--init-adapter), the base plus that adapter, so
// the first step's rewards are 0 again (against the base alone they would not be).
TEST(DpoTrain, TheReferenceIsTheStartingAdapter) {
  const std::string root = test::scratch_dir();
  const std::string model_dir = test::make_tiny_model(root + "/m", /*seed=*/2);
  const std::string data = make_preference_data(root + "/p.jsonl", 40);
  TrainOptions o = dpo_options(model_dir, data, root + "/run", 3);
  const QwenModel model(model_dir);
  LoraAdapter start = test::adapter_with_random_b(model.config(), o.lora.target_modules, o.lora.r, o.lora.alpha,
                                                  false, /*seed=*/8, 0.2f);
  save_peft_adapter(root + "/start", start, PeftSaveOptions{});
  o.init_adapter = root + "/start";
  train_lora(o);
  const std::vector<double> margin = metric(o.out_dir + "/metrics.jsonl", "rewards_margin");
  EXPECT_NEAR(margin[0], 0.0, 1e-5);
  // The kept reference sums are the starting adapter's, computed here again; the base alone gives others.
  SftDataOptions d = o.data;
  d.max_len = data_max_len(o);
  const SftDataset ds = load_preference_dataset(data, Tokenizer::from_dir(model_dir), d);
  const nlohmann::json kept = nlohmann::json::parse(read_file(o.out_dir + "/dpo_reference.json"));
  const auto sums_with = [&](const LoraAdapter& a) {
    LoraStepOptions so;
    so.train = false;
    return example_nll_sums(ds.train, o.seq_len, o.batch_size, 0, nullptr, [&](const SftBatch& b) {
      return lora_loss_and_grad(model, a, b.packed, b.targets, nullptr, so);
    });
  };
  const std::vector<double> want = sums_with(start), base = sums_with(test::zeros_like(start));
  const std::vector<double> got = kept["train"].get<std::vector<double>>();
  ASSERT_EQ(got.size(), want.size());
  // Only the sequences the 3 steps read (3 micro-batches of 2 pairs) have sums; the others keep 0.
  SftBatchOptions bo;
  bo.mode = SftBatchMode::kPadding;
  bo.seq_len = o.seq_len;
  bo.batch_size = 2 * o.batch_size;
  bo.group = 2;
  bo.seed = o.seed;
  const std::vector<int64_t> used = examples_in_batches(ds.train, bo, 3);
  EXPECT_EQ(used.size(), 12u);
  std::vector<uint8_t> is_used(got.size(), 0);
  for (int64_t i : used) is_used[static_cast<size_t>(i)] = 1;
  double differ = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!is_used[i]) {
      EXPECT_EQ(got[i], 0.0) << i;
      continue;
    }
    EXPECT_NEAR(got[i], want[i], 1e-5 * want[i]) << i;
    differ = std::max(differ, std::fabs(base[i] - want[i]));
  }
  EXPECT_GT(differ, 0.1);
}

TEST(DpoTrain, ResumeIsBitExact) {
  const std::string root = test::scratch_dir();
  const std::string model = test::make_tiny_model(root + "/m", /*seed=*/2);
  const std::string data = make_preference_data(root + "/p.jsonl", 40);
  TrainOptions full = dpo_options(model, data, root + "/full", 8);
  full.save_every = 3;
  full.lora.dropout = 0.1;
  full.grad_accum = 2;
  full.dpo_options.rpo_alpha = 0.3;
  train_lora(full);
  EXPECT_EQ(test::train_interrupted(full, root + "/part", 5).start_step, 3);  // the newest checkpoint is step 3
  TrainOptions part = full;
  part.out_dir = root + "/part";
  part.resume = true;
  test::expect_same_resumed_run(full.out_dir, part.out_dir, {"loss", "rewards_margin", "rewards_accuracy", "grad_norm"});
  // Other preference settings cannot resume it, nor can it without its reference sums.
  TrainOptions other = part;
  other.dpo_options.beta = 0.25;
  EXPECT_TRUE(contains(error_of([&] { train_lora(other); }), "\"dpo_beta\" (--dpo-beta): saved 0.5, now 0.25"));
  TrainOptions sft = part;
  sft.dpo = false;
  EXPECT_TRUE(contains(error_of([&] { train_lora(sft); }), "train on it with --objective dpo"));  // before the settings
  std::remove((part.out_dir + "/dpo_reference.json").c_str());
  EXPECT_TRUE(contains(error_of([&] { train_lora(part); }), "dpo_reference.json is missing"));
}

TEST(DpoTrain, RefusesWhatItCannotRun) {
  const std::string root = test::scratch_dir();
  const std::string model = test::make_tiny_model(root + "/m", /*seed=*/2);
  const std::string data = make_preference_data(root + "/p.jsonl", 20);
  TrainOptions o = dpo_options(model, data, root + "/run", 2);
  o.data.max_len = o.seq_len + 1;
  EXPECT_TRUE(contains(error_of([&] { train_lora(o); }), "--max-len 129 exceeds --seq-len 128"));
  o = dpo_options(model, data, root + "/run", 2);
  o.batch_mode = SftBatchMode::kPacking;
  EXPECT_TRUE(contains(error_of([&] { train_lora(o); }), "batches whole pairs"));
  o = dpo_options(model, data, root + "/run", 2);
  o.dpo_options.beta = -1;
  EXPECT_TRUE(contains(error_of([&] { train_lora(o); }), "--dpo-beta must be positive"));
  EXPECT_FALSE(dir_exists(root + "/run"));  // refused before anything was written
}

}  // namespace
}  // namespace qwenq
