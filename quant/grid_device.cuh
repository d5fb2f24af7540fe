// quant/grid.h's per-group formulas on the device, operation for operation, for the kernels whose results must
// equal their CPU twins bit for bit (quant/quantize_step.cu, quant/awq_search.cu): IEEE intrinsics (__fdiv_rn,
// __fsub_rn, __fadd_rn, __fmul_rn: no contraction into fma, no approximate division), rintf (half to even, as
// nearbyint in the default rounding mode), fp16 rounding by __float2half_rn (= core's f32_to_f16), and
// std::min / std::max's comparison semantics written out (the first argument unless the second compares
// less / greater). CUDA translation units only.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace qwenq {

__device__ __forceinline__ float grid_std_min(float a, float b) { return b < a ? b : a; }
__device__ __forceinline__ float grid_std_max(float a, float b) { return a < b ? b : a; }
__device__ __forceinline__ float grid_round_to_f16(float x) { return __half2float(__float2half_rn(x)); }

// A group's min and max over the 32 lanes of a full warp (every lane holds its partial lo/hi; all get the result).
// fminf/fmaxf are exact, so the order of the butterfly does not matter.
__device__ __forceinline__ void grid_warp_range(float& lo, float& hi) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, o));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, o));
  }
}

// quant/grid.cpp's grid_for_group from the group's min `lo` and max `hi` (the only things it reads of the group).
__device__ __forceinline__ void grid_from_range(float lo, float hi, int maxq, bool sym, bool awq, float* scale,
                                                uint8_t* zero) {
  float s, z;
  if (!awq) {
    lo = grid_std_min(lo, 0.f);
    hi = grid_std_max(hi, 0.f);
    if (sym) {
      hi = grid_std_max(fabsf(lo), hi);
      if (lo < 0) lo = -hi;
    }
    if (lo == 0.f && hi == 0.f) lo = -1.f, hi = 1.f;
    s = grid_round_to_f16(__fdiv_rn(__fsub_rn(hi, lo), static_cast<float>(maxq)));
    z = sym ? static_cast<float>((maxq + 1) / 2) : rintf(__fdiv_rn(-lo, s));
  } else if (sym) {
    const float amax = grid_std_max(fabsf(lo), fabsf(hi));
    s = grid_round_to_f16(__fdiv_rn(grid_std_max(amax, 1e-5f), static_cast<float>((maxq - 1) / 2)));
    z = static_cast<float>((maxq + 1) / 2);
  } else {
    s = grid_round_to_f16(__fdiv_rn(grid_std_max(__fsub_rn(hi, lo), 1e-5f), static_cast<float>(maxq)));
    z = grid_std_min(grid_std_max(-rintf(__fdiv_rn(lo, s)), 0.f), static_cast<float>(maxq));
  }
  if (s == 0.f) s = grid_round_to_f16(1e-5f);
  *scale = s;
  *zero = z >= 0.f ? static_cast<uint8_t>(grid_std_min(z, static_cast<float>(maxq))) : uint8_t{0};
}

// quant/grid.h's quantize_value.
__device__ __forceinline__ uint8_t grid_quantize_value(float w, float scale, uint8_t zero, int maxq) {
  float q = __fadd_rn(rintf(__fdiv_rn(w, scale)), static_cast<float>(zero));
  q = q < 0.f ? 0.f : (q > static_cast<float>(maxq) ? static_cast<float>(maxq) : q);
  return static_cast<uint8_t>(q);
}

// quant/grid.h's dequantize_value.
__device__ __forceinline__ float grid_dequantize_value(uint8_t q, float scale, uint8_t zero) {
  return __fmul_rn(scale, static_cast<float>(static_cast<int>(q) - static_cast<int>(zero)));
}

}  // namespace qwenq
