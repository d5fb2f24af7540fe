// How generation picks each token from the model's logits z [V] (fp32), as transformers' generate() processes them
// (its _get_logits_processor order, transformers 4.51):
//
//   repetition penalty ρ ≠ 1 (greedy and sampled alike; every id c of the context, prompt and tokens generated so
//   far, once):                        z_c ← z_c · ρ if z_c < 0, else z_c / ρ                 (fp32)
//   greedy (temperature 0):            the first index of the largest z
//   sampled (temperature T > 0), the kept set K narrowed step by step, tokens ranked by z descending (index ascending
//   on ties), w_v = exp((z_v − max z)/T) in double (∝ softmax(z/T)):
//     top-k k > 0:                     K = {v : z_v ≥ the k-th largest z}                     (ties with it kept)
//     top-p p < 1:                     v ∈ K stays iff the mass of K ranked at or below v exceeds 1 − p, i.e. the mass
//                                      ranked strictly above v is below p (the top token always stays)
//     min-p m > 0:                     v ∈ K stays iff w_v ≥ m · max w                         (the top token always)
//   then v is drawn with probability w_v / Σ_{K} w from one seeded generator (core/rng.h).
//
// transformers computes softmax and cumulative sums in fp32 and sorts with torch.sort; here they are double sums in
// rank order, so a token whose cumulative mass lies within fp32 rounding of a threshold may be kept on one side and
// not the other. tests/oracle/test_sampling_oracle.py checks the kept sets and probabilities against transformers'
// own processors.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "trainer/qwen_model.h"

namespace qwenq {

struct SamplingOptions {
  int64_t max_new_tokens = 128;
  float temperature = 0.f;          // 0: greedy
  int64_t top_k = 0;                // 0: off
  float top_p = 1.f;                // 1: off
  float min_p = 0.f;                // 0: off
  float repetition_penalty = 1.f;   // 1: off
  uint64_t seed = 0;
  std::vector<int32_t> stop_ids;  // generation ends after emitting one of these
  // When set, generation also ends after a token for which it returns true; it sees every id generated so far (stop
  // strings: the caller decodes and searches them).
  std::function<bool(const std::vector<int32_t>&)> stop_when;
  // Not sampling, but generate's other choice: the KV cache's storage (trainer/qwen_model.h's KvCacheDType), on the
  // CPU (generate) and the GPU (generate_cuda) alike.
  KvCacheDType kv_cache = KvCacheDType::F32;
  // GPU decode only (generate_cuda; the CPU computes in fp32 and ignores it): every 4-bit product's activations
  // rounded to bf16, as a bf16 model computes under transformers, so that the decode products run on tensor cores
  // (qgemm_int4_cuda's decode kernel) instead of the fp32-activation GEMV. Not the CPU's numbers.
  bool bf16_activations = false;
};

// Refuses settings outside the ranges above (temperature finite and >= 0, top_k >= 0, top_p in (0, 1], min_p in
// [0, 1], repetition_penalty finite and > 0), naming the flag; generate_with calls it before any work.
void check_sampling_options(const SamplingOptions& opt);

// The repetition penalty above, in place (ids outside [0, V) are an error).
void apply_repetition_penalty(std::vector<float>& logits, float penalty, const std::vector<int32_t>& context);

// The sampled distribution above (temperature > 0): the kept ids in rank order and their probabilities (summing to
// 1). The logits are the penalized ones.
struct TokenDistribution {
  std::vector<int32_t> ids;
  std::vector<double> probs;
};
TokenDistribution sampling_distribution(const std::vector<float>& logits, const SamplingOptions& opt);

// Picks the next token: the penalty applied to `logits` in place (context: the prompt and the tokens so far), then
// the greedy choice or one draw from sampling_distribution with rng.uniform() (the kept tokens in rank order).
int32_t sample_token(std::vector<float>& logits, const SamplingOptions& opt, class Rng& rng,
                     const std::vector<int32_t>& context = {});

}  // namespace qwenq
