// The quantization grid: one (scale, zero) per group of G consecutive input rows and output column, and
// round-to-nearest onto it. This is RTN by itself, and the grid GPTQ and AWQ quantize onto.
//
//   asym (GPTQ rule, AutoGPTQ quantizer.py): lo = min(w, 0), hi = max(w, 0); lo = -1, hi = 1 if both are 0;
//        scale = (hi - lo) / maxq; zero = round(-lo / scale)
//   asym (AWQ rule, AutoAWQ pseudo_quantize_tensor): lo = min(w), hi = max(w);
//        scale = max(hi - lo, 1e-5) / maxq; zero = clamp(-round(lo / scale), 0, maxq)
//   sym: hi = max(|lo|, hi), lo = -hi (GPTQ), scale = 2·hi / maxq, zero = (maxq + 1) / 2
//   q = clamp(round(w / scale) + zero, 0, maxq),  ŵ = scale · (q - zero)
// round() is round-half-to-even, as torch.round. Scales are rounded to fp16 before the codes are computed,
// because fp16 is what the checkpoints store: the fake-quantized weights are then exactly what any reader
// of the packed file reconstructs. A K that is not a multiple of G leaves a shorter last group.
#pragma once

#include <cstdint>
#include <vector>

namespace qwenq {

enum class GridRule { Gptq, Awq };

struct GroupGrid {
  int bits = 4;
  int64_t group = 128;  // G (K when the user asked for -1: one group per column)
  int64_t K = 0, N = 0;
  std::vector<float> scale;    // [ceil(K/G), N], values representable in fp16
  std::vector<uint8_t> zero;   // [ceil(K/G), N]
  int64_t num_groups() const { return (K + group - 1) / group; }
  int maxq() const { return (1 << bits) - 1; }
};

// Grid for one group: w points at column n's values of rows [k0, k0+len) with stride `stride`.
void grid_for_group(const float* w, int64_t len, int64_t stride, int bits, bool sym, GridRule rule, float* scale,
                    uint8_t* zero);

// Grid of a whole weight. W is the nn.Linear weight [N, K] row-major; group_size -1 means K.
GroupGrid find_grid(const float* W, int64_t N, int64_t K, int bits, int64_t group_size, bool sym, GridRule rule);

inline uint8_t quantize_value(float w, float scale, uint8_t zero, int maxq) {
  float q = __builtin_nearbyintf(w / scale) + zero;
  q = q < 0 ? 0 : (q > maxq ? maxq : q);
  return static_cast<uint8_t>(q);
}
// zero is an int: a GPTQ v1 file may hold 2^bits (see gptq_unpack_qzeros).
inline float dequantize_value(uint8_t q, float scale, int zero) {
  return scale * static_cast<float>(static_cast<int>(q) - zero);
}

// Round-to-nearest codes [K, N] of W [N, K] on the grid (g_idx: k / G).
std::vector<uint8_t> quantize_rtn(const float* W, const GroupGrid& grid);
// ŵ [N, K] from codes [K, N]; g_idx [K] maps each input row to its group (null: k / G).
std::vector<float> dequantize_codes(const uint8_t* codes, const GroupGrid& grid, const int32_t* g_idx = nullptr);

}  // namespace qwenq
