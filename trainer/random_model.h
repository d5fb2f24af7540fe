// Random-weight Qwen2 models made offline, in real Qwen2.5 shapes or tiny ones: for benchmarks (speed does
// not depend on the values) and for a first run without any download. Weights follow transformers'
// initialisation (normal, std = initializer_range 0.02; norms 1; biases 0), from a seeded generator. The
// tokenizer is byte-level BPE with the 256 byte symbols and no merges, plus Qwen's three special tokens.
#pragma once

#include <cstdint>
#include <string>

#include "core/dtype.h"
#include "trainer/qwen_config.h"

namespace qwenq {

// "tiny", "tiny-moe" (qwen3_moe: 8 experts, top 2, layer 1 dense), "tiny-moe-shared" (qwen2_moe: 6 experts and a
// shared expert), "qwen3-30b-a3b", "qwen1.5-moe-a2.7b" (real MoE shapes), "tiny256" (8 untied layers of width 256: llama.cpp's k-quant blocks fit), "tiny896" (one tied layer of
// Qwen2.5-0.5B's width 896 and 7:1 heads, MLP 1024: llama.cpp's fallbacks for rows of 896), "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b",
// "qwen2.5-72b". Throws listing the presets for anything else.
QwenConfig qwen_preset(const std::string& name);

struct RandomModelOptions {
  std::string preset = "tiny";
  int64_t layers = 0;  // override num_hidden_layers (0: the preset's), e.g. a 2-layer 7B-shaped model
  int64_t kv_heads = 0;  // override num_key_value_heads (0: the preset's); = heads gives multi-head attention
  DType dtype = DType::BF16;
  uint64_t seed = 0;
  std::string out_dir;
  bool overwrite = false;
};

void write_random_model(const RandomModelOptions& opt);

}  // namespace qwenq
