// The C++ half of tests/oracle/test_reward_model_oracle.py: a reward model saved by transformers
// (Qwen2ForSequenceClassification with the real Qwen2 tokenizer) read by trainer/reward_model.h, its texts, tokens
// and scores against transformers' for TRL's texts, and the same scores through GRPO's `--reward model=DIR`. Skipped
// unless the script points QWENQ_ORACLE_REWARD_DIR at its fixtures.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "trainer/grpo_reward.h"
#include "trainer/reward_model.h"

namespace qwenq {
namespace {

using Json = nlohmann::ordered_json;

// fp32 on both sides; summation orders differ (and our head's product is summed in double). Relative to the largest
// |reward|.
constexpr double kRewardOracleRelTol = 1e-5;

TEST(RewardModelOracle, TextsTokensAndScoresAreTransformers) {
  const char* dir_env = std::getenv("QWENQ_ORACLE_REWARD_DIR");
  if (!dir_env) GTEST_SKIP() << "QWENQ_ORACLE_REWARD_DIR not set (run tests/oracle/test_reward_model_oracle.py)";
  const std::string dir = path_join(dir_env, "rm");
  std::vector<Json> records;
  std::istringstream in(read_file(path_join(dir_env, "records.jsonl")));
  for (std::string line; std::getline(in, line);) records.push_back(Json::parse(line));
  ASSERT_FALSE(records.empty());
  const RewardModel rm(dir);
  std::vector<std::vector<int32_t>> seqs;
  double scale = 0;
  for (const Json& r : records) {
    const std::string text = rm.text(r["prompt"], r["completion"].get<std::string>());
    EXPECT_EQ(text, r["text"].get<std::string>());
    seqs.push_back(rm.tokens(text));
    EXPECT_EQ(seqs.back(), r["ids"].get<std::vector<int32_t>>()) << text;
    scale = std::max(scale, std::fabs(r["reward"].get<double>()));
  }
  const std::vector<double> got = rm.score(seqs);
  auto reward = make_reward_functions({"model=" + dir}, 16);
  std::vector<RewardSample> samples(records.size());
  for (size_t i = 0; i < records.size(); ++i) {
    samples[i].record = &records[i];
    samples[i].completion = records[i]["completion"].get<std::string>();
    samples[i].conversational = records[i]["prompt"].is_array();
  }
  const std::vector<double> through_grpo = reward[0]->score(samples);
  for (size_t i = 0; i < records.size(); ++i) {
    const double want = records[i]["reward"].get<double>();
    std::printf("reward %zu: ours %+.7f transformers %+.7f\n", i, got[i], want);
    EXPECT_NEAR(got[i], want, kRewardOracleRelTol * scale) << records[i]["text"];
    EXPECT_EQ(through_grpo[i], got[i]) << i;
  }
}

}  // namespace
}  // namespace qwenq
