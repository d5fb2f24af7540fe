// The readers of every quantized GGUF block type qwenq reads, 16 values per vector operation (the math is at the top of
// quant/ggml_blocks.h):
//   Q8_0 (32 values, 34 bytes)   ŵ = d · q                 q int8
//   Q4_0 (32 values, 18 bytes)   ŵ = d · (q − 8)           the low nibbles of qs[16], then the high ones
//   Q4_1, Q5_0, Q5_1 (32 values) ŵ = q·d + m, (q − 16)·d, q·d + m   Q5: bit j of a u32 qh as bit 4 of value j
//   Q4_K (256 values, 144 bytes) ŵ = (d·s_j) · q − dmin·m_j  sub-block j of 32: 6-bit s_j, m_j in 12 scale bytes
//   Q5_K (256 values, 176 bytes) the same with a fifth bit of q, bit j of qh[l]
//   Q6_K (256 values, 210 bytes) ŵ = (d·s_v) · (q − 32)     int8 s_v per 16 values; 4 low bits in ql, 2 in qh
//   Q2_K (256 values, 84 bytes)  ŵ = (d·s_v) · q − dmin·m_v  4-bit s_v, m_v per 16 values; 2-bit q
//   Q3_K (256 values, 110 bytes) ŵ = (d·(s_v − 32)) · (q − 4 + 4·hbit)   6-bit s_v per 16 values
//   IQ4_NL (32, 18), IQ4_XS (256, 136: 6-bit ls per 32)  ŵ = (d or d·(ls − 32)) · level[q]
// Each value takes ggml's float operations in ggml's order (the file is compiled -ffp-contract=off, so the Q4_K/Q5_K
// product rounds before the subtraction), so the results are dequantize_row_*'s bits; gguf-py's dequantize agrees
// bit for bit (tests/oracle/test_gguf_oracle.py) and tests/test_ggml_decode.cpp restates each layout byte by byte.
//
// Why vectors: the packed products decode a row per use (quant/packed_matvec.h), and ggml's scalar loops were the cost
// there: a one-token Qwen2.5-7B gate_proj in Q6_K took 39 ms on 2 cores against 11 ms decoded this way
// (benchmarks/results/2026-12-02-gguf-decode-cpu.md).
#include "quant/ggml_decode_vec.h"

#include <cstring>
#include <utility>

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

#include "quant/ggml_block_fields.h"
#include "quant/packed_matvec_simd.h"

