// The int8 products of GPTQ weights (the math is at the top of quant/int_dot_int8.h): the activations' quantizer, the
// portable loops (the twin), the AVX-512 VNNI kernel and the column-parallel product.
//
// VNNI layout: a zmm holds 16 consecutive columns of one qweight word-row (64 contiguous bytes). 4-bit: w & 0x0F0F0F0F
// leaves, per lane, the codes of inputs 0, 2, 4, 6 of the word as bytes, (w >> 4) & 0x0F0F0F0F those of 1, 3, 5, 7;
// each is multiplied with the 4 activations of the same inputs broadcast to every lane (one 32-bit load, stored in
// that order by the quantizer). 8-bit: the word is inputs 0..3 as bytes already. A block of 32 inputs is 4 (4-bit) or
// 8 (8-bit) word-rows; its int32 sums go to float once per block.
#include "quant/int_dot_int8.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define QWENQ_INT_INT8_VNNI 1
#endif
// The AVX2 kernel is compiled into every x86-64 build (core/cpu_features.h) and chosen at run time when the build
// has no VNNI kernel, so CI machines test it whatever -march they build for.
#include "core/cpu_features.h"
#if defined(QWENQ_INT_INT8_VNNI) || defined(QWENQ_HAVE_AVX2_TARGET)
#include <immintrin.h>
#endif

#include "core/dtype.h"
#include "core/error.h"
#include "core/threads.h"
#include "quant/format/int_pack.h"
#include "quant/packed_matvec.h"

namespace qwenq {
namespace {

constexpr int64_t kBlock = 32;    // activation block (inputs)
constexpr int64_t kTileCols = 64;  // columns a thread takes at a time

// Position of input i (0..7) of a 4-bit word in the stored activation order 0 2 4 6 1 3 5 7.
constexpr int kNibbleSlot[8] = {0, 4, 1, 5, 2, 6, 3, 7};

constexpr int64_t kPrefetchRows = 16;   // word-rows ahead: the rows of a column tile lie N words apart
constexpr int64_t kChunkInputs = 1024;  // inputs per chunk: 64 columns x 1024 4-bit inputs = 32 KiB of words

// The 4 activation codes at q as one 32-bit word (broadcast to every lane by the kernels).
inline int32_t act_word(const int8_t* q) {
  int32_t v;
  std::memcpy(&v, q, 4);
  return v;
}

// The true zero point of (group g, column n) as the format's unpacker reads it (v1 adds 1 back).
inline float zero_at(const PackedIntLinear& p, int64_t g, int64_t n) {
  const int64_t per_word = 32 / p.bits;
  const uint32_t word = static_cast<uint32_t>(p.qzeros[static_cast<size_t>(g * (p.N / per_word) + n / per_word)]);
  const uint32_t mask = (1u << p.bits) - 1;
  const uint32_t z = (word >> (p.bits * (n % per_word))) & mask;
  return static_cast<float>(z + (p.layout == IntLayout::GptqV1 ? 1u : 0u));
}

void check_rows(const PackedIntLinear& p, const IntInt8Rows& a, const float* y, const char* what) {
  QWENQ_CHECK(int_int8_product_supported(p), what << ": " << int_int8_unsupported_reason(p));
  QWENQ_CHECK(a.M >= 1 && a.K == p.K && a.bits == p.bits && a.group == p.group && y != nullptr,
              what << ": " << a.M << " rows of " << a.K << " activations quantized for " << a.bits << "-bit groups of "
                   << a.group << ", weight [" << p.N << ", " << p.K << "] " << p.bits << "-bit groups of " << p.group);
}

// ---- portable twin ------------------------------------------------------------------------------------------

void portable_columns(const PackedIntLinear& p, const IntInt8Rows& a, int64_t n0, int64_t n1, float* y) {
  const int64_t N = p.N, G = p.num_groups(), blocks_per_group = p.group / kBlock, nb = p.K / kBlock;
  const int64_t cols = n1 - n0, per_word = 32 / p.bits;
  const uint32_t mask = (1u << p.bits) - 1;
  std::vector<int32_t> sums(static_cast<size_t>(cols));
  std::vector<float> gacc(static_cast<size_t>(cols)), acc(static_cast<size_t>(cols));
  for (int64_t m = 0; m < a.M; ++m) {
    const int8_t* q = a.q.data() + m * p.K;
    const float* d = a.d.data() + m * nb;
    const float* gs = a.gsum.data() + m * G;
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t g = 0; g < G; ++g) {
      std::fill(gacc.begin(), gacc.end(), 0.0f);
      for (int64_t b = g * blocks_per_group; b < std::min(nb, (g + 1) * blocks_per_group); ++b) {
        std::fill(sums.begin(), sums.end(), 0);
        for (int64_t wr = b * kBlock / per_word; wr < (b + 1) * kBlock / per_word; ++wr) {
          const auto* w = reinterpret_cast<const uint32_t*>(p.qweight.data() + wr * N + n0);
          for (int64_t i = 0; i < per_word; ++i) {
            const int32_t ai = q[wr * per_word + (p.bits == 4 ? kNibbleSlot[i] : i)];
            const int shift = static_cast<int>(p.bits * i);
            for (int64_t n = 0; n < cols; ++n) sums[n] += static_cast<int32_t>((w[n] >> shift) & mask) * ai;
          }
        }
        for (int64_t n = 0; n < cols; ++n) gacc[n] = std::fma(static_cast<float>(sums[n]), d[b], gacc[n]);
      }
      for (int64_t n = 0; n < cols; ++n) {
        const float s = f16_to_f32(p.scales[static_cast<size_t>(g * N + n0 + n)]);
        acc[n] = std::fma(s, std::fma(-zero_at(p, g, n0 + n), gs[g], gacc[n]), acc[n]);
      }
    }
    std::copy(acc.begin(), acc.end(), y + m * N + n0);
  }
}

// ---- AVX-512 VNNI --------------------------------------------------------------------------------------------

#ifdef QWENQ_INT_INT8_VNNI

inline __mmask16 lanes(int64_t cols) { return cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1); }

