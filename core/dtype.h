// Element types and exact conversions between fp32 and the 16-bit float formats.
//
// bf16 = the top 16 bits of an fp32. fp32 -> bf16 rounds to nearest, ties to even, and keeps NaN a (quiet)
// NaN; this is what torch's `tensor.to(torch.bfloat16)` does, so converting a checkpoint here and in PyTorch
// gives the same bits. fp16 <-> fp32 follows IEEE 754 binary16 with round-to-nearest-even, subnormals and
// infinities included (the F16C instruction's behaviour).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

namespace qwenq {

// F8_E4M3: float8_e4m3fn (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinities, 0x7F/0xFF NaN, max
// 448), the weight type of Qwen's and DeepSeek's FP8 checkpoints; read only (f8_e4m3_to_f32), never a dense operand.
enum class DType : uint8_t { F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL, F8_E4M3 };

// Size in bytes of one element.
size_t dtype_size(DType t);
// Safetensors spelling: "F32", "BF16", ...
const char* dtype_name(DType t);
// Parses a safetensors dtype string; returns false for anything unsupported (F8_E5M2, C64, U16, ...).
bool dtype_from_name(const std::string& name, DType* out);

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);  // quiet NaN
  uint32_t rounding_bias = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding_bias) >> 16);
}

// f rounded to bf16 (f32_to_bf16) and widened back: the fp32 value a bf16 tensor holds for f.
inline float bf16_round(float f) { return bf16_to_f32(f32_to_bf16(f)); }
// Each of v[0..n) so rounded, in place.
inline void bf16_round_inplace(float* v, size_t n) {
  for (size_t i = 0; i < n; ++i) v[i] = bf16_round(v[i]);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// float8_e4m3fn -> fp32, exact: exponent e > 0: (−1)^s · 2^(e − 7) · (1 + m/8); e = 0: (−1)^s · 2^−6 · m/8; NaN for
// 0x7F and 0xFF (what torch's float8_e4m3fn.to(float32) gives).
inline float f8_e4m3_to_f32(uint8_t b) {
  const uint32_t sign = static_cast<uint32_t>(b & 0x80u) << 24, e = (b >> 3) & 15u, m = b & 7u;
  if ((b & 0x7Fu) == 0x7Fu) return std::numeric_limits<float>::quiet_NaN();
  float f;
  if (e == 0) {
    f = static_cast<float>(m) * 0x1p-9f;  // subnormal: m · 2^−9, exact (−0.0 for 0x80)
    return sign ? -f : f;
  }
  const uint32_t bits = sign | ((e + 120u) << 23) | (m << 20);
  std::memcpy(&f, &bits, 4);
  return f;
}

// Converts n elements of `src` (type `t`, one of F32/F16/BF16) to fp32.
void to_f32(DType t, const void* src, float* dst, size_t n);
// Converts n fp32 values to `t` (F32/F16/BF16).
void from_f32(DType t, const float* src, void* dst, size_t n);

}  // namespace qwenq
