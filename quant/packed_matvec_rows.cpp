// NF4/FP4 and GGUF products with few rows, forward and transposed: rows of the weight decoded a block at a time
// into cache-sized buffers, never the whole weight (see packed_matvec.h for the math).
#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "core/threads.h"
#include "quant/format/nf4_pack.h"
#include "quant/packed_matvec.h"
#include "quant/packed_matvec_simd.h"

namespace qwenq {
namespace {

using namespace packed_detail;

constexpr int64_t kTransposedChunk = 512;  // inputs per thread task in the transposed products

// ---- dot products of dequantized rows with x -------------------------------------------------------------

// Rows of ŵ go J at a time against R rows of x (R·J sums in registers, each ŵ and x vector loaded once per block
// instead of once per pair): out[r·J + j] = Σ_k w[j·K + k] · x[r·K + k], 16 interleaved partial sums added lane by
// lane at the end, then the K % 16 tail in order. Every sum takes the same steps whatever R and J, so a row of y
// is the same bits whatever M.
// The 16 partial sums are kHalves vectors of the target's width (packed_matvec_simd.h: one zmm, or two ymm halves,
// the same bits); J and the rows per pass are smaller without AVX-512 so that the accumulators fit its 16 registers.
#ifdef __AVX512F__
constexpr int kDotRows = 4;   // J: weight rows per block
constexpr int kDotXRows = 4;  // R: rows of x at most per pass (4 x 4 accumulators: 16 of the 32 zmm registers)
#else
constexpr int kDotRows = 2;
constexpr int kDotXRows = 2;
#endif

template <int R, int J>
void dot_block(const float* w, const float* x, int64_t K, float* out) {
  constexpr int kW = static_cast<int>(kVLanes);
  f32xV acc[R][J][kHalves] = {};
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    f32xV wv[J][kHalves];
    for (int j = 0; j < J; ++j)
      for (int h = 0; h < kHalves; ++h) wv[j][h] = load16<f32xV>(w + j * K + k + h * kW);
    for (int r = 0; r < R; ++r)
      for (int h = 0; h < kHalves; ++h) {
        const f32xV xv = load16<f32xV>(x + r * K + k + h * kW);
        for (int j = 0; j < J; ++j) acc[r][j][h] += wv[j][h] * xv;
      }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) {
      float sum = 0.0f;
      for (int h = 0; h < kHalves; ++h)
        for (int l = 0; l < kW; ++l) sum += acc[r][j][h][l];
      for (int64_t kk = k; kk < K; ++kk) sum = fmadd(w[j * K + kk], x[r * K + kk], sum);
      out[r * J + j] = sum;
    }
}

// y[:, n0 .. n0 + J) for J dequantized rows w [J, K] of outputs n0 ...
template <int J>
void dot_all_rows(const float* w, const float* x, int64_t M, int64_t K, int64_t N, int64_t n0, float* y) {
  float out[kDotXRows * J];
  for_row_chunks<kDotXRows>(M, [&](int64_t m0, auto rows) {
    constexpr int R = decltype(rows)::value;
    dot_block<R, J>(w, x + m0 * K, K, out);
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < J; ++j) y[(m0 + r) * N + n0 + j] = out[r * J + j];
  });
}

// Rows [0, N) of a row-major format in blocks of kDotRows: fill(n, values[K]) dequantizes row n, then the block
// meets every row of x. Parallel over blocks.
template <typename Fill>
void rowwise_matvec(int64_t N, int64_t K, const float* x, int64_t M, float* y, Fill fill) {
  const int64_t blocks = (N + kDotRows - 1) / kDotRows;
  parallel_for(blocks, std::max<int64_t>(1, 4096 / K), [&](int64_t b0, int64_t b1) {
    std::vector<float> w(static_cast<size_t>(kDotRows * K));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * kDotRows, J = std::min<int64_t>(kDotRows, N - n0);
      for (int64_t j = 0; j < J; ++j) fill(n0 + j, w.data() + j * K);
      if (J == kDotRows) {
        dot_all_rows<kDotRows>(w.data(), x, M, K, N, n0, y);
      } else {
        for (int64_t j = 0; j < J; ++j) dot_all_rows<1>(w.data() + j * K, x, M, K, N, n0 + j, y);
      }
    }
  });
}

// ---- NF4 / FP4 ------------------------------------------------------------------------------------------

