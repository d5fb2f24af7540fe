// Text generation with a KV cache: greedy (temperature 0) or sampled with temperature, top-k and top-p,
// from a seeded generator so a run can be repeated exactly.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "trainer/qwen_model.h"

namespace qwenq {

struct SamplingOptions {
  int64_t max_new_tokens = 128;
  float temperature = 0.f;  // 0: greedy
  int64_t top_k = 0;        // 0: off
  float top_p = 1.f;        // 1: off
  uint64_t seed = 0;
  std::vector<int32_t> stop_ids;  // generation ends after emitting one of these
  // When set, generation also ends after a token for which it returns true; it sees every id generated so far (stop
  // strings: the caller decodes and searches them).
  std::function<bool(const std::vector<int32_t>&)> stop_when;
  // Not sampling, but generate's other choice: the KV cache's storage (trainer/qwen_model.h's KvCacheDType), on the
  // CPU (generate) and the GPU (generate_cuda) alike.
  KvCacheDType kv_cache = KvCacheDType::F32;
};

// Picks the next token from logits (modified in place).
int32_t sample_token(std::vector<float>& logits, const SamplingOptions& opt, class Rng& rng);

// The decoding loop of generate over any model: prefill(prompt, capacity) starts a cache of `capacity` tokens with
// the prompt and returns the logits [V] of its last position; step(id) appends one token and returns its logits.
// capacity = min(prompt + max_new_tokens, max_positions). Tokens are drawn by sample_token from one Rng(opt.seed);
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

}  // namespace qwenq