// The zero points of 16 columns from n (n a multiple of 16; the masked lanes read nothing) of group g as floats.
template <int BITS>
inline __m512 zeros16(const PackedIntLinear& p, int64_t g, int64_t n, __mmask16 m, bool v1) {
  const auto* zw = reinterpret_cast<const uint8_t*>(p.qzeros.data());
  __m512i z;
  if (BITS == 4) {  // 16 nibbles in 8 bytes, column n + 2j in the low nibble of byte j
    const int64_t row_bytes = p.N / 2;
    const __mmask16 bytes = static_cast<__mmask16>((m == 0xFFFF) ? 0xFF : ((1u << ((__builtin_popcount(m) + 1) / 2)) - 1));
    const __m128i b = _mm_maskz_loadu_epi8(bytes, zw + g * row_bytes + n / 2);
    const __m128i lo = _mm_and_si128(b, _mm_set1_epi8(0x0F));
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0F));
    z = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi));
  } else {  // one byte per column
    z = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, zw + g * p.N + n));
  }
  if (v1) z = _mm512_add_epi32(z, _mm512_set1_epi32(1));
  return _mm512_cvtepi32_ps(z);
}

// R activation rows from m times C vectors of 16 columns from n (cols of them valid), groups [g0, g1): added to
// y[r][n..] (y = fma(s, …, y) per group, as the twin does from y = 0, so chunking the groups changes no bit).
template <int BITS, int R, int C>
void tile_vnni(const PackedIntLinear& p, const IntInt8Rows& a, int64_t m, int64_t n, int64_t cols, int64_t g0,
               int64_t g1, float* y) {
  const int64_t N = p.N, K = p.K, G = p.num_groups(), nb = K / kBlock, blocks_per_group = p.group / kBlock;
  constexpr int64_t kWordsPerBlock = kBlock * BITS / 32;
  constexpr int64_t kInputsPerWord = 32 / BITS;
  const bool v1 = p.layout == IntLayout::GptqV1;
  __mmask16 mask[C];
  for (int c = 0; c < C; ++c) mask[c] = lanes(std::max<int64_t>(0, cols - 16 * c));
  const int8_t* q[R];
  for (int r = 0; r < R; ++r) q[r] = a.q.data() + (m + r) * K;
  const __m512i nibble = _mm512_set1_epi32(0x0F0F0F0F);
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_maskz_loadu_ps(mask[c], y + (m + r) * N + n + 16 * c);
  for (int64_t g = g0; g < g1; ++g) {
    __m512 gacc[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) gacc[r][c] = _mm512_setzero_ps();
    for (int64_t b = g * blocks_per_group; b < std::min(nb, (g + 1) * blocks_per_group); ++b) {
      __m512i s0[R][C], s1[R][C];
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) s0[r][c] = s1[r][c] = _mm512_setzero_si512();
      for (int64_t j = 0; j < kWordsPerBlock; ++j) {
        const int64_t wr = b * kWordsPerBlock + j;
        const int32_t* words = p.qweight.data() + wr * N + n;
        for (int c = 0; c < C; ++c) {
          _mm_prefetch(reinterpret_cast<const char*>(words + kPrefetchRows * N + 16 * c), _MM_HINT_T0);
          const __m512i w = _mm512_maskz_loadu_epi32(mask[c], words + 16 * c);
          if (BITS == 4) {
            const __m512i lo = _mm512_and_si512(w, nibble);
            const __m512i hi = _mm512_and_si512(_mm512_srli_epi32(w, 4), nibble);
            for (int r = 0; r < R; ++r) {
              const int8_t* qa = q[r] + wr * kInputsPerWord;
              s0[r][c] = _mm512_dpbusd_epi32(s0[r][c], lo, _mm512_set1_epi32(act_word(qa)));
              s1[r][c] = _mm512_dpbusd_epi32(s1[r][c], hi, _mm512_set1_epi32(act_word(qa + 4)));
            }
          } else {
            for (int r = 0; r < R; ++r) {
              const __m512i av = _mm512_set1_epi32(act_word(q[r] + wr * kInputsPerWord));
              if (j % 2 == 0) {
                s0[r][c] = _mm512_dpbusd_epi32(s0[r][c], w, av);
              } else {
                s1[r][c] = _mm512_dpbusd_epi32(s1[r][c], w, av);
              }
            }
          }
        }
      }
      for (int r = 0; r < R; ++r) {
        const __m512 db = _mm512_set1_ps(a.d[static_cast<size_t>((m + r) * nb + b)]);
        for (int c = 0; c < C; ++c) {
          const __m512 sum = _mm512_cvtepi32_ps(_mm512_add_epi32(s0[r][c], s1[r][c]));
          gacc[r][c] = _mm512_fmadd_ps(sum, db, gacc[r][c]);
        }
      }
    }
    for (int c = 0; c < C; ++c) {
      const __m512 s = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask[c], p.scales.data() + g * N + n + 16 * c));
      const __m512 z = zeros16<BITS>(p, g, n + 16 * c, mask[c], v1);
      for (int r = 0; r < R; ++r) {
        const __m512 gs = _mm512_set1_ps(a.gsum[static_cast<size_t>((m + r) * G + g)]);
        acc[r][c] = _mm512_fmadd_ps(s, _mm512_fnmadd_ps(z, gs, gacc[r][c]), acc[r][c]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) _mm512_mask_storeu_ps(y + (m + r) * N + n + 16 * c, mask[c], acc[r][c]);
}

