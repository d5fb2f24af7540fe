// trainer/sampling.h and trainer/generation_config.h: the repetition penalty by hand; the kept set and probabilities
// against the same filters written the way transformers' processors compute them (ascending sort and cumulative sum
// for top-p, a threshold on the k-th largest value for top-k, softmax ratios for min-p) over a seeded sweep; ties,
// draw frequencies, greedy with a penalty; generation_config.json read with transformers' defaults (Qwen2's real
// file from ../shared) and its refusals. tests/oracle/test_sampling_oracle.py checks the same against transformers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <map>
#include <string>
#include <vector>

#include "core/files.h"
#include "core/rng.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_paths.h"
#include "trainer/generate.h"
#include "trainer/generation_config.h"
#include "trainer/sampling.h"

namespace qwenq {
namespace {

constexpr double kProbTol = 1e-12;  // the same double arithmetic in another order

TEST(Sampling, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogitsOnce) {
  std::vector<float> z = {2.f, -2.f, 0.5f, 3.f, -1.f};
  apply_repetition_penalty(z, 2.f, {0, 1, 1, 3, 1});  // 1 three times: penalized once, as torch's gather/scatter
  EXPECT_EQ(z, (std::vector<float>{1.f, -4.f, 0.5f, 1.5f, -1.f}));
  apply_repetition_penalty(z, 1.f, {0});  // 1: off
  EXPECT_EQ(z[0], 1.f);
  test::expect_error([&] { apply_repetition_penalty(z, 1.5f, {5}); },
                     {"repetition penalty: token id 5 outside the vocabulary of 5"});
}

// transformers' warpers on scores s = z / T, written as its processors compute them: top-k removes s below the k-th
// largest; top-p sorts ascending, takes the cumulative softmax and removes entries <= 1 - p except the largest;
// min-p removes probabilities below m times the largest; the result is the softmax of what is left.
std::vector<double> transformers_style(const std::vector<float>& z, const SamplingOptions& o) {
  const size_t V = z.size();
  std::vector<double> s(V);
  for (size_t v = 0; v < V; ++v) s[v] = z[v] / static_cast<double>(o.temperature);
  std::vector<bool> alive(V, true);
  if (o.top_k > 0 && static_cast<size_t>(o.top_k) < V) {
    std::vector<double> sorted = s;
    std::sort(sorted.begin(), sorted.end(), std::greater<double>());
    for (size_t v = 0; v < V; ++v) alive[v] = s[v] >= sorted[o.top_k - 1];
  }
  const auto softmax = [&] {
    double mx = -1e300, sum = 0;
    for (size_t v = 0; v < V; ++v) if (alive[v]) mx = std::max(mx, s[v]);
    std::vector<double> p(V, 0.0);
    for (size_t v = 0; v < V; ++v) if (alive[v]) sum += p[v] = std::exp(s[v] - mx);
    for (double& x : p) x /= sum;
    return p;
  };
  if (o.top_p < 1.f) {
    const std::vector<double> p = softmax();
    std::vector<size_t> asc(V);
    for (size_t v = 0; v < V; ++v) asc[v] = v;
    std::stable_sort(asc.begin(), asc.end(), [&](size_t a, size_t b) {  // ascending; ties: the larger index first
      return p[a] < p[b] || (p[a] == p[b] && a > b);
    });
    double cum = 0;
    for (size_t i = 0; i + 1 < V; ++i) {  // the last (largest) always kept
      cum += p[asc[i]];
      if (cum <= 1.0 - o.top_p) alive[asc[i]] = false;
    }
  }
  if (o.min_p > 0.f) {
    const std::vector<double> p = softmax();
    const double top = *std::max_element(p.begin(), p.end());
    for (size_t v = 0; v < V; ++v) if (p[v] < o.min_p * top) alive[v] = false;
  }
  return softmax();
}

TEST(Sampling, DistributionIsTransformersFiltersOverASeededSweep) {
  Rng rng(12);
  int cases = 0, narrowed = 0;
  for (int64_t V : {1, 2, 7, 64, 1000}) {
    for (int c = 0; c < 40; ++c) {
      std::vector<float> z(static_cast<size_t>(V));
      for (float& x : z) x = static_cast<float>(rng.normal() * (c % 3 == 0 ? 0.3 : 3.0));
      SamplingOptions o;
      o.temperature = static_cast<float>(0.3 + 1.5 * rng.uniform());
      o.top_k = c % 4 == 0 ? 0 : static_cast<int64_t>(1 + rng.below(static_cast<uint64_t>(V + 2)));
      o.top_p = c % 5 == 1 ? 1.f : static_cast<float>(0.05 + 0.9 * rng.uniform());
      o.min_p = c % 3 == 2 ? static_cast<float>(0.3 * rng.uniform()) : 0.f;
      SCOPED_TRACE("V " + std::to_string(V) + " case " + std::to_string(c));
      const std::vector<double> want = transformers_style(z, o);
      const TokenDistribution d = sampling_distribution(z, o);
      std::vector<double> got(static_cast<size_t>(V), 0.0);
      double total = 0;
      for (size_t i = 0; i < d.ids.size(); ++i) {
        got[d.ids[i]] = d.probs[i];
        total += d.probs[i];
        if (i > 0) {
          EXPECT_GE(z[d.ids[i - 1]], z[d.ids[i]]) << "rank order";
        }
      }
      EXPECT_NEAR(total, 1.0, kProbTol);
      for (int64_t v = 0; v < V; ++v) {
        EXPECT_EQ(got[v] > 0, want[v] > 0) << "token " << v << " kept on one side only";
        EXPECT_NEAR(got[v], want[v], 1e-9) << v;
      }
      narrowed += static_cast<int64_t>(d.ids.size()) < V;
      ++cases;
    }
  }
  EXPECT_EQ(cases, 200);
  EXPECT_GT(narrowed, 120);  // the filters did remove tokens in most cases
}

TEST(Sampling, TopKKeepsTiesWithTheKthAndMinPIsRelativeToTheTop) {
  const std::vector<float> z = {1.f, 3.f, 3.f, 2.f, 3.f};
  SamplingOptions o;
  o.temperature = 1.f;
  o.top_k = 2;
  TokenDistribution d = sampling_distribution(z, o);
  EXPECT_EQ(d.ids, (std::vector<int32_t>{1, 2, 4}));  // the k-th largest is 3: every 3 stays, index order on ties
  for (double p : d.probs) EXPECT_NEAR(p, 1.0 / 3, kProbTol);
  o.top_k = 0;
  o.min_p = std::exp(-1.f) + 1e-6f;  // exp(2 - 3) is just below min_p times the top's weight
  d = sampling_distribution(z, o);
  EXPECT_EQ(d.ids, (std::vector<int32_t>{1, 2, 4}));
  o.min_p = std::exp(-1.f) - 1e-6f;
  EXPECT_EQ(sampling_distribution(z, o).ids, (std::vector<int32_t>{1, 2, 4, 3}));
  o.min_p = 0.f;
  o.top_p = 0.5f;  // each 3 holds e^3/(3e^3 + e^2 + e) = 0.29 of the mass: above the second 0.29 < 0.5, the third 0.57
  d = sampling_distribution(z, o);
  EXPECT_EQ(d.ids, (std::vector<int32_t>{1, 2}));
}

TEST(Sampling, DrawsFollowTheDistributionAndGreedyTakesThePenalizedArgmax) {
  const std::vector<float> z = {0.f, 1.f, 2.f, 0.5f, -1.f, 1.5f};
  SamplingOptions o;
  o.temperature = 0.8f;
  o.top_p = 0.9f;
  const TokenDistribution d = sampling_distribution(z, o);
  Rng rng(4);
  const int n = 40000;
  std::map<int32_t, int> count;
  for (int i = 0; i < n; ++i) {
    std::vector<float> l = z;
    ++count[sample_token(l, o, rng)];
  }
  for (size_t i = 0; i < d.ids.size(); ++i) {
    const double p = d.probs[i], sigma = std::sqrt(p * (1 - p) / n);
    EXPECT_NEAR(count[d.ids[i]] / double(n), p, 5 * sigma) << d.ids[i];
    count.erase(d.ids[i]);
  }
  EXPECT_TRUE(count.empty()) << "a token outside the kept set was drawn";
  SamplingOptions g;  // greedy
  std::vector<float> l = z;
  EXPECT_EQ(sample_token(l, g, rng), 2);
  g.repetition_penalty = 1.5f;
  l = z;
  EXPECT_EQ(sample_token(l, g, rng, {2}), 5);  // 2 / 1.5 < 1.5
  EXPECT_FLOAT_EQ(l[2], 2.f / 1.5f);           // the penalty is applied in place
}

TEST(Sampling, SettingsOutsideTheirRangesAreRefusedBeforeAnyWork) {
  const std::vector<std::pair<void (*)(SamplingOptions&), std::string>> bad = {
      {[](SamplingOptions& o) { o.temperature = std::numeric_limits<float>::infinity(); }, "--temperature inf"},
      {[](SamplingOptions& o) { o.temperature = -1.f; }, "--temperature -1: must be finite and >= 0"},
      {[](SamplingOptions& o) { o.top_k = -2; }, "--top-k -2: must be >= 0"},
      {[](SamplingOptions& o) { o.top_p = 0.f; }, "--top-p 0: must be in (0, 1]"},
      {[](SamplingOptions& o) { o.min_p = 1.5f; }, "--min-p 1.5: must be in [0, 1]"},
      {[](SamplingOptions& o) { o.repetition_penalty = 0.f; }, "--repetition-penalty 0: must be finite and > 0"},
  };
  for (const auto& [set, want] : bad) {
    SamplingOptions o;
    set(o);
    DecodeFns fns;  // never called: the settings are refused first
    fns.prefill = [](const std::vector<int32_t>&, int64_t) -> std::vector<float> { throw std::logic_error("ran"); };
    test::expect_error([&] { generate_with(16, {1}, o, fns); }, {want});
  }
}

void write(const std::string& path, const std::string& text) { write_file_atomic(path, text); }

TEST(GenerationConfig, TransformersDefaultsQwen2sFileAndRefusals) {
  const std::string dir = test::scratch_dir() + "/gencfg";
  make_dirs(dir);
  GenerationConfig g = load_generation_config(dir);  // no file: transformers' GenerationConfig defaults
  EXPECT_EQ(g.path, "");
  EXPECT_FALSE(g.do_sample);
  EXPECT_EQ(g.temperature, 1.f);
  EXPECT_EQ(g.top_k, 50);
  EXPECT_EQ(g.top_p, 1.f);
  EXPECT_EQ(g.min_p, 0.f);
  EXPECT_EQ(g.repetition_penalty, 1.f);
  EXPECT_TRUE(g.eos_token_ids.empty());
  const std::string f = dir + "/generation_config.json";
  write(f, R"({"do_sample": false, "eos_token_id": 2, "min_p": null})");
  g = load_generation_config(dir);
  EXPECT_EQ(g.path, f);
  EXPECT_EQ(g.eos_token_ids, std::vector<int32_t>{2});
  EXPECT_EQ(load_generation_config(f).path, "");  // a file path (a GGUF model) has none
  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"do_sample": true, "temperature": 0})", "\"temperature\" 0 with \"do_sample\": true"},
      {R"({"top_p": 0})", "\"top_p\" 0 outside (0, 1]"},
      {R"({"top_k": -1})", "\"top_k\" -1 is negative"},
      {R"({"min_p": 2})", "\"min_p\" 2 outside [0, 1]"},
      {R"({"repetition_penalty": 0})", "\"repetition_penalty\" 0 must be above 0"},
      {R"({"do_sample": "yes"})", "field \"do_sample\" must be true or false"},
      {R"({"eos_token_id": [1, "x"]})", "\"eos_token_id\" must be a token id or a list of them"},
      {R"([1])", "expected a JSON object"},
      {R"({"top_k": )", "not valid JSON"},
      {R"({"repetition_penalty": 1e300})", "\"repetition_penalty\" is not a finite 32-bit float"},
  };
  for (const auto& [text, want] : bad) {
    write(f, text);
    test::expect_error([&] { load_generation_config(dir); }, {f + ": " , want});
  }
  QWENQ_REQUIRE_SHARED_DATA();
  g = load_generation_config(test::shared_data_dir() + "/qwen2-tokenizer");  // Qwen2's own file
  EXPECT_TRUE(g.do_sample);
  EXPECT_FLOAT_EQ(g.temperature, 0.5f);
  EXPECT_EQ(g.top_k, 40);
  EXPECT_FLOAT_EQ(g.top_p, 0.7f);
  EXPECT_FLOAT_EQ(g.repetition_penalty, 1.1f);
  EXPECT_EQ(g.eos_token_ids, (std::vector<int32_t>{151645, 151643}));
}

}  // namespace
}  // namespace qwenq
