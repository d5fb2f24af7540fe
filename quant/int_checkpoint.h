// One quantized nn.Linear in the integer layouts the ecosystem loads (GPTQ v1/v2, AutoAWQ GEMM): packing our
// (codes, grid, g_idx) into their tensors, writing and reading them through safetensors, dequantizing them,
// and the quantization_config each format puts in config.json.
//
// Tensors per Linear `<prefix>` (REFERENCE A1.1, A2.2; K = in_features, N = out_features, G = ceil(K/g)):
//   GPTQ: qweight I32 [K·b/32, N], qzeros I32 [G, N·b/32], scales F16 [G, N], g_idx I32 [K]
//   AWQ:  qweight I32 [K, N/8],     qzeros I32 [G, N/8],     scales F16 [G, N]        (4-bit only)
// Dequantization: ŵ[n, k] = scales[g, n] · (q[k, n] - zero[g, n]) with g = g_idx[k] (GPTQ) or k / group (AWQ);
// GPTQ v1 stores zero - 1 (grid.h rounds scales to fp16 first, so this is exactly the fake-quant weight).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "quant/grid.h"

namespace qwenq {

enum class IntLayout { GptqV1, GptqV2, AwqGemm };
const char* int_layout_name(IntLayout layout);  // "gptq", "gptq_v2", "awq-gemm"

struct PackedIntLinear {
  IntLayout layout = IntLayout::GptqV1;
  int bits = 4;
  int64_t K = 0, N = 0, group = 128;  // group = K for one group per column (group_size -1)
  std::vector<int32_t> qweight, qzeros, g_idx;  // g_idx empty for AWQ
  std::vector<uint16_t> scales;                 // fp16 bits, [G, N]
  // Empty: stored row k holds input k (as every file does). Else stored row i holds input perm[i] (g_idx[i] is that
  // row's group): int_linear_sort_inputs_by_group below, in memory only; readers and products gather x[perm] or
  // scatter to perm, and writers refuse it.
  std::vector<int32_t> perm;
  int64_t num_groups() const { return (K + group - 1) / group; }
};

// codes [K, N] on `grid`; g_idx [K] (null: k / group). Throws when the layout cannot hold them (K not a
// multiple of 32/bits, N not a multiple of 8 for AWQ, a zero point of 0 in GPTQ v1, act-order in AWQ).
PackedIntLinear pack_int_linear(const uint8_t* codes, const GroupGrid& grid, const int32_t* g_idx, IntLayout layout);

// The same Linear in the GPTQ v2 layout (AWQ GEMM words and zeros unpacked and packed along K; scales and ŵ bit for
// bit the same; g_idx = k / group); a GPTQ Linear is returned as it is. For the int8 products
// (quant/int_dot_int8.h), which read GPTQ words. AWQ's K must be a multiple of 8 (every Qwen shape is).
PackedIntLinear int_linear_to_gptq_v2(const PackedIntLinear& p);

// The same GPTQ Linear with its stored rows (qweight rows and g_idx entries) stably sorted by group and `perm`
// recording each row's input: act-order (desc_act) weights then have contiguous groups, g_idx[i] = i / group, as the
// grouped packed products and the int8 products read them (the loader sorts through int_linear_for_products in
// quant/packed_matvec.h), and ŵ is the same bit for bit (dequantize_int_linear undoes the order).
// Returned as it is when the groups already follow the inputs, for AWQ, or when it has a perm already.
PackedIntLinear int_linear_sort_inputs_by_group(const PackedIntLinear& p);

// True when every input's group is its position's, g_idx[k] = k / group (or there is no g_idx: AWQ); false for
// act-order. One pass without a division per input: the packed products ask on every call.
bool int_linear_groups_in_order(const PackedIntLinear& p);

// The group of each stored row k (input k, or perm[k] when sorted): g_idx[k] (GPTQ), or k / group; throws naming
// the first g_idx outside [0, G).
std::vector<int32_t> int_linear_group_of(const PackedIntLinear& p);
// The true zero point of each group and output [G, N], by the format's unpacker: GPTQ v1 adds 1 to the stored field
// (so up to 2^bits, hence 16 bits), v2 and AWQ as stored.
std::vector<uint16_t> int_linear_zeros(const PackedIntLinear& p);

// ŵ [N, K] (nn.Linear orientation), computed as the format's readers do (column perm[i] from stored row i when p
// has a perm); _into writes it to W [N·K floats].
std::vector<float> dequantize_int_linear(const PackedIntLinear& p);
void dequantize_int_linear_into(const PackedIntLinear& p, float* W);

// Throws for a Linear with a perm (rows sorted in memory: no file layout holds that order).
void add_int_linear(SafetensorsWriter& w, const std::string& prefix, const PackedIntLinear& p);
// Reads and validates the tensors of `prefix` (dtypes, shapes against K, N, bits, group; g_idx in range);
// errors name the tensor and the file.
PackedIntLinear read_int_linear(const Checkpoint& ckpt, const std::string& prefix, IntLayout layout, int bits,
                                int64_t group, int64_t K, int64_t N);

// config.json "quantization_config" as transformers/optimum and GPTQModel (GPTQ) or AutoAWQ (AWQ) write it.
nlohmann::ordered_json gptq_quantization_config(int bits, int64_t group_size, bool sym, bool desc_act,
                                                bool static_groups, double damp, IntLayout layout);
nlohmann::ordered_json awq_quantization_config(int bits, int64_t group_size);

}  // namespace qwenq