template <int BITS>
struct VnniTile {
  template <int R, int C>
  static void run(const PackedIntLinear& p, const IntInt8Rows& a, int64_t m, int64_t n, int64_t cols, int64_t g0,
                  int64_t g1, float* y) {
    tile_vnni<BITS, R, C>(p, a, m, n, cols, g0, g1, y);
  }
};

#endif  // QWENQ_INT_INT8_VNNI

// ---- AVX2 ----------------------------------------------------------------------------------------------------
//
// 8 columns per ymm. vpmaddubsw multiplies unsigned weight bytes by signed activation bytes and adds adjacent pairs
// into int16: 4-bit codes give pairs of at most 2·15·127 = 3810, so a block's 8 products (4 word-rows, low and high
// nibbles) add up in int16 (≤ 30480) before one vpmaddwd by 1 widens them to int32. 8-bit codes q would overflow the
// pairs, so they multiply as c = q − 128: |c| (≤ 128) times a with c's sign (vpsignb; pairs ≤ 32512), widened per
// word-row, and the block adds 128·Σa back. The same integer sums, then the twin's float operations.

#ifdef QWENQ_HAVE_AVX2_TARGET

QWENQ_AVX2_FN inline __m256 zeros8(const PackedIntLinear& p, int64_t g, int64_t n, bool v1) {
  const auto* zw = reinterpret_cast<const uint8_t*>(p.qzeros.data());
  __m128i bytes;
  if (p.bits == 4) {  // 8 nibbles in 4 bytes, column n + 2j in the low nibble of byte j
    int32_t word;
    std::memcpy(&word, zw + g * (p.N / 2) + n / 2, 4);
    const __m128i b = _mm_cvtsi32_si128(word);
    const __m128i lo = _mm_and_si128(b, _mm_set1_epi8(0x0F));
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0F));
    bytes = _mm_unpacklo_epi8(lo, hi);
  } else {
    bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(zw + g * p.N + n));
  }
  __m256i z = _mm256_cvtepu8_epi32(bytes);
  if (v1) z = _mm256_add_epi32(z, _mm256_set1_epi32(1));
  return _mm256_cvtepi32_ps(z);
}

