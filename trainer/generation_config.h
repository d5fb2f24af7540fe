// A model directory's generation_config.json: the decoding defaults transformers' generate() takes from it (keys it
// lacks fall back to transformers' GenerationConfig defaults, as there: do_sample false, temperature 1, top_k 50,
// top_p 1, min_p off, repetition_penalty 1), and the ids that end generation (eos_token_id: one or a list, e.g.
// Qwen2.5-Instruct's [151645, 151643], <|im_end|> and <|endoftext|>). The sampling itself is trainer/sampling.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qwenq {

struct GenerationConfig {
  std::string path;  // the file read; "" when the model has none (a GGUF file, or a directory without it)
  bool do_sample = false;
  float temperature = 1.f;
  int64_t top_k = 50;
  float top_p = 1.f;
  float min_p = 0.f;
  float repetition_penalty = 1.f;
  std::vector<int32_t> eos_token_ids;
};

// Reads model_path/generation_config.json when model_path is a directory holding one. A malformed file, a value of the
// wrong type or out of range (temperature <= 0 with do_sample, top_p outside (0, 1], top_k or min_p negative, min_p
// above 1, repetition_penalty <= 0) is an error naming the file and the key.
GenerationConfig load_generation_config(const std::string& model_path);

}  // namespace qwenq
