#include "trainer/generate.h"

#include <algorithm>

#include "core/error.h"
#include "core/rng.h"

namespace qwenq {

std::vector<int32_t> generate_with(int64_t max_positions, const std::vector<int32_t>& prompt,
                                   const SamplingOptions& opt, const DecodeFns& fns,
                                   const std::function<void(int32_t)>& on_token) {
  QWENQ_CHECK(!prompt.empty(), "generate: the prompt is empty (no tokens)");
  check_sampling_options(opt);
  const int64_t prompt_len = static_cast<int64_t>(prompt.size());
  const int64_t total = std::min<int64_t>(prompt_len + opt.max_new_tokens, max_positions);
  QWENQ_CHECK(prompt_len < total || opt.max_new_tokens == 0,
              "generate: the prompt has " << prompt.size() << " tokens, the model's context is " << max_positions);
  Rng rng(opt.seed);
  std::vector<int32_t> out;
  std::vector<int32_t> context;  // prompt + tokens so far, for the repetition penalty only
  if (opt.repetition_penalty != 1.f) context = prompt;
  std::vector<float> logits = fns.prefill(prompt, total);
  int64_t length = prompt_len;
  while (length < total) {
    const int32_t next = sample_token(logits, opt, rng, context);
    out.push_back(next);
    if (opt.repetition_penalty != 1.f) context.push_back(next);
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