// R rows from m times C whole vectors of 8 columns from n (vectors past `cols` skipped), groups [g0, g1), added to y.
template <int BITS, int R, int C>
QWENQ_AVX2_FN void tile_avx2(const PackedIntLinear& p, const IntInt8Rows& a, int64_t m, int64_t n, int64_t cols,
                             int64_t g0, int64_t g1, float* y) {
  const int64_t N = p.N, K = p.K, G = p.num_groups(), nb = K / kBlock, blocks_per_group = p.group / kBlock;
  constexpr int64_t kWordsPerBlock = kBlock * BITS / 32;
  constexpr int64_t kInputsPerWord = 32 / BITS;
  const bool v1 = p.layout == IntLayout::GptqV1;
  const int vecs = static_cast<int>(std::min<int64_t>(C, cols / 8));
  const int8_t* q[R];
  for (int r = 0; r < R; ++r) q[r] = a.q.data() + (m + r) * K;
  const __m256i nibble = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1), top = _mm256_set1_epi8(-128);
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = c < vecs ? _mm256_loadu_ps(y + (m + r) * N + n + 8 * c) : _mm256_setzero_ps();
  for (int64_t g = g0; g < g1; ++g) {
    __m256 gacc[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) gacc[r][c] = _mm256_setzero_ps();
    for (int64_t b = g * blocks_per_group; b < std::min(nb, (g + 1) * blocks_per_group); ++b) {
      __m256i sum[R][C];
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) sum[r][c] = _mm256_setzero_si256();
      for (int64_t j = 0; j < kWordsPerBlock; ++j) {
        const int64_t wr = b * kWordsPerBlock + j;
        const int32_t* words = p.qweight.data() + wr * N + n;
        for (int c = 0; c < C; ++c) {
          if (c >= vecs) break;
          _mm_prefetch(reinterpret_cast<const char*>(words + kPrefetchRows * N + 8 * c), _MM_HINT_T0);
          const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(words + 8 * c));
          if (BITS == 4) {  // int16 sums over the block
            const __m256i lo = _mm256_and_si256(w, nibble);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi32(w, 4), nibble);
            for (int r = 0; r < R; ++r) {
              const int8_t* qa = q[r] + wr * kInputsPerWord;
              const __m256i pe = _mm256_maddubs_epi16(lo, _mm256_set1_epi32(act_word(qa)));
              const __m256i po = _mm256_maddubs_epi16(hi, _mm256_set1_epi32(act_word(qa + 4)));
              sum[r][c] = _mm256_add_epi16(sum[r][c], _mm256_add_epi16(pe, po));
            }
          } else {  // int32 sums of (q − 128)·a
            const __m256i cw = _mm256_xor_si256(w, top);
            const __m256i mag = _mm256_abs_epi8(cw);
            for (int r = 0; r < R; ++r) {
              const __m256i av = _mm256_sign_epi8(_mm256_set1_epi32(act_word(q[r] + wr * kInputsPerWord)), cw);
              sum[r][c] = _mm256_add_epi32(sum[r][c], _mm256_madd_epi16(_mm256_maddubs_epi16(mag, av), ones));
            }
          }
        }
      }
      for (int r = 0; r < R; ++r) {
        const __m256 db = _mm256_set1_ps(a.d[static_cast<size_t>((m + r) * nb + b)]);
        const __m256i back = _mm256_set1_epi32(128 * a.bsum[static_cast<size_t>((m + r) * nb + b)]);
        for (int c = 0; c < vecs; ++c) {
          const __m256i s32 = BITS == 4 ? _mm256_madd_epi16(sum[r][c], ones) : _mm256_add_epi32(sum[r][c], back);
          gacc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), db, gacc[r][c]);
        }
      }
    }
    for (int c = 0; c < vecs; ++c) {
      const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p.scales.data() + g * N + n + 8 * c)));
      const __m256 z = zeros8(p, g, n + 8 * c, v1);
      for (int r = 0; r < R; ++r) {
        const __m256 gs = _mm256_set1_ps(a.gsum[static_cast<size_t>((m + r) * G + g)]);
        acc[r][c] = _mm256_fmadd_ps(s, _mm256_fnmadd_ps(z, gs, gacc[r][c]), acc[r][c]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < vecs; ++c) _mm256_storeu_ps(y + (m + r) * N + n + 8 * c, acc[r][c]);
}

