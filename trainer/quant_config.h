// The "quantization_config" of a checkpoint's config.json (or AutoGPTQ's quantize_config.json): which method
// packed the Linear layers, and how, so the loader reads the right tensors.
//   gptq:          bits, group_size, sym, desc_act, checkpoint_format "gptq" (v1) | "gptq_v2"
//   awq:           bits 4, group_size, version "gemm", zero_point true
//   bitsandbytes:  load_in_4bit, bnb_4bit_quant_type nf4 | fp4 (per-tensor details live in quant_state)
//   fp8:           fmt e4m3, weight_block_size [bn, bk], activation_scheme dynamic (Qwen's and DeepSeek's block-wise
//                  FP8 releases; quant/fp8.h), modules_to_not_convert
//   compressed-tensors (llm-compressor): config_groups of schemes (targets, weights args), ignore, format
//                  pack-quantized | int-quantized | float-quantized | naive-quantized (quant/compressed_tensors.h)
// Anything else (marlin, exllama, gemv, 8-bit bnb, 3-bit) is refused with an error naming the file and field.
#pragma once

#include <cstdint>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "quant/compressed_tensors.h"
#include "quant/int_checkpoint.h"

namespace qwenq {

// One compressed-tensors scheme: the Linears it covers (a class name "Linear", a module name, or "re:<regex>" matched
// from the start of the name, as Python's re.match) and how their weights are stored.
struct CtScheme {
  std::string name;                   // its key in config_groups
  std::vector<std::string> targets;
  std::vector<std::shared_ptr<const std::regex>> regexes;  // per target; null for a class or module name
  CtWeightArgs weights;
  bool packed = true;                 // pack-quantized (weight_packed) or stored unpacked (weight)
};

// GPTQModel's per-module "dynamic" rules, in the file's order (the first whose pattern matches wins, as its
// dynamic_get does): "-:<regex>" leaves the module unquantized (stored dense), "+:<regex>" or a bare regex gives it
// its own bits and/or group_size.
struct GptqDynamicRule {
  std::string pattern;
  std::shared_ptr<const std::regex> re;
  bool skip = false;
  int bits = 0;            // 0: the config's
  int64_t group_size = 0;  // 0: the config's
};

struct QuantConfig {
  enum class Method { None, Gptq, Awq, Bnb4, Fp8, CompressedTensors };
  Method method = Method::None;
  int bits = 16;
  int64_t group_size = -1;
  bool sym = true;
  bool desc_act = false;
  IntLayout layout = IntLayout::GptqV1;  // GPTQ/AWQ only
  int64_t block_n = 128, block_k = 128;  // FP8 only: weight_block_size
  std::vector<std::string> skip_modules;  // modules_to_not_convert / llm_int8_skip_modules
  std::vector<GptqDynamicRule> gptq_dynamic;  // GPTQ only
  std::vector<CtScheme> ct_schemes;       // compressed-tensors only
  std::vector<std::string> ct_ignore;
  std::vector<std::shared_ptr<const std::regex>> ct_ignore_regexes;
  const char* method_name() const;
  // GPTQ: the bits and group size of module `prefix` (the first matching "dynamic" rule's, else the config's).
  void gptq_params_for(const std::string& prefix, int* bits, int64_t* group_size) const;
  // GPTQ: some "dynamic" rule gives modules their own bits or group size.
  bool gptq_mixed() const;
  // compressed-tensors: the scheme of the Linear `prefix` (a name match before a class match), or null when it is
  // ignored or no scheme with weights covers it; throws when two schemes that differ both claim it.
  const CtScheme* ct_scheme_for(const std::string& prefix) const;
  // compressed-tensors: true when some scheme stores integer weights (false: float8 only).
  bool ct_has_int() const;
  // Block-wise FP8, or compressed-tensors with float8 schemes only: weights a quantizer can start from (read as ŵ).
  bool float8_weights() const {
    return method == Method::Fp8 || (method == Method::CompressedTensors && !ct_has_int());
  }
};


// config.json's "quantization_config" of quant_method compressed-tensors (trainer/quant_config_ct.cpp); `path` names
// it in errors.
QuantConfig parse_compressed_tensors_config(const nlohmann::json& q, const std::string& path);

// `dir`'s quantization config: config.json's "quantization_config", else quantize_config.json, else None.
QuantConfig load_quant_config(const std::string& dir);

}  // namespace qwenq
