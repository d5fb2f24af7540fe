// GRPO (trainer/grpo.h, grpo_reward.h): the advantages and loss normalisations at hand-computed values, the per-token
// weights against central differences of the loss they differentiate, the reward functions (the external scorer
// included), the prompt formats, the unmerged adapter the rollouts sample with (QwenModel::attach_adapter) against
// the trainer's adapted forward, and `train --objective grpo` end to end (stories260K learns to mention a dog; a
// resumed run is bit-identical; refusals). The loss and gradients against PyTorch: tests/oracle/test_grpo_oracle.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "trainer/generate.h"
#include "trainer/grpo.h"
#include "trainer/grpo_reward.h"
#include "trainer/lora_inference.h"
#include "trainer/lora_model.h"
#include "trainer/train_loop.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_tokenizers.h"
#include "tests/support/test_training.h"

namespace qwenq {
namespace {

using test::error_of;
using Json = nlohmann::ordered_json;
const double kNaN = std::numeric_limits<double>::quiet_NaN();

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// ---- the math ---------------------------------------------------------------------------------------------------

TEST(GrpoMath, AdvantagesByScaling) {
  const std::vector<double> r = {1, 0, 0, 0, 2, 2, 2, 2};
  std::vector<double> sd;
  const std::vector<double> none = grpo_advantages(r, 4, GrpoScale::kNone, &sd);
  EXPECT_DOUBLE_EQ(none[0], 0.75);
  EXPECT_DOUBLE_EQ(none[1], -0.25);
  EXPECT_DOUBLE_EQ(none[4], 0.0);
  EXPECT_DOUBLE_EQ(sd[0], 0.5);  // √((0.75² + 3·0.25²) / 3), Bessel's correction as torch.std
  EXPECT_DOUBLE_EQ(sd[7], 0.0);
  const std::vector<double> group = grpo_advantages(r, 4, GrpoScale::kGroup);
  EXPECT_DOUBLE_EQ(group[0], 0.75 / 0.5001);
  EXPECT_DOUBLE_EQ(group[5], 0.0);  // a group without spread teaches nothing
  const std::vector<double> batch = grpo_advantages(r, 4, GrpoScale::kBatch);
  double mean = 0, ss = 0;
  for (double x : r) mean += x / 8;
  for (double x : r) ss += (x - mean) * (x - mean);
  EXPECT_DOUBLE_EQ(batch[1], -0.25 / (std::sqrt(ss / 7) + 1e-4));
  EXPECT_TRUE(contains(error_of([&] { grpo_advantages({1, 2, 3}, 2, GrpoScale::kGroup); }), "in groups of 2"));
}

TEST(GrpoMath, CombinedRewardsSkipWhatDoesNotApply) {
  const std::vector<double> r = grpo_combined_rewards({1, kNaN, kNaN, kNaN, 0.5, 2}, 2, {2.0, -1.0});
  EXPECT_EQ(r, (std::vector<double>{2.0, 0.0, -1.0}));
}

TEST(GrpoMath, NormalisationsOfEachLoss) {
  const std::vector<int64_t> len = {2, 4, 0, 6}, micro = {0, 0, 1, 1};
  const auto c = [&](GrpoLoss l) { return grpo_normalizers(l, len, micro, 2, 8); };
  EXPECT_EQ(c(GrpoLoss::kGrpo), (std::vector<double>{1.0 / 8, 1.0 / 16, 0.0, 1.0 / 24}));
  EXPECT_EQ(c(GrpoLoss::kBnpo), (std::vector<double>{1.0 / 12, 1.0 / 12, 0.0, 1.0 / 12}));
  EXPECT_EQ(c(GrpoLoss::kDrGrpo), (std::vector<double>{1.0 / 32, 1.0 / 32, 0.0, 1.0 / 32}));
  EXPECT_EQ(c(GrpoLoss::kDapo), (std::vector<double>{1.0 / 12, 1.0 / 12, 0.0, 1.0 / 12}));
  EXPECT_DOUBLE_EQ(grpo_loss_value({0.5, 0.25}, {1.0, -2.0}, {2, 4}), -(0.5 * 1 * 2) + 0.25 * 2 * 4);
}

// The per-token loss as the trainer differentiates it at ρ = 1: f(nll) = Σ_j c_j Σ_t (−A_j·exp(nll0_t − nll_t) +
// β·(exp(nll_t − ref_t) − (nll_t − ref_t) − 1)), nll0 the detached values. Central differences in double.
TEST(GrpoMath, TokenWeightsAreTheLossDerivative) {
  const std::vector<double> c = {0.1, 0.05}, a = {1.3, -0.7};
  const std::vector<int64_t> len = {2, 3};
  const std::vector<float> nll0 = {1.5f, 0.25f, 2.0f, 0.75f, 3.0f}, ref = {1.0f, 0.5f, 2.5f, 0.75f, 1.0f};
  const double beta = 0.3;
  const auto f = [&](const std::vector<double>& nll) {
    double s = 0;
    for (size_t i = 0, j = 0; j < len.size(); ++j)
      for (int64_t t = 0; t < len[j]; ++t, ++i) {
        const double x = nll[i] - ref[i];
        s += c[j] * (-a[j] * std::exp(nll0[i] - nll[i]) + beta * (std::exp(x) - x - 1));
      }
    return s;
  };
  GrpoOptions o;
  o.beta = beta;
  GrpoTokenTerms terms;
  const std::vector<double> d = grpo_token_weights(o, c, a, len, nll0, nullptr, &ref, &terms);
  const double kl = terms.kl_sum, wkl = terms.weighted_kl;
  ASSERT_EQ(d.size(), 5u);
  std::vector<double> at(nll0.begin(), nll0.end());
  for (size_t i = 0; i < at.size(); ++i) {
    std::vector<double> up = at, dn = at;
    up[i] += 1e-5;
    dn[i] -= 1e-5;
    EXPECT_NEAR(d[i], (f(up) - f(dn)) / 2e-5, 1e-8) << "token " << i;
  }
  EXPECT_DOUBLE_EQ(kl, std::exp(0.5) - 0.5 - 1 + std::exp(-0.25) + 0.25 - 1 + std::exp(-0.5) + 0.5 - 1 + 0 +
                           std::exp(2.0) - 2.0 - 1);
  EXPECT_NEAR(f(at), grpo_loss_value(c, a, len) + beta * wkl, 1e-12);  // the value the step logs
  EXPECT_NEAR(terms.policy, grpo_loss_value(c, a, len), 1e-15);
  EXPECT_EQ(terms.tokens, 5);
  EXPECT_EQ(terms.clipped_low + terms.clipped_high, 0);  // on-policy: never clipped
}

// Off-policy (num_iterations > 1): f(nll) = Σ_j c_j Σ_t (−min(min(ρ_t, δ)·A_j, clip(ρ_t, 1 − ε, 1 + ε_high)·A_j) +
// β·KL_t) with ρ_t = exp(old_t − nll_t) per token, or GSPO's exp(mean_t(old_t − nll_t)) per sequence (δ = ∞ without
// --delta). Its central differences in double are the weights wherever f is smooth (no ratio at a bound), the
// clipped tokens' policy part zero; the value is terms.policy + β·terms.weighted_kl; the clipped counts are TRL's
// (A < 0 below 1 − ε, A > 0 above 1 + ε_high, on the δ-capped ratio).
TEST(GrpoMath, ClippedRatioWeightsAreTheLossDerivative) {
  const std::vector<double> c = {0.1, 0.05, 0.2}, a = {1.3, -0.7, 0.4};
  const std::vector<int64_t> len = {2, 3, 2};
  // log ratios old − nll: 0.3, −0.05 | −0.4, 0.1, 0.02 | 0.5, 0.1
  const std::vector<float> nll = {1.5f, 0.25f, 2.0f, 0.75f, 3.0f, 1.0f, 0.5f};
  const std::vector<float> old = {1.8f, 0.2f, 1.6f, 0.85f, 3.02f, 1.5f, 0.6f};
  const std::vector<float> ref = {1.0f, 0.5f, 2.5f, 0.75f, 1.0f, 0.9f, 0.4f};
  struct Case {
    const char* name;
    GrpoImportance level;
    double epsilon_high, delta;
    double low, high;                   // TRL's clipped-token counts
    std::vector<size_t> kl_only;        // tokens whose policy gradient the clip (or δ) removes
  };
  const Case cases[] = {
      // ρ: 1.35 (A > 0: clipped), 0.95 | 0.67 (A < 0: clipped), 1.11, 1.02 | 1.65 (clipped), 1.11
      {"token", GrpoImportance::kToken, 0.28, 0.0, 1, 2, {0, 2, 5}},
      // s_j: exp(0.125) = 1.13, exp(−0.093) = 0.91 | exp(0.3) = 1.35 (A > 0: both its tokens clipped)
      {"sequence", GrpoImportance::kSequence, 0.28, 0.0, 0, 2, {5, 6}},
      // δ 1.05 above 1 + ε_high = 1.04: the A < 0 token at 1.11 is held at δ (no gradient, not counted); the A > 0
      // ones above 1.04 clip
      {"token, delta", GrpoImportance::kToken, 0.04, 1.05, 1, 3, {0, 2, 3, 5, 6}},
  };
  for (const Case& cs : cases) {
    SCOPED_TRACE(cs.name);
    GrpoOptions o;
    o.beta = 0.3;
    o.epsilon = 0.2;
    o.epsilon_high = cs.epsilon_high;
    o.delta = cs.delta;
    o.importance = cs.level;
    const double lo = 1 - o.epsilon, hi = 1 + o.epsilon_high, delta = cs.delta > 0 ? cs.delta : 1e300;
    const auto ratios = [&](const std::vector<double>& x) {
      std::vector<double> rho(x.size());
      for (size_t i = 0, j = 0; j < len.size(); ++j) {
        double mean = 0;
        for (int64_t t = 0; t < len[j]; ++t) mean += (old[i + t] - x[i + t]) / static_cast<double>(len[j]);
        for (int64_t t = 0; t < len[j]; ++t, ++i)
          rho[i] = cs.level == GrpoImportance::kToken ? std::exp(old[i] - x[i]) : std::exp(mean);
      }
      return rho;
    };
    const auto f = [&](const std::vector<double>& x) {
      const std::vector<double> rho = ratios(x);
      double s = 0;
      for (size_t i = 0, j = 0; j < len.size(); ++j)
        for (int64_t t = 0; t < len[j]; ++t, ++i) {
          const double clipped = std::min(std::max(rho[i], lo), hi);
          const double k = x[i] - ref[i];
          s += c[j] * (-std::min(std::min(rho[i], delta) * a[j], clipped * a[j]) + o.beta * (std::exp(k) - k - 1));
        }
      return s;
    };
    GrpoTokenTerms terms;
    const std::vector<double> d = grpo_token_weights(o, c, a, len, nll, &old, &ref, &terms);
    const std::vector<double> at(nll.begin(), nll.end());
    for (size_t i = 0; i < at.size(); ++i) {
      std::vector<double> up = at, dn = at;
      up[i] += 1e-6;
      dn[i] -= 1e-6;
      EXPECT_NEAR(d[i], (f(up) - f(dn)) / 2e-6, 1e-7) << "token " << i;
    }
    EXPECT_NEAR(terms.policy + o.beta * terms.weighted_kl, f(at), 1e-12);
    // No ratio within 1e-3 of a bound, so f is smooth at each token and the differences are its derivative.
    const std::vector<double> rho = ratios(at);
    for (size_t i = 0; i < rho.size(); ++i) {
      for (double bound : {lo, hi, delta}) EXPECT_GT(std::fabs(rho[i] - bound), 1e-3) << i;
    }
    EXPECT_EQ(terms.clipped_low, cs.low);
    EXPECT_EQ(terms.clipped_high, cs.high);
    EXPECT_EQ(terms.tokens, 7);
    for (size_t i = 0, j = 0; j < len.size(); ++j) {
      for (int64_t t = 0; t < len[j]; ++t, ++i) {
        const double kl_part = c[j] * o.beta * (std::exp(static_cast<double>(nll[i]) - ref[i]) - 1);
        if (std::count(cs.kl_only.begin(), cs.kl_only.end(), i)) {
          EXPECT_DOUBLE_EQ(d[i], kl_part) << "token " << i;
        } else {
          EXPECT_GT(std::fabs(d[i] - kl_part), 1e-3) << "token " << i << " has its policy gradient";
        }
      }
    }
  }
}

// ---- rewards ----------------------------------------------------------------------------------------------------

std::vector<double> score(const std::string& spec, const std::vector<std::string>& completions,
                          const Json& record = Json{{"prompt", "q"}}, int64_t max_len = 16) {
  auto f = make_reward_functions({spec}, max_len);
  std::vector<RewardSample> s(completions.size());
  for (size_t i = 0; i < s.size(); ++i) {
    s[i].record = &record;
    s[i].completion = completions[i];
    s[i].ids.assign(completions[i].size(), 7);
    s[i].conversational = record["prompt"].is_array();  // as the rollouts set it
  }
  return f[0]->score(s);
}

TEST(GrpoRewards, AccuracyComparesFinalAnswers) {
  const Json gsm = {{"question", "q"}, {"answer", "3 + 4 = <<3+4=7>>7 apples\n#### 1,072"}};
  EXPECT_EQ(score("accuracy", {"so the total is 1072.", "#### 1,072", "The answer is \\boxed{1072}", "it is 1071",
                               "no number", "1072.0 apples, or 5"},
                  gsm),
            (std::vector<double>{1, 1, 1, 0, 0, 0}));  // the last: flexible-extract takes the last number
  const Json boxed = {{"prompt", "q"}, {"solution", "We get $\\boxed{\\frac{3}{4}}$."}};
  EXPECT_EQ(score("accuracy", {"\\boxed{\\frac{3}{4}}", "\\boxed{0.75}"}, boxed), (std::vector<double>{1, 0}));
  EXPECT_EQ(score("accuracy", {"3.0"}, Json{{"prompt", "q"}, {"ground_truth", 3}}), (std::vector<double>{1}));
  auto f = make_reward_functions({"accuracy"}, 16);
  EXPECT_TRUE(contains(f[0]->check_record(Json{{"prompt", "q"}}), "needs a reference answer"));
  EXPECT_EQ(f[0]->check_record(gsm), "");
}

TEST(GrpoRewards, FormatRegexContainsAndLength) {
  EXPECT_EQ(score("think_format", {"<think>a</think>b", "<think>a", "x<think>a</think>", "<think>a<think></think>"}),
            (std::vector<double>{1, 0, 0, 0}));
  EXPECT_EQ(score("regex=^[0-9]+$", {"123", "12a", ""}), (std::vector<double>{1, 0, 0}));
  EXPECT_EQ(score("contains=dog", {"a dog", "a cat"}), (std::vector<double>{1, 0}));
  // max 16, cache 4: no penalty up to 12 tokens, then linear to -1 at 16, -1 beyond (ids: one per character here)
  EXPECT_EQ(score("soft_overlong=4", {std::string(12, 'x'), std::string(14, 'x'), std::string(17, 'x')}),
            (std::vector<double>{0, -0.5, -1}));
  auto two = make_reward_functions({"contains=a", "contains=b", "accuracy"}, 16);
  EXPECT_EQ(two[0]->name(), "contains");
  EXPECT_EQ(two[1]->name(), "contains_2");
  EXPECT_TRUE(contains(error_of([] { make_reward_functions({"bleu"}, 16); }), "unknown reward"));
  EXPECT_TRUE(contains(error_of([] { make_reward_functions({"regex=("}, 16); }), "not a valid ECMAScript"));
  EXPECT_TRUE(contains(error_of([] { make_reward_functions({"accuracy=1"}, 16); }), "accuracy takes no value"));
  EXPECT_TRUE(contains(error_of([] { make_reward_functions({"soft_overlong=16"}, 16); }), "the cache must be"));
}

TEST(GrpoRewards, AnExternalScorerReadsJsonLines) {
  // A scorer in Python: 1 for a completion mentioning "dog", null (does not apply) otherwise, a line out per line in;
  // many lines at once (far more than a socket's buffer) to show neither side blocks the other.
  const std::string sh = "python3 -c 'import json, sys\nfor l in sys.stdin: print(1 if \"dog\" in "
                         "json.loads(l)[\"completion\"] else \"null\", flush=True)'";
  std::vector<std::string> many;
  for (int i = 0; i < 3000; ++i) many.push_back(i % 3 == 0 ? "a dog " + std::string(40, 'x') : "a cat");
  const std::vector<double> v = score("cmd=" + sh, many);
  ASSERT_EQ(v.size(), many.size());
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(std::isnan(v[i]), i % 3 != 0) << i;
  // The record's fields, the completion (messages for a conversational prompt) and its ids reach the scorer.
  const Json rec = {{"prompt", Json::array({Json{{"role", "user"}, {"content", "hi"}}})}, {"answer", "42"}};
  const std::string want =
      "{\"prompt\":[{\"role\":\"user\",\"content\":\"hi\"}],\"answer\":\"42\",\"completion\":[{\"role\":\"assistant\","
      "\"content\":\"ok\"}],\"completion_ids\":[7,7],\"truncated\":false}";
  const std::string dir = test::scratch_dir();
  write_file_atomic(dir + "/want.txt", want + "\n");
  EXPECT_EQ(score("cmd=python3 -c 'import sys\nw = open(sys.argv[1]).read()\nfor l in sys.stdin: print(int(l == w), "
                  "flush=True)' " + dir + "/want.txt",
                  {"ok"}, rec),
            (std::vector<double>{1}));
  EXPECT_TRUE(contains(error_of([] { score("cmd=while read -r l; do echo many; done", {"a"}); }),
                       "line 1 is \"many\", not a number"));
  // A scorer that ends (or stops reading) before it answers: named, with how far it got.
  EXPECT_TRUE(contains(error_of([] { score("cmd=true", {"a", "b"}); }),
                       "--reward cmd=true: it ended (exit status 0) after 0 of 2 rewards"));
  EXPECT_TRUE(contains(error_of([] { score("cmd=exit 3", {"a"}); }), "it ended (exit status 3)"));
}

// ---- prompts ----------------------------------------------------------------------------------------------------

TEST(GrpoData, PromptFormatsAndTheirRecords) {
  const std::string root = test::scratch_dir();
  const Tokenizer tok = test::byte_tokenizer(
      root + "/tok", read_file(test::source_dir() + "/tests/data/chat_templates/qwen2.5.jinja"));
  const std::string path = root + "/p.jsonl";
  write_file_atomic(path, "{\"prompt\": \"abc\", \"answer\": \"7\"}\n"
                          "{\"prompt\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n"
                          "{\"question\": \"Why?\", \"answer\": \"#### 3\"}\n"
                          "{\"prompt\": \"" + std::string(190, 'z') + "\"}\n");
  SftDataOptions d;
  d.max_len = 200;
  const SftDataset ds = load_grpo_dataset(path, tok, d, /*max_completion_len=*/16);
  ASSERT_EQ(ds.train.size(), 3u);  // the 190-byte prompt leaves no room for 16 new tokens in 200
  EXPECT_EQ(ds.stats.dropped_long_prompts, 1);
  // The split's seeded order: each prompt found by its record.
  std::map<std::string, std::vector<int32_t>> by;
  for (size_t i = 0; i < ds.train.size(); ++i) by[Json::parse(ds.train_records[i])["prompt"].dump()] = ds.train[i].tokens;
  EXPECT_EQ(by["\"abc\""], (std::vector<int32_t>{'a', 'b', 'c'}));
  const std::string chat = tok.decode(by["[{\"role\":\"user\",\"content\":\"hi\"}]"]);  // a default system turn, then
  EXPECT_EQ(chat.rfind("<|im_start|>system\n", 0), 0u) << chat;
  const std::string tail = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";  // the generation prompt last
  EXPECT_EQ(chat.substr(chat.size() - tail.size()), tail) << chat;
  EXPECT_EQ(tok.decode(by["\"Why?\""]), "Why?");  // GSM8K's question handed on as the prompt
  for (const std::string& r : ds.train_records) {
    const Json j = Json::parse(r);
    if (j["prompt"] == "abc") {
      EXPECT_EQ(j["answer"], "7");
    }
    if (j["prompt"] == "Why?") {
      EXPECT_EQ(j["question"], "Why?");
    }
  }
  write_file_atomic(path, "{\"prompt\": 3}\n");
  EXPECT_TRUE(contains(error_of([&] { load_grpo_dataset(path, tok, d, 16); }), "p.jsonl:1"));
  write_file_atomic(path, "{\"text\": \"a\"}\n");
  EXPECT_TRUE(contains(error_of([&] { load_grpo_dataset(path, tok, d, 16); }), "expected a \"prompt\""));
}

TEST(GrpoData, ACompletionIsTrainedOnItsOwnTokens) {
  const std::vector<SftExample> ex = {SftExample{{5, 6, 7}, {0, 1, 1}}};
  GrpoSample s;
  s.prompt = 0;
  s.completion = {8, 9};
  s.truncated = true;
  const SftBatch b = grpo_batch(ex, {s, s}, /*mask_truncated=*/false);
  EXPECT_EQ(b.packed.tokens, (std::vector<int32_t>{5, 6, 7, 8, 9, 5, 6, 7, 8, 9}));
  EXPECT_EQ(b.targets, (std::vector<int32_t>{-100, -100, 8, 9, -100, -100, -100, 8, 9, -100}));
  EXPECT_EQ(b.num_targets, 4);
  EXPECT_EQ(grpo_batch(ex, {s}, /*mask_truncated=*/true).num_targets, 0);
}

// ---- the unmerged adapter the rollouts sample with ---------------------------------------------------------------

TEST(GrpoRollouts, TheAttachedAdapterIsTheTrainersForward) {
  const std::string root = test::scratch_dir();
  QwenModel model(test::make_tiny_model(root + "/m", /*seed=*/3));
  const LoraAdapter a = test::adapter_with_random_b(
      model.config(), {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}, 4, 8, false, 5, 0.05f);
  const PackedBatch b = PackedBatch::from_sequences({{1, 2, 3, 4, 5}, {9, 8, 7}});
  const std::vector<float> want = lora_forward_logits(model, a, b);  // the trainer's fp32 adapted forward
  const LoraInferenceLayout layout = lora_inference_layout(a, model.config(), "test");
  model.attach_adapter(&layout);
  const std::vector<float> got = model.forward_logits(b);
  ASSERT_EQ(got.size(), want.size());
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, static_cast<double>(std::fabs(got[i] - want[i])));
  EXPECT_LT(worst, 1e-4);  // fp32 both, the branch's sums in another order
  // Batched decode steps keep each sequence's lone-step bits with the branch too (GRPO's groups decode together).
  test::expect_batched_step_is_lone_step(model);
  // A group: each prompt's copies sampled with their own seeds, each as generate() with that seed.
  SamplingOptions so;
  so.temperature = 1.f;
  so.max_new_tokens = 6;
  const std::vector<uint64_t> seeds = {11, 12, 13};
  const auto outs = generate_batch(model, {{1, 2}, {1, 2}, {1, 2}}, so, 3, nullptr, &seeds);
  for (size_t i = 0; i < seeds.size(); ++i) {
    SamplingOptions one = so;
    one.seed = seeds[i];
    EXPECT_EQ(outs[i], generate(model, {1, 2}, one)) << i;
  }
  EXPECT_NE(outs[0], outs[1]);
  model.attach_adapter(nullptr);
  EXPECT_NE(model.forward_logits(b), got);  // (DoRA and MoE experts attached: tests/test_attached_adapter.cpp)
}

// ---- training end to end ----------------------------------------------------------------------------------------

// Story openings of TinyStories (the paragraphs' first six words), n of them.
std::string story_prompts(const std::string& path, size_t from, size_t n) {
  std::istringstream in(read_file(test::shared_data_dir() + "/tinystories/tinystories_val.txt"));
  std::string line, out;
  size_t seen = 0;
  while (std::getline(in, line) && seen < from + n) {
    std::istringstream words(line);
    std::string w, start;
    for (int k = 0; k < 6 && (words >> w); ++k) start += (k ? " " : "") + w;
    if (line.size() < 100 || start.find('"') != std::string::npos || start.find('\\') != std::string::npos) continue;
    if (seen++ >= from) out += "{\"prompt\": \"" + start + "\"}\n";
  }
  write_file_atomic(path, out);
  return path;
}

TEST(GrpoTrain, Stories260KLearnsToMentionADog) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string root = test::scratch_dir();
  const std::string model = test::import_stories260k(root + "/s260");
  TrainOptions o = test::small_grpo_options(model, story_prompts(root + "/p.jsonl", 0, 120), root + "/run", 40);
  o.eval_data_path = story_prompts(root + "/e.jsonl", 200, 12);
  o.batch_size = 4;
  o.grpo_options.num_generations = 8;
  o.grpo_options.beta = 0.1;
  o.lora.r = 8;
  o.lora.alpha = 16;
  const TrainReport r = train_lora(o);
  std::printf("eval reward (share of completions with \"dog\") %.4f -> %.4f\n", r.first_eval_reward, r.eval_reward);
  EXPECT_LT(r.first_eval_reward, 0.1);
  EXPECT_GT(r.eval_reward, 0.3);
  const std::vector<double> kl = test::step_metric(o.out_dir + "/metrics.jsonl", "kl");
  EXPECT_EQ(kl[0], 0.0);  // step 1's policy is the base (B = 0), through the same forward: KL exactly 0
  EXPECT_GT(kl.back(), 0.0);
  EXPECT_EQ(test::step_metric(o.out_dir + "/metrics.jsonl", "completions_max_length")[0], 24.0);
}