template <int BITS>
struct Avx2Tile {
  template <int R, int C>
  static void run(const PackedIntLinear& p, const IntInt8Rows& a, int64_t m, int64_t n, int64_t cols, int64_t g0,
                  int64_t g1, float* y) {
    tile_avx2<BITS, R, C>(p, a, m, n, cols, g0, g1, y);
  }
};

#endif  // QWENQ_HAVE_AVX2_TARGET

// Rows [0, M) times columns [n0, n1) (n0 a multiple of 64) into y (zeroed first) with a tile kernel of L lanes:
// 4 rows x L columns per pass, 1..3 leftover rows with wider passes, so every pass keeps 4 column-row accumulator
// sets in registers; the inputs in chunks of whole groups (~kChunkInputs) so all passes over the rows reuse a
// chunk's 64 columns of words from L1/L2. The columns past the last whole vector go to the twin (AVX2: an 8-bit
// weight's N may end in half a vector; the VNNI kernel masks its tails).
template <int L, class Tile>
void simd_columns(const PackedIntLinear& p, const IntInt8Rows& a, int64_t n0, int64_t n1, float* y) {
  const int64_t G = p.num_groups(), chunk = std::max<int64_t>(1, kChunkInputs / p.group);
  const int64_t whole = L == 16 ? n1 : n0 + (n1 - n0) / L * L;
  for (int64_t m = 0; m < a.M; ++m) std::fill(y + m * p.N + n0, y + m * p.N + whole, 0.0f);
  for (int64_t n = n0; n < whole; n += 64) {
    const int64_t cols = std::min<int64_t>(64, whole - n);
    for (int64_t g0 = 0; g0 < G; g0 += chunk) {
      const int64_t g1 = std::min(G, g0 + chunk);
      int64_t m = 0;
      for (; m + 4 <= a.M; m += 4)
        for (int64_t c = 0; c < cols; c += L) Tile::template run<4, 1>(p, a, m, n + c, cols - c, g0, g1, y);
      const int64_t left = a.M - m;
      if (left == 3) {
        for (int64_t c = 0; c < cols; c += L) Tile::template run<3, 1>(p, a, m, n + c, cols - c, g0, g1, y);
      } else if (left == 2) {
        for (int64_t c = 0; c < cols; c += 2 * L) Tile::template run<2, 2>(p, a, m, n + c, cols - c, g0, g1, y);
      } else if (left == 1) {
        for (int64_t c = 0; c < cols; c += 4 * L) Tile::template run<1, 4>(p, a, m, n + c, cols - c, g0, g1, y);
      }
    }
  }
  if (whole < n1) portable_columns(p, a, whole, n1, y);
}

