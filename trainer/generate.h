// Text generation with a KV cache: each token picked by trainer/sampling.h (greedy, or sampled as transformers'
// logits processors filter, from a seeded generator so a run can be repeated exactly).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/rng.h"
#include "trainer/qwen_model.h"
#include "trainer/sampling.h"

namespace qwenq {

// The decoding loop of generate over any model: prefill(prompt, capacity) starts a cache of `capacity` tokens with
// the prompt and returns the logits [V] of its last position; step(id) appends one token and returns its logits.
// capacity = min(prompt + max_new_tokens, max_positions). Tokens are drawn by sample_token from one Rng(opt.seed),
// the repetition penalty seeing the prompt and every token drawn so far (transformers' input_ids);
// the loop ends after a stop id, after max_new_tokens, or when the cache is full. The last token drawn is never
// stepped. Returns the generated ids (prompt excluded); on_token, if set, sees each id as it is produced.
// generate_with's token loop for one sequence, so that a batched driver can run several: capacity() is the
// cache size to prefill with; next(logits of the last position; sampling may rewrite them) draws a token (sample_token, the repetition context,
// on_token) and says whether that token must be stepped for another (false after a stop id, max_new_tokens, or a
// full context; then or when max_new_tokens is 0 the loop is over); last() is that token; take() the ids drawn.
class TokenLoop {
 public:
  TokenLoop(int64_t max_positions, const std::vector<int32_t>& prompt, const SamplingOptions& opt);
  int64_t capacity() const { return total_; }
  bool next(std::vector<float>& logits, const std::function<void(int32_t)>& on_token = nullptr);
  int32_t last() const { return out_.back(); }
  std::vector<int32_t> take() { return std::move(out_); }

 private:
  SamplingOptions opt_;
  Rng rng_;
  int64_t total_ = 0, length_ = 0;
  std::vector<int32_t> out_, context_;
};

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

// Sequences decoded together at most (generate_batch): the products of a batched step keep a lone step's bits up
// to this many rows (the dense fp32 kernel's register tiles below kEigenMinRows = 24, the packed 4-bit products to
// their row limits, 3-bit GPTQ's 16 the lowest).
constexpr int64_t kMaxDecodeBatch = 16;
// generate() for several prompts on the CPU (qwen-qlora generate --prompts --batch): up to `batch` sequences decode
// together, a step of all of them one QwenModel::forward_steps (each weight read once per step for all); each prompt
// is prefilled alone with forward_step when a place frees, and each sequence keeps its own sampler (Rng(opt.seed),
// repetition context). So outputs[i] is generate(model, prompts[i], opt) token for token, whatever `batch` and the
// other prompts. on_done(i, ids) is called as prompt i finishes (in finishing order) with its generated ids. A
// prompt equal to the one before it reuses that one's prefill (its cache rows and last logits, copied), so a group of
// samples of one prompt (GRPO) prefills it once.
// seeds, when given (one per prompt), replace opt.seed prompt by prompt: outputs[i] is then generate() with
// opt.seed = seeds[i] (GRPO's group of samples of one prompt).
std::vector<std::vector<int32_t>> generate_batch(
    const QwenModel& model, const std::vector<std::vector<int32_t>>& prompts, const SamplingOptions& opt,
    int64_t batch, const std::function<void(size_t, const std::vector<int32_t>&)>& on_done = nullptr,
    const std::vector<uint64_t>* seeds = nullptr);

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
