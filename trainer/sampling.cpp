// trainer/sampling.h: transformers' repetition penalty, temperature, top-k, top-p and min-p, then one draw.
#include "trainer/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"

namespace qwenq {

void check_sampling_options(const SamplingOptions& o) {
  QWENQ_CHECK(std::isfinite(o.temperature) && o.temperature >= 0,
              "--temperature " << o.temperature << ": must be finite and >= 0 (0: greedy)");
  QWENQ_CHECK(o.top_k >= 0, "--top-k " << o.top_k << ": must be >= 0 (0: off)");
  QWENQ_CHECK(o.top_p > 0 && o.top_p <= 1, "--top-p " << o.top_p << ": must be in (0, 1] (1: off)");
  QWENQ_CHECK(o.min_p >= 0 && o.min_p <= 1, "--min-p " << o.min_p << ": must be in [0, 1] (0: off)");
  QWENQ_CHECK(std::isfinite(o.repetition_penalty) && o.repetition_penalty > 0,
              "--repetition-penalty " << o.repetition_penalty << ": must be finite and > 0 (1: off)");
}

void apply_repetition_penalty(std::vector<float>& logits, float penalty, const std::vector<int32_t>& context) {
  if (penalty == 1.f || context.empty()) return;
  const int64_t V = static_cast<int64_t>(logits.size());
  std::vector<int32_t> ids = context;
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());  // gather/scatter: each id penalized once
  for (int32_t c : ids) {
    QWENQ_CHECK(c >= 0 && c < V, "repetition penalty: token id " << c << " outside the vocabulary of " << V);
    float& z = logits[static_cast<size_t>(c)];
    z = z < 0 ? z * penalty : z / penalty;
  }
}

TokenDistribution sampling_distribution(const std::vector<float>& logits, const SamplingOptions& opt) {
  QWENQ_CHECK(opt.temperature > 0, "sampling_distribution: temperature " << opt.temperature << " (0 is greedy)");
  const int64_t V = static_cast<int64_t>(logits.size());
  QWENQ_CHECK(V > 0, "sampling_distribution: no logits");
  const auto ranked_before = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  std::vector<int32_t> idx(static_cast<size_t>(V));
  std::iota(idx.begin(), idx.end(), 0);
  int64_t keep = V;
  if (opt.top_k > 0 && opt.top_k < V) {  // everything at least as large as the k-th largest
    std::nth_element(idx.begin(), idx.begin() + (opt.top_k - 1), idx.end(), ranked_before);
    const float kth = logits[idx[opt.top_k - 1]];
    keep = std::partition(idx.begin(), idx.end(), [&](int32_t v) { return logits[v] >= kth; }) - idx.begin();
  }
  std::sort(idx.begin(), idx.begin() + keep, ranked_before);
  const double mx = logits[idx[0]];
  std::vector<double> w(static_cast<size_t>(keep));
  for (int64_t i = 0; i < keep; ++i) w[i] = std::exp((logits[idx[i]] - mx) / opt.temperature);
  if (opt.top_p < 1.f) {  // the mass ranked strictly above v is below p
    double total = 0;
    for (int64_t i = 0; i < keep; ++i) total += w[i];
    double above = 0;
    int64_t n = 0;
    while (n < keep && (n == 0 || above < opt.top_p * total)) above += w[n++];
    keep = n;
  }
  if (opt.min_p > 0.f) {  // w_v >= m · max w (ranked: w is non-increasing)
    const double floor = opt.min_p * w[0];
    int64_t n = 1;
    while (n < keep && w[n] >= floor) ++n;
    keep = n;
  }
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i) sum += w[i];
  TokenDistribution d;
  d.ids.assign(idx.begin(), idx.begin() + keep);
  d.probs.resize(static_cast<size_t>(keep));
  for (int64_t i = 0; i < keep; ++i) d.probs[i] = w[i] / sum;
  return d;
}

int32_t sample_token(std::vector<float>& logits, const SamplingOptions& opt, Rng& rng,
                     const std::vector<int32_t>& context) {
  apply_repetition_penalty(logits, opt.repetition_penalty, context);
  if (opt.temperature <= 0.f) {
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  const TokenDistribution d = sampling_distribution(logits, opt);
  double u = rng.uniform();
  for (size_t i = 0; i < d.ids.size(); ++i) {
    u -= d.probs[i];
    if (u <= 0) return d.ids[i];
  }
  return d.ids.back();
}

}  // namespace qwenq
