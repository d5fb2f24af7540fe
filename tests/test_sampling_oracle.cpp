// The C++ half of tests/oracle/test_sampling_oracle.py: transformers' logits processors (built by its own
// GenerationMixin._get_logits_processor) applied to seeded logits, against trainer/sampling.h on the same logits,
// context and settings. Skipped unless the script points QWENQ_SAMPLING_ORACLE at its cases.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "core/rng.h"
#include "trainer/sampling.h"

namespace qwenq {
namespace {

// transformers' softmax is fp32 over fp32 scores z/T (|z/T| up to ~30: a few ulps of the exponent), ours double.
constexpr double kProbAbsTol = 2e-6;
constexpr double kProbRelTol = 1e-4;

TEST(SamplingOracle, KeptSetsProbabilitiesAndGreedyTokensAreTransformers) {
  const char* path = std::getenv("QWENQ_SAMPLING_ORACLE");
  if (!path) GTEST_SKIP() << "QWENQ_SAMPLING_ORACLE not set (run tests/oracle/test_sampling_oracle.py)";
  const nlohmann::json j = nlohmann::json::parse(read_file(path));
  int sampled = 0, greedy = 0;
  for (const auto& c : j.at("cases")) {
    const int64_t V = c.at("vocab").get<int64_t>();
    SCOPED_TRACE("V " + std::to_string(V) + " T " + std::to_string(c.at("temperature").get<double>()) + " top-k " +
                 std::to_string(c.at("top_k").get<int64_t>()) + " top-p " +
                 std::to_string(c.at("top_p").get<double>()) + " min-p " + std::to_string(c.at("min_p").get<double>()) +
                 " penalty " + std::to_string(c.at("repetition_penalty").get<double>()));
    std::vector<float> logits = c.at("logits").get<std::vector<float>>();
    ASSERT_EQ(static_cast<int64_t>(logits.size()), V);
    SamplingOptions o;
    o.temperature = c.at("do_sample").get<bool>() ? c.at("temperature").get<float>() : 0.f;
    o.top_k = c.at("top_k").get<int64_t>();
    o.top_p = c.at("top_p").get<float>();
    o.min_p = c.at("min_p").get<float>();
    o.repetition_penalty = c.at("repetition_penalty").get<float>();
    const std::vector<int32_t> context = c.at("context").get<std::vector<int32_t>>();
    if (o.temperature <= 0.f) {
      Rng rng(0);
      EXPECT_EQ(sample_token(logits, o, rng, context), c.at("greedy").get<int32_t>());
      ++greedy;
      continue;
    }
    apply_repetition_penalty(logits, o.repetition_penalty, context);
    const TokenDistribution d = sampling_distribution(logits, o);
    std::map<int32_t, double> ours;
    for (size_t i = 0; i < d.ids.size(); ++i) ours[d.ids[i]] = d.probs[i];
    const std::vector<int32_t> kept = c.at("kept").get<std::vector<int32_t>>();
    const std::vector<double> probs = c.at("probs").get<std::vector<double>>();
    EXPECT_EQ(d.ids.size(), kept.size());
    double worst = 0;
    for (size_t i = 0; i < kept.size(); ++i) {
      const auto it = ours.find(kept[i]);
      if (it == ours.end()) {
        ADD_FAILURE() << "transformers keeps token " << kept[i] << " (p " << probs[i] << "), we do not";
        continue;
      }
      EXPECT_NEAR(it->second, probs[i], kProbAbsTol + kProbRelTol * probs[i]) << kept[i];
      worst = std::max(worst, std::fabs(it->second - probs[i]));
    }
    std::printf("V %6lld: %zu kept (transformers %zu), max |Δp| %.2e\n", (long long)V, d.ids.size(), kept.size(), worst);
    ++sampled;
  }
  EXPECT_GE(sampled, 20);
  EXPECT_GE(greedy, 6);
}

}  // namespace
}  // namespace qwenq
