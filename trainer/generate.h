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
};

// Picks the next token from logits (modified in place).
int32_t sample_token(std::vector<float>& logits, const SamplingOptions& opt, class Rng& rng);

// Returns the generated ids (prompt excluded). on_token, if set, sees each id as it is produced.
std::vector<int32_t> generate(const QwenModel& model, const std::vector<int32_t>& prompt, const SamplingOptions& opt,
                              const std::function<void(int32_t)>& on_token = nullptr);

}  // namespace qwenq