// Six steps on a tiny model over five short prompts rewarded by two functions, into root/full.
TrainOptions five_prompt_run(const std::string& root) {
  const std::string model = test::make_tiny_model(root + "/m", /*seed=*/2);
  write_file_atomic(root + "/p.jsonl", "{\"prompt\": \"Ann is\"}\n{\"prompt\": \"Bob was\"}\n{\"prompt\": \"Cid\"}\n"
                                       "{\"prompt\": \"Dee has a\"}\n{\"prompt\": \"Eve\"}\n");
  TrainOptions o = test::small_grpo_options(model, root + "/p.jsonl", root + "/full", 6);
  o.grpo_options.rewards = {"contains=a", "regex=[0-9]"};
  return o;
}

TEST(GrpoTrain, ResumeIsBitExact) {
  const std::string root = test::scratch_dir();
  TrainOptions full = five_prompt_run(root);
  full.grpo_options.reward_weights = {1.0, 0.5};
  full.grpo_options.beta = 0.05;
  full.grpo_options.temperature = 0.8f;
  full.grad_accum = 2;
  full.save_every = 2;
  train_lora(full);
  EXPECT_EQ(test::train_interrupted(full, root + "/part", 3).start_step, 2);
  test::expect_same_resumed_run(full.out_dir, root + "/part", {"loss", "reward", "kl", "grad_norm", "completions_mean_length"});
  TrainOptions other = full;
  other.out_dir = root + "/part";
  other.resume = true;
  other.grpo_options.num_generations = 2;
  EXPECT_TRUE(contains(error_of([&] { train_lora(other); }), "\"num_generations\" (--num-generations): saved 4, now 2"));
}

