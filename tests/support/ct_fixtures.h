// compressed-tensors fixtures shared by the reader and writer tests, laid out from the format's definition
// (quant/compressed_tensors.h), independently of qwenq's own writer.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace qwenq::test {

// A quantization_config with one config group targeting every Linear with `weights`, as the library writes it.
nlohmann::json scheme_config(const std::string& format, const nlohmann::json& weights,
                             const nlohmann::json& ignore = nlohmann::json::array({"lm_head"}));
// Integer weight arguments (group_size null unless group > 0).
nlohmann::json int_weights(int bits, bool sym, const std::string& strategy, int64_t group = -1);

// A symmetric GPTQ v2 checkpoint `src` (one model.safetensors) rewritten into `dst` as pack-quantized tensors: each
// qweight word transposed into weight_packed, scales into F16 weight_scale [N, G], weight_shape I64; qzeros and g_idx
// dropped (every zero is 2^(b-1), groups in order). The config ignores lm_head and the MoE routers by pattern.
void gptq_v2_to_compressed_tensors(const std::string& src, const std::string& dst, int bits, int64_t group);

}  // namespace qwenq::test