enum class Kernel { Best, Avx2, Portable };

void matvec(const PackedIntLinear& p, const IntInt8Rows& a, float* y, Kernel kernel) {
  const int64_t tiles = (p.N + kTileCols - 1) / kTileCols;
  parallel_for(tiles, 1, [&](int64_t t0, int64_t t1) {
    const int64_t n0 = t0 * kTileCols, n1 = std::min(p.N, t1 * kTileCols);
#ifdef QWENQ_INT_INT8_VNNI
    if (kernel == Kernel::Best) {
      (p.bits == 4 ? simd_columns<16, VnniTile<4>> : simd_columns<16, VnniTile<8>>)(p, a, n0, n1, y);
      return;
    }
#endif
#ifdef QWENQ_HAVE_AVX2_TARGET
    if (kernel != Kernel::Portable && cpu_has_avx2_fma_f16c()) {
      (p.bits == 4 ? simd_columns<8, Avx2Tile<4>> : simd_columns<8, Avx2Tile<8>>)(p, a, n0, n1, y);
      return;
    }
#endif
    portable_columns(p, a, n0, n1, y);
  });
}

}  // namespace

std::string int_int8_unsupported_reason(const PackedIntLinear& p) {
  std::ostringstream why;
  if (p.layout == IntLayout::AwqGemm) {
    why << "AWQ GEMM words are multiplied after repacking to the GPTQ layout (int_linear_for_int8)";
  } else if (p.bits != 4 && p.bits != 8) {
    why << "the int8 products read 4- and 8-bit GPTQ weights, not " << p.bits << "-bit";
  } else if (p.K % kBlock != 0 || p.group % kBlock != 0) {
    why << "the int8 products need in_features and the group size to be multiples of " << kBlock << " (K = " << p.K
        << ", group " << p.group << ")";
  } else if (static_cast<int64_t>(p.g_idx.size()) != p.K) {
    why << "g_idx holds " << p.g_idx.size() << " entries for " << p.K << " inputs";
  } else if (!int_linear_groups_in_order(p)) {
    why << "g_idx is not k / " << p.group << " (act-order); int_linear_for_int8 sorts the inputs by group, which "
        << "makes the groups contiguous only when each holds " << p.group << " inputs";
  }
  return why.str();
}

// The conditions above without building a message: the products check them on every call.
bool int_int8_product_supported(const PackedIntLinear& p) {
  return p.layout != IntLayout::AwqGemm && (p.bits == 4 || p.bits == 8) && p.K % kBlock == 0 &&
         p.group % kBlock == 0 && static_cast<int64_t>(p.g_idx.size()) == p.K && int_linear_groups_in_order(p);
}

PackedIntLinear int_linear_for_int8(PackedIntLinear p) {
  if (p.K % kBlock != 0 || p.group % kBlock != 0) return p;
  if (p.layout == IntLayout::AwqGemm) return p.bits == 4 ? int_linear_to_gptq_v2(p) : p;
  // Act-order rows sorted as the loader sorts them for every product (a no-op when it already did): with K and the
  // group multiples of 32, the sorted 4/8-bit Linear is supported exactly when its groups came out contiguous.
  if (p.bits == 4 || p.bits == 8) return int_linear_for_products(std::move(p));
  return p;
}