// The block of flattened weight i: a shift for the power-of-two block sizes bitsandbytes writes, a division
// otherwise (instead of a 64-bit division per 16 weights).
struct Nf4Blocks {
  int64_t size;
  int shift;  // -1: not a power of two
  explicit Nf4Blocks(int64_t b) : size(b), shift(b > 0 && (b & (b - 1)) == 0 ? __builtin_ctzll(b) : -1) {}
  int64_t of(int64_t i) const { return shift >= 0 ? i >> shift : i / size; }
};

#ifdef __AVX512F__
// Weights i .. i + 15 of the flattened tensor (i a multiple of 16, the block size too): 8 packed bytes spread to 16
// nibble indices (high nibble first) that pick lanes of the block's scaled code book (codes · absmax, vpermps).
inline __m512 nf4_decode16(const Nf4Tensor& t, const __m512 codes, const float* absmax, const Nf4Blocks& blocks,
                           int64_t i) {
  const __m128i low4 = _mm_set1_epi8(0x0F);
  const __m512 lut = _mm512_mul_ps(codes, _mm512_set1_ps(absmax[blocks.of(i)]));
  const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(t.packed.data() + (i >> 1)));
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low4), lo = _mm_and_si128(bytes, low4);
  return _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(hi, lo)), lut);
}
#endif

#if !defined(__AVX512F__) && defined(__AVX2__)
// The same for weights i .. i + 7 (i and the block size multiples of 8) with AVX2: 4 packed bytes, the 16-entry table
// as two 8-entry halves picked by vpermps and blended on the index's bit 3 (the scalar path took 48 ms for a one-row
// Qwen2.5-7B gate_proj in an x86-64-v3 build).
inline __m256 nf4_decode8(const Nf4Tensor& t, const __m256 codes_lo, const __m256 codes_hi, const float* absmax,
                          const Nf4Blocks& blocks, int64_t i) {
  const __m256 scale = _mm256_set1_ps(absmax[blocks.of(i)]);
  int32_t four;
  std::memcpy(&four, t.packed.data() + (i >> 1), 4);
  const __m128i bytes = _mm_cvtsi32_si128(four), low4 = _mm_set1_epi8(0x0F);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low4), lo = _mm_and_si128(bytes, low4);
  const __m256i idx = _mm256_cvtepu8_epi32(_mm_unpacklo_epi8(hi, lo));
  const __m256 from_lo = _mm256_permutevar8x32_ps(_mm256_mul_ps(codes_lo, scale), idx);
  const __m256 from_hi = _mm256_permutevar8x32_ps(_mm256_mul_ps(codes_hi, scale), idx);
  return _mm256_blendv_ps(from_lo, from_hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}
#endif

// Values [k0, k0 + len) of row n of the weight (elements n·K + k of the flattened tensor; a row may start and end
// inside a block): ŵ = code · absmax through a per-block table of the 16 scaled codes (nf4_dequantize's product).
void nf4_segment(const Nf4Tensor& t, const float* code, const float* absmax, int64_t n, int64_t K, int64_t k0,
                 int64_t len, float* out) {
  const int64_t B = t.blocksize, first = n * K + k0;
  int64_t i = first;
  const int64_t end = first + len;
#ifdef __AVX512F__
  if (first % 16 == 0 && B % 16 == 0) {
    const __m512 codes = _mm512_loadu_ps(code);
    const Nf4Blocks blocks(B);
    for (; i + 16 <= end; i += 16) _mm512_storeu_ps(out + (i - first), nf4_decode16(t, codes, absmax, blocks, i));
  }
#elif defined(__AVX2__)
  if (first % 8 == 0 && B % 8 == 0) {
    const __m256 lo = _mm256_loadu_ps(code), hi = _mm256_loadu_ps(code + 8);
    const Nf4Blocks blocks(B);
    for (; i + 8 <= end; i += 8) _mm256_storeu_ps(out + (i - first), nf4_decode8(t, lo, hi, absmax, blocks, i));
  }
#endif
  while (i < end) {
    const int64_t b = i / B, stop = std::min(end, (b + 1) * B);
    float lut[16];
    for (int v = 0; v < 16; ++v) lut[v] = code[v] * absmax[b];
    for (; i < stop; ++i) {
      const uint8_t byte = t.packed[i >> 1];
      out[i - first] = lut[(i & 1) == 0 ? byte >> 4 : byte & 0x0F];
    }
  }
}