namespace qwenq::ggml_detail {
namespace {

using packed_detail::f32x16;
using packed_detail::i32x16;
using packed_detail::kLanes;
using packed_detail::load16;
using packed_detail::store16;
using packed_detail::u32x16;
using u8x16 = uint8_t __attribute__((vector_size(16)));
using i8x16 = int8_t __attribute__((vector_size(16)));

// Bytes widened to 32-bit lanes, then converted. GCC's generic conversions of byte vectors go lane by lane (bytes
// straight to floats always, and bytes loaded from memory to ints too), so x86 gets the widening instructions.
template <bool kSigned, typename V>
inline i32x16 widen(const V& v) {
#if defined(__AVX512F__)
  return (i32x16)(kSigned ? _mm512_cvtepi8_epi32((__m128i)v) : _mm512_cvtepu8_epi32((__m128i)v));
#elif defined(__AVX2__)
  const __m128i x = (__m128i)v, hi = _mm_srli_si128(x, 8);
  const __m256i w[2] = {kSigned ? _mm256_cvtepi8_epi32(x) : _mm256_cvtepu8_epi32(x),
                        kSigned ? _mm256_cvtepi8_epi32(hi) : _mm256_cvtepu8_epi32(hi)};
  i32x16 out;
  std::memcpy(&out, w, 64);
  return out;
#else
  return __builtin_convertvector(v, i32x16);
#endif
}
inline f32x16 to_f32(const u8x16& v) { return __builtin_convertvector(widen<false>(v), f32x16); }
inline f32x16 to_f32(const i8x16& v) { return __builtin_convertvector(widen<true>(v), f32x16); }
// A broadcast (a lane-by-lane loop here compiles to 16 masked inserts).
inline f32x16 splat(float v) { return f32x16{v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v}; }

// A type's block: kBlock values in kBytes; run<v>(in, s) returns values 16v .. 16v + 15, s the block's fp16 scales
// read once per block. The 6- and 8-bit sub-block scales are read where they are used, not gathered into an array
// first: GCC assembles such an array in vector registers and stores it whole, and the scalar loads after it stall on
// that store (2x slower).
struct Scales {
  float d, dmin;
};

struct Q8_0 {
  static constexpr int64_t kBlock = 32, kBytes = 34;
  static Scales scales(const uint8_t* in) { return {f16_at(in), 0.0f}; }
  template <int v>
  [[gnu::always_inline]] static f32x16 run(const uint8_t* in, const Scales& s) {
    return splat(s.d) * to_f32(load16<i8x16>(in + 2 + 16 * v));
  }
};

struct Q4_0 {
  static constexpr int64_t kBlock = 32, kBytes = 18;
  static Scales scales(const uint8_t* in) { return {f16_at(in), 0.0f}; }
  template <int v>
  [[gnu::always_inline]] static f32x16 run(const uint8_t* in, const Scales& s) {
    const u8x16 b = load16<u8x16>(in + 2);
    return splat(s.d) * (to_f32(v == 0 ? (b & 15) : (b >> 4)) - 8.0f);
  }
};

// Q4_1 (20 bytes: d, m, qs[16]), Q5_0 (22: d, u32 qh, qs) and Q5_1 (24: d, m, qh, qs): value j of 32 is nibble
// j % 16 (low for j < 16) with, for the 5-bit types, bit j of qh as bit 4; ŵ = q·d + m (Q4_1, Q5_1: two roundings,
// as ggml's x·d + m) or (q − 16)·d (Q5_0).
template <bool kFive, bool kMin>
struct Q45_1 {
  static constexpr int64_t kBlock = 32, kBytes = kFive ? (kMin ? 24 : 22) : 20;
  static constexpr int64_t kQs = kFive ? (kMin ? 8 : 6) : 4;
  static Scales scales(const uint8_t* in) { return {f16_at(in), kMin ? f16_at(in + 2) : 0.0f}; }
  template <int v>
  [[gnu::always_inline]] static f32x16 run(const uint8_t* in, const Scales& s) {
    const u8x16 b = load16<u8x16>(in + kQs);
    i32x16 q = widen<false>(u8x16(v == 0 ? (b & 15) : (b >> 4)));
    if constexpr (kFive) {
      const uint32_t qh = u32_at(in + (kMin ? 4 : 2));
      const u32x16 lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
      const u32x16 bits = (u32x16{} + qh) >> (lane + 16u * v);
      q |= (i32x16)((bits & 1u) << 4u);
    }
    if constexpr (!kMin) return to_float(q - 16) * splat(s.d);
    else return to_float(q) * splat(s.d) + splat(s.dmin);
  }
  static f32x16 to_float(const i32x16& q) { return __builtin_convertvector(q, f32x16); }
};

template <bool kFive>
struct Q45_K {
  static constexpr int64_t kBlock = 256, kBytes = kFive ? 176 : 144;
  static Scales scales(const uint8_t* in) { return {f16_at(in), f16_at(in + 2)}; }
  // Sub-block j = v / 2: the low (even j) or high nibbles of qs[32 (j/2) + l], this run l in [16 (v%2), +16).
  template <int v>
  [[gnu::always_inline]] static f32x16 run(const uint8_t* in, const Scales& s) {
    constexpr int j = v / 2, half = v % 2;
    int sc, mn;
    k_scale_min(in + 4, j, &sc, &mn);
    const float dl = s.d * static_cast<float>(sc), ml = s.dmin * static_cast<float>(mn);
    const u8x16 b = load16<u8x16>(in + (kFive ? 48 : 16) + 32 * (j / 2) + 16 * half);
    u8x16 q = j % 2 == 0 ? (b & 15) : (b >> 4);
    if constexpr (kFive) q |= ((load16<u8x16>(in + 16 + 16 * half) >> j) & 1) << 4;
    return splat(dl) * to_f32(q) - ml;
  }
};

// Values 128h + 32i + l: low 4 bits of ql[64h + 32(i%2) + l] (shifted 4 for i >= 2), top 2 of qh[32h + l] >> 2i;
// v = 8h + 2i + l/16 is also the index of the run's scale.
struct Q6_K {
  static constexpr int64_t kBlock = 256, kBytes = 210;
  static Scales scales(const uint8_t* in) { return {f16_at(in + 208), 0.0f}; }
  template <int v>
  [[gnu::always_inline]] static f32x16 run(const uint8_t* in, const Scales& s) {
    constexpr int h = v / 8, i = (v % 8) / 2, half = v % 2;
    const float ds = s.d * static_cast<float>(static_cast<int8_t>(in[192 + v]));
    const u8x16 lo = (load16<u8x16>(in + 64 * h + 32 * (i % 2) + 16 * half) >> (i < 2 ? 0 : 4)) & 15;
    const u8x16 top = (load16<u8x16>(in + 128 + 32 * h + 16 * half) >> (2 * i)) & 3;
    return splat(ds) * (to_f32(lo | (top << 4)) - 32.0f);
  }
};

// Q2_K and Q3_K: run v is sub-block v of 16, values 128h + 32j + 16·half + l (v = 8h + 2j + half): bits 2j, 2j+1 of
// qs[32h + 16·half + l]. Q2_K: ŵ = (d·(sc_v & 15))·q − dmin·(sc_v >> 4); Q3_K: ŵ = (d·(s_v − 32))·(q − 4 + 4·bit), the
// bit 4h + j of hmask[16·half + l] (the integer formed exactly in fp32, then one rounding as ggml's int-to-float).
template <bool kThree>
struct LowK {
  static constexpr int64_t kBlock = 256, kBytes = kThree ? 110 : 84;
  static Scales scales(const uint8_t* in) {
    return kThree ? Scales{f16_at(in + 108), 0.0f} : Scales{f16_at(in + 80), f16_at(in + 82)};
  }
  template <int v>
  [[gnu::always_inline]] static f32x16 run(const uint8_t* in, const Scales& s) {
    constexpr int h = v / 8, j = (v % 8) / 2, half = v % 2;
    const u8x16 q = (load16<u8x16>(in + (kThree ? 32 : 16) + 32 * h + 16 * half) >> (2 * j)) & 3;
    if constexpr (kThree) {
      const float dl = s.d * static_cast<float>(q3_scale_code(in + 96, v) - 32);
      const u8x16 bit = (load16<u8x16>(in + 16 * half) >> (4 * h + j)) & 1;
      return splat(dl) * (to_f32(u8x16(q | (bit << 2))) - 4.0f);
    } else {
      const float dl = s.d * static_cast<float>(in[v] & 15), ml = s.dmin * static_cast<float>(in[v] >> 4);
      return splat(dl) * to_f32(q) - ml;
    }
  }
};

// IQ4_NL (block 32) and IQ4_XS (256; sub-block v/2 of 32 with the integer scale ls − 32): ŵ = dl · level[q], the
// low nibbles of the sub-block's 16 bytes for its first 16 values, the high ones for the next.
inline i8x16 iq4_levels(const u8x16& q) {
  i8x16 table;
  std::memcpy(&table, kIq4nlLevels, 16);
  return __builtin_shuffle(table, q);
}
struct IQ4_NL {
  static constexpr int64_t kBlock = 32, kBytes = 18;
  static Scales scales(const uint8_t* in) { return {f16_at(in), 0.0f}; }
  template <int v>
  [[gnu::always_inline]] static f32x16 run(const uint8_t* in, const Scales& s) {
    const u8x16 b = load16<u8x16>(in + 2);
    return splat(s.d) * to_f32(iq4_levels(v == 0 ? (b & 15) : (b >> 4)));
  }
};
struct IQ4_XS {
  static constexpr int64_t kBlock = 256, kBytes = 136;
  static Scales scales(const uint8_t* in) { return {f16_at(in), 0.0f}; }
  template <int v>
  [[gnu::always_inline]] static f32x16 run(const uint8_t* in, const Scales& s) {
    constexpr int ib = v / 2;
    const float dl = s.d * static_cast<float>(iq4_xs_scale_code(in, ib) - 32);
    const u8x16 b = load16<u8x16>(in + 8 + 16 * ib);
    return splat(dl) * to_f32(iq4_levels(v % 2 == 0 ? (b & 15) : (b >> 4)));
  }
};

// Every run of every block, each v a compile-time constant (the shifts and offsets fold).
template <typename D, int... v>
void decode_blocks(const uint8_t* in, int64_t blocks, float* out, std::integer_sequence<int, v...>) {
  for (int64_t b = 0; b < blocks; ++b, in += D::kBytes, out += D::kBlock) {
    const Scales s = D::scales(in);
    (store16(out + kLanes * v, D::template run<v>(in, s)), ...);
  }
}
template <typename D>
void decode(const uint8_t* in, int64_t n, float* out) {
  decode_blocks<D>(in, n / D::kBlock, out, std::make_integer_sequence<int, static_cast<int>(D::kBlock / kLanes)>());
}

}  // namespace

bool dequantize_row_vec(GgmlType t, const uint8_t* in, int64_t n, float* out) {
  switch (t) {
    case GgmlType::Q8_0: decode<Q8_0>(in, n, out); return true;
    case GgmlType::Q4_0: decode<Q4_0>(in, n, out); return true;
    case GgmlType::Q4_K: decode<Q45_K<false>>(in, n, out); return true;
    case GgmlType::Q5_K: decode<Q45_K<true>>(in, n, out); return true;
    case GgmlType::Q6_K: decode<Q6_K>(in, n, out); return true;
    case GgmlType::Q4_1: decode<Q45_1<false, true>>(in, n, out); return true;
    case GgmlType::Q5_0: decode<Q45_1<true, false>>(in, n, out); return true;
    case GgmlType::Q5_1: decode<Q45_1<true, true>>(in, n, out); return true;
    case GgmlType::Q2_K: decode<LowK<false>>(in, n, out); return true;
    case GgmlType::Q3_K: decode<LowK<true>>(in, n, out); return true;
    case GgmlType::IQ4_NL: decode<IQ4_NL>(in, n, out); return true;
    case GgmlType::IQ4_XS: decode<IQ4_XS>(in, n, out); return true;
    default: return false;
  }
}

}  // namespace qwenq::ggml_detail
