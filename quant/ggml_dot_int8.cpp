// The int8 products of GGUF weights (the math is at the top of quant/ggml_dot_int8.h): the activations' quantizers,
// the portable dot products (one loop per type, the twin), their AVX-512 VNNI versions and the row-parallel product.
//
// AVX-512 VNNI layout: one vpdpbusd multiplies 64 unsigned weight codes by 64 signed activations and leaves 16 int32
// lanes, lane l the sum of values 4l .. 4l + 3. The codes are put in the activations' order first: a Q4_K chunk of
// 32 bytes holds values 0..31 in its low nibbles and 32..63 in its high ones (two sub-blocks), a Q6_K half-block's
// 64 ql bytes hold values 0..63 in their low nibbles and 64..127 in their high ones, with two bits each from qh;
// Q2_K/Q3_K take bit pairs of 32 bytes, the blocks of 32 two 16-byte nibble runs per block. Lanes are multiplied by
// their sub-block's integer scale (lanes 8s..8s+7 for sub-blocks of 32, 4s..4s+3 for 16) and summed in int32 over a
// super-block; the mins and the Q6_K/Q3_K offsets come from the activations' 16-value sums. Signed codes (Q8_0,
// Q4_0 − 8, Q5_0 − 16, the IQ4 levels) multiply as |c| · (a with c's sign), ggml's trick: a is in [−127, 127], so
// negating it cannot overflow.
#include "quant/ggml_dot_int8.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define QWENQ_INT8_VNNI 1
#endif
// The AVX2 kernels are compiled into every x86-64 build (core/cpu_features.h) and chosen at run time when the build
// has no VNNI kernels, so any x86-64 CI machine tests them.
#include "core/cpu_features.h"
#if defined(QWENQ_INT8_VNNI) || defined(QWENQ_HAVE_AVX2_TARGET)
#include <immintrin.h>
#endif
#include <atomic>

#include "core/error.h"
#include "core/threads.h"
#include "quant/ggml_block_fields.h"
#include "quant/ggml_search.h"

namespace qwenq {

using ggml_detail::f16_at;
using ggml_detail::iq4_xs_scale_code;
using ggml_detail::k_scale_min;
using ggml_detail::q3_scale_code;
using ggml_detail::u32_at;

namespace {
constexpr const char* kUnsupported =
    "the int8 products read the quantized GGUF types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K ... Q6_K, IQ4_XS), "
    "not type ";
}  // namespace

bool ggml_int8_product_supported(GgmlType t) {
  switch (t) {
    case GgmlType::Q8_0: case GgmlType::Q4_0: case GgmlType::Q4_1: case GgmlType::Q5_0: case GgmlType::Q5_1:
    case GgmlType::IQ4_NL: case GgmlType::Q2_K: case GgmlType::Q3_K: case GgmlType::Q4_K: case GgmlType::Q5_K:
    case GgmlType::Q6_K: case GgmlType::IQ4_XS:
      return true;
    default:
      return false;
  }
}

GgmlType ggml_int8_activation_type(GgmlType t) {
  QWENQ_CHECK(ggml_int8_product_supported(t), kUnsupported << static_cast<uint32_t>(t));
  return ggml_type_info(static_cast<uint32_t>(t))->block == 32 ? GgmlType::Q8_0 : GgmlType::Q8_K;
}

namespace {

// A block holding an inf or a NaN gets zero codes and d = NaN, so the products it enters come out NaN, as the exact
// product's would (ggml casts the non-finite quotients to int8 instead: undefined, in practice arbitrary codes).
bool finite_block(const float* x, int n, int8_t* q, float* d) {
  for (int i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) {
      std::fill(q, q + n, int8_t{0});
      *d = std::numeric_limits<float>::quiet_NaN();
      return false;
    }
  }
  return true;
}

// Each finite block through quantize_ggml_row(Q8_0) (ggml's quantize_row_q8_0_ref: d = amax / 127 stored fp16,
// codes roundf(x · (1/d)) with the fp32 d), its 34 bytes unpacked into codes and d.
void quantize_q8_0(const float* x, int64_t K, int8_t* q, float* d) {
  uint8_t block[34];
  for (int64_t b = 0; b < K / 32; ++b) {
    const float* xb = x + 32 * b;
    if (!finite_block(xb, 32, q + 32 * b, d + b)) continue;
    quantize_ggml_row(GgmlType::Q8_0, xb, 32, block);
    std::memcpy(q + 32 * b, block + 2, 32);
    d[b] = f16_at(block);
  }
}

// quantize_row_q8_K_ref: the x of largest |x| (first on ties) sets iscale = −127/max, codes nearest_int(iscale·x)
// capped at 127, d = 1/iscale; a block of zeros gets d = 0 and zero codes.
void quantize_q8_k(const float* x, int64_t K, int8_t* q, float* d) {
  for (int64_t b = 0; b < K / 256; ++b) {
    const float* xb = x + 256 * b;
    if (!finite_block(xb, 256, q + 256 * b, d + b)) continue;
    float amax = 0.0f, max = 0.0f;
    for (int i = 0; i < 256; ++i) {
      if (std::fabs(xb[i]) > amax) {
        amax = std::fabs(xb[i]);
        max = xb[i];
      }
    }
    if (amax == 0.0f) {
      std::fill(q + 256 * b, q + 256 * (b + 1), int8_t{0});
      d[b] = 0.0f;
      continue;
    }
    const float iscale = -127.0f / max;
    for (int i = 0; i < 256; ++i) {
      const float v = iscale * xb[i];  // rounded to fp32 before nearest_int's addition (no contraction here)
      q[256 * b + i] = static_cast<int8_t>(std::min(127, ggml_detail::nearest_int(v)));
    }
    d[b] = 1.0f / iscale;
  }
}

// ---- portable dot products: weight row w (nb blocks), activation codes a, scales da, 16-value sums bs ----
//
// Not vectorized where the target has VNNI: GCC 12.2 turns the signed × signed byte sum of dot_q8_0_portable into one
// vpdpbusd, which reads one side as unsigned, and the sums come out wrong for negative weights (seen with
// -march=native on this AMD EPYC; the test's random bytes catch it). These loops are the twin there, not the fast path.
// GCC only: clang has no optimize attribute, and clang 14's vectorized loops pass the same test (2026-12-05).
#if (defined(__AVX512VNNI__) || defined(__AVXVNNI__)) && !defined(__clang__)
#define QWENQ_PORTABLE_DOT __attribute__((optimize("no-tree-vectorize")))
#else
#define QWENQ_PORTABLE_DOT
#endif

// Σ q_i · a_i over n values (the loops GCC vectorizes without VNNI: widening multiply-adds).
template <typename Q>
QWENQ_PORTABLE_DOT int32_t int_dot(const Q* q, const int8_t* a, int n) {
  int32_t s = 0;
  for (int i = 0; i < n; ++i) s += static_cast<int32_t>(q[i]) * a[i];
  return s;
}

// Blocks of 32 values with an fp16 d at byte 0 and, kMin, an fp16 m at byte 2: w = d·c + m with the 32 signed codes
// c that codes(block, c) writes; the min term is m·da·Σa (the activations' 16-value sums).
template <int64_t kBytes, bool kMin, typename Codes>
QWENQ_PORTABLE_DOT float blocks32_portable(const uint8_t* w, const int8_t* a, const float* da, const int16_t* bs,
                                           int64_t nb, Codes codes) {
  float sum = 0.0f;
  int8_t c[32];
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + kBytes * b;
    codes(blk, c);
    sum += f16_at(blk) * da[b] * static_cast<float>(int_dot(c, a + 32 * b, 32));
    if (kMin) sum += f16_at(blk + 2) * da[b] * static_cast<float>(bs[2 * b] + bs[2 * b + 1]);
  }
  return sum;
}