// num_iterations μ = 3: steps 1-3 train on one generation (the same completions, so the same reward statistics and
// tokens; steps 2 and 3 sample nothing), step 4 samples anew; at a generation's first step the ratio to the sampling
// policy is 1 (its log-probabilities are the same forward's), so nothing clips there, and after an update with a
// tight epsilon some tokens do. A run resumed from a checkpoint at a generation's end is the uninterrupted run bit
// for bit; one resumed from inside a generation samples its prompts again. With --epochs, each generation counts μ
// steps.
TEST(GrpoTrain, NumIterationsTrainsOneGenerationSeveralSteps) {
  const std::string root = test::scratch_dir();
  TrainOptions full = five_prompt_run(root);
  full.grpo_options.beta = 0.05;
  full.grpo_options.num_iterations = 3;
  full.grpo_options.epsilon = 0.01;
  full.lr = 0.05;
  full.warmup_steps = 0;  // the policy moves from the first step (transformers' warm-up gives step 0 lr 0)
  full.save_every = 3;
  train_lora(full);
  const std::string metrics = full.out_dir + "/metrics.jsonl";
  const std::vector<double> reward = test::step_metric(metrics, "reward"), len = test::step_metric(metrics, "completions_mean_length"),
                            tokens = test::step_metric(metrics, "tokens"), rollout = test::step_metric(metrics, "rollout_s"),
                            clip = test::step_metric(metrics, "clip_ratio_region_mean"), loss = test::step_metric(metrics, "loss");
  ASSERT_EQ(reward.size(), 6u);
  for (size_t k : {1u, 2u, 4u, 5u}) {
    EXPECT_EQ(reward[k], reward[k - 1]) << k;
    EXPECT_EQ(len[k], len[k - 1]) << k;
    EXPECT_EQ(tokens[k], tokens[k - 1]) << k;
    EXPECT_EQ(rollout[k], 0.0) << k;
  }
  EXPECT_GT(rollout[0], 0.0);
  EXPECT_GT(rollout[3], 0.0);
  EXPECT_EQ(clip[0], 0.0);
  EXPECT_EQ(clip[3], 0.0);
  EXPECT_GT(std::max({clip[1], clip[2], clip[4], clip[5]}), 0.0) << "lr 0.05 moves the policy past a 1% clip";
  EXPECT_NE(loss[1], loss[0]);  // the same completions, another policy
  // Resumed at step 3 (a generation's end): bit for bit.
  EXPECT_EQ(test::train_interrupted(full, root + "/part", 4).start_step, 3);
  test::expect_same_resumed_run(full.out_dir, root + "/part", {"loss", "reward", "kl", "grad_norm", "clip_ratio_low_mean"});
  // Resumed at step 2 (inside the first generation): step 3 samples again, and the run ends.
  TrainOptions mid = full;
  mid.save_every = 2;
  mid.out_dir = root + "/mid";
  EXPECT_EQ(test::train_interrupted(mid, root + "/mid", 3).start_step, 2);
  const std::vector<double> mid_rollout = test::step_metric(mid.out_dir + "/metrics.jsonl", "rollout_s");
  ASSERT_EQ(mid_rollout.size(), 6u);
  EXPECT_GT(mid_rollout[2], 0.0);
  EXPECT_EQ(mid_rollout[1], 0.0);
  // --epochs 1 over 5 prompts in batches of 2: 3 generations, 2 steps each.
  TrainOptions epochs = full;
  epochs.out_dir = root + "/epochs";
  epochs.max_steps = 0;
  epochs.epochs = 1;
  epochs.save_every = 0;
  epochs.grpo_options.num_iterations = 2;
  train_lora(epochs);
  EXPECT_EQ(test::step_metric(epochs.out_dir + "/metrics.jsonl", "loss").size(), 6u);
}