#ifdef __AVX512F__
// J rows of ŵ decoded 16 at a time (nf4_decode16) against R rows of x, as dot_block (each sum's steps the same
// whatever R and J). K and the block size multiples of 16 keep every run of 16 inside one block and on a byte.
template <int R, int J>
void nf4_block_rows(const Nf4Tensor& t, const __m512 codes, const float* absmax, const Nf4Blocks& blocks, int64_t n0,
                    const float* x, int64_t K, float* out) {
  __m512 acc[R][J];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    __m512 w[J];
    for (int j = 0; j < J; ++j) w[j] = nf4_decode16(t, codes, absmax, blocks, (n0 + j) * K + k);
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_loadu_ps(x + r * K + k);
      for (int j = 0; j < J; ++j) acc[r][j] = _mm512_fmadd_ps(w[j], xv, acc[r][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) out[r * J + j] = _mm512_reduce_add_ps(acc[r][j]);
}

constexpr int kNf4Rows = 2;  // J for NF4: decoding costs more than a dot, so the rows of x go up to 8 at a time

template <int J>
void nf4_rows_avx512(const Nf4Tensor& t, const __m512 codes, const float* absmax, const Nf4Blocks& blocks, int64_t n0,
                     const float* x, int64_t M, int64_t K, int64_t N, float* y) {
  float out[kMaxRows * J];
  for_row_chunks(M, [&](int64_t m0, auto rows) {
    constexpr int R = decltype(rows)::value;
    nf4_block_rows<R, J>(t, codes, absmax, blocks, n0, x + m0 * K, K, out);
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < J; ++j) y[(m0 + r) * N + n0 + j] = out[r * J + j];
  });
}
#endif

// Row-major formats (NF4, GGUF): each thread owns chunks of `chunk` inputs (a multiple of the format's block) and
// walks all N rows, 4 at a time: fill(n, k0, len, values) dequantizes row n's inputs [k0, k0 + len), then
// dx[m, k] += dy[m, n]·ŵ[n, k] for every row of dy, n in order (one load and store of dx per 4 rows of Ŵ). The
// sums do not depend on M or the thread count. bytes(n, k0, len) = {first byte, byte count} of that segment: the
// segment kPrefetchRows rows ahead is prefetched, since the hardware does not follow a walk that reads a few cache
// lines per row at a stride of a whole row (M = 1 at the Qwen2.5-7B MLP shapes: NF4 1.5-1.9x, GGUF 1.3-2.6x faster).
constexpr int64_t kPrefetchRows = 8;

template <typename Fill, typename Bytes>
void rowwise_matvec_t(int64_t N, int64_t K, int64_t chunk, const float* dy, int64_t M, float* dx, Fill fill,
                      Bytes bytes) {
  constexpr int J = 4;
  const int64_t chunks = (K + chunk - 1) / chunk;
  parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> w(static_cast<size_t>(J * chunk)), acc(static_cast<size_t>(M * chunk));
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t k0 = c * chunk, len = std::min(chunk, K - k0);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t n0 = 0; n0 < N; n0 += J) {
        const int64_t rows = std::min<int64_t>(J, N - n0);
        for (int64_t j = 0; j < rows; ++j) {
          if (n0 + j + kPrefetchRows < N) {
            const auto [first, count] = bytes(n0 + j + kPrefetchRows, k0, len);
            for (int64_t b = 0; b < count; b += 64) __builtin_prefetch(first + b);
          }
          fill(n0 + j, k0, len, w.data() + j * len);
        }
        const float *w0 = w.data(), *w1 = w0 + len, *w2 = w1 + len, *w3 = w2 + len;
        for (int64_t m = 0; m < M; ++m) {
          const float* d = dy + m * N + n0;
          float* a = acc.data() + m * len;
          if (rows == J) {
            for (int64_t k = 0; k < len; ++k)
              a[k] = fmadd(w3[k], d[3], fmadd(w2[k], d[2], fmadd(w1[k], d[1], fmadd(w0[k], d[0], a[k]))));
          } else {
            for (int64_t j = 0; j < rows; ++j)
              for (int64_t k = 0; k < len; ++k) a[k] = fmadd(w[j * len + k], d[j], a[k]);
          }
        }
      }
      for (int64_t m = 0; m < M; ++m) std::copy(acc.data() + m * len, acc.data() + (m + 1) * len, dx + m * K + k0);
    }
  });
}

}  // namespace

