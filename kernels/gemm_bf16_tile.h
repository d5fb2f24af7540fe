// The AVX512_BF16 building blocks of the CPU's bf16 products (kernels/gemm_bf16.cpp, kernels/gemm_bf16_block.cpp):
// operand packing and the 12 x 32 micro-kernel. Internal to kernels/.
//
//   C[M, Nc] = A[M, R] · B, A fp32 row-major (rounded to bf16 when packed), B either "rows": B[r, j] = Bt[j, r] with
//   Bt [Nc, R] row-major, or "cols": B[r, j] with B [R, Nc] row-major; both in F32 (rounded) or BF16 (read as is).
//
// Packs: A into panels of kMr rows, [panel][pair p][kMr] 32-bit words holding (bf16 A[i, 2p], bf16 A[i, 2p+1]); B into
// kNr-column panels for a range of pairs, [panel][pair p][kNr] words holding (B[2p, j], B[2p+1, j]). An odd R is
// padded with a zero; rows past M and columns past Nc are zero in the packs and never stored. The micro-kernel keeps
// a kMr x kNr fp32 tile in 24 zmm registers: per pair, two B vectors and kMr broadcast A words into 24 vdpbf16ps, each
// output's pairs summed into one fp32 accumulator in increasing order. vdpbf16ps and the fp32 -> bf16 conversion
// flush denormal inputs and results to zero.
//
// QWENQ_HAVE_BF16_KERNEL is defined where these are compiled (x86-64 with GCC or Clang; each function carries its
// own target attribute, so every x86-64 build has them and callers check the CPU at run time).
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/dtype.h"
#include "kernels/gemm_bf16.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define QWENQ_HAVE_BF16_KERNEL 1
#define QWENQ_BF16_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#endif

namespace qwenq::bf16_tile {

constexpr int64_t kMr = 12, kNr = 32;
constexpr int64_t kSlicePairs = kBf16SliceR / 2;

#ifdef QWENQ_HAVE_BF16_KERNEL

// n fp32 values (n <= 32) as bf16 pairs: out[q] = (bf16 v[2q], bf16 v[2q + 1]), zero past n; returns a 512-bit
// vector of 16 pairs.
QWENQ_BF16_FN inline __m512i round_pairs32(const float* v, int64_t n) {
  const __mmask16 lo = n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1);
  const __mmask16 hi = n >= 32 ? 0xFFFF : n <= 16 ? 0 : static_cast<__mmask16>((1u << (n - 16)) - 1);
  const __m512 a = _mm512_maskz_loadu_ps(lo, v), b = _mm512_maskz_loadu_ps(hi, v + 16);
  return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a));
}

// 32 consecutive values of a row (n of them, the rest zero) as 32 bf16 in one vector.
QWENQ_BF16_FN inline __m512i row32_bf16(const void* row, DType dt, int64_t n) {
  if (dt == DType::F32) return round_pairs32(static_cast<const float*>(row), n);
  const __mmask32 m = n >= 32 ? 0xFFFFFFFFu : static_cast<__mmask32>((1u << n) - 1);
  return _mm512_maskz_loadu_epi16(m, row);
}

// GCC 12 without -march=native (AVX-512 only through the target attribute) reports its own intrinsics' "undefined"
// pass-through operand (`__Y`) as maybe uninitialized here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// r[0..15] (16 rows of 16 words) transposed in place: r[q] then holds word q of every row.
QWENQ_BF16_FN inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {  // words of row pairs interleaved
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // then 64-bit pieces of row quads
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // Now r[4a + b] holds, in 128-bit lane L, word 4L + b' of rows 4a..4a+3 (b' = the order above: 0, 1, 2, 3).
  for (int i = 0; i < 4; ++i) {  // 128-bit lanes of row quads 0/1 and 2/3, then across
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
  }
}

