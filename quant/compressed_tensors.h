// One quantized nn.Linear as llm-compressor writes it through the `compressed-tensors` library (config.json
// "quantization_config": {"quant_method": "compressed-tensors", "format": ..., "config_groups": ...}), read into the
// layouts qwenq already multiplies: integer codes into a GPTQ v2 PackedIntLinear, float8 into an Fp8Linear.
//
// Tensors per Linear `<prefix>` (K = in_features, N = out_features, G = number of scale columns):
//   pack-quantized (int, b = 2, 4 or 8 bits, f = 32 / b codes per word):
//     weight_packed      I32 [N, ceil(K / f)]   code of input j·f + i in bits [b·i, b·i + b) of word j, stored as
//                                               q + 2^(b-1) (q the signed code in [-2^(b-1), 2^(b-1)))
//     weight_scale       BF16/F16/F32 [N, G]    G = ceil(K / group_size) (group), 1 (channel); [1] or [] (tensor)
//     weight_zero_point  I32 [ceil(N / f), G]   asymmetric only: the signed zero of output j·f + i in bits
//                                               [b·i, b·i + b) of word (j, g), stored + 2^(b-1) as the codes are
//     weight_g_idx       I32 [K]                optional (actorder "group"): each input's scale column
//     weight_shape       I32/I64 [2]            [N, K]
//   int-quantized / naive-quantized (int, 8 bits): weight I8 [N, K] (signed codes), weight_scale as above,
//     weight_zero_point I8 with weight_scale's shape when asymmetric
//   float-quantized / naive-quantized (float, 8 bits e4m3): weight F8_E4M3 [N, K], weight_scale [N, 1] (channel),
//     [1] or [] (tensor), [N, G] (group), [ceil(N / bn), ceil(K / bk)] (block_structure [bn, bk])
// Dequantization (compressed_tensors.quantization.lifecycle.forward.dequantize):
//   ŵ[n, k] = (q[n, k] - zero[n, c]) · scale[n, c],   c = g_idx[k], or k / group_size, or 0 (channel / tensor)
// In GPTQ v2 terms that is the unsigned stored code minus the unsigned stored zero (2^(b-1) when symmetric), so the
// codes transpose word for word into qweight [K·b/32, N], the zeros into qzeros [G, N·b/32] and the scales into
// [G, N]; ŵ is the same fp32 product bit for bit. GPTQ v2 keeps scales as fp16: a scale fp16 cannot hold exactly
// (an F32 scale, or a BF16 one below 2^-17) is kept in fp32 instead (CtIntLinear::scales_f32), for the caller to
// compute with.
// Writing (qwen-quant --format compressed-tensors) is the same transposition backwards, from any GPTQ/AWQ Linear:
// its codes and true zero points (int_linear_zeros) repacked along the rows, its fp16 scales stored as F16 [N, G].
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "quant/fp8.h"
#include "quant/int_checkpoint.h"

namespace qwenq {

enum class CtStrategy { Tensor, Channel, Group, Block };

// A scheme's "weights" QuantizationArgs, the fields the stored tensors depend on.
struct CtWeightArgs {
  bool is_float = false;  // "type": "float" (e4m3) or "int"
  int bits = 4;
  bool sym = true;
  CtStrategy strategy = CtStrategy::Group;
  int64_t group_size = -1;            // Group only
  int64_t block_n = 0, block_k = 0;   // Block only (block_structure)
};

struct CtIntLinear {
  PackedIntLinear packed;          // GPTQ v2; its fp16 scales hold the file's exactly when scales_f32 is empty
  std::vector<float> scales_f32;   // [G, N]: the file's scales, when one of them is not exact in fp16
};

// pack-quantized tensors of `prefix` ([N, K] by config.json), validated (dtypes, shapes, weight_shape, g_idx in
// range, finite scales); errors name the tensor and the file. K must be a multiple of 32 / bits and N of 32 / bits
// (the GPTQ words); else one error says so.
CtIntLinear read_ct_packed_linear(const Checkpoint& ckpt, const std::string& prefix, const CtWeightArgs& a, int64_t N,
                                  int64_t K);
// int-quantized / naive-quantized 8-bit integer tensors of `prefix`, as an 8-bit GPTQ v2 Linear (K a multiple of 4).
CtIntLinear read_ct_int8_linear(const Checkpoint& ckpt, const std::string& prefix, const CtWeightArgs& a, int64_t N,
                                int64_t K);
// ŵ [N, K] from the fp32 scales (for a CtIntLinear whose scales_f32 is set; else dequantize_int_linear(packed)).
std::vector<float> dequantize_ct_int_linear(const CtIntLinear& c);

// float-quantized e4m3 tensors of `prefix` as an Fp8Linear whose blocks are the strategy's (channel: 1 x K,
// tensor: N x K, group: 1 x group_size, block: bn x bk).
Fp8Linear read_ct_fp8_linear(const Checkpoint& ckpt, const std::string& prefix, const CtWeightArgs& a, int64_t N,
                             int64_t K);

// pack-quantized tensors of a GPTQ (v1/v2) or AWQ GEMM Linear under `prefix`: weight_packed, weight_scale (F16, the
// grid's own scales), weight_shape (I64 [N, K]), weight_zero_point (asymmetric: `sym` false) and weight_g_idx
// (`g_idx` true: act-order; false requires the groups in input order). The file dequantizes to the same ŵ bit for
// bit. Throws naming `prefix` for what the format cannot say: 3-bit codes, a symmetric scheme whose zero points are
// not all 2^(bits-1), rows sorted in memory (a perm).
void add_ct_packed_linear(SafetensorsWriter& w, const std::string& prefix, const PackedIntLinear& p, bool sym,
                          bool g_idx);

// config.json "quantization_config" for such files, as compressed-tensors 0.9.4's ModelCompressor writes it: one
// config group targeting every Linear, weights int `bits`, strategy group (or channel for group_size -1), `actorder`
// ("group": act-order g_idx stored; "weight": act-order with groups in input order; nullptr: none), format
// pack-quantized, status compressed; `ignore` lists the Linears kept dense (module names, or "re:" patterns matched
// from the start).
nlohmann::ordered_json ct_quantization_config(int bits, int64_t group_size, bool sym, const char* actorder,
                                              const std::vector<std::string>& ignore);
// The same for float8 e4m3 weights per output channel (weight F8_E4M3 [N, K], weight_scale [N, 1]) with dynamic
// per-token float8 input activations: llm-compressor's FP8_DYNAMIC scheme, format float-quantized.
nlohmann::ordered_json ct_fp8_dynamic_quantization_config(const std::vector<std::string>& ignore);

}  // namespace qwenq