// The 32 values of a block whose 16 bytes hold values j (low nibble) and j + 16 (high nibble) in byte j, each
// mapped by level(nibble, j) (j the value's index).
template <typename Level>
inline void nibble_codes(const uint8_t* qs, int8_t* c, Level level) {
  for (int j = 0; j < 16; ++j) {
    c[j] = static_cast<int8_t>(level(qs[j] & 15, j));
    c[16 + j] = static_cast<int8_t>(level(qs[j] >> 4, 16 + j));
  }
}

float dot_q8_0_portable(const uint8_t* w, const int8_t* a, const float* da, const int16_t* bs, int64_t nb) {
  return blocks32_portable<34, false>(w, a, da, bs, nb, [](const uint8_t* blk, int8_t* c) { std::memcpy(c, blk + 2, 32); });
}
float dot_q4_0_portable(const uint8_t* w, const int8_t* a, const float* da, const int16_t* bs, int64_t nb) {
  return blocks32_portable<18, false>(w, a, da, bs, nb, [](const uint8_t* blk, int8_t* c) {
    nibble_codes(blk + 2, c, [](int q, int) { return q - 8; });
  });
}
float dot_q4_1_portable(const uint8_t* w, const int8_t* a, const float* da, const int16_t* bs, int64_t nb) {
  return blocks32_portable<20, true>(w, a, da, bs, nb, [](const uint8_t* blk, int8_t* c) {
    nibble_codes(blk + 4, c, [](int q, int) { return q; });
  });
}
float dot_q5_0_portable(const uint8_t* w, const int8_t* a, const float* da, const int16_t* bs, int64_t nb) {
  return blocks32_portable<22, false>(w, a, da, bs, nb, [](const uint8_t* blk, int8_t* c) {
    const uint32_t qh = u32_at(blk + 2);
    nibble_codes(blk + 6, c, [qh](int q, int j) { return (q | ((qh >> j) & 1) << 4) - 16; });
  });
}
float dot_q5_1_portable(const uint8_t* w, const int8_t* a, const float* da, const int16_t* bs, int64_t nb) {
  return blocks32_portable<24, true>(w, a, da, bs, nb, [](const uint8_t* blk, int8_t* c) {
    const uint32_t qh = u32_at(blk + 4);
    nibble_codes(blk + 8, c, [qh](int q, int j) { return q | ((qh >> j) & 1) << 4; });
  });
}
float dot_iq4_nl_portable(const uint8_t* w, const int8_t* a, const float* da, const int16_t* bs, int64_t nb) {
  return blocks32_portable<18, false>(w, a, da, bs, nb, [](const uint8_t* blk, int8_t* c) {
    nibble_codes(blk + 2, c, [](int q, int) { return ggml_detail::kIq4nlLevels[q]; });
  });
}

// IQ4_XS (136 bytes per 256): fp16 d, u16 scales_h, scales_l[4], qs[128]; sub-block i of 32 has the integer scale
// iq4_xs_scale_code − 32 and IQ4_NL's levels.
QWENQ_PORTABLE_DOT float dot_iq4_xs_portable(const uint8_t* w, const int8_t* a, const float* da, const int16_t*,
                                             int64_t nb) {
  float sum = 0.0f;
  int8_t c[32];
  for (int64_t B = 0; B < nb; ++B) {
    const uint8_t* blk = w + 136 * B;
    int32_t isum = 0;
    for (int i = 0; i < 8; ++i) {
      nibble_codes(blk + 8 + 16 * i, c, [](int q, int) { return ggml_detail::kIq4nlLevels[q]; });
      isum += (iq4_xs_scale_code(blk, i) - 32) * int_dot(c, a + 256 * B + 32 * i, 32);
    }
    sum += f16_at(blk) * da[B] * static_cast<float>(isum);
  }
  return sum;
}

template <bool kFive>
QWENQ_PORTABLE_DOT float dot_q45_k_portable(const uint8_t* w, const int8_t* a, const float* da, const int16_t* bs,
                                            int64_t nb) {
  constexpr int64_t kBytes = kFive ? 176 : 144;
  float sum = 0.0f;
  uint8_t q[256];
  for (int64_t B = 0; B < nb; ++B) {
    const uint8_t* blk = w + kBytes * B;
    const uint8_t* qh = blk + 16;
    const uint8_t* qs = blk + (kFive ? 48 : 16);
    // Sub-block j: the low (even j) or high nibbles of qs[32 (j/2) + l], plus bit j of qh[l] as bit 4 (Q5_K).
    for (int j = 0; j < 8; ++j)
      for (int l = 0; l < 32; ++l)
        q[32 * j + l] = static_cast<uint8_t>(((qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 15) |
                                             (kFive ? ((qh[l] >> j) & 1) << 4 : 0));
    int32_t isum = 0, msum = 0;
    for (int j = 0; j < 8; ++j) {
      int sc, mn;
      k_scale_min(blk + 4, j, &sc, &mn);
      isum += sc * int_dot(q + 32 * j, a + 256 * B + 32 * j, 32);
      msum += mn * (bs[16 * B + 2 * j] + bs[16 * B + 2 * j + 1]);
    }
    sum += f16_at(blk) * da[B] * static_cast<float>(isum) - f16_at(blk + 2) * da[B] * static_cast<float>(msum);
  }
  return sum;
}

QWENQ_PORTABLE_DOT float dot_q6_k_portable(const uint8_t* w, const int8_t* a, const float* da, const int16_t* bs, int64_t nb) {
  float sum = 0.0f;
  uint8_t q[256];
  for (int64_t B = 0; B < nb; ++B) {
    const uint8_t* blk = w + 210 * B;
    const uint8_t *ql = blk, *qh = blk + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);
    // Values 128h + 32i + l: the low or high nibble of ql[64h + 32(i%2) + l], bits 2i, 2i+1 of qh[32h + l] on top.
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < 4; ++i)
        for (int l = 0; l < 32; ++l)
          q[128 * h + 32 * i + l] = static_cast<uint8_t>(((ql[64 * h + 32 * (i % 2) + l] >> (4 * (i / 2))) & 15) |
                                                         (((qh[32 * h + l] >> (2 * i)) & 3) << 4));
    int32_t isum = 0;
    for (int v = 0; v < 16; ++v)
      isum += sc[v] * (int_dot(q + 16 * v, a + 256 * B + 16 * v, 16) - 32 * bs[16 * B + v]);
    sum += f16_at(blk + 208) * da[B] * static_cast<float>(isum);
  }
  return sum;
}

// Q2_K (84 bytes per 256): scales[16] (low nibble the scale, high the min of sub-block s of 16), qs[64], fp16 d and
// dmin; Q3_K (110 bytes): hmask[32], qs[64], 12 bytes of 6-bit scale codes, fp16 d. Value 128h + 32j + l takes bits
// 2j, 2j+1 of qs[32h + l] (and, Q3_K, bit 4h + j of hmask[l]: set means +4 over the 2 bits' value − 4).
template <bool kThree>
inline void low_k_codes(const uint8_t* qs, const uint8_t* hmask, uint8_t* q) {
  for (int h = 0; h < 2; ++h)
    for (int j = 0; j < 4; ++j)
      for (int l = 0; l < 32; ++l)
        q[128 * h + 32 * j + l] = static_cast<uint8_t>(((qs[32 * h + l] >> (2 * j)) & 3) |
                                                       (kThree ? ((hmask[l] >> (4 * h + j)) & 1) << 2 : 0));
}

