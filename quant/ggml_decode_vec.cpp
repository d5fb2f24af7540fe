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

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__F16C__) || defined(__SSSE3__)
#include <immintrin.h>
#endif

#include "quant/ggml_block_fields.h"
#include "quant/packed_matvec_simd.h"

namespace qwenq::ggml_detail {
namespace {

using packed_detail::f32xV;
using packed_detail::i32xV;
using packed_detail::kHalves;
using packed_detail::kLanes;
using packed_detail::kVLanes;
using packed_detail::load16;
using packed_detail::storeV;
using packed_detail::u32xV;
using u8x16 = uint8_t __attribute__((vector_size(16)));
using i8x16 = int8_t __attribute__((vector_size(16)));

// A run is 16 values, computed as bytes (u8x16: one SSE register on every x86 target) and widened to floats in the
// target's own vectors: one of 16 lanes with AVX-512, two halves of 8 elsewhere (part 0, 1: bytes 0-7, 8-15). GCC 12
// moves 64-byte generic vectors through the stack when the target has no 64-byte registers (an x86-64-v3 build's
// one-row Q4_K product of a Qwen2.5-7B gate_proj spent 15 ms against 8.8 ms natively, most of it here). Each lane
// takes the same operations at either width: the same bits. `part` below is that half.
template <bool kSigned, int part, typename V>
inline i32xV widen(const V& v) {
#if defined(__AVX512F__)
  static_assert(part == 0, "one vector of 16 lanes");
  return (i32xV)(kSigned ? _mm512_cvtepi8_epi32((__m128i)v) : _mm512_cvtepu8_epi32((__m128i)v));
#elif defined(__AVX2__)
  const __m128i x = part == 0 ? (__m128i)v : _mm_srli_si128((__m128i)v, 8);
  return (i32xV)(kSigned ? _mm256_cvtepi8_epi32(x) : _mm256_cvtepu8_epi32(x));
#else
  i32xV out;
  for (int i = 0; i < kVLanes; ++i) out[i] = v[kVLanes * part + i];
  return out;
#endif
}
template <int part>
inline f32xV to_f32(const u8x16& v) {
  return __builtin_convertvector(widen<false, part>(v), f32xV);
}
template <int part>
inline f32xV to_f32(const i8x16& v) {
  return __builtin_convertvector(widen<true, part>(v), f32xV);
}
// A broadcast (a lane-by-lane loop compiles to masked inserts).
inline f32xV splat(float v) {
#if defined(__AVX512F__)
  return f32xV{v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v};
#else
  return f32xV{v, v, v, v, v, v, v, v};
#endif
}

// A type's block: kBlock values in kBytes; run<v, part>(in, s) returns values 16v + kVLanes·part .. + kVLanes − 1, s the
// block's fp16 scales read once per block. The 6- and 8-bit sub-block scales are read where they are used, not
// gathered into an array first: GCC assembles such an array in vector registers and stores it whole, and the scalar
// loads after it stall on that store (2x slower).
struct Scales {
  float d, dmin;
};

struct Q8_0 {
  static constexpr int64_t kBlock = 32, kBytes = 34;
  static Scales scales(const uint8_t* in) { return {f16_at(in), 0.0f}; }
  template <int v, int part>
  [[gnu::always_inline]] static f32xV run(const uint8_t* in, const Scales& s) {
    return splat(s.d) * to_f32<part>(load16<i8x16>(in + 2 + 16 * v));
  }
};

struct Q4_0 {
  static constexpr int64_t kBlock = 32, kBytes = 18;
  static Scales scales(const uint8_t* in) { return {f16_at(in), 0.0f}; }
  template <int v, int part>
  [[gnu::always_inline]] static f32xV run(const uint8_t* in, const Scales& s) {
    const u8x16 b = load16<u8x16>(in + 2);
    return splat(s.d) * (to_f32<part>(u8x16(v == 0 ? (b & 15) : (b >> 4))) - 8.0f);
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
  template <int v, int part>
  [[gnu::always_inline]] static f32xV run(const uint8_t* in, const Scales& s) {
    const u8x16 b = load16<u8x16>(in + kQs);
    i32xV q = widen<false, part>(u8x16(v == 0 ? (b & 15) : (b >> 4)));
    if constexpr (kFive) {
      const uint32_t qh = u32_at(in + (kMin ? 4 : 2));
      u32xV shift;  // the lanes' values j = 16v + kVLanes·part + lane
      for (int i = 0; i < kVLanes; ++i) shift[i] = static_cast<uint32_t>(16 * v + kVLanes * part + i);
      const u32xV bits = (u32xV{} + qh) >> shift;
      q |= (i32xV)((bits & 1u) << 4u);
    }
    if constexpr (!kMin) return to_float(q - 16) * splat(s.d);
    else return to_float(q) * splat(s.d) + splat(s.dmin);
  }
  static f32xV to_float(const i32xV& q) { return __builtin_convertvector(q, f32xV); }
};

template <bool kFive>
struct Q45_K {
  static constexpr int64_t kBlock = 256, kBytes = kFive ? 176 : 144;
  static Scales scales(const uint8_t* in) { return {f16_at(in), f16_at(in + 2)}; }
  // Sub-block j = v / 2: the low (even j) or high nibbles of qs[32 (j/2) + l], this run l in [16 (v%2), +16).
  template <int v, int part>
  [[gnu::always_inline]] static f32xV run(const uint8_t* in, const Scales& s) {
    constexpr int j = v / 2, half = v % 2;
    int sc, mn;
    k_scale_min(in + 4, j, &sc, &mn);
    const float dl = s.d * static_cast<float>(sc), ml = s.dmin * static_cast<float>(mn);
    const u8x16 b = load16<u8x16>(in + (kFive ? 48 : 16) + 32 * (j / 2) + 16 * half);
    u8x16 q = j % 2 == 0 ? (b & 15) : (b >> 4);
    if constexpr (kFive) q |= ((load16<u8x16>(in + 16 + 16 * half) >> j) & 1) << 4;
    return splat(dl) * to_f32<part>(q) - ml;
  }
};

// Values 128h + 32i + l: low 4 bits of ql[64h + 32(i%2) + l] (shifted 4 for i >= 2), top 2 of qh[32h + l] >> 2i;
// v = 8h + 2i + l/16 is also the index of the run's scale.
struct Q6_K {
  static constexpr int64_t kBlock = 256, kBytes = 210;
  static Scales scales(const uint8_t* in) { return {f16_at(in + 208), 0.0f}; }
  template <int v, int part>
  [[gnu::always_inline]] static f32xV run(const uint8_t* in, const Scales& s) {
    constexpr int h = v / 8, i = (v % 8) / 2, half = v % 2;
    const float ds = s.d * static_cast<float>(static_cast<int8_t>(in[192 + v]));
    const u8x16 lo = (load16<u8x16>(in + 64 * h + 32 * (i % 2) + 16 * half) >> (i < 2 ? 0 : 4)) & 15;
    const u8x16 top = (load16<u8x16>(in + 128 + 32 * h + 16 * half) >> (2 * i)) & 3;
    return splat(ds) * (to_f32<part>(u8x16(lo | (top << 4))) - 32.0f);
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
  template <int v, int part>
  [[gnu::always_inline]] static f32xV run(const uint8_t* in, const Scales& s) {
    constexpr int h = v / 8, j = (v % 8) / 2, half = v % 2;
    const u8x16 q = (load16<u8x16>(in + (kThree ? 32 : 16) + 32 * h + 16 * half) >> (2 * j)) & 3;
    if constexpr (kThree) {
      const float dl = s.d * static_cast<float>(q3_scale_code(in + 96, v) - 32);
      const u8x16 bit = (load16<u8x16>(in + 16 * half) >> (4 * h + j)) & 1;
      return splat(dl) * (to_f32<part>(u8x16(q | (bit << 2))) - 4.0f);
    } else {
      const float dl = s.d * static_cast<float>(in[v] & 15), ml = s.dmin * static_cast<float>(in[v] >> 4);
      return splat(dl) * to_f32<part>(q) - ml;
    }
  }
};

// IQ4_NL (block 32) and IQ4_XS (256; sub-block v/2 of 32 with the integer scale ls − 32): ŵ = dl · level[q], the
// low nibbles of the sub-block's 16 bytes for its first 16 values, the high ones for the next.
inline i8x16 iq4_levels(const u8x16& q) {
  i8x16 table;
  std::memcpy(&table, kIq4nlLevels, 16);
#if defined(__clang__) && defined(__SSSE3__)  // clang has no variable-index __builtin_shuffle; q < 16: the same bytes
  __m128i t, idx;
  std::memcpy(&t, &table, 16);
  std::memcpy(&idx, &q, 16);
  const __m128i r = _mm_shuffle_epi8(t, idx);
  i8x16 out;
  std::memcpy(&out, &r, 16);
  return out;
#elif defined(__clang__)
  i8x16 out;
  for (int i = 0; i < 16; ++i) out[i] = table[q[i] & 15];
  return out;
#else
  return __builtin_shuffle(table, q);
#endif
}
struct IQ4_NL {
  static constexpr int64_t kBlock = 32, kBytes = 18;
  static Scales scales(const uint8_t* in) { return {f16_at(in), 0.0f}; }
  template <int v, int part>
  [[gnu::always_inline]] static f32xV run(const uint8_t* in, const Scales& s) {
    const u8x16 b = load16<u8x16>(in + 2);
    return splat(s.d) * to_f32<part>(iq4_levels(v == 0 ? (b & 15) : (b >> 4)));
  }
};
struct IQ4_XS {
  static constexpr int64_t kBlock = 256, kBytes = 136;
  static Scales scales(const uint8_t* in) { return {f16_at(in), 0.0f}; }
  template <int v, int part>
  [[gnu::always_inline]] static f32xV run(const uint8_t* in, const Scales& s) {
    constexpr int ib = v / 2;
    const float dl = s.d * static_cast<float>(iq4_xs_scale_code(in, ib) - 32);
    const u8x16 b = load16<u8x16>(in + 8 + 16 * ib);
    return splat(dl) * to_f32<part>(iq4_levels(v % 2 == 0 ? (b & 15) : (b >> 4)));
  }
};

// Run v of a block into out + 16v, as kHalves native vectors, both computed before either is stored: a store may
// alias the block's bytes (uint8_t), so the halves' shared loads and scales fold into one only before it.
template <typename D, int v>
[[gnu::always_inline]] inline void store_run(const uint8_t* in, const Scales& s, float* out) {
  if constexpr (kHalves == 2) {
    const f32xV lo = D::template run<v, 0>(in, s), hi = D::template run<v, 1>(in, s);
    storeV(out, lo);
    storeV(out + kVLanes, hi);
  } else {
    storeV(out, D::template run<v, 0>(in, s));
  }
}

// Every run of every block, each v a compile-time constant (the shifts and offsets fold).
template <typename D, int... v>
void decode_blocks(const uint8_t* in, int64_t blocks, float* out, std::integer_sequence<int, v...>) {
  for (int64_t b = 0; b < blocks; ++b, in += D::kBytes, out += D::kBlock) {
    const Scales s = D::scales(in);
    (store_run<D, v>(in, s, out + kLanes * v), ...);
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
