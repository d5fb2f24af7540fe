// Internal to quant/: the fields of GGUF blocks that more than one reader takes apart (the vector readers,
// quant/ggml_decode_vec.cpp, the IQ4 formats, quant/ggml_iquants.cpp, and the int8 products,
// quant/ggml_dot_int8.cpp). Layouts: quant/ggml_blocks.h.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "core/dtype.h"

namespace qwenq::ggml_detail {

// IQ4_NL's and IQ4_XS's 16 non-linear levels (x ≈ scale · kIq4nlLevels[q]).
constexpr int8_t kIq4nlLevels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// The 6-bit scale and min of sub-block j of a Q4_K/Q5_K super-block from its 12 packed bytes.
inline void k_scale_min(const uint8_t* s, int j, int* sc, int* mn) {
  if (j < 4) {
    *sc = s[j] & 63;
    *mn = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Sub-block j's 6-bit Q3_K scale code (0..63) from the 12 packed bytes: the low 4 bits in nibble j of bytes 0..7
// (bytes 0..7 low nibbles for j < 8, high for j >= 8), the top 2 bits at bits 2(j/4) of byte 8 + j%4.
inline int q3_scale_code(const uint8_t* sc, int j) {
  const int lo = j < 8 ? sc[j] & 0xF : sc[j - 8] >> 4;
  return lo | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4);
}

// IQ4_XS sub-block i's 6-bit scale code ls_i (its scale is d·(ls_i − 32)): nibble i of scales_l (bytes 4..7, low
// nibble for even i) with bits 2i, 2i+1 of the u16 scales_h (bytes 2, 3) on top.
inline int iq4_xs_scale_code(const uint8_t* blk, int i) {
  uint16_t h;
  std::memcpy(&h, blk + 2, 2);
  return ((blk[4 + i / 2] >> (4 * (i % 2))) & 15) | (((h >> (2 * i)) & 3) << 4);
}

// The little-endian u32 at p (Q5_0/Q5_1's qh: bit j is the fifth bit of value j).
inline uint32_t u32_at(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// The fp16 at p, with F16C's conversion where the compiler targets it: f16_to_f32 is a call, and the vector registers
// live across it cost more than the rest of a Q4_K block (exact either way; a signaling NaN comes out quiet, which
// every use, a multiplication, would do anyway).
inline float f16_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#ifdef __F16C__
  return _cvtsh_ss(h);
#else
  return f16_to_f32(h);
#endif
}

}  // namespace qwenq::ggml_detail