// Q3_K's codes u = 2 bits + 4·hmask bit (0..7) stand for u − 4: Σ (u − 4)·a = Σ u·a − 4·Σ a per sub-block.
template <bool kThree>
QWENQ_PORTABLE_DOT float dot_low_k_portable(const uint8_t* w, const int8_t* a, const float* da, const int16_t* bs,
                                            int64_t nb) {
  constexpr int64_t kBytes = kThree ? 110 : 84;
  float sum = 0.0f;
  uint8_t q[256];
  for (int64_t B = 0; B < nb; ++B) {
    const uint8_t* blk = w + kBytes * B;
    low_k_codes<kThree>(blk + (kThree ? 32 : 16), blk, q);
    int32_t isum = 0, msum = 0;
    for (int s = 0; s < 16; ++s) {
      const int32_t dot = int_dot(q + 16 * s, a + 256 * B + 16 * s, 16);
      if (kThree) {
        isum += (ggml_detail::q3_scale_code(blk + 96, s) - 32) * (dot - 4 * bs[16 * B + s]);
      } else {
        isum += (blk[s] & 15) * dot;
        msum += (blk[s] >> 4) * bs[16 * B + s];
      }
    }
    const float scaled = f16_at(blk + (kThree ? 108 : 80)) * da[B] * static_cast<float>(isum);
    sum += kThree ? scaled : scaled - f16_at(blk + 82) * da[B] * static_cast<float>(msum);
  }
  return sum;
}

using DotFn = float (*)(const uint8_t*, const int8_t*, const float*, const int16_t*, int64_t);

DotFn portable_dot(GgmlType t) {
  switch (t) {
    case GgmlType::Q8_0: return dot_q8_0_portable;
    case GgmlType::Q4_0: return dot_q4_0_portable;
    case GgmlType::Q4_1: return dot_q4_1_portable;
    case GgmlType::Q5_0: return dot_q5_0_portable;
    case GgmlType::Q5_1: return dot_q5_1_portable;
    case GgmlType::IQ4_NL: return dot_iq4_nl_portable;
    case GgmlType::Q4_K: return dot_q45_k_portable<false>;
    case GgmlType::Q5_K: return dot_q45_k_portable<true>;
    case GgmlType::Q6_K: return dot_q6_k_portable;
    case GgmlType::IQ4_XS: return dot_iq4_xs_portable;
    case GgmlType::Q2_K: return dot_low_k_portable<false>;
    case GgmlType::Q3_K: return dot_low_k_portable<true>;
    default: break;
  }
  QWENQ_FAIL(kUnsupported << static_cast<uint32_t>(t));
}

// R rows of quantized activations, for kernels that unpack a weight block once and multiply it with each row.
template <int R>
struct Acts {
  const int8_t* q[R];
  const float* d[R];
  const int16_t* bs[R];
};

template <int R>
void portable_rows(DotFn fn, const uint8_t* w, const Acts<R>& a, int64_t nb, float* out) {
  for (int r = 0; r < R; ++r) out[r] = fn(w, a.q[r], a.d[r], a.bs[r], nb);
}

#ifdef QWENQ_INT8_VNNI

// ---- AVX-512 VNNI ----

inline __m512i dot_u8s8(__m512i u, __m512i s) { return _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s); }
inline __m512i load64(const void* p) { return _mm512_loadu_si512(p); }
inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m128i load16(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }
// The sum of 16 lanes, once per row (GCC 12's reductions and shuffles trip -Wuninitialized in its own headers).
inline float hsum(__m512 v) {
  alignas(64) float t[16];
  _mm512_store_ps(t, v);
  for (int w = 8; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) t[i] += t[i + w];
  return t[0];
}
// s0 in lanes 0..7 and s1 in lanes 8..15 (two blocks of 32 values).
inline __m512 two_scales(float s0, float s1) { return _mm512_insertf32x8(_mm512_set1_ps(s0), _mm256_set1_ps(s1), 1); }

// Blocks of 32 values with an fp16 d at byte 0 (and, kMin, an fp16 m at byte 2), two per step (lanes 0..7 the
// first): codes(b0, b1) gives the 64 signed codes c of blocks b0, b1 (w = d·c + m); they multiply as
// |c| · (a negated where c < 0). The min term m·da·Σa of both blocks goes into lane 0.
template <int R, bool kMin, typename Codes>
void blocks32_vnni(const uint8_t* w, int64_t bytes, const Acts<R>& a, int64_t b0, int64_t b1, __m512* acc,
                   Codes codes) {
  for (int64_t b = b0; b < b1; b += 2) {
    const bool pair = b + 1 < b1;  // else an odd last block: the step's second half zero
    const uint8_t* b0 = w + bytes * b;
    const uint8_t* b1 = pair ? b0 + bytes : b0;
    const __mmask64 keep = pair ? ~0ull : 0xffffffffull;
    const __m512i wv = _mm512_maskz_mov_epi8(keep, codes(b0, b1));
    const __m512i wabs = _mm512_abs_epi8(wv);
    const __mmask64 neg = _mm512_movepi8_mask(wv);
    const float dw0 = f16_at(b0), dw1 = pair ? f16_at(b1) : 0.0f;
    for (int r = 0; r < R; ++r) {
      const __m512i av = _mm512_maskz_loadu_epi8(keep, a.q[r] + 32 * b);
      const __m512i dp = dot_u8s8(wabs, _mm512_mask_sub_epi8(av, neg, _mm512_setzero_si512(), av));
      const float da1 = pair ? a.d[r][b + 1] : 0.0f;
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp), two_scales(dw0 * a.d[r][b], dw1 * da1), acc[r]);
      if (kMin) {
        const int16_t* bs = a.bs[r] + 2 * b;
        float term = f16_at(b0 + 2) * a.d[r][b] * static_cast<float>(bs[0] + bs[1]);
        if (pair) term += f16_at(b1 + 2) * da1 * static_cast<float>(bs[2] + bs[3]);
        acc[r] = _mm512_mask_add_ps(acc[r], 1, acc[r], _mm512_set1_ps(term));
      }
    }
  }
}

// Two blocks' 16-byte nibble runs as 64 codes 0..15 in value order: [low b0, high b0, low b1, high b1].
inline __m512i nibbles64(const uint8_t* qs0, const uint8_t* qs1) {
  const __m128i x0 = load16(qs0), x1 = load16(qs1);
  __m512i v = _mm512_castsi128_si512(x0);
  v = _mm512_inserti32x4(v, _mm_srli_epi16(x0, 4), 1);
  v = _mm512_inserti32x4(v, x1, 2);
  v = _mm512_inserti32x4(v, _mm_srli_epi16(x1, 4), 3);
  return _mm512_and_si512(v, _mm512_set1_epi8(15));
}
// Q5_0 / Q5_1: bit j of a block's u32 qh is the fifth bit of its value j, so the two words are the byte mask.
inline __m512i fifth_bits(__m512i nibbles, const uint8_t* qh0, const uint8_t* qh1) {
  const __mmask64 bits = static_cast<__mmask64>(u32_at(qh0)) | static_cast<__mmask64>(u32_at(qh1)) << 32;
  return _mm512_mask_add_epi8(nibbles, bits, nibbles, _mm512_set1_epi8(16));
}
// IQ4_NL's levels in each 128-bit lane, for vpshufb.
inline __m512i iq4nl_table() {
  static const std::array<int8_t, 64> levels = [] {
    std::array<int8_t, 64> t{};
    for (int i = 0; i < 64; ++i) t[static_cast<size_t>(i)] = ggml_detail::kIq4nlLevels[i % 16];
    return t;
  }();
  return load64(levels.data());
}

