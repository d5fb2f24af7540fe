// GPTQ (2/3/4/8-bit, act-order or not) and AWQ GEMM products with few rows, forward and transposed, straight from
// the packed words (see packed_matvec.h for the math and each layout's walk).
#include <algorithm>
#include <climits>
#include <vector>

#ifdef __F16C__
#include <immintrin.h>
#endif

#include "core/dtype.h"
#include "core/threads.h"
#include "quant/format/int_pack.h"
#include "quant/packed_matvec.h"
#include "quant/packed_matvec_simd.h"

namespace qwenq {
namespace {

using namespace packed_detail;

// The width of the column tiles threads take: a multiple of `align` between max_tile / 2 and max_tile, the widest
// whose busiest thread has at most 5 % more columns than with the most even choice (wide tiles read longer runs of
// each packed row, which measured faster than a perfect balance).
int64_t balanced_tile(int64_t total, int64_t max_tile, int64_t align) {
  const int64_t threads = std::max(1, num_threads());
  const auto load = [&](int64_t tile) { return ((total + tile - 1) / tile + threads - 1) / threads * tile; };
  const int64_t lo = std::max(align, max_tile / 2);
  int64_t best_load = INT64_MAX;
  for (int64_t tile = max_tile; tile >= lo; tile -= align) best_load = std::min(best_load, load(tile));
  int64_t tile = max_tile;
  while (tile - align >= lo && load(tile) * 20 > best_load * 21) tile -= align;
  return tile;
}

// Calls f(B) with B = bits (2, 4 or 8: codes that stay inside their 32-bit word) as a compile-time constant.
template <typename F>
void with_word_bits(int bits, F&& f) {
  if (bits == 4) {
    f(std::integral_constant<int, 4>());
  } else if (bits == 8) {
    f(std::integral_constant<int, 8>());
  } else {
    f(std::integral_constant<int, 2>());
  }
}

// ---- GPTQ / AWQ ------------------------------------------------------------------------------------------

// The per-call tables: the group of each input and the fp32 scale and zero of each (group, column). For AWQ
// the columns of a group are stored in nibble order (position p · N/8 + word c holds column 8c + kAwqOrder[p]),
// the order the kernel meets them in.
struct IntTables {
  std::vector<int32_t> group_of;
  std::vector<float> scale, zero;
};

// n fp16 values to fp32: F16C's conversion where the compiler targets it (exact, as f16_to_f32; a signaling NaN
// comes out quiet, still a NaN), f16_to_f32 elsewhere.
void f16_run_to_f32(const uint16_t* in, int64_t n, float* out) {
  int64_t i = 0;
#ifdef __F16C__
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
#endif
  for (; i < n; ++i) out[i] = f16_to_f32(in[i]);
}

IntTables int_tables(const PackedIntLinear& p) {
  const int64_t G = p.num_groups(), N = p.N;
  IntTables t;
  t.group_of = int_linear_group_of(p);
  t.scale.resize(static_cast<size_t>(G * N));
  t.zero.resize(static_cast<size_t>(G * N));
  const bool gptq = p.layout != IntLayout::AwqGemm;
  // 3-bit zeros cross words: unpacked by int_pack.
  const std::vector<uint16_t> zeros3 = gptq && p.bits == 3 ? int_linear_zeros(p) : std::vector<uint16_t>();
  const int64_t words = N / 8;
  const uint32_t* qz = reinterpret_cast<const uint32_t*>(p.qzeros.data());
  parallel_for(G, std::max<int64_t>(1, 16384 / N), [&](int64_t g0, int64_t g1) {
    std::vector<float> row(static_cast<size_t>(gptq ? 0 : N));
    for (int64_t g = g0; g < g1; ++g) {
      float* s = t.scale.data() + g * N;
      float* z = t.zero.data() + g * N;
      if (gptq) {
        f16_run_to_f32(p.scales.data() + g * N, N, s);
        if (p.bits == 3) {
          for (int64_t n = 0; n < N; ++n) z[n] = zeros3[g * N + n];
        } else {  // zero n in bits [b·(n % per), ...) of word n / per; v1 stores zero - 1 (readers add 1 after masking).
          // Read here rather than through int_linear_zeros: that extra pass measured 1 ms of a 4 ms decode
          // product (Qwen2.5-7B down_proj).
          const int b = p.bits, per = 32 / b;
          const uint32_t mask = (1u << b) - 1, add = p.layout == IntLayout::GptqV1 ? 1 : 0;
          const uint32_t* zw = qz + g * (N / per);
          for (int64_t n = 0; n < N; ++n)
            z[n] = static_cast<float>(((zw[n / per] >> (b * (n % per))) & mask) + add);
        }
      } else {  // nibble order: position q · N/8 + c holds column 8c + kAwqOrder[q]
        f16_run_to_f32(p.scales.data() + g * N, N, row.data());
        for (int64_t n = 0; n < N; ++n) s[kAwqReverseOrder[n & 7] * words + (n >> 3)] = row[n];
        const uint32_t* zw = qz + g * words;
        for (int q = 0; q < 8; ++q)
          for (int64_t c = 0; c < words; ++c) z[q * words + c] = static_cast<float>((zw[c] >> (4 * q)) & 15u);
      }
    }
  });
  return t;
}

// GPTQ: qweight [K·b/32, N]; a unit of U = 32/b inputs (32 for 3-bit) fills `unit_words` rows of words, input j
// of a unit at bit j·b of the unit's bit stream (low bits first; 3-bit codes may cross into the next row).
// Columns [n0, n0 + nt), rows m0 .. m0 + R of x.
constexpr int64_t kGptqTile = 512;

template <int R>
void gptq_tile(const PackedIntLinear& p, const IntTables& t, const float* x, int64_t m0, int64_t n0, int64_t nt,
               float* y) {
  const int64_t K = p.K, N = p.N;
  const int b = p.bits;
  const int U = gptq_pack_multiple(b), unit_words = U * b / 32;
  const uint32_t mask = (1u << b) - 1;
  const uint32_t* qw = reinterpret_cast<const uint32_t*>(p.qweight.data());
  float acc[R][kGptqTile] = {};
  for (int64_t k0 = 0; k0 < K; k0 += U) {
    const uint32_t* unit = qw + (k0 / U) * unit_words * N + n0;
    const int jn = static_cast<int>(std::min<int64_t>(U, K - k0));
    for (int j = 0; j < jn; ++j) {
      const int64_t k = k0 + j;
      const int off = j * b, sh = off & 31;
      const uint32_t* lo = unit + (off >> 5) * N;
      const int64_t g = t.group_of[k];
      const float* s = t.scale.data() + g * N + n0;
      const float* z = t.zero.data() + g * N + n0;
      float xv[R];
      for (int r = 0; r < R; ++r) xv[r] = x[(m0 + r) * K + k];
      if (sh + b <= 32) {
        for (int64_t i = 0; i < nt; ++i) {
          const float w = (static_cast<float>((lo[i] >> sh) & mask) - z[i]) * s[i];
          for (int r = 0; r < R; ++r) acc[r][i] = fmadd(w, xv[r], acc[r][i]);
        }
      } else {  // a 3-bit code split across two rows of words
        const uint32_t* hi = lo + N;
        for (int64_t i = 0; i < nt; ++i) {
          const uint32_t v = (lo[i] >> sh) | (hi[i] << (32 - sh));
          const float w = (static_cast<float>(v & mask) - z[i]) * s[i];
          for (int r = 0; r < R; ++r) acc[r][i] = fmadd(w, xv[r], acc[r][i]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) std::copy(acc[r], acc[r] + nt, y + (m0 + r) * N + n0);
}

// The tile's slice of a row of words is 1-2 KiB of a row N·4 bytes long: the hardware prefetchers do not follow
// that stride across pages, so the kernels prefetch the rows this far ahead themselves (a measured choice).
constexpr int64_t kPrefetchRows = 8;

// GPTQ without act-order (g_idx[k] = k / group), 2/4/8-bit, groups of whole words: the sum over a group of
// (q - zero)·x first, then times the group's scale, s·Σ(q - z)·x, which is Σ ŵ·x up to the fp32 rounding of the
// sums. The packed word of 16 columns is loaded once for its U inputs.

template <int R, int BITS>
void gptq_tile_grouped(const PackedIntLinear& p, const IntTables& t, const float* x, int64_t m0, int64_t n0, int64_t nt,
                       float* y) {
  constexpr int U = 32 / BITS;
  constexpr uint32_t kMask = (1u << BITS) - 1;
  const int64_t K = p.K, N = p.N, nv = nt / kLanes * kLanes;
  const uint32_t* qw = reinterpret_cast<const uint32_t*>(p.qweight.data());
  float acc[R][kGptqTile] = {};
  float part[R][kGptqTile];
  for (int64_t kg = 0; kg < K; kg += p.group) {
    const int64_t g = kg / p.group, kend = std::min(K, kg + p.group);
    const float* s = t.scale.data() + g * N + n0;
    const float* z = t.zero.data() + g * N + n0;
    for (int r = 0; r < R; ++r) std::fill(part[r], part[r] + nt, 0.0f);
    for (int64_t k0 = kg; k0 < kend; k0 += U) {
      const uint32_t* row = qw + (k0 / U) * N + n0;
      float xs[U][R];
      for (int j = 0; j < U; ++j)
        for (int r = 0; r < R; ++r) xs[j][r] = x[(m0 + r) * K + k0 + j];
      for (int64_t i = 0; i < nv; i += kVLanes) {
        if (i % kLanes == 0) __builtin_prefetch(row + kPrefetchRows * N + i);
        const u32xV v = load16<u32xV>(row + i);
        const f32xV zv = load16<f32xV>(z + i);
        f32xV pr[R];
        for (int r = 0; r < R; ++r) pr[r] = load16<f32xV>(part[r] + i);
        for (int j = 0; j < U; ++j) {
          const f32xV q = fieldsV(v, BITS * j, kMask) - zv;
          for (int r = 0; r < R; ++r) pr[r] += q * xs[j][r];
        }
        for (int r = 0; r < R; ++r) storeV(part[r] + i, pr[r]);
      }
      for (int64_t i = nv; i < nt; ++i)
        for (int j = 0; j < U; ++j) {
          const float q = static_cast<float>((row[i] >> (BITS * j)) & kMask) - z[i];
          for (int r = 0; r < R; ++r) part[r][i] = fmadd(q, xs[j][r], part[r][i]);
        }
    }
    for (int r = 0; r < R; ++r)
      for (int64_t i = 0; i < nt; ++i) acc[r][i] = fmadd(s[i], part[r][i], acc[r][i]);
  }
  for (int r = 0; r < R; ++r) std::copy(acc[r], acc[r] + nt, y + (m0 + r) * N + n0);
}

// GPTQ with act-order (g_idx scattered), 2/4/8-bit: each input's own group row of scales and zeros, so ŵ =
// (q - z)·s per weight as the reader computes it, then ŵ·x; the packed word is still loaded once for its U inputs.
template <int R, int BITS>
void gptq_tile_scattered(const PackedIntLinear& p, const IntTables& t, const float* x, int64_t m0, int64_t n0,
                         int64_t nt, float* y) {
  constexpr int U = 32 / BITS;
  constexpr uint32_t kMask = (1u << BITS) - 1;
  const int64_t K = p.K, N = p.N, nv = nt / kLanes * kLanes;
  const uint32_t* qw = reinterpret_cast<const uint32_t*>(p.qweight.data());
  float acc[R][kGptqTile] = {};
  for (int64_t k0 = 0; k0 < K; k0 += U) {
    const uint32_t* row = qw + (k0 / U) * N + n0;
    float xs[U][R];
    const float* s[U];
    const float* z[U];
    for (int j = 0; j < U; ++j) {
      for (int r = 0; r < R; ++r) xs[j][r] = x[(m0 + r) * K + k0 + j];
      s[j] = t.scale.data() + t.group_of[k0 + j] * N + n0;
      z[j] = t.zero.data() + t.group_of[k0 + j] * N + n0;
    }
    for (int64_t i = 0; i < nv; i += kVLanes) {
      if (i % kLanes == 0) __builtin_prefetch(row + kPrefetchRows * N + i);
      const u32xV v = load16<u32xV>(row + i);
      f32xV pr[R];
      for (int r = 0; r < R; ++r) pr[r] = load16<f32xV>(acc[r] + i);
      for (int j = 0; j < U; ++j) {
        const f32xV q = fieldsV(v, BITS * j, kMask);
        const f32xV w = (q - load16<f32xV>(z[j] + i)) * load16<f32xV>(s[j] + i);
        for (int r = 0; r < R; ++r) pr[r] += w * xs[j][r];
      }
      for (int r = 0; r < R; ++r) storeV(acc[r] + i, pr[r]);
    }
    for (int64_t i = nv; i < nt; ++i)
      for (int j = 0; j < U; ++j) {
        const float w = (static_cast<float>((row[i] >> (BITS * j)) & kMask) - z[j][i]) * s[j][i];
        for (int r = 0; r < R; ++r) acc[r][i] = fmadd(w, xs[j][r], acc[r][i]);
      }
  }
  for (int r = 0; r < R; ++r) std::copy(acc[r], acc[r] + nt, y + (m0 + r) * N + n0);
}

// AWQ: qweight [K, N/8], word c of input k holds columns 8c + kAwqOrder[q] in nibbles q = 0..7. Words
// [c0, c0 + ct) of each input, rows m0 .. m0 + R of x; sums kept as [r][q][word] (the tables' nibble order), per
// group Σ(q - z)·x first, then times the scale, as for GPTQ. Inputs go kKStep at a time, so that a partial sum is
// loaded and stored once per kKStep rows of words.
constexpr int64_t kAwqTileWords = 64;

template <int R, int KSTEP>
void awq_rows(const uint32_t* rows, int64_t words, const float* z, const float* xs, int64_t ct,
              float (*part)[8][kAwqTileWords]) {
  const int64_t cv = ct / kLanes * kLanes;
  for (int64_t i = 0; i < cv; i += kVLanes) {
    u32xV v[KSTEP];
    for (int s = 0; s < KSTEP; ++s) {
      if (i % kLanes == 0) __builtin_prefetch(rows + (s + kPrefetchRows) * words + i);
      v[s] = load16<u32xV>(rows + s * words + i);
    }
    for (int q = 0; q < 8; ++q) {
      const f32xV zq = load16<f32xV>(z + q * words + i);
      f32xV pr[R];
      for (int r = 0; r < R; ++r) pr[r] = load16<f32xV>(part[r][q] + i);
      for (int s = 0; s < KSTEP; ++s) {
        const f32xV c = fieldsV(v[s], 4 * q, 15u) - zq;
        for (int r = 0; r < R; ++r) pr[r] += c * xs[s * R + r];
      }
      for (int r = 0; r < R; ++r) storeV(part[r][q] + i, pr[r]);
    }
  }
  for (int64_t i = cv; i < ct; ++i)
    for (int q = 0; q < 8; ++q)
      for (int s = 0; s < KSTEP; ++s) {
        const float c = static_cast<float>((rows[s * words + i] >> (4 * q)) & 15u) - z[q * words + i];
        for (int r = 0; r < R; ++r) part[r][q][i] = fmadd(c, xs[s * R + r], part[r][q][i]);
      }
}

template <int R>
void awq_tile(const PackedIntLinear& p, const IntTables& t, const float* x, int64_t m0, int64_t c0, int64_t ct,
              float* y) {
  constexpr int kKStep = 4;
  const int64_t K = p.K, N = p.N, words = N / 8;
  const uint32_t* qw = reinterpret_cast<const uint32_t*>(p.qweight.data());
  float acc[R][8][kAwqTileWords] = {};
  float part[R][8][kAwqTileWords];
  for (int64_t kg = 0; kg < K; kg += p.group) {
    const int64_t g = kg / p.group, kend = std::min(K, kg + p.group);
    const float* s = t.scale.data() + g * N + c0;
    const float* z = t.zero.data() + g * N + c0;
    for (int r = 0; r < R; ++r)
      for (int q = 0; q < 8; ++q) std::fill(part[r][q], part[r][q] + ct, 0.0f);
    int64_t k = kg;
    float xs[kKStep * R];
    for (; k + kKStep <= kend; k += kKStep) {
      for (int st = 0; st < kKStep; ++st)
        for (int r = 0; r < R; ++r) xs[st * R + r] = x[(m0 + r) * K + k + st];
      awq_rows<R, kKStep>(qw + k * words + c0, words, z, xs, ct, part);
    }
    for (; k < kend; ++k) {
      for (int r = 0; r < R; ++r) xs[r] = x[(m0 + r) * K + k];
      awq_rows<R, 1>(qw + k * words + c0, words, z, xs, ct, part);
    }
    for (int r = 0; r < R; ++r)
      for (int q = 0; q < 8; ++q)
        for (int64_t i = 0; i < ct; ++i) acc[r][q][i] = fmadd(s[q * words + i], part[r][q][i], acc[r][q][i]);
  }
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < 8; ++q)
      for (int64_t i = 0; i < ct; ++i) y[(m0 + r) * N + 8 * (c0 + i) + kAwqOrder[q]] = acc[r][q][i];
}

// ---- transposed: dx[M, K] = dy[M, N] · Ŵ ----------------------------------------------------------------

// GPTQ 2/4/8-bit (act-order or not): word rows [kw0, kw1); for each, the U inputs' sums over all N outputs as
// 16-lane partial sums (ŵ = (q - z)·s with each input's own group row), added lane by lane at the end, then the
// N % 16 tail in order. R rows of dy at a time (U·R accumulators).
template <int R, int BITS>
void gptq_rows_t(const PackedIntLinear& p, const IntTables& t, const float* dy, int64_t m0, int64_t kw0, int64_t kw1,
                 float* dx) {
  constexpr int U = 32 / BITS;
  constexpr uint32_t kMask = (1u << BITS) - 1;
  const int64_t K = p.K, N = p.N, nv = N / kLanes * kLanes;
  const uint32_t* qw = reinterpret_cast<const uint32_t*>(p.qweight.data());
  for (int64_t kw = kw0; kw < kw1; ++kw) {
    const int64_t k0 = kw * U;
    const uint32_t* row = qw + kw * N;
    const float* s[U];
    const float* z[U];
    for (int j = 0; j < U; ++j) {
      s[j] = t.scale.data() + t.group_of[k0 + j] * N;
      z[j] = t.zero.data() + t.group_of[k0 + j] * N;
    }
    f32xV acc[U][R][kHalves] = {};
    for (int64_t i = 0; i < nv; i += kLanes) {
      for (int h = 0; h < kHalves; ++h) {
        const int64_t at = i + h * kVLanes;
        const u32xV v = load16<u32xV>(row + at);
        f32xV d[R];
        for (int r = 0; r < R; ++r) d[r] = load16<f32xV>(dy + (m0 + r) * N + at);
        for (int j = 0; j < U; ++j) {
          const f32xV q = fieldsV(v, BITS * j, kMask);
          const f32xV w = (q - load16<f32xV>(z[j] + at)) * load16<f32xV>(s[j] + at);
          for (int r = 0; r < R; ++r) acc[j][r][h] += w * d[r];
        }
      }
    }
    for (int j = 0; j < U; ++j)
      for (int r = 0; r < R; ++r) {
        float sum = 0.0f;
        for (int h = 0; h < kHalves; ++h)
          for (int l = 0; l < kVLanes; ++l) sum += acc[j][r][h][l];
        for (int64_t i = nv; i < N; ++i) {
          const float w = (static_cast<float>((row[i] >> (BITS * j)) & kMask) - z[j][i]) * s[j][i];
          sum = fmadd(w, dy[(m0 + r) * N + i], sum);
        }
        dx[(m0 + r) * K + k0 + j] = sum;
      }
  }
}

// AWQ: inputs [k0, k1); input k's word row against dy in the nibble order of the tables (dyp, [M, N]).
template <int R>
void awq_rows_t(const PackedIntLinear& p, const IntTables& t, const float* dyp, int64_t m0, int64_t k0, int64_t k1,
                float* dx) {
  const int64_t K = p.K, N = p.N, words = N / 8, cv = words / kLanes * kLanes;
  const uint32_t* qw = reinterpret_cast<const uint32_t*>(p.qweight.data());
  for (int64_t k = k0; k < k1; ++k) {
    const uint32_t* row = qw + k * words;
    const int64_t g = t.group_of[k];
    const float* s = t.scale.data() + g * N;
    const float* z = t.zero.data() + g * N;
    f32xV acc[R][kHalves] = {};
    for (int64_t c = 0; c < cv; c += kLanes) {
      for (int h = 0; h < kHalves; ++h) {
        const u32xV v = load16<u32xV>(row + c + h * kVLanes);
        for (int q = 0; q < 8; ++q) {
          const int64_t at = q * words + c + h * kVLanes;
          const f32xV w = (fieldsV(v, 4 * q, 15u) - load16<f32xV>(z + at)) * load16<f32xV>(s + at);
          for (int r = 0; r < R; ++r) acc[r][h] += w * load16<f32xV>(dyp + (m0 + r) * N + at);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      float sum = 0.0f;
      for (int h = 0; h < kHalves; ++h)
        for (int l = 0; l < kVLanes; ++l) sum += acc[r][h][l];
      for (int64_t c = cv; c < words; ++c)
        for (int q = 0; q < 8; ++q) {
          const int64_t at = q * words + c;
          const float w = (static_cast<float>((row[c] >> (4 * q)) & 15u) - z[at]) * s[at];
          sum = fmadd(w, dyp[(m0 + r) * N + at], sum);
        }
      dx[(m0 + r) * K + k] = sum;
    }
  }
}

// The forward product over the stored rows (x's columns in the stored order).
void matvec_stored(const PackedIntLinear& p, const float* x, int64_t M, float* y) {
  const IntTables t = int_tables(p);
  if (p.layout == IntLayout::AwqGemm) {
    const int64_t words = p.N / 8, width = std::min(words, kAwqTileWords);
    parallel_for((words + width - 1) / width, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t tile = t0; tile < t1; ++tile) {
        const int64_t c0 = tile * width, ct = std::min(width, words - c0);
        for_row_chunks(M, [&](int64_t m0, auto rows) { awq_tile<decltype(rows)::value>(p, t, x, m0, c0, ct, y); });
      }
    });
    return;
  }
  // 3-bit codes cross words: one input at a time (gptq_tile). Act-order, or groups that end inside a word: each
  // input's own scale and zero (gptq_tile_scattered).
  const int U = gptq_pack_multiple(p.bits);
  const bool grouped = p.bits != 3 && p.group % U == 0 && !!int_linear_groups_in_order(p);
  const int64_t width = balanced_tile(p.N, kGptqTile, kLanes);
  parallel_for((p.N + width - 1) / width, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t tile = t0; tile < t1; ++tile) {
      const int64_t n0 = tile * width, nt = std::min(width, p.N - n0);
      for_row_chunks(M, [&](int64_t m0, auto rows) {
        constexpr int R = decltype(rows)::value;
        if (p.bits == 3) {
          gptq_tile<R>(p, t, x, m0, n0, nt, y);
          return;
        }
        with_word_bits(p.bits, [&](auto bits) {
          constexpr int B = decltype(bits)::value;
          if (grouped) {
            gptq_tile_grouped<R, B>(p, t, x, m0, n0, nt, y);
          } else {
            gptq_tile_scattered<R, B>(p, t, x, m0, n0, nt, y);
          }
        });
      });
    }
  });
}

// The transposed product into the stored rows' order.
void matvec_t_stored(const PackedIntLinear& p, const float* dy, int64_t M, float* dx) {
  const IntTables t = int_tables(p);
  if (p.layout == IntLayout::AwqGemm) {
    const int64_t N = p.N, words = N / 8;
    std::vector<float> dyp(static_cast<size_t>(M * N));  // dy in the tables' nibble order
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) dyp[m * N + kAwqReverseOrder[n & 7] * words + (n >> 3)] = dy[m * N + n];
    parallel_for(p.K, 16, [&](int64_t k0, int64_t k1) {
      for_row_chunks(M, [&](int64_t m0, auto rows) { awq_rows_t<decltype(rows)::value>(p, t, dyp.data(), m0, k0, k1, dx); });
    });
    return;
  }
  const int U = gptq_pack_multiple(p.bits);
  parallel_for(p.K / U, 4, [&](int64_t kw0, int64_t kw1) {
    for_row_chunks<2>(M, [&](int64_t m0, auto rows) {
      with_word_bits(p.bits, [&](auto bits) {
        gptq_rows_t<decltype(rows)::value, decltype(bits)::value>(p, t, dy, m0, kw0, kw1, dx);
      });
    });
  });
}

}  // namespace

PackedIntLinear int_linear_for_products(PackedIntLinear p) {
  if (p.layout == IntLayout::AwqGemm || p.bits == 3 || !p.perm.empty() || int_linear_groups_in_order(p)) return p;
  PackedIntLinear sorted = int_linear_sort_inputs_by_group(p);
  return int_linear_groups_in_order(sorted) ? sorted : p;
}

int64_t int_linear_matvec_max_rows(const PackedIntLinear& p) {
  if (p.layout != IntLayout::AwqGemm && p.bits == 3) return 16;
  return !int_linear_groups_in_order(p) ? 256 : 512;
}

int64_t int_linear_matvec_t_max_rows(const PackedIntLinear& p) {
  if (p.layout != IntLayout::AwqGemm && p.bits == 3) return 0;
  return !int_linear_groups_in_order(p) ? 32 : 64;
}

void int_linear_matvec(const PackedIntLinear& p, const float* x, int64_t M, float* y) {
  check_args(x, M, y, p.N, p.K, "int_linear_matvec");
  if (p.perm.empty()) return matvec_stored(p, x, M, y);
  // Rows sorted by group (int_linear_sort_inputs_by_group): the stored rows times x's columns gathered in their order.
  const int64_t K = p.K;
  std::vector<float> xs(static_cast<size_t>(M * K));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t i = 0; i < K; ++i) xs[m * K + i] = x[m * K + p.perm[i]];
  matvec_stored(p, xs.data(), M, y);
}

void int_linear_matvec_t(const PackedIntLinear& p, const float* dy, int64_t M, float* dx) {
  check_args(dy, M, dx, p.N, p.K, "int_linear_matvec_t");
  QWENQ_CHECK(p.layout == IntLayout::AwqGemm || p.bits != 3,
              "int_linear_matvec_t: 3-bit GPTQ codes cross words; dequantize the weight instead");
  if (p.perm.empty()) return matvec_t_stored(p, dy, M, dx);
  const int64_t K = p.K;
  std::vector<float> ds(static_cast<size_t>(M * K));
  matvec_t_stored(p, dy, M, ds.data());
  for (int64_t m = 0; m < M; ++m)
    for (int64_t i = 0; i < K; ++i) dx[m * K + p.perm[i]] = ds[m * K + i];
}

}  // namespace qwenq
