#include "trainer/generate.h"

#include <algorithm>
#include <memory>

#include "core/error.h"
#include "core/rng.h"

namespace qwenq {

TokenLoop::TokenLoop(int64_t max_positions, const std::vector<int32_t>& prompt, const SamplingOptions& opt)
    : opt_(opt), rng_(opt.seed) {
  QWENQ_CHECK(!prompt.empty(), "generate: the prompt is empty (no tokens)");
  check_sampling_options(opt);
  const int64_t prompt_len = static_cast<int64_t>(prompt.size());
  total_ = std::min<int64_t>(prompt_len + opt.max_new_tokens, max_positions);
  QWENQ_CHECK(prompt_len < total_ || opt.max_new_tokens == 0,
              "generate: the prompt has " << prompt.size() << " tokens, the model's context is " << max_positions);
  length_ = prompt_len;
  if (opt.repetition_penalty != 1.f) context_ = prompt;  // prompt + tokens so far, for the repetition penalty only
}

bool TokenLoop::next(std::vector<float>& logits, const std::function<void(int32_t)>& on_token) {
  if (length_ >= total_) return false;
  const int32_t next = sample_token(logits, opt_, rng_, context_);
  out_.push_back(next);
  if (opt_.repetition_penalty != 1.f) context_.push_back(next);
  if (on_token) on_token(next);
  if (std::find(opt_.stop_ids.begin(), opt_.stop_ids.end(), next) != opt_.stop_ids.end()) return false;
  if (opt_.stop_when && opt_.stop_when(out_)) return false;
  if (static_cast<int64_t>(out_.size()) >= opt_.max_new_tokens) return false;
  if (length_ + 1 >= total_) return false;  // the context is full: no next token, so its logits are not needed
  ++length_;
  return true;
}

std::vector<int32_t> generate_with(int64_t max_positions, const std::vector<int32_t>& prompt,
                                   const SamplingOptions& opt, const DecodeFns& fns,
                                   const std::function<void(int32_t)>& on_token) {
  TokenLoop loop(max_positions, prompt, opt);
  std::vector<float> logits = fns.prefill(prompt, loop.capacity());
  while (loop.next(logits, on_token)) logits = fns.step(loop.last());
  return loop.take();
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

std::vector<std::vector<int32_t>> generate_batch(const QwenModel& model,
                                                 const std::vector<std::vector<int32_t>>& prompts,
                                                 const SamplingOptions& opt, int64_t batch,
                                                 const std::function<void(size_t, const std::vector<int32_t>&)>& on_done,
                                                 const std::vector<uint64_t>* seeds) {
  QWENQ_CHECK(seeds == nullptr || seeds->size() == prompts.size(),
              "generate: " << seeds->size() << " seeds for " << prompts.size() << " prompts");
  QWENQ_CHECK(batch >= 1 && batch <= kMaxDecodeBatch,
              "generate: a batch of " << batch << " sequences; it must be in [1, " << kMaxDecodeBatch << "]");
  const int64_t V = model.config().vocab_size, max_positions = model.config().max_position_embeddings;
  struct Slot {
    size_t index;
    TokenLoop loop;
    KvCache cache;
  };
  std::vector<std::vector<int32_t>> outputs(prompts.size());
  std::vector<std::unique_ptr<Slot>> active;
  const auto finish = [&](Slot& s) {
    outputs[s.index] = s.loop.take();
    if (on_done) on_done(s.index, outputs[s.index]);
  };
  size_t next_prompt = 0;
  std::vector<float> row(static_cast<size_t>(V));
  // A prompt equal to the one before it (GRPO's group of samples) starts from that prompt's prefilled cache and last
  // logits, kept when the next prompt repeats it: the same numbers, computed once.
  KvCache kept_cache;
  std::vector<float> kept_logits;
  int64_t kept_for = -1;  // the prompt whose prefill is kept
  while (true) {
    // Fill the free places, each new prompt prefilled alone (as generate() does) and its first token drawn.
    while (static_cast<int64_t>(active.size()) < batch && next_prompt < prompts.size()) {
      const size_t i = next_prompt++;
      SamplingOptions own = opt;
      if (seeds) own.seed = (*seeds)[i];
      auto s = std::make_unique<Slot>(Slot{i, TokenLoop(max_positions, prompts[i], own), KvCache{}});
      std::vector<float> first;
      if (kept_for >= 0 && prompts[static_cast<size_t>(kept_for)] == prompts[i]) {
        s->cache = kept_cache;  // same prompt, same options: the same capacity
        first = kept_logits;
      } else {
        s->cache = model.make_cache(s->loop.capacity(), opt.kv_cache);
        first = model.forward_step(prompts[i], &s->cache);
        kept_for = -1;
        if (i + 1 < prompts.size() && prompts[i + 1] == prompts[i]) {
          kept_cache = s->cache;  // before any decode step writes past the prompt
          kept_logits = first;
          kept_for = static_cast<int64_t>(i);
        }
      }
      if (s->loop.next(first))
        active.push_back(std::move(s));
      else
        finish(*s);
    }
    if (active.empty()) break;
    std::vector<int32_t> ids;
    std::vector<KvCache*> caches;
    for (const auto& s : active) {
      ids.push_back(s->loop.last());
      caches.push_back(&s->cache);
    }
    const std::vector<float> logits = model.forward_steps(ids, caches);
    std::vector<std::unique_ptr<Slot>> going_on;
    for (size_t b = 0; b < active.size(); ++b) {
      std::copy(logits.begin() + static_cast<std::ptrdiff_t>(b * V),
                logits.begin() + static_cast<std::ptrdiff_t>((b + 1) * V), row.begin());
      if (active[b]->loop.next(row))
        going_on.push_back(std::move(active[b]));
      else
        finish(*active[b]);
    }
    active = std::move(going_on);
  }
  return outputs;
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
