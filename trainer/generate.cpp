#include "trainer/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"

namespace qwenq {

int32_t sample_token(std::vector<float>& logits, const SamplingOptions& opt, Rng& rng) {
  const int64_t V = static_cast<int64_t>(logits.size());
  if (opt.temperature <= 0.f) {
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  std::vector<int32_t> idx(V);
  std::iota(idx.begin(), idx.end(), 0);
  int64_t keep = (opt.top_k > 0 && opt.top_k < V) ? opt.top_k : V;
  std::partial_sort(idx.begin(), idx.begin() + keep, idx.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  const float mx = logits[idx[0]];
  std::vector<double> p(keep);
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i) sum += p[i] = std::exp((logits[idx[i]] - mx) / opt.temperature);
  if (opt.top_p < 1.f) {  // smallest prefix whose mass reaches top_p
    double acc = 0;
    int64_t n = 0;
    while (n < keep && acc < opt.top_p * sum) acc += p[n++];
    keep = std::max<int64_t>(n, 1);
    sum = acc;
  }
  double u = rng.uniform() * sum;
  for (int64_t i = 0; i < keep; ++i) {
    u -= p[i];
    if (u <= 0) return idx[i];
  }
  return idx[keep - 1];
}

std::vector<int32_t> generate_with(int64_t max_positions, const std::vector<int32_t>& prompt,
                                   const SamplingOptions& opt, const DecodeFns& fns,
                                   const std::function<void(int32_t)>& on_token) {
  QWENQ_CHECK(!prompt.empty(), "generate: the prompt is empty (no tokens)");
  const int64_t prompt_len = static_cast<int64_t>(prompt.size());
  const int64_t total = std::min<int64_t>(prompt_len + opt.max_new_tokens, max_positions);
  QWENQ_CHECK(prompt_len < total || opt.max_new_tokens == 0,
              "generate: the prompt has " << prompt.size() << " tokens, the model's context is " << max_positions);
  Rng rng(opt.seed);
  std::vector<int32_t> out;
  std::vector<float> logits = fns.prefill(prompt, total);
  int64_t length = prompt_len;
  while (length < total) {
    const int32_t next = sample_token(logits, opt, rng);
    out.push_back(next);
    if (on_token) on_token(next);
    if (std::find(opt.stop_ids.begin(), opt.stop_ids.end(), next) != opt.stop_ids.end()) break;
    if (opt.stop_when && opt.stop_when(out)) break;
    if (static_cast<int64_t>(out.size()) >= opt.max_new_tokens) break;
    if (length + 1 >= total) break;  // the context is full: no next token, so its logits are not needed
    logits = fns.step(next);
    ++length;
  }
  return out;
}

std::vector<int32_t> generate(const QwenModel& model, const std::vector<int32_t>& prompt, const SamplingOptions& opt,
                              const std::function<void(int32_t)>& on_token) {
  KvCache cache;
  DecodeFns fns;
  fns.prefill = [&](const std::vector<int32_t>& p, int64_t capacity) {
    cache = model.make_cache(capacity, opt.kv_cache);
    return model.forward_step(p, &cache);
  };
  fns.step = [&](int32_t id) { return model.forward_step({id}, &cache); };
  return generate_with(model.config().max_position_embeddings, prompt, opt, fns, on_token);
}

}  // namespace qwenq
