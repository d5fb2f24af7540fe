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
#include <string>

namespace qwenq {

enum class DType : uint8_t { F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL };

// Size in bytes of one element.
size_t dtype_size(DType t);
// Safetensors spelling: "F32", "BF16", ...
const char* dtype_name(DType t);
// Parses a safetensors dtype string; returns false for anything unsupported (F8_*, C64, U16, ...).
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

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Converts n elements of `src` (type `t`, one of F32/F16/BF16) to fp32.
void to_f32(DType t, const void* src, float* dst, size_t n);
// Converts n fp32 values to `t` (F32/F16/BF16).
void from_f32(DType t, const float* src, void* dst, size_t n);

}  // namespace qwenq