void quantize_int_activations(const PackedIntLinear& p, const float* x, int64_t M, IntInt8Rows* out) {
  QWENQ_CHECK(int_int8_product_supported(p), "quantize_int_activations: " << int_int8_unsupported_reason(p));
  QWENQ_CHECK(M >= 1 && x != nullptr, "quantize_int_activations: " << M << " rows");
  const int64_t K = p.K, nb = K / kBlock, G = p.num_groups(), blocks_per_group = p.group / kBlock;
  out->bits = p.bits;
  out->M = M;
  out->K = K;
  out->group = p.group;
  out->q.resize(static_cast<size_t>(M * K));
  out->d.resize(static_cast<size_t>(M * nb));
  out->gsum.resize(static_cast<size_t>(M * G));
  out->bsum.resize(static_cast<size_t>(M * nb));
  parallel_for(M, 1, [&](int64_t m0, int64_t m1) {
    std::vector<float> gathered(p.perm.empty() ? 0 : static_cast<size_t>(K));
    for (int64_t m = m0; m < m1; ++m) {
      const float* xr = x + m * K;
      if (!p.perm.empty()) {  // rows sorted by group: stored row i multiplies input perm[i]
        for (int64_t i = 0; i < K; ++i) gathered[i] = xr[p.perm[i]];
        xr = gathered.data();
      }
      int8_t* qr = out->q.data() + m * K;
      float* dr = out->d.data() + m * nb;
      float* gs = out->gsum.data() + m * G;
      std::fill(gs, gs + G, 0.0f);
      for (int64_t b = 0; b < nb; ++b) {
        const float* xb = xr + b * kBlock;
        float amax = 0.0f;
        bool finite = true;
        for (int i = 0; i < kBlock; ++i) {
          finite = finite && std::isfinite(xb[i]);
          amax = std::max(amax, std::fabs(xb[i]));
        }
        int8_t codes[kBlock];
        int32_t sum = 0;
        if (!finite) {
          std::fill(codes, codes + kBlock, int8_t{0});
          dr[b] = std::numeric_limits<float>::quiet_NaN();
        } else {
          dr[b] = amax / 127.0f;
          const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
          for (int i = 0; i < kBlock; ++i) {
            const float v = std::min(127.0f, std::max(-127.0f, std::nearbyint(xb[i] * id)));
            codes[i] = static_cast<int8_t>(v);
            sum += codes[i];
          }
        }
        for (int i = 0; i < kBlock; ++i) {
          const int slot = p.bits == 4 ? (i & ~7) + kNibbleSlot[i & 7] : i;
          qr[b * kBlock + slot] = codes[i];
        }
        out->bsum[static_cast<size_t>(m * nb + b)] = sum;
        const int64_t g = b / blocks_per_group;
        gs[g] = std::fma(dr[b], static_cast<float>(sum), gs[g]);
      }
    }
  });
}

void int_linear_matvec_int8(const PackedIntLinear& p, const IntInt8Rows& a, float* y) {
  check_rows(p, a, y, "int_linear_matvec_int8");
  matvec(p, a, y, Kernel::Best);
}

bool int_linear_matvec_int8_avx2(const PackedIntLinear& p, const IntInt8Rows& a, float* y) {
  check_rows(p, a, y, "int_linear_matvec_int8_avx2");
#ifdef QWENQ_HAVE_AVX2_TARGET
  if (!cpu_has_avx2_fma_f16c()) return false;
  matvec(p, a, y, Kernel::Avx2);
  return true;
#else
  return false;
#endif
}

void int_linear_matvec_int8_portable(const PackedIntLinear& p, const IntInt8Rows& a, float* y) {
  check_rows(p, a, y, "int_linear_matvec_int8_portable");
  matvec(p, a, y, Kernel::Portable);
}

void int_linear_matvec_int8(const PackedIntLinear& p, const float* x, int64_t M, float* y) {
  QWENQ_CHECK(M >= 1 && x != nullptr && y != nullptr, "int_linear_matvec_int8: M = " << M);
  constexpr int64_t kRowsPerPass = 64;  // rows of x quantized at a time (64 x 18944 int8: 1.2 MB)
  IntInt8Rows a;
  for (int64_t m0 = 0; m0 < M; m0 += kRowsPerPass) {
    quantize_int_activations(p, x + m0 * p.K, std::min(kRowsPerPass, M - m0), &a);
    int_linear_matvec_int8(p, a, y + m0 * p.N);
  }
}

}  // namespace qwenq