template <int R>
void q8_0_vnni(const uint8_t* w, const Acts<R>& a, int64_t b0, int64_t b1, __m512* acc) {
  blocks32_vnni<R, false>(w, 34, a, b0, b1, acc, [](const uint8_t* p0, const uint8_t* p1) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(load32(p0 + 2)), load32(p1 + 2), 1);
  });
}
template <int R>
void q4_0_vnni(const uint8_t* w, const Acts<R>& a, int64_t b0, int64_t b1, __m512* acc) {
  blocks32_vnni<R, false>(w, 18, a, b0, b1, acc, [](const uint8_t* p0, const uint8_t* p1) {
    return _mm512_sub_epi8(nibbles64(p0 + 2, p1 + 2), _mm512_set1_epi8(8));
  });
}
template <int R>
void q4_1_vnni(const uint8_t* w, const Acts<R>& a, int64_t b0, int64_t b1, __m512* acc) {
  blocks32_vnni<R, true>(w, 20, a, b0, b1, acc,
                         [](const uint8_t* p0, const uint8_t* p1) { return nibbles64(p0 + 4, p1 + 4); });
}
template <int R>
void q5_0_vnni(const uint8_t* w, const Acts<R>& a, int64_t b0, int64_t b1, __m512* acc) {
  blocks32_vnni<R, false>(w, 22, a, b0, b1, acc, [](const uint8_t* p0, const uint8_t* p1) {
    return _mm512_sub_epi8(fifth_bits(nibbles64(p0 + 6, p1 + 6), p0 + 2, p1 + 2), _mm512_set1_epi8(16));
  });
}
template <int R>
void q5_1_vnni(const uint8_t* w, const Acts<R>& a, int64_t b0, int64_t b1, __m512* acc) {
  blocks32_vnni<R, true>(w, 24, a, b0, b1, acc, [](const uint8_t* p0, const uint8_t* p1) {
    return fifth_bits(nibbles64(p0 + 8, p1 + 8), p0 + 4, p1 + 4);
  });
}
template <int R>
void iq4_nl_vnni(const uint8_t* w, const Acts<R>& a, int64_t b0, int64_t b1, __m512* acc) {
  const __m512i table = iq4nl_table();
  blocks32_vnni<R, false>(w, 18, a, b0, b1, acc, [&table](const uint8_t* p0, const uint8_t* p1) {
    return _mm512_shuffle_epi8(table, nibbles64(p0 + 2, p1 + 2));
  });
}

// IQ4_XS: per 64 values (sub-blocks 2c, 2c + 1) the levels of 32 bytes of qs, lanes 0..7 the first sub-block, times
// the sub-blocks' integer scales ls − 32 (iq4_xs_scale_code, 8 lanes at once), summed in int32 over the super-block.
template <int R>
void iq4_xs_vnni(const uint8_t* w, const Acts<R>& a, int64_t b0, int64_t b1, __m512* acc) {
  const __m512i table = iq4nl_table();
  const __m512i sub_of_lane = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i low_shift = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 28, 24, 20, 16, 12, 8, 4, 0);
  const __m512i high_shift = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 14, 12, 10, 8, 6, 4, 2, 0);
  for (int64_t B = b0; B < b1; ++B) {
    const uint8_t* blk = w + 136 * B;
    uint16_t h;
    std::memcpy(&h, blk + 2, 2);
    // ls_i = (scales_l >> 4i & 15) | (scales_h >> 2i & 3) << 4, lanes 0..7.
    const __m512i lo = _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(u32_at(blk + 4))), low_shift),
                                        _mm512_set1_epi32(15));
    const __m512i hi = _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32(h), high_shift), _mm512_set1_epi32(3));
    const __m512i ls = _mm512_sub_epi32(_mm512_or_si512(lo, _mm512_slli_epi32(hi, 4)), _mm512_set1_epi32(32));
    __m512i isum[R];
    for (int r = 0; r < R; ++r) isum[r] = _mm512_setzero_si512();
    for (int c = 0; c < 4; ++c) {
      const uint8_t* qs = blk + 8 + 32 * c;
      const __m512i codes = _mm512_shuffle_epi8(table, nibbles64(qs, qs + 16));
      const __m512i wabs = _mm512_abs_epi8(codes);
      const __mmask64 neg = _mm512_movepi8_mask(codes);
      const __m512i lane_sc = _mm512_permutexvar_epi32(_mm512_add_epi32(sub_of_lane, _mm512_set1_epi32(2 * c)), ls);
      for (int r = 0; r < R; ++r) {
        const __m512i av = load64(a.q[r] + 256 * B + 64 * c);
        const __m512i dp = dot_u8s8(wabs, _mm512_mask_sub_epi8(av, neg, _mm512_setzero_si512(), av));
        isum[r] = _mm512_add_epi32(isum[r], _mm512_mullo_epi32(dp, lane_sc));
      }
    }
    const float d = f16_at(blk);
    for (int r = 0; r < R; ++r)
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_set1_ps(d * a.d[r][B]), acc[r]);
  }
}

// The 8 scales of a Q4_K/Q5_K super-block in lanes 0..7 and its 8 mins in lanes 8..15, from the 12 packed bytes as
// three little-endian words w0, w1, w2 (k_scale_min's fields, four at a time): s_0..3 = w0 & 63, m_0..3 = w1 & 63,
// s_4..7 = (w2 & 15) | (top 2 bits of w0's bytes) << 4, m_4..7 = (w2 >> 4 & 15) | (top 2 bits of w1's bytes) << 4.
inline __m512i k_scales_mins(const uint8_t* packed) {
  uint32_t w[3];
  std::memcpy(w, packed, 12);
  const uint32_t six = 0x3f3f3f3fu, four = 0x0f0f0f0fu, two = 0x03030303u;
  const uint32_t s_lo = w[0] & six, m_lo = w[1] & six;
  const uint32_t s_hi = (w[2] & four) | (((w[0] >> 6) & two) << 4);
  const uint32_t m_hi = ((w[2] >> 4) & four) | (((w[1] >> 6) & two) << 4);
  return _mm512_cvtepu8_epi32(_mm_set_epi32(static_cast<int>(m_hi), static_cast<int>(m_lo), static_cast<int>(s_hi),
                                            static_cast<int>(s_lo)));
}

template <int R, bool kFive>
void q45_k_vnni(const uint8_t* w, const Acts<R>& a, int64_t b0, int64_t b1, __m512* acc) {
  constexpr int64_t kBytes = kFive ? 176 : 144;
  const __m256i low4 = _mm256_set1_epi8(15), bit4 = _mm256_set1_epi8(16);
  // Lane l of chunk c (values 64c .. 64c + 63) takes sub-block 2c + l/8; the mins' lane l sub-block l/2 (lane 8 + l/2
  // of k_scales_mins).
  const __m512i sub_of_lane = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i min_of_lane = _mm512_set_epi32(15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8);
  for (int64_t B = b0; B < b1; ++B) {
    const uint8_t* blk = w + kBytes * B;
    const uint8_t* qs = blk + (kFive ? 48 : 16);
    const __m512i sm = k_scales_mins(blk + 4);
    const __m256i qh = kFive ? load32(blk + 16) : _mm256_setzero_si256();
    __m512i isum[R];
    for (int r = 0; r < R; ++r) isum[r] = _mm512_setzero_si512();
    for (int c = 0; c < 4; ++c) {
      const __m256i bytes = load32(qs + 32 * c);
      __m256i lo = _mm256_and_si256(bytes, low4), hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4);
      if (kFive) {  // bit 2c of qh[l] for the low nibbles, bit 2c + 1 for the high ones, as bit 4
        const __m256i h = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * c));
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(h, 4), bit4));
        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(h, 3), bit4));
      }
      const __m512i codes = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
      const __m512i lane_sc = _mm512_permutexvar_epi32(_mm512_add_epi32(sub_of_lane, _mm512_set1_epi32(2 * c)), sm);
      for (int r = 0; r < R; ++r)
        isum[r] = _mm512_add_epi32(isum[r], _mm512_mullo_epi32(dot_u8s8(codes, load64(a.q[r] + 256 * B + 64 * c)), lane_sc));
    }
    const __m512i lane_mn = _mm512_permutexvar_epi32(min_of_lane, sm);
    const float d = f16_at(blk), dmin = f16_at(blk + 2);
    for (int r = 0; r < R; ++r) {
      const __m512i sums = _mm512_cvtepi16_epi32(load32(a.bs[r] + 16 * B));
      const float da = a.d[r][B];
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_set1_ps(d * da), acc[r]);
      acc[r] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(_mm512_mullo_epi32(sums, lane_mn)), _mm512_set1_ps(dmin * da), acc[r]);
    }
  }
}

