// An fp32 value as the sum of three bf16 values, for feeding fp32 activations to bf16 tensor cores without losing
// their low bits (kernels/qgemm_decode_mma.cu's F32 activations):
//
//   h = bf16(v),  m = bf16(v − h),  l = bf16(v − h − m)        (bf16(): round to nearest, ties to even)
//
// Why the sum is v exactly: v has 24 significant bits. v − h is exact in fp32 (h is v rounded to 8 bits, so the
// difference is a multiple of v's fp32 unit and below half of h's bf16 unit: at most 16 significant bits). m takes
// its top 8 and v − h − m is again exact, a multiple of v's fp32 unit below half of m's bf16 unit: at most 8 bits,
// so l = v − h − m exactly. Hence h + m + l = v for every finite v whose low piece stays normal (|v| >= 2^-110 or
// so; below that l loses bits to bf16's subnormals, an error under 2^-133 in absolute terms), and each product of a
// piece with a small integer (q − z of a 4-bit code) is exact in fp32.
//
// Edges: ±0 gives three zeros; ±Inf gives (±Inf, 0, 0); NaN gives (0x7FC0, 0, 0); a finite v that bf16 would round
// to ±Inf (|v| above bf16's largest finite value 0x7F7F, 3.3895e38) takes h = ±0x7F7F instead, so the sum is still v.
//
// Plain integer arithmetic on the bits (no intrinsics), compiled for host and device alike: the CPU twin and the
// kernel that use it give the same bits.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/host_device.h"

#if defined(__CUDACC__) && defined(__USE_FAST_MATH__)
#error "kernels/bf16_split.h needs IEEE fp32 subtraction with subnormals (no --use_fast_math): its twins must agree"
#endif

namespace qwenq {

QWENQ_HOST_DEVICE inline uint32_t split_f32_bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  return b;
}

QWENQ_HOST_DEVICE inline float split_bits_f32(uint32_t b) {
  float v;
  std::memcpy(&v, &b, 4);
  return v;
}

// bf16(v) for a finite or infinite v (not NaN): round to nearest, ties to even, on the bits.
QWENQ_HOST_DEVICE inline uint16_t split_round_bf16(float v) {
  const uint32_t b = split_f32_bits(v);
  return static_cast<uint16_t>((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

// The three pieces of v (see the top): out[0] = h, out[1] = m, out[2] = l, as bf16 bits.
QWENQ_HOST_DEVICE inline void split_bf16x3(float v, uint16_t out[3]) {
  const uint32_t b = split_f32_bits(v);
  out[1] = out[2] = 0;
  if ((b & 0x7FFFFFFFu) > 0x7F800000u) {  // NaN
    out[0] = 0x7FC0u;
    return;
  }
  uint16_t h = split_round_bf16(v);
  if ((b & 0x7FFFFFFFu) == 0x7F800000u) {  // ±Inf
    out[0] = h;
    return;
  }
  if ((h & 0x7FFFu) == 0x7F80u) h = static_cast<uint16_t>((h & 0x8000u) | 0x7F7Fu);  // finite v past bf16's range
  out[0] = h;
  const float r1 = v - split_bits_f32(static_cast<uint32_t>(h) << 16);  // exact
  const uint16_t m = split_round_bf16(r1);
  out[1] = m;
  const float r2 = r1 - split_bits_f32(static_cast<uint32_t>(m) << 16);  // exact
  out[2] = split_round_bf16(r2);
}

}  // namespace qwenq