void nf4_linear_matvec(const Nf4Tensor& t, int64_t N, int64_t K, const float* x, int64_t M, float* y) {
  check_args(x, M, y, N, K, "nf4_linear_matvec");
  QWENQ_CHECK(t.n == N * K, "nf4_linear_matvec: the tensor holds " << t.n << " weights, not " << N << " x " << K);
  const std::vector<float> absmax = nf4_block_absmax(t);
  const float* code = t.fp4 ? kFp4Code : kNf4Code;
#ifdef __AVX512F__
  if (K % 16 == 0 && t.blocksize % 16 == 0) {
    const __m512 codes = _mm512_loadu_ps(code);
    const Nf4Blocks blocks(t.blocksize);
    const int64_t row_pairs = (N + kNf4Rows - 1) / kNf4Rows;
    parallel_for(row_pairs, std::max<int64_t>(1, 4096 / K), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t n0 = b * kNf4Rows;
        if (n0 + kNf4Rows <= N) {
          nf4_rows_avx512<kNf4Rows>(t, codes, absmax.data(), blocks, n0, x, M, K, N, y);
        } else {
          for (int64_t n = n0; n < N; ++n) nf4_rows_avx512<1>(t, codes, absmax.data(), blocks, n, x, M, K, N, y);
        }
      }
    });
    return;
  }
#endif
  rowwise_matvec(N, K, x, M, y, [&](int64_t n, float* out) { nf4_segment(t, code, absmax.data(), n, K, 0, K, out); });
}

void ggml_linear_matvec(const GgmlLinear& w, const float* x, int64_t M, float* y) {
  check_args(x, M, y, w.N, w.K, "ggml_linear_matvec");
  const uint64_t row_bytes = ggml_row_bytes(w.type, w.K);
  rowwise_matvec(w.N, w.K, x, M, y, [&](int64_t r, float* out) {
    dequantize_ggml_row(w.type, w.data + w.stored_row(r) * row_bytes, w.K, out);
  });
}

void nf4_linear_matvec_t(const Nf4Tensor& t, int64_t N, int64_t K, const float* dy, int64_t M, float* dx) {
  check_args(dy, M, dx, N, K, "nf4_linear_matvec_t");
  QWENQ_CHECK(t.n == N * K, "nf4_linear_matvec_t: the tensor holds " << t.n << " weights, not " << N << " x " << K);
  const std::vector<float> absmax = nf4_block_absmax(t);
  const float* code = t.fp4 ? kFp4Code : kNf4Code;
  rowwise_matvec_t(
      N, K, kTransposedChunk, dy, M, dx,
      [&](int64_t n, int64_t k0, int64_t len, float* out) { nf4_segment(t, code, absmax.data(), n, K, k0, len, out); },
      [&](int64_t n, int64_t k0, int64_t len) {
        return std::pair<const uint8_t*, int64_t>(t.packed.data() + (n * K + k0) / 2, (len + 1) / 2);
      });
}

void ggml_linear_matvec_t(const GgmlLinear& w, const float* dy, int64_t M, float* dx) {
  check_args(dy, M, dx, w.N, w.K, "ggml_linear_matvec_t");
  const GgmlTypeInfo* info = ggml_type_info(static_cast<uint32_t>(w.type));
  QWENQ_CHECK(info != nullptr && kTransposedChunk % info->block == 0,
              "ggml_linear_matvec_t: type " << static_cast<uint32_t>(w.type) << " has no block size dividing "
                                            << kTransposedChunk);
  const uint64_t row_bytes = ggml_row_bytes(w.type, w.K);
  const auto segment = [&](int64_t n, int64_t k0, int64_t len) {
    return std::pair<const uint8_t*, int64_t>(w.data + w.stored_row(n) * row_bytes + k0 / info->block * info->bytes,
                                              len / info->block * info->bytes);
  };
  rowwise_matvec_t(
      w.N, w.K, kTransposedChunk, dy, M, dx,
      [&](int64_t n, int64_t k0, int64_t len, float* out) {
        dequantize_ggml_row(w.type, segment(n, k0, len).first, len, out);
      },
      segment);
}

void fp8_linear_matvec(const Fp8Linear& w, const float* x, int64_t M, float* y) {
  check_args(x, M, y, w.N, w.K, "fp8_linear_matvec");
  rowwise_matvec(w.N, w.K, x, M, y, [&](int64_t n, float* out) { fp8_row(w, n, 0, w.K, out); });
}

void fp8_linear_matvec_t(const Fp8Linear& w, const float* dy, int64_t M, float* dx) {
  check_args(dy, M, dx, w.N, w.K, "fp8_linear_matvec_t");
  rowwise_matvec_t(
      w.N, w.K, kTransposedChunk, dy, M, dx,
      [&](int64_t n, int64_t k0, int64_t len, float* out) { fp8_row(w, n, k0, len, out); },
      [&](int64_t n, int64_t k0, int64_t len) { return std::pair<const uint8_t*, int64_t>(w.data + n * w.K + k0, len); });
}

}  // namespace qwenq