template <int R>
void q6_k_vnni(const uint8_t* w, const Acts<R>& a, int64_t b0, int64_t b1, __m512* acc) {
  const __m512i low4 = _mm512_set1_epi8(15), two = _mm512_set1_epi8(3);
  // Lane l of the 64-value chunk c takes the 16-value sub-block 4c + l/4.
  const __m512i sub_of_lane = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  for (int64_t B = b0; B < b1; ++B) {
    const uint8_t* blk = w + 210 * B;
    const __m512i sc = _mm512_cvtepi8_epi32(load16(blk + 192));
    __m512i isum[R];
    for (int r = 0; r < R; ++r) isum[r] = _mm512_setzero_si512();
    for (int h = 0; h < 2; ++h) {
      const __m512i ql = load64(blk + 64 * h);
      const __m256i qh = load32(blk + 128 + 32 * h);
      // Values 0..31 of the half take bits 0-1 of qh[l], values 32..63 bits 2-3; 64..127 bits 4-5 and 6-7.
      const __m512i qh2 = _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2), 1);
      const __m512i codes[2] = {
          _mm512_or_si512(_mm512_and_si512(ql, low4), _mm512_slli_epi16(_mm512_and_si512(qh2, two), 4)),
          _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), low4),
                          _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh2, 4), two), 4))};
      for (int c = 0; c < 2; ++c) {
        const int chunk = 2 * h + c;
        const __m512i lane_sc = _mm512_permutexvar_epi32(_mm512_add_epi32(sub_of_lane, _mm512_set1_epi32(4 * chunk)), sc);
        for (int r = 0; r < R; ++r)
          isum[r] = _mm512_add_epi32(isum[r],
                                     _mm512_mullo_epi32(dot_u8s8(codes[c], load64(a.q[r] + 256 * B + 64 * chunk)), lane_sc));
      }
    }
    const float d = f16_at(blk + 208);
    for (int r = 0; r < R; ++r) {
      // − 32 · Σ_v s_v · Σ_{i∈v} a_i, lane v.
      const __m512i sums = _mm512_cvtepi16_epi32(load32(a.bs[r] + 16 * B));
      const __m512i total = _mm512_sub_epi32(isum[r], _mm512_slli_epi32(_mm512_mullo_epi32(sums, sc), 5));
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), _mm512_set1_ps(d * a.d[r][B]), acc[r]);
    }
  }
}

// Q2_K and Q3_K: 64 values per step (chunk 2h + p: bit pairs 4p and 4p + 2 of 32 bytes of qs, Q3_K's hmask bits
// 4h + 2p and 4h + 2p + 1 as bit 2), sub-blocks of 16 (lane l of chunk c: sub-block 4c + l/4) with integer scales;
// the mins (Q2_K) and the −4 offset (Q3_K) come from the activations' 16-value sums, lane s.
// Q3_K's 16 scale codes − 32, from the 12 packed bytes as words w0, w1, w2 (q3_scale_code, four at a time).
inline __m512i q3_k_scales(const uint8_t* packed) {
  uint32_t w[3];
  std::memcpy(w, packed, 12);
  const uint32_t four = 0x0f0f0f0fu, two = 0x03030303u;
  const uint32_t s0 = (w[0] & four) | ((w[2] & two) << 4), s1 = (w[1] & four) | (((w[2] >> 2) & two) << 4);
  const uint32_t s2 = ((w[0] >> 4) & four) | (((w[2] >> 4) & two) << 4);
  const uint32_t s3 = ((w[1] >> 4) & four) | (((w[2] >> 6) & two) << 4);
  const __m128i codes =
      _mm_set_epi32(static_cast<int>(s3), static_cast<int>(s2), static_cast<int>(s1), static_cast<int>(s0));
  return _mm512_sub_epi32(_mm512_cvtepu8_epi32(codes), _mm512_set1_epi32(32));
}

template <int R, bool kThree>
void low_k_vnni(const uint8_t* w, const Acts<R>& a, int64_t b0, int64_t b1, __m512* acc) {
  constexpr int64_t kBytes = kThree ? 110 : 84;
  const __m256i three = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
  const __m512i sub_of_lane = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  for (int64_t B = b0; B < b1; ++B) {
    const uint8_t* blk = w + kBytes * B;
    const uint8_t* qs = blk + (kThree ? 32 : 16);
    const __m512i packed = kThree ? _mm512_setzero_si512() : _mm512_cvtepu8_epi32(load16(blk));
    const __m512i sc = kThree ? q3_k_scales(blk + 96) : _mm512_and_si512(packed, _mm512_set1_epi32(15));
    const __m256i hm = kThree ? load32(blk) : _mm256_setzero_si256();
    __m512i isum[R];
    for (int r = 0; r < R; ++r) isum[r] = _mm512_setzero_si512();
    for (int h = 0; h < 2; ++h) {
      const __m256i bytes = load32(qs + 32 * h);
      for (int p = 0; p < 2; ++p) {
        __m256i lo = _mm256_and_si256(_mm256_srl_epi16(bytes, _mm_cvtsi32_si128(4 * p)), three);
        __m256i hi = _mm256_and_si256(_mm256_srl_epi16(bytes, _mm_cvtsi32_si128(4 * p + 2)), three);
        if (kThree) {
          const __m256i bits = _mm256_srl_epi16(hm, _mm_cvtsi32_si128(4 * h + 2 * p));
          lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(bits, one), 2));
          hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(bits, 1), one), 2));
        }
        const int chunk = 2 * h + p;
        const __m512i codes = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        const __m512i lane_sc = _mm512_permutexvar_epi32(_mm512_add_epi32(sub_of_lane, _mm512_set1_epi32(4 * chunk)), sc);
        for (int r = 0; r < R; ++r)
          isum[r] = _mm512_add_epi32(isum[r],
                                     _mm512_mullo_epi32(dot_u8s8(codes, load64(a.q[r] + 256 * B + 64 * chunk)), lane_sc));
      }
    }
    const float d = f16_at(blk + (kThree ? 108 : 80));
    for (int r = 0; r < R; ++r) {
      const __m512i sums = _mm512_cvtepi16_epi32(load32(a.bs[r] + 16 * B));
      const float da = a.d[r][B];
      if (kThree) {  // − 4 · Σ_s sc_s · Σ_{i∈s} a_i
        const __m512i total = _mm512_sub_epi32(isum[r], _mm512_slli_epi32(_mm512_mullo_epi32(sums, sc), 2));
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), _mm512_set1_ps(d * da), acc[r]);
      } else {
        const __m512i msum = _mm512_mullo_epi32(sums, _mm512_srli_epi32(packed, 4));
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_set1_ps(d * da), acc[r]);
        acc[r] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum), _mm512_set1_ps(f16_at(blk + 82) * da), acc[r]);
      }
    }
  }
}

// A kernel adds blocks [b0, b1) of weight row w times R activation rows into acc[R] (16 lanes each; hsum at the end).
template <int R>
using RowsFn = void (*)(const uint8_t*, const Acts<R>&, int64_t, int64_t, __m512*);

template <int R>
RowsFn<R> fast_rows(GgmlType t) {
  switch (t) {
    case GgmlType::Q8_0: return q8_0_vnni<R>;
    case GgmlType::Q4_0: return q4_0_vnni<R>;
    case GgmlType::Q4_1: return q4_1_vnni<R>;
    case GgmlType::Q5_0: return q5_0_vnni<R>;
    case GgmlType::Q5_1: return q5_1_vnni<R>;
    case GgmlType::IQ4_NL: return iq4_nl_vnni<R>;
    case GgmlType::Q4_K: return q45_k_vnni<R, false>;
    case GgmlType::Q5_K: return q45_k_vnni<R, true>;
    case GgmlType::Q6_K: return q6_k_vnni<R>;
    case GgmlType::IQ4_XS: return iq4_xs_vnni<R>;
    case GgmlType::Q2_K: return low_k_vnni<R, false>;
    case GgmlType::Q3_K: return low_k_vnni<R, true>;
    default: break;
  }
  QWENQ_FAIL(kUnsupported << static_cast<uint32_t>(t));
}
#endif