// Rows [0, rows) (rows <= kMr) of A [.., R] (row stride lda) into one panel [Rp/2][kMr]: 16 rows (those past
// `rows` zero) by 16 pairs at a time, transposed in registers, the panel's kMr words of each pair stored.
QWENQ_BF16_FN inline void pack_a_panel(const float* A, int64_t lda, int64_t R, int64_t rows, int64_t pairs,
                                       uint32_t* out) {
  static_assert(kMr <= 16, "a panel's rows fit one transposed 16 x 16 block");
  constexpr __mmask16 kPanelWords = (1u << kMr) - 1;
  __m512i r[16];
  for (int64_t r0 = 0; r0 < R; r0 += 32) {
    const int64_t n = std::min<int64_t>(32, R - r0);
    for (int64_t i = 0; i < 16; ++i) r[i] = i < rows ? round_pairs32(A + i * lda + r0, n) : _mm512_setzero_si512();
    transpose16(r);
    const int64_t p0 = r0 / 2, nq = std::min<int64_t>(16, pairs - p0);
    for (int64_t q = 0; q < nq; ++q) _mm512_mask_storeu_epi32(out + (p0 + q) * kMr, kPanelWords, r[q]);
  }
}

// The panel of A = Xᵀ for columns [0, cols) (cols <= kMr) of X [R, ..] (row stride ldx): A[i, r] = X[r, i], so pair p
// of panel row i is (X[2p, i], X[2p + 1, i]), two rows of X interleaved (an odd R padded with a zero). The same words
// pack_a_panel writes for an explicit transpose, without one.
QWENQ_BF16_FN inline void pack_a_panel_t(const float* X, int64_t ldx, int64_t R, int64_t cols, int64_t pairs,
                                         uint32_t* out) {
  // Word i takes 16-bit lane i (row 2p's bf16) low and lane 16 + i (row 2p + 1's) high.
  alignas(64) static const uint16_t kInterleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                       8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  constexpr __mmask16 kPanelWords = (1u << kMr) - 1;
  const __m512i idx = _mm512_load_si512(kInterleave);
  const __mmask16 m = static_cast<__mmask16>((1u << cols) - 1);
  for (int64_t p = 0; p < pairs; ++p) {
    const __m512 even = _mm512_maskz_loadu_ps(m, X + 2 * p * ldx);
    const __m512 odd = 2 * p + 1 < R ? _mm512_maskz_loadu_ps(m, X + (2 * p + 1) * ldx) : _mm512_setzero_ps();
    const __m512i h = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(odd, even));  // lanes 0-15 even, 16-31 odd
    _mm512_mask_storeu_epi32(out + p * kMr, kPanelWords, _mm512_permutexvar_epi16(idx, h));
  }
}

