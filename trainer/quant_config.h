// The "quantization_config" of a checkpoint's config.json (or AutoGPTQ's quantize_config.json): which method
// packed the Linear layers, and how, so the loader reads the right tensors.
//   gptq:          bits, group_size, sym, desc_act, checkpoint_format "gptq" (v1) | "gptq_v2"
//   awq:           bits 4, group_size, version "gemm", zero_point true
//   bitsandbytes:  load_in_4bit, bnb_4bit_quant_type nf4 | fp4 (per-tensor details live in quant_state)
//   fp8:           fmt e4m3, weight_block_size [bn, bk], activation_scheme dynamic (Qwen's and DeepSeek's block-wise
//                  FP8 releases; quant/fp8.h), modules_to_not_convert
// Anything else (marlin, exllama, gemv, 8-bit bnb, 3-bit) is refused with an error naming the file and field.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "quant/int_checkpoint.h"

namespace qwenq {

struct QuantConfig {
  enum class Method { None, Gptq, Awq, Bnb4, Fp8 };
  Method method = Method::None;
  int bits = 16;
  int64_t group_size = -1;
  bool sym = true;
  bool desc_act = false;
  IntLayout layout = IntLayout::GptqV1;  // GPTQ/AWQ only
  int64_t block_n = 128, block_k = 128;  // FP8 only: weight_block_size
  std::vector<std::string> skip_modules;  // modules_to_not_convert / llm_int8_skip_modules
  const char* method_name() const;
};

// `dir`'s quantization config: config.json's "quantization_config", else quantize_config.json, else None.
QuantConfig load_quant_config(const std::string& dir);

}  // namespace qwenq