// ---- AVX2 ----
//
// 8 int32 lanes per ymm; vpmaddubsw + vpmaddwd stand in for vpdpbusd (lane l: the 4 products 4l .. 4l + 3). They are
// exact where every adjacent pair of products fits int16: codes up to 63 (Q6_K) times |a| ≤ 127 give ≤ 16002, signed
// codes multiply as |c| (≤ 128) times a with c's sign (vpsignb) for ≤ 32512. A sub-block's integer scale goes into the
// vpmaddwd in place of the ones where the 32 values of a ymm share it (Q4_K, Q5_K, IQ4_XS; Q6_K: one per 128-bit
// half; Q2_K, Q3_K). Compiled into every x86-64 build (function target attributes) and chosen at run time when the
// build has no VNNI kernels.

#ifdef QWENQ_HAVE_AVX2_TARGET

QWENQ_AVX2_FN inline __m256i ld32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
QWENQ_AVX2_FN inline __m256i dot4(__m256i u, __m256i s, __m256i w16) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), w16);
}
QWENQ_AVX2_FN inline float hsum8(__m256 v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  for (int w = 4; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) t[i] += t[i + w];
  return t[0];
}
QWENQ_AVX2_FN inline float h2f(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}
// A 16-byte nibble run as 32 codes 0..15 in value order: the low nibbles, then the high ones.
QWENQ_AVX2_FN inline __m256i nibbles32(const uint8_t* qs) {
  const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(x, 4), x), _mm256_set1_epi8(15));
}
// 16 where bit j of the u32 at qh is set (Q5_0/Q5_1's fifth bits), 0 elsewhere.
QWENQ_AVX2_FN inline __m256i fifth_bits32(const uint8_t* qh) {
  const __m256i v = _mm256_set1_epi32(static_cast<int>(u32_at(qh)));
  const __m256i byte_of = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                           2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(v, byte_of), bit), bit);
  return _mm256_and_si256(set, _mm256_set1_epi8(16));
}
QWENQ_AVX2_FN inline __m256i iq4nl_table32() {
  const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(ggml_detail::kIq4nlLevels));
  return _mm256_set_m128i(t, t);
}

enum class Block32 { Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL };

// One block's 32 signed codes c (w = d·c + m) in value order.
template <Block32 T>
QWENQ_AVX2_FN inline __m256i codes32(const uint8_t* p, __m256i table) {
  if constexpr (T == Block32::Q8_0) return ld32(p + 2);
  if constexpr (T == Block32::Q4_0) return _mm256_sub_epi8(nibbles32(p + 2), _mm256_set1_epi8(8));
  if constexpr (T == Block32::Q4_1) return nibbles32(p + 4);
  if constexpr (T == Block32::Q5_0)
    return _mm256_sub_epi8(_mm256_or_si256(nibbles32(p + 6), fifth_bits32(p + 2)), _mm256_set1_epi8(16));
  if constexpr (T == Block32::Q5_1) return _mm256_or_si256(nibbles32(p + 8), fifth_bits32(p + 4));
  if constexpr (T == Block32::IQ4_NL) return _mm256_shuffle_epi8(table, nibbles32(p + 2));
}

constexpr int64_t block32_bytes(Block32 t) {
  return t == Block32::Q8_0 ? 34 : t == Block32::Q4_1 ? 20 : t == Block32::Q5_0 ? 22 : t == Block32::Q5_1 ? 24 : 18;
}

// Blocks of 32 (fp16 d at byte 0; Q4_1/Q5_1 an fp16 m at byte 2, whose term m·da·Σa goes into lane 0).
template <Block32 T, int R>
QWENQ_AVX2_FN void blocks32_avx2(const uint8_t* w, const Acts<R>& a, int64_t nb, float* out) {
  constexpr bool kMin = T == Block32::Q4_1 || T == Block32::Q5_1;
  const __m256i ones = _mm256_set1_epi16(1), table = iq4nl_table32();
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + block32_bytes(T) * b;
    const __m256i wv = codes32<T>(blk, table);
    const __m256i wabs = _mm256_abs_epi8(wv);
    const float dw = h2f(blk);
    for (int r = 0; r < R; ++r) {
      const __m256i dp = dot4(wabs, _mm256_sign_epi8(ld32(a.q[r] + 32 * b), wv), ones);
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dp), _mm256_set1_ps(dw * a.d[r][b]), acc[r]);
      if (kMin) {
        const float sum = static_cast<float>(a.bs[r][2 * b] + a.bs[r][2 * b + 1]);
        acc[r] = _mm256_fmadd_ps(_mm256_setr_ps(sum, 0, 0, 0, 0, 0, 0, 0), _mm256_set1_ps(h2f(blk + 2) * a.d[r][b]),
                                 acc[r]);
      }
    }
  }
  for (int r = 0; r < R; ++r) out[r] = hsum8(acc[r]);
}

// Q4_K / Q5_K: per 64 values (sub-blocks 2c, 2c + 1) the low and high nibbles of 32 bytes of qs (Q5_K: bit 2c / 2c + 1
// of qh as bit 4), each ymm times its sub-block's 6-bit scale in the vpmaddwd; the mins from the activations' sums.
template <bool kFive, int R>
QWENQ_AVX2_FN void q45_k_avx2(const uint8_t* w, const Acts<R>& a, int64_t nb, float* out) {
  constexpr int64_t kBytes = kFive ? 176 : 144;
  const __m256i low4 = _mm256_set1_epi8(15), bit4 = _mm256_set1_epi8(16);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t B = 0; B < nb; ++B) {
    const uint8_t* blk = w + kBytes * B;
    const uint8_t* qs = blk + (kFive ? 48 : 16);
    int sc[8], mn[8];
    for (int j = 0; j < 8; ++j) k_scale_min(blk + 4, j, &sc[j], &mn[j]);
    const __m256i qh = kFive ? ld32(blk + 16) : _mm256_setzero_si256();
    __m256i isum[R];
    for (int r = 0; r < R; ++r) isum[r] = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
      const __m256i bytes = ld32(qs + 32 * c);
      __m256i lo = _mm256_and_si256(bytes, low4), hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4);
      if (kFive) {
        const __m256i h = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * c));
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(h, 4), bit4));
        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(h, 3), bit4));
      }
      const __m256i s0 = _mm256_set1_epi16(static_cast<int16_t>(sc[2 * c]));
      const __m256i s1 = _mm256_set1_epi16(static_cast<int16_t>(sc[2 * c + 1]));
      for (int r = 0; r < R; ++r) {
        const int8_t* q = a.q[r] + 256 * B + 64 * c;
        isum[r] = _mm256_add_epi32(isum[r], _mm256_add_epi32(dot4(lo, ld32(q), s0), dot4(hi, ld32(q + 32), s1)));
      }
    }
    const float d = h2f(blk), dmin = h2f(blk + 2);
    for (int r = 0; r < R; ++r) {
      const int16_t* bs = a.bs[r] + 16 * B;
      int msum = 0;
      for (int j = 0; j < 8; ++j) msum += mn[j] * (bs[2 * j] + bs[2 * j + 1]);
      const float da = a.d[r][B];
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), _mm256_set1_ps(d * da), acc[r]);
      acc[r] = _mm256_fnmadd_ps(_mm256_setr_ps(static_cast<float>(msum), 0, 0, 0, 0, 0, 0, 0), _mm256_set1_ps(dmin * da),
                                acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = hsum8(acc[r]);
}