// Columns [j0, j0 + cols) (cols <= kNr) of B for pairs [p0, p0 + np) into one panel [np][kNr].
// Rows layout: column j is row j of Bt [Nc, R] (row stride ldb); its pair p is two consecutive values. 16 rows by 16
// pairs at a time, transposed in registers.
QWENQ_BF16_FN inline void pack_b_rows(const void* Bt, DType dt, int64_t R, int64_t ldb, int64_t j0, int64_t cols,
                                      int64_t p0, int64_t np, uint32_t* out) {
  const size_t es = dtype_size(dt);
  __m512i r[16];
  for (int64_t g = 0; g < kNr; g += 16) {
    for (int64_t p = 0; p < np; p += 16) {
      const int64_t r0 = 2 * (p0 + p), n = std::min<int64_t>(32, R - r0);
      for (int64_t j = 0; j < 16; ++j) {
        const char* row = static_cast<const char*>(Bt) + static_cast<size_t>((j0 + g + j) * ldb + r0) * es;
        r[j] = g + j < cols ? row32_bf16(row, dt, n) : _mm512_setzero_si512();
      }
      transpose16(r);
      const int64_t nq = std::min<int64_t>(16, np - p);
      for (int64_t q = 0; q < nq; ++q) _mm512_storeu_si512(out + (p + q) * kNr + g, r[q]);
    }
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// Cols layout: B [R, Nc] row-major (row stride ldb); pair p of column j is B[2p, j] and B[2p + 1, j], two rows
// interleaved.
QWENQ_BF16_FN inline void pack_b_cols(const void* B, DType dt, int64_t R, int64_t ldb, int64_t j0, int64_t cols,
                                      int64_t p0, int64_t np, uint32_t* out) {
  // Words 2q and 2q + 1 of the result take element q of the even row and of the odd row.
  alignas(64) static const uint16_t kLo[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                               8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  alignas(64) static const uint16_t kHi[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                               24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  const __m512i lo = _mm512_load_si512(kLo), hi = _mm512_load_si512(kHi);
  const size_t es = dtype_size(dt);
  const char* base = static_cast<const char*>(B) + static_cast<size_t>(j0) * es;
  for (int64_t p = 0; p < np; ++p) {
    const int64_t r = 2 * (p0 + p);
    const __m512i even = row32_bf16(base + static_cast<size_t>(r * ldb) * es, dt, cols);
    const __m512i odd = r + 1 < R ? row32_bf16(base + static_cast<size_t>((r + 1) * ldb) * es, dt, cols)
                                  : _mm512_setzero_si512();
    _mm512_storeu_si512(out + p * kNr, _mm512_permutex2var_epi16(even, lo, odd));
    _mm512_storeu_si512(out + p * kNr + 16, _mm512_permutex2var_epi16(even, hi, odd));
  }
}

// c[rows, cols] (+)= the kMr x kNr product of one A panel and one B panel over np pairs.
QWENQ_BF16_FN inline void kernel_12x32(const uint32_t* a, const uint32_t* b, int64_t np, float* c, int64_t ldc,
                                       int64_t rows, int64_t cols, bool first) {
  __m512 acc[kMr][2];
  for (int i = 0; i < kMr; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t p = 0; p < np; ++p) {
    const __m512bh b0 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(b + p * kNr));
    const __m512bh b1 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(b + p * kNr + 16));
    const uint32_t* ap = a + p * kMr;
#pragma GCC unroll 12
    for (int i = 0; i < kMr; ++i) {
      const __m512bh ai = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(ap[i])));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
    }
  }
  const __mmask16 m0 = cols >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << cols) - 1);
  const __mmask16 m1 = cols >= 32 ? 0xFFFF : cols <= 16 ? 0 : static_cast<__mmask16>((1u << (cols - 16)) - 1);
  for (int i = 0; i < kMr; ++i) {
    if (i >= rows) break;
    float* ci = c + i * ldc;
    __m512 v0 = acc[i][0], v1 = acc[i][1];
    if (!first) {
      v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, ci));
      v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, ci + 16));
    }
    _mm512_mask_storeu_ps(ci, m0, v0);
    _mm512_mask_storeu_ps(ci + 16, m1, v1);
  }
}

// Panels [i0, i1) of A [M, R] (row stride lda) packed, panel i at out + i·pairs·kMr (pairs = ⌈R/2⌉).
QWENQ_BF16_FN inline void pack_a_panels(const float* A, int64_t lda, int64_t M, int64_t R, int64_t i0, int64_t i1,
                                        uint32_t* out) {
  const int64_t pairs = (R + 1) / 2;
  for (int64_t i = i0; i < i1; ++i)
    pack_a_panel(A + i * kMr * lda, lda, R, std::min(kMr, M - i * kMr), pairs, out + i * pairs * kMr);
}

// C[M, cols] (+)= packed A [M, pairs] · one B panel, pairs [s0, s0 + np) of the reduction: every A panel against it,
// C at the panel's first column (first: written, else added).
QWENQ_BF16_FN inline void multiply_b_panel(const uint32_t* a, int64_t M, int64_t pairs, int64_t s0, const uint32_t* b,
                                           int64_t np, float* C, int64_t ldc, int64_t cols, bool first) {
  for (int64_t ip = 0; ip * kMr < M; ++ip)
    kernel_12x32(a + (ip * pairs + s0) * kMr, b, np, C + ip * kMr * ldc, ldc, std::min(kMr, M - ip * kMr), cols,
                 first);
}

#endif  // QWENQ_HAVE_BF16_KERNEL

}  // namespace qwenq::bf16_tile