TEST(GrpoTrain, RefusesWhatItCannotRun) {
  const std::string root = test::scratch_dir();
  const std::string model = test::make_tiny_model(root + "/m", /*seed=*/2);
  write_file_atomic(root + "/p.jsonl", "{\"prompt\": \"Ann is\"}\n{\"prompt\": \"Bob\"}\n");
  const auto refused = [&](const std::function<void(TrainOptions*)>& edit) {
    TrainOptions o = test::small_grpo_options(model, root + "/p.jsonl", root + "/run", 2);
    edit(&o);
    return error_of([&] { train_lora(o); });
  };
  EXPECT_TRUE(contains(refused([](TrainOptions* o) { o->grpo_options.num_generations = 1; }), "--num-generations must be >= 2"));
  EXPECT_TRUE(contains(refused([](TrainOptions* o) { o->grpo_options.rewards.clear(); }), "at least one --reward"));
  EXPECT_TRUE(contains(refused([](TrainOptions* o) { o->grpo_options.rewards = {"accuracy"}; }),
                       "the accuracy reward needs a reference answer"));
  EXPECT_TRUE(contains(refused([](TrainOptions* o) { o->grpo_options.reward_weights = {1, 2}; }), "2 weights for 1"));
  EXPECT_TRUE(contains(refused([](TrainOptions* o) { o->use_cuda = true; }), "trains on the CPU for now"));
  EXPECT_TRUE(contains(refused([](TrainOptions* o) { o->grpo_options.num_iterations = 0; }), "--num-iterations must be >= 1"));
  EXPECT_TRUE(contains(refused([](TrainOptions* o) { o->grpo_options.epsilon = 1.5; }), "--epsilon must be in (0, 1)"));
  EXPECT_TRUE(contains(refused([](TrainOptions* o) { o->grpo_options.max_completion_len = 64; }), "leaves no room"));
  EXPECT_TRUE(contains(refused([](TrainOptions* o) { o->kto = true; }), "give one objective"));
  EXPECT_FALSE(dir_exists(root + "/run"));  // refused before anything was written
}

}  // namespace
}  // namespace qwenq
