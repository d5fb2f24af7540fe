// Text generation with a KV cache: each token picked by trainer/sampling.h (greedy, or sampled as transformers'
// logits processors filter, from a seeded generator so a run can be repeated exactly).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "trainer/qwen_model.h"
#include "trainer/sampling.h"

namespace qwenq {

// The decoding loop of generate over any model: prefill(prompt, capacity) starts a cache of `capacity` tokens with
// the prompt and returns the logits [V] of its last position; step(id) appends one token and returns its logits.
// capacity = min(prompt + max_new_tokens, max_positions). Tokens are drawn by sample_token from one Rng(opt.seed),
// the repetition penalty seeing the prompt and every token drawn so far (transformers' input_ids);
// the loop ends after a stop id, after max_new_tokens, or when the cache is full. The last token drawn is never
// stepped. Returns the generated ids (prompt excluded); on_token, if set, sees each id as it is produced.
struct DecodeFns {
  std::function<std::vector<float>(const std::vector<int32_t>& prompt, int64_t capacity)> prefill;
  std::function<std::vector<float>(int32_t id)> step;
};
std::vector<int32_t> generate_with(int64_t max_positions, const std::vector<int32_t>& prompt,
                                   const SamplingOptions& opt, const DecodeFns& fns,
                                   const std::function<void(int32_t)>& on_token = nullptr);

// generate_with on the CPU model (QwenModel::forward_step with a KvCache of opt.kv_cache). The GPU twin is
// generate_cuda (trainer/qwen_decode_cuda.h).
std::vector<int32_t> generate(const QwenModel& model, const std::vector<int32_t>& prompt, const SamplingOptions& opt,
                              const std::function<void(int32_t)>& on_token = nullptr);

// A conversation's KV cache kept from one turn to the next (`qwen-qlora chat` on the CPU), so that a turn computes
// only what its prompt adds to the last one: `tokens` are the ids whose k, v rows the cache holds (cache.length of
// them), `reused` how many of them the last call kept.
struct CachedContext {
  KvCache cache;
  std::vector<int32_t> tokens;
  int64_t reused = 0;
};
// The prefill of generate_continuing: keeps the longest prefix of `prompt` that ctx holds (at most prompt.size() − 1
// tokens, so that the last one's logits are computed; none when ctx's cache has another dtype than kv), grows the
// cache to `capacity` tokens (its rows kept), forwards the rest of the prompt onto it and returns the last logits [V].
std::vector<float> prefill_continuing(const QwenModel& model, CachedContext* ctx, const std::vector<int32_t>& prompt,
                                      int64_t capacity, KvCacheDType kv);
// generate() starting from ctx's cache (prefill_continuing), the same tokens up to the order of the attention's sums;
// ctx then holds the prompt and every generated token but the last (which was never stepped). On an error ctx is
// emptied.
std::vector<int32_t> generate_continuing(const QwenModel& model, CachedContext* ctx, const std::vector<int32_t>& prompt,
                                         const SamplingOptions& opt,
                                         const std::function<void(int32_t)>& on_token = nullptr);

}  // namespace qwenq
