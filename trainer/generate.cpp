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

std::vector<float> prefill_continuing(const QwenModel& model, CachedContext* ctx, const std::vector<int32_t>& prompt,
                                      int64_t capacity, KvCacheDType kv) {
  QWENQ_CHECK(!prompt.empty(), "generate: the prompt is empty (no tokens)");
  QWENQ_CHECK(static_cast<int64_t>(ctx->tokens.size()) == ctx->cache.length,
              "prefill_continuing: the context holds " << ctx->tokens.size() << " tokens but its cache "
                                                       << ctx->cache.length);
  size_t keep = 0;
  if (ctx->cache.dtype == kv && ctx->cache.capacity > 0) {
    const size_t most = std::min(ctx->tokens.size(), prompt.size() - 1);
    while (keep < most && ctx->tokens[keep] == prompt[keep]) ++keep;
  } else {
    ctx->cache = model.make_cache(0, kv);
  }
  model.grow_cache(&ctx->cache, std::max(capacity, ctx->cache.capacity));
  ctx->cache.length = static_cast<int64_t>(keep);  // rows past it are overwritten before they are read
  ctx->tokens.resize(keep);
  ctx->reused = static_cast<int64_t>(keep);
  const std::vector<int32_t> rest(prompt.begin() + static_cast<std::ptrdiff_t>(keep), prompt.end());
  std::vector<float> logits = model.forward_step(rest, &ctx->cache);
  ctx->tokens.insert(ctx->tokens.end(), rest.begin(), rest.end());
  return logits;
}

std::vector<int32_t> generate_continuing(const QwenModel& model, CachedContext* ctx, const std::vector<int32_t>& prompt,
                                         const SamplingOptions& opt, const std::function<void(int32_t)>& on_token) {
  DecodeFns fns;
  fns.prefill = [&](const std::vector<int32_t>& p, int64_t capacity) {
    return prefill_continuing(model, ctx, p, capacity, opt.kv_cache);
  };
  fns.step = [&](int32_t id) {
    std::vector<float> logits = model.forward_step({id}, &ctx->cache);
    ctx->tokens.push_back(id);
    return logits;
  };
  try {
    return generate_with(model.config().max_position_embeddings, prompt, opt, fns, on_token);
  } catch (...) {
    ctx->cache = KvCache{};
    ctx->tokens.clear();
    ctx->reused = 0;
    throw;
  }
}

}  // namespace qwenq