// Q6_K: per half-block h the values 128h + 32g + l (g = 0..3) from ql and qh as in q6_k_vnni; the 32 values of group
// g span the 16-value sub-blocks 2q and 2q + 1 (q = 4h + g), one per 128-bit half of the ymm; − 32·Σ_v s_v·Σa in
// int32 into lane 0.
template <int R>
QWENQ_AVX2_FN void q6_k_avx2(const uint8_t* w, const Acts<R>& a, int64_t nb, float* out) {
  const __m256i low4 = _mm256_set1_epi8(15), two = _mm256_set1_epi8(3);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t B = 0; B < nb; ++B) {
    const uint8_t* blk = w + 210 * B;
    const auto* sc = reinterpret_cast<const int8_t*>(blk + 192);
    __m256i isum[R];
    for (int r = 0; r < R; ++r) isum[r] = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i ql0 = ld32(blk + 64 * h), ql1 = ld32(blk + 64 * h + 32), qh = ld32(blk + 128 + 32 * h);
      const __m256i codes[4] = {
          _mm256_or_si256(_mm256_and_si256(ql0, low4), _mm256_slli_epi16(_mm256_and_si256(qh, two), 4)),
          _mm256_or_si256(_mm256_and_si256(ql1, low4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), two), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), two), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), two), 4))};
      for (int g = 0; g < 4; ++g) {
        const int q = 4 * h + g;
        const __m256i s = _mm256_set_m128i(_mm_set1_epi16(sc[2 * q + 1]), _mm_set1_epi16(sc[2 * q]));
        for (int r = 0; r < R; ++r)
          isum[r] = _mm256_add_epi32(isum[r], dot4(codes[g], ld32(a.q[r] + 256 * B + 32 * q), s));
      }
    }
    const float d = h2f(blk + 208);
    for (int r = 0; r < R; ++r) {
      const int16_t* bs = a.bs[r] + 16 * B;
      int off = 0;
      for (int v = 0; v < 16; ++v) off += sc[v] * bs[v];
      const __m256i total = _mm256_sub_epi32(isum[r], _mm256_setr_epi32(32 * off, 0, 0, 0, 0, 0, 0, 0));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_set1_ps(d * a.d[r][B]), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = hsum8(acc[r]);
}

// IQ4_XS: per 32-value sub-block j the levels of its 16 bytes, times ls_j − 32 in the vpmaddwd.
template <int R>
QWENQ_AVX2_FN void iq4_xs_avx2(const uint8_t* w, const Acts<R>& a, int64_t nb, float* out) {
  const __m256i table = iq4nl_table32();
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t B = 0; B < nb; ++B) {
    const uint8_t* blk = w + 136 * B;
    __m256i isum[R];
    for (int r = 0; r < R; ++r) isum[r] = _mm256_setzero_si256();
    for (int j = 0; j < 8; ++j) {
      const __m256i codes = _mm256_shuffle_epi8(table, nibbles32(blk + 8 + 16 * j));
      const __m256i wabs = _mm256_abs_epi8(codes);
      const __m256i ls = _mm256_set1_epi16(static_cast<int16_t>(iq4_xs_scale_code(blk, j) - 32));
      for (int r = 0; r < R; ++r)
        isum[r] = _mm256_add_epi32(isum[r], dot4(wabs, _mm256_sign_epi8(ld32(a.q[r] + 256 * B + 32 * j), codes), ls));
    }
    const float d = h2f(blk);
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), _mm256_set1_ps(d * a.d[r][B]), acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r] = hsum8(acc[r]);
}

// Q2_K / Q3_K: per 128-value half h and bit-pair step p the values 128h + 64p + l (bits 4p of qs) and + 32 + l (bits
// 4p + 2; Q3_K: hmask bits 4h + 2p and 4h + 2p + 1 as bit 2), as in low_k_vnni; each 32 values span the 16-value
// sub-blocks 2q, 2q + 1 (q = 4h + 2p or + 1), one per 128-bit half. Q2_K: 4-bit scales and mins; Q3_K: 6-bit scale
// codes − 32 and the −4 offset, both from the activations' 16-value sums.
template <bool kThree, int R>
QWENQ_AVX2_FN void low_k_avx2(const uint8_t* w, const Acts<R>& a, int64_t nb, float* out) {
  constexpr int64_t kBytes = kThree ? 110 : 84;
  const __m256i three = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t B = 0; B < nb; ++B) {
    const uint8_t* blk = w + kBytes * B;
    const uint8_t* qs = blk + (kThree ? 32 : 16);
    int sc[16];
    for (int v = 0; v < 16; ++v) sc[v] = kThree ? q3_scale_code(blk + 96, v) - 32 : blk[v] & 15;
    const __m256i hm = kThree ? ld32(blk) : _mm256_setzero_si256();
    __m256i isum[R];
    for (int r = 0; r < R; ++r) isum[r] = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i bytes = ld32(qs + 32 * h);
      for (int p = 0; p < 2; ++p) {
        __m256i lo = _mm256_and_si256(_mm256_srl_epi16(bytes, _mm_cvtsi32_si128(4 * p)), three);
        __m256i hi = _mm256_and_si256(_mm256_srl_epi16(bytes, _mm_cvtsi32_si128(4 * p + 2)), three);
        if (kThree) {
          const __m256i bits = _mm256_srl_epi16(hm, _mm_cvtsi32_si128(4 * h + 2 * p));
          lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(bits, one), 2));
          hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(bits, 1), one), 2));
        }
        const __m256i codes[2] = {lo, hi};
        for (int k = 0; k < 2; ++k) {
          const int q = 4 * h + 2 * p + k;
          const __m256i s16 = _mm256_set_m128i(_mm_set1_epi16(static_cast<int16_t>(sc[2 * q + 1])),
                                               _mm_set1_epi16(static_cast<int16_t>(sc[2 * q])));
          for (int r = 0; r < R; ++r)
            isum[r] = _mm256_add_epi32(isum[r], dot4(codes[k], ld32(a.q[r] + 256 * B + 32 * q), s16));
        }
      }
    }
    const float d = h2f(blk + (kThree ? 108 : 80));
    for (int r = 0; r < R; ++r) {
      const int16_t* bs = a.bs[r] + 16 * B;
      const float da = a.d[r][B];
      int extra = 0;  // Q3_K: Σ_v s_v·Σa (times −4); Q2_K: Σ_v m_v·Σa (times −dmin)
      for (int v = 0; v < 16; ++v) extra += (kThree ? sc[v] : blk[v] >> 4) * bs[v];
      if (kThree) {
        const __m256i total = _mm256_sub_epi32(isum[r], _mm256_setr_epi32(4 * extra, 0, 0, 0, 0, 0, 0, 0));
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_set1_ps(d * da), acc[r]);
      } else {
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), _mm256_set1_ps(d * da), acc[r]);
        acc[r] = _mm256_fnmadd_ps(_mm256_setr_ps(static_cast<float>(extra), 0, 0, 0, 0, 0, 0, 0),
                                  _mm256_set1_ps(h2f(blk + 82) * da), acc[r]);
      }
    }
  }
  for (int r = 0; r < R; ++r) out[r] = hsum8(acc[r]);
}

// A kernel multiplies the nb blocks of weight row w with R activation rows into out[R].
template <int R>
using Avx2RowsFn = void (*)(const uint8_t*, const Acts<R>&, int64_t, float*);

// The AVX2 kernel of t (null for a type without one).
template <int R>
Avx2RowsFn<R> avx2_rows(GgmlType t) {
  switch (t) {
    case GgmlType::Q8_0: return blocks32_avx2<Block32::Q8_0, R>;
    case GgmlType::Q4_0: return blocks32_avx2<Block32::Q4_0, R>;
    case GgmlType::Q4_1: return blocks32_avx2<Block32::Q4_1, R>;
    case GgmlType::Q5_0: return blocks32_avx2<Block32::Q5_0, R>;
    case GgmlType::Q5_1: return blocks32_avx2<Block32::Q5_1, R>;
    case GgmlType::IQ4_NL: return blocks32_avx2<Block32::IQ4_NL, R>;
    case GgmlType::Q4_K: return q45_k_avx2<false, R>;
    case GgmlType::Q5_K: return q45_k_avx2<true, R>;
    case GgmlType::Q6_K: return q6_k_avx2<R>;
    case GgmlType::IQ4_XS: return iq4_xs_avx2<R>;
    case GgmlType::Q2_K: return low_k_avx2<false, R>;
    case GgmlType::Q3_K: return low_k_avx2<true, R>;
    default: return nullptr;
  }
}

