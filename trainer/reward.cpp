// The Bradley-Terry reward loss of trainer/reward.h, its derivatives, statistics and pooling.
#include "trainer/reward.h"

#include <cmath>

#include "core/error.h"
#include "core/files.h"
#include "core/json_file.h"
#include "core/safetensors.h"
#include "trainer/json_fields.h"
#include "trainer/qwen_weights.h"

namespace qwenq {

namespace {

// σ(x) without overflow for either sign.
double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

// softplus(x) = log(1 + eˣ), exact for large |x|.
double softplus(double x) { return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); }

}  // namespace

void check_reward_options(const RewardOptions& o) {
  QWENQ_CHECK(std::isfinite(o.center_coefficient) && o.center_coefficient >= 0,
              "--center-rewards-coefficient must be >= 0, not " << o.center_coefficient);
}

void RewardStats::add(const RewardStats& o) {
  pairs += o.pairs;
  correct += o.correct;
  loss += o.loss;
  reward_c += o.reward_c;
  reward_r += o.reward_r;
}

std::vector<double> RewardStats::pack() const {
  return {static_cast<double>(pairs), static_cast<double>(correct), loss, reward_c, reward_r};
}

RewardStats RewardStats::unpack(const std::vector<double>& v) {
  QWENQ_CHECK(v.size() == 5, "RewardStats::unpack: " << v.size() << " values, not 5");
  RewardStats s;
  s.pairs = static_cast<int64_t>(std::llround(v[0]));
  s.correct = static_cast<int64_t>(std::llround(v[1]));
  s.loss = v[2];
  s.reward_c = v[3];
  s.reward_r = v[4];
  return s;
}

RewardStats reward_batch_stats(const RewardOptions& o, const std::vector<double>& scores,
                               const std::vector<double>& margins) {
  QWENQ_CHECK(scores.size() % 2 == 0, "reward_batch_stats: " << scores.size() << " scores are not whole pairs");
  const size_t pairs = scores.size() / 2;
  QWENQ_CHECK(margins.empty() || margins.size() == pairs,
              "reward_batch_stats: " << margins.size() << " margins for " << pairs << " pairs");
  RewardStats s;
  for (size_t k = 0; k < pairs; ++k) {
    const double rc = scores[2 * k], rr = scores[2 * k + 1], mu = margins.empty() ? 0.0 : margins[k];
    ++s.pairs;
    s.correct += rc > rr ? 1 : 0;
    s.loss += softplus(rr - rc + mu) + o.center_coefficient * (rc + rr) * (rc + rr);
    s.reward_c += rc;
    s.reward_r += rr;
  }
  return s;
}

std::function<std::vector<double>(const std::vector<double>&)> reward_objective(const RewardOptions& o,
                                                                                std::vector<double> margins,
                                                                                int64_t step_pairs, RewardStats* stats) {
  QWENQ_CHECK(step_pairs > 0, "reward_objective: a step of " << step_pairs << " pairs");
  return [o, margins = std::move(margins), step_pairs, stats](const std::vector<double>& r) {
    if (stats) stats->add(reward_batch_stats(o, r, margins));
    std::vector<double> d(r.size());
    const double inv = 1.0 / static_cast<double>(step_pairs);
    for (size_t k = 0; k < r.size() / 2; ++k) {
      const double rc = r[2 * k], rr = r[2 * k + 1], mu = margins.empty() ? 0.0 : margins[k];
      const double sk = sigmoid(rr - rc + mu), center = 2.0 * o.center_coefficient * (rc + rr);
      d[2 * k] = (-sk + center) * inv;
      d[2 * k + 1] = (sk + center) * inv;
    }
    return d;
  };
}

int64_t last_non_pad(const int32_t* tokens, int64_t n, int32_t pad_id) {
  if (pad_id < 0) return n - 1;
  for (int64_t i = n - 1; i >= 0; --i)
    if (tokens[i] != pad_id) return i;
  return 0;
}

std::vector<int64_t> reward_pooled_rows(const PackedBatch& b, int32_t pad_id) {
  std::vector<int64_t> rows;
  for (int64_t j = 0; j < b.num_seqs(); ++j) {
    const int64_t first = b.cu_seqlens[j], n = b.cu_seqlens[j + 1] - first;
    QWENQ_CHECK(n > 0, "reward_pooled_rows: sequence " << j << " is empty");
    rows.push_back(first + last_non_pad(b.tokens.data() + first, n, pad_id));
  }
  return rows;
}

int32_t reward_pad_id(const std::string& model_dir, const Tokenizer& tok) {
  const std::string path = path_join(model_dir, "config.json");
  const int64_t from_config = optional_int(read_json_file(path), "pad_token_id", -1, path);
  if (from_config >= 0) return static_cast<int32_t>(from_config);
  return tok.pad_id() >= 0 ? tok.pad_id() : tok.eos_id();
}

bool sequence_classifier_dir(const std::string& dir) { return is_sequence_classifier(Checkpoint(dir)); }

double reward_head_init_std(const std::string& model_dir) {
  const std::string path = path_join(model_dir, "config.json");
  const double std = optional_number(read_json_file(path), "initializer_range", 0.02, path);
  QWENQ_CHECK(std >= 0, path << ": initializer_range must be a non-negative number, got " << std);
  return std;
}

}  // namespace qwenq