#endif  // QWENQ_HAVE_AVX2_TARGET

std::atomic<bool> g_force_avx2{false};

// One weight row times R activation rows: the VNNI kernels where compiled, else the AVX2 kernels where the CPU has
// them (or forced by the tests), else the portable loops row by row.
template <int R>
struct RowsDot {
  explicit RowsDot(GgmlType t, bool portable) : dot(portable_dot(t)) {
    if (portable) return;
#ifdef QWENQ_INT8_VNNI
    if (!g_force_avx2.load()) {
      fast = fast_rows<R>(t);
      return;
    }
#endif
#ifdef QWENQ_HAVE_AVX2_TARGET
    if (cpu_has_avx2_fma_f16c()) avx2 = avx2_rows<R>(t);
#endif
  }
  void operator()(const uint8_t* w, const Acts<R>& a, int64_t nb, float* out) const {
#ifdef QWENQ_INT8_VNNI
    if (fast != nullptr) {
      __m512 acc[R];
      for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
      fast(w, a, 0, nb, acc);
      for (int r = 0; r < R; ++r) out[r] = hsum(acc[r]);
      return;
    }
#endif
#ifdef QWENQ_HAVE_AVX2_TARGET
    if (avx2 != nullptr) {
      avx2(w, a, nb, out);
      return;
    }
#endif
    portable_rows<R>(dot, w, a, nb, out);
  }
  DotFn dot;
#ifdef QWENQ_INT8_VNNI
  RowsFn<R> fast = nullptr;
#endif
#ifdef QWENQ_HAVE_AVX2_TARGET
  Avx2RowsFn<R> avx2 = nullptr;
#endif
};

int64_t act_block(GgmlType act) { return act == GgmlType::Q8_K ? 256 : 32; }

// Activation rows per pass over a weight row (each row's sums take the same steps whatever the pass).
constexpr int kInt8Rows = 4;

template <int R>
Acts<R> acts_at(const GgmlInt8Rows& a, int64_t m) {
  Acts<R> v;
  for (int r = 0; r < R; ++r) {
    v.q[r] = a.q.data() + (m + r) * a.K;
    v.d[r] = a.d.data() + (m + r) * (a.K / a.block);
    v.bs[r] = a.bsums.data() + (m + r) * (a.K / 16);
  }
  return v;
}

float dot_with(bool portable, GgmlType t, const uint8_t* w, const GgmlInt8Rows& a, int64_t m) {
  QWENQ_CHECK(ggml_int8_activation_type(t) == a.act && m >= 0 && m < a.M,
              "ggml_int8_dot: row " << m << " of " << a.M << " activations quantized as type "
                                    << static_cast<uint32_t>(a.act) << " for weights of type "
                                    << static_cast<uint32_t>(t));
  float out;
  RowsDot<1>(t, portable)(w, acts_at<1>(a, m), a.K / ggml_type_info(static_cast<uint32_t>(t))->block, &out);
  return out;
}

}  // namespace

void quantize_int8_rows(GgmlType act, const float* x, int64_t M, int64_t K, GgmlInt8Rows* out) {
  QWENQ_CHECK(act == GgmlType::Q8_0 || act == GgmlType::Q8_K,
              "quantize_int8_rows: activations are quantized to Q8_0 or Q8_K, not type " << static_cast<uint32_t>(act));
  const int64_t block = act_block(act);
  QWENQ_CHECK(M >= 0 && K > 0 && K % block == 0,
              "quantize_int8_rows: K = " << K << " is not a positive multiple of " << block);
  out->act = act;
  out->M = M;
  out->K = K;
  out->block = block;
  out->q.resize(static_cast<size_t>(M * K));
  out->d.resize(static_cast<size_t>(M * (K / block)));
  out->bsums.resize(static_cast<size_t>(M * (K / 16)));
  parallel_for(M, 1, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      int8_t* q = out->q.data() + m * K;
      (act == GgmlType::Q8_K ? quantize_q8_k : quantize_q8_0)(x + m * K, K, q, out->d.data() + m * (K / block));
      for (int64_t s = 0; s < K / 16; ++s) {
        int sum = 0;
        for (int i = 0; i < 16; ++i) sum += q[16 * s + i];
        out->bsums[static_cast<size_t>(m * (K / 16) + s)] = static_cast<int16_t>(sum);
      }
    }
  });
}

bool ggml_int8_force_avx2(bool on) {
#ifdef QWENQ_HAVE_AVX2_TARGET
  if (on && !cpu_has_avx2_fma_f16c()) return false;
  g_force_avx2.store(on);
  return true;
#else
  return !on;
#endif
}

float ggml_int8_dot(GgmlType t, const uint8_t* w, const GgmlInt8Rows& a, int64_t m) {
  return dot_with(false, t, w, a, m);
}

float ggml_int8_dot_portable(GgmlType t, const uint8_t* w, const GgmlInt8Rows& a, int64_t m) {
  return dot_with(true, t, w, a, m);
}

void ggml_linear_matvec_int8(const GgmlLinear& w, const GgmlInt8Rows& a, float* y) {
  QWENQ_CHECK(w.N >= 1 && a.M >= 1 && a.K == w.K && a.act == ggml_int8_activation_type(w.type) && y != nullptr,
              "ggml_linear_matvec_int8: " << a.M << " rows of " << a.K << " activations quantized as type "
                                          << static_cast<uint32_t>(a.act) << " for a [" << w.N << ", " << w.K
                                          << "] weight of type " << static_cast<uint32_t>(w.type));
  const RowsDot<kInt8Rows> dot_rows(w.type, false);
  const RowsDot<1> dot_row(w.type, false);
  const uint64_t row_bytes = ggml_row_bytes(w.type, w.K);
  const int64_t nb = w.K / ggml_type_info(static_cast<uint32_t>(w.type))->block;
  parallel_for(w.N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* wr = w.data + w.stored_row(n) * row_bytes;
      float out[kInt8Rows];
      int64_t m = 0;
      for (; m + kInt8Rows <= a.M; m += kInt8Rows) {
        dot_rows(wr, acts_at<kInt8Rows>(a, m), nb, out);
        for (int r = 0; r < kInt8Rows; ++r) y[(m + r) * w.N + n] = out[r];
      }
      for (; m < a.M; ++m) {
        dot_row(wr, acts_at<1>(a, m), nb, out);
        y[m * w.N + n] = out[0];
      }
    }
  });
}

void ggml_linear_matvec_int8(const GgmlLinear& w, const float* x, int64_t M, float* y) {
  QWENQ_CHECK(M >= 1 && w.N >= 1 && w.K >= 1 && x != nullptr && y != nullptr,
              "ggml_linear_matvec_int8: shapes must be positive and pointers set, got M=" << M << " N=" << w.N
                                                                                         << " K=" << w.K);
  const GgmlType act = ggml_int8_activation_type(w.type);
  constexpr int64_t kRowsPerPass = 64;  // rows of x quantized at a time (64 x 18944 int8: 1.2 MB)
  GgmlInt8Rows a;
  for (int64_t m0 = 0; m0 < M; m0 += kRowsPerPass) {
    quantize_int8_rows(act, x + m0 * w.K, std::min(kRowsPerPass, M - m0), w.K, &a);
    ggml_linear_matvec_int8(w, a, y + m0 * w.N);
  }
}

}  // namespace qwenq
