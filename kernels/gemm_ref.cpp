// CPU linear layer: y[m, n] = Σ_k x[m, k] · W[n, k] (+ bias[n]), W row-major [N, K] in F32, BF16 or F16,
// products and sums in fp32.
//
// Two paths, chosen by M (rows of x):
//   M < kEigenMinRows (decode, short prompts; memory-bound at M = 1): a register-tiled dot-product kernel
//     reads each block of 4 weight rows once, widening bf16/f16 to fp32 in registers, and pairs it with 2 rows
//     of x at a time (8 accumulators of 8 lanes; AVX2+FMA, a portable loop elsewhere). bf16 is widened by
//     masking/shifting whole 32-bit lanes, which yields even and odd elements apart; x is reordered to match
//     once per call. Parallel over blocks of weight rows.
//   M >= kEigenMinRows (compute-bound): the (M, N) output is cut into tiles of x rows by weight rows; each
//     thread widens its block of weight rows to fp32 into a buffer of its own (F32 weights are used in place)
//     and runs one Eigen GEMM per tile, Eigen's own threading off. A thread's consecutive tiles share the
//     weight block, which is then widened once.
// Accumulation order differs between the paths and from a sequential sum; the error is that of fp32
// accumulation (≲ 1e-6 · Σ|x·w| at K ≈ 5000), which the tests bound.
//
// Backward, Eigen GEMMs per output tile, tiles fixed by the shape alone (not by the thread count), so the
// result is the same bits with any number of threads:
//   dx = dy · W: tiles of kRowTile rows of dy by about kBwdTile columns of W (backward_input_tiles); F32 weights
//     are read in place (strided), one GEMM per tile; a 16-bit W is widened in chunks of rows of the tile's
//     columns (about kWidenBytes each) and the chunks' GEMMs are summed in order of n.
//   dW += dyᵀ · x: tiles of kBwdTile × kBwdTile entries of dW, each a sum over all M rows; disjoint writes.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <mutex>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define QWENQ_GEMM_AVX2 1
#endif

#include "core/error.h"
#include "core/threads.h"
#include "kernels/gemm.h"

namespace qwenq {

namespace {

constexpr int64_t kEigenMinRows = 24;  // measured crossover: from here on the Eigen GEMM is faster
constexpr int64_t kRowTile = 256;      // x rows per Eigen tile
constexpr int64_t kWidenBytes = 1024 * 1024;  // target size of one widened weight block

bool is_float_dtype(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

// ---- weight loaders: 16 consecutive elements as two fp32 vectors, or one element as a scalar ---------------
// kSplitX: the two vectors hold the even and the odd elements (bf16: an AND and a shift of the raw 32-bit
// lanes, cheaper than a zero-extension), so x must be laid out the same way: see split_even_odd.

struct LoadF32 {
  using T = float;
  static float one(const T* p) { return *p; }
#ifdef QWENQ_GEMM_AVX2
  static constexpr bool kVector = true, kSplitX = false;
  static void sixteen(const T* p, __m256* a, __m256* b) {
    *a = _mm256_loadu_ps(p);
    *b = _mm256_loadu_ps(p + 8);
  }
#endif
};

struct LoadBF16 {
  using T = uint16_t;
  static float one(const T* p) { return bf16_to_f32(*p); }
#ifdef QWENQ_GEMM_AVX2
  static constexpr bool kVector = true, kSplitX = true;
  static void sixteen(const T* p, __m256* even, __m256* odd) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    *even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    *odd = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
  }
#endif
};

struct LoadF16 {
  using T = uint16_t;
  static float one(const T* p) { return f16_to_f32(*p); }
#if defined(QWENQ_GEMM_AVX2) && defined(__F16C__)
  static constexpr bool kVector = true, kSplitX = false;
  static void sixteen(const T* p, __m256* a, __m256* b) {
    *a = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    *b = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)));
  }
#elif defined(QWENQ_GEMM_AVX2)
  static constexpr bool kVector = false, kSplitX = false;
#endif
};

#ifdef QWENQ_GEMM_AVX2
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

#ifdef QWENQ_GEMM_AVX2
// Copies x [M, K] with each full block of 16 columns reordered as its 8 even then its 8 odd elements (the
// tail of K % 16 columns unchanged), matching the vectors of a kSplitX loader.
std::vector<float> split_even_odd(const float* x, int64_t M, int64_t K) {
  std::vector<float> out(static_cast<size_t>(M * K));
  for (int64_t m = 0; m < M; ++m) {
    const float* src = x + m * K;
    float* dst = out.data() + m * K;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16)
      for (int l = 0; l < 8; ++l) {
        dst[k + l] = src[k + 2 * l];
        dst[k + 8 + l] = src[k + 2 * l + 1];
      }
    for (; k < K; ++k) dst[k] = src[k];
  }
  return out;
}
#endif

// out[r * ldo + j] = Σ_k x[r][k] · w[j][k] for r < R (rows of x, stride K) and j < J (rows of w, stride K).
// R in {1, 2}, J in {1, 4}: at most 8 vector accumulators, 4 x vectors and 2 weight vectors live at once.
// x is in the loader's layout (split_even_odd for kSplitX); the tail of K % 16 columns is in natural order.
template <typename L, int R, int J>
void dot_tile(const float* x, const typename L::T* w, int64_t K, float* out, int64_t ldo) {
  float acc_s[R][J];
  int64_t k = 0;
#ifdef QWENQ_GEMM_AVX2
  if constexpr (L::kVector) {
    __m256 acc[R][J];
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < J; ++j) acc[r][j] = _mm256_setzero_ps();
    for (; k + 16 <= K; k += 16) {
      __m256 xa[R], xb[R];
      for (int r = 0; r < R; ++r) {
        xa[r] = _mm256_loadu_ps(x + r * K + k);
        xb[r] = _mm256_loadu_ps(x + r * K + k + 8);
      }
      for (int j = 0; j < J; ++j) {
        __m256 wa, wb;
        L::sixteen(w + j * K + k, &wa, &wb);
        for (int r = 0; r < R; ++r) {
          acc[r][j] = _mm256_fmadd_ps(xa[r], wa, acc[r][j]);
          acc[r][j] = _mm256_fmadd_ps(xb[r], wb, acc[r][j]);
        }
      }
    }
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < J; ++j) acc_s[r][j] = hsum(acc[r][j]);
  } else
#endif
  {
    // Portable: 8 interleaved partial sums per output so that the compiler can keep them in one vector.
    float part[R][J][8] = {};
    for (; k + 8 <= K; k += 8)
      for (int j = 0; j < J; ++j)
        for (int l = 0; l < 8; ++l) {
          const float wk = L::one(w + j * K + k + l);
          for (int r = 0; r < R; ++r) part[r][j][l] += x[r * K + k + l] * wk;
        }
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < J; ++j) {
        float s = 0.f;
        for (int l = 0; l < 8; ++l) s += part[r][j][l];
        acc_s[r][j] = s;
      }
  }
  // The tail, one fused multiply-add per element written out: left as acc += x·w, the compiler contracted it in
  // one instantiation and not in another, so a row's bits depended on R (a row alone vs in a pair: a batched decode
  // step must give each sequence its lone step's bits, tests/test_decode_batch.cpp).
  for (; k < K; ++k)
    for (int j = 0; j < J; ++j) {
      const float wk = L::one(w + j * K + k);
      for (int r = 0; r < R; ++r) acc_s[r][j] = std::fma(x[r * K + k], wk, acc_s[r][j]);
    }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) out[r * ldo + j] = acc_s[r][j];
}

// Dot-product path over weight rows [n0, n1) and all M rows of x.
template <typename L>
void small_m_rows(const float* x, int64_t M, int64_t K, const void* wv, int64_t N, int64_t n0, int64_t n1,
                  float* y) {
  const auto* w = static_cast<const typename L::T*>(wv);
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const auto* wn = w + n * K;
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) dot_tile<L, 2, 4>(x + m * K, wn, K, y + m * N + n, N);
    if (m < M) dot_tile<L, 1, 4>(x + m * K, wn, K, y + m * N + n, N);
  }
  for (; n < n1; ++n) {
    const auto* wn = w + n * K;
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) dot_tile<L, 2, 1>(x + m * K, wn, K, y + m * N + n, N);
    if (m < M) dot_tile<L, 1, 1>(x + m * K, wn, K, y + m * N + n, N);
  }
}

template <typename L>
void small_m(const float* x, int64_t M, int64_t K, const void* w, int64_t N, float* y) {
  std::vector<float> x_split;
#ifdef QWENQ_GEMM_AVX2
  if constexpr (L::kSplitX) {
    x_split = split_even_odd(x, M, K);
    x = x_split.data();
  }
#endif
  // Blocks of 4 weight rows, one contiguous run of blocks per thread (long sequential streams).
  const int64_t quads = (N + 3) / 4;
  const int64_t grain = std::max<int64_t>(1, 16384 / K);
  parallel_for(quads, grain, [&](int64_t q0, int64_t q1) {
    small_m_rows<L>(x, M, K, w, N, q0 * 4, std::min(N, q1 * 4), y);
  });
}

// ---- Eigen path ------------------------------------------------------------------------------------------

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstStrided = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;
using Strided = Eigen::Map<RowMat, 0, Eigen::OuterStride<>>;

void eigen_single_threaded() {
  // Eigen parallelizes a GEMM with OpenMP when called outside a parallel region (a one-chunk parallel_for
  // calls us on the caller's thread); all our parallelism is across tiles, so turn Eigen's off, once.
  static std::once_flag once;
  std::call_once(once, [] { Eigen::setNbThreads(1); });
}

void large_m(const float* x, int64_t M, int64_t K, const void* w, DType wt, int64_t N, float* y) {
  eigen_single_threaded();
  const int64_t threads = std::max(1, num_threads());
  // Tiles: at most kRowTile rows of x by at most about kWidenBytes of widened weights (64..512 rows), with
  // M and N cut into equal blocks, at least 4 tiles per thread and a tile count that is a multiple of the
  // thread count (each thread gets one contiguous run of equal tiles).
  const int64_t m_blocks = (M + kRowTile - 1) / kRowTile;
  const int64_t mb = (M + m_blocks - 1) / m_blocks;
  const int64_t nb_max = std::clamp<int64_t>(kWidenBytes / (4 * K), 64, 512);
  int64_t n_blocks = std::max((N + nb_max - 1) / nb_max, (4 * threads + m_blocks - 1) / m_blocks);
  while (n_blocks < N && (n_blocks * m_blocks) % threads != 0) ++n_blocks;
  n_blocks = std::min(n_blocks, N);
  const int64_t nb = (N + n_blocks - 1) / n_blocks;
  n_blocks = (N + nb - 1) / nb;

  // Tile t covers weight block t / m_blocks and row block t % m_blocks.
  parallel_for(n_blocks * m_blocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> wide;
    int64_t widened = -1;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t nbi = t / m_blocks, mbi = t % m_blocks;
      const int64_t n0 = nbi * nb, nn = std::min(nb, N - n0);
      const int64_t m0 = mbi * mb, mm = std::min(mb, M - m0);
      const float* wf;
      if (wt == DType::F32) {
        wf = static_cast<const float*>(w) + n0 * K;
      } else {
        if (widened != nbi) {
          wide.resize(static_cast<size_t>(nn * K));
          to_f32(wt, static_cast<const uint16_t*>(w) + n0 * K, wide.data(), static_cast<size_t>(nn * K));
          widened = nbi;
        }
        wf = wide.data();
      }
      Eigen::Map<const RowMat> xb(x + m0 * K, mm, K);
      Eigen::Map<const RowMat> wb(wf, nn, K);
      Strided yb(y + m0 * N + n0, mm, nn, Eigen::OuterStride<>(N));
      yb.noalias() = xb * wb.transpose();
    }
  });
}

// ---- backward --------------------------------------------------------------------------------------------

constexpr int64_t kBwdTile = 128;  // dW tile side; also about the widest column block of W for dx

// dx = dy · W's tiles, from the shape alone (the same bits with any thread count): row blocks of kRowTile rows of
// dy by column blocks of kb columns of W (about kBwdTile, a multiple of 16, their count rounded up to a multiple
// of 4 where K allows, so 2 or 4 threads share them evenly). Each tile reads its rows of dy once per column block;
// a 16-bit W is widened in chunks of nc rows (about kWidenBytes of fp32), so the whole reduction over N runs in one
// tile however long it is (the lm_head's 151,936 rows: before, the column blocks shrank to 16 to keep the
// widened block N × kb small, and dy was read 56 times).
struct BackwardInputTiles {
  int64_t m_blocks, kb, k_blocks, nc;
};

BackwardInputTiles backward_input_tiles(int64_t M, int64_t N, int64_t K, DType w_dtype) {
  BackwardInputTiles g{};
  g.m_blocks = (M + kRowTile - 1) / kRowTile;
  int64_t want = (K + kBwdTile - 1) / kBwdTile;
  want = (want + 3) / 4 * 4;
  g.kb = std::min(K, std::max<int64_t>(16, ((K + want - 1) / want + 15) / 16 * 16));
  g.k_blocks = (K + g.kb - 1) / g.kb;
  g.nc = w_dtype == DType::F32 ? N : std::clamp<int64_t>(kWidenBytes / (4 * g.kb), 256, N);
  return g;
}

// rows × cols of a 16-bit row-major matrix (row stride ld) into a packed fp32 block.
void widen_columns(const uint16_t* src, int64_t ld, DType dtype, int64_t rows, int64_t cols, float* dst) {
  for (int64_t r = 0; r < rows; ++r) to_f32(dtype, src + r * ld, dst + r * cols, static_cast<size_t>(cols));
}

bool overlap(const float* a, int64_t na, const float* b, int64_t nb) {
  const auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return pa < pb + static_cast<uintptr_t>(nb) * 4 && pb < pa + static_cast<uintptr_t>(na) * 4;
}

}  // namespace

void linear_forward_ref(const float* x, int64_t M, int64_t K, const void* w, DType w_dtype, int64_t N,
                        const void* bias, DType bias_dtype, float* y) {
  QWENQ_CHECK(M > 0 && K > 0 && N > 0,
              "linear_forward_ref: shapes must be positive, got M=" << M << " K=" << K << " N=" << N);
  QWENQ_CHECK(is_float_dtype(w_dtype), "linear_forward_ref: weight dtype " << dtype_name(w_dtype)
                                                                           << " is not supported (F32, BF16 or F16)");
  QWENQ_CHECK(bias == nullptr || is_float_dtype(bias_dtype),
              "linear_forward_ref: bias dtype " << dtype_name(bias_dtype) << " is not supported (F32, BF16 or F16)");
  QWENQ_CHECK(x != nullptr && w != nullptr && y != nullptr, "linear_forward_ref: null x, weight or output pointer");
  const auto xb = reinterpret_cast<uintptr_t>(x), yb = reinterpret_cast<uintptr_t>(y);
  QWENQ_CHECK(yb + static_cast<uintptr_t>(M * N) * 4 <= xb || xb + static_cast<uintptr_t>(M * K) * 4 <= yb,
              "linear_forward_ref: output y overlaps input x (in-place is not supported)");

  if (M < kEigenMinRows) {
    switch (w_dtype) {
      case DType::F32: small_m<LoadF32>(x, M, K, w, N, y); break;
      case DType::BF16: small_m<LoadBF16>(x, M, K, w, N, y); break;
      default: small_m<LoadF16>(x, M, K, w, N, y); break;
    }
  } else {
    large_m(x, M, K, w, w_dtype, N, y);
  }

  if (bias != nullptr) {
    std::vector<float> b(static_cast<size_t>(N));
    to_f32(bias_dtype, bias, b.data(), static_cast<size_t>(N));
    parallel_for(M, std::max<int64_t>(1, 65536 / N), [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m) {
        float* row = y + m * N;
        for (int64_t n = 0; n < N; ++n) row[n] += b[n];
      }
    });
  }
}

void linear_backward_input_ref(const float* dy, int64_t M, int64_t N, const void* w, DType w_dtype, int64_t K,
                               float* dx) {
  QWENQ_CHECK(M > 0 && K > 0 && N > 0,
              "linear_backward_input_ref: shapes must be positive, got M=" << M << " K=" << K << " N=" << N);
  QWENQ_CHECK(is_float_dtype(w_dtype), "linear_backward_input_ref: weight dtype " << dtype_name(w_dtype)
                                                                                  << " is not supported (F32, BF16 or F16)");
  QWENQ_CHECK(dy != nullptr && w != nullptr && dx != nullptr, "linear_backward_input_ref: null dy, weight or dx pointer");
  QWENQ_CHECK(!overlap(dx, M * K, dy, M * N), "linear_backward_input_ref: output dx overlaps input dy");
  eigen_single_threaded();

  const BackwardInputTiles g = backward_input_tiles(M, N, K, w_dtype);
  // Tile t covers column block t / m_blocks and row block t % m_blocks; a 16-bit W is widened one chunk of rows
  // at a time (rows n0..n0+nc of the block's columns) and the chunks' products are added in order.
  parallel_for(g.k_blocks * g.m_blocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> wide;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t kbi = t / g.m_blocks, mbi = t % g.m_blocks;
      const int64_t k0 = kbi * g.kb, kk = std::min(g.kb, K - k0);
      const int64_t m0 = mbi * kRowTile, mm = std::min(kRowTile, M - m0);
      Strided dxb(dx + m0 * K + k0, mm, kk, Eigen::OuterStride<>(K));
      if (w_dtype == DType::F32) {
        Eigen::Map<const RowMat> dyb(dy + m0 * N, mm, N);
        ConstStrided wb(static_cast<const float*>(w) + k0, N, kk, Eigen::OuterStride<>(K));
        dxb.noalias() = dyb * wb;
        continue;
      }
      wide.resize(static_cast<size_t>(g.nc * kk));
      for (int64_t n0 = 0; n0 < N; n0 += g.nc) {
        const int64_t nn = std::min(g.nc, N - n0);
        widen_columns(static_cast<const uint16_t*>(w) + n0 * K + k0, K, w_dtype, nn, kk, wide.data());
        ConstStrided dyb(dy + m0 * N + n0, mm, nn, Eigen::OuterStride<>(N));
        Eigen::Map<const RowMat> wb(wide.data(), nn, kk);
        if (n0 == 0) {
          dxb.noalias() = dyb * wb;
        } else {
          dxb.noalias() += dyb * wb;
        }
      }
    }
  });
}

void linear_backward_weight_ref(const float* dy, const float* x, int64_t M, int64_t N, int64_t K, float* dW) {
  QWENQ_CHECK(M > 0 && K > 0 && N > 0,
              "linear_backward_weight_ref: shapes must be positive, got M=" << M << " K=" << K << " N=" << N);
  QWENQ_CHECK(dy != nullptr && x != nullptr && dW != nullptr, "linear_backward_weight_ref: null dy, x or dW pointer");
  QWENQ_CHECK(!overlap(dW, N * K, dy, M * N) && !overlap(dW, N * K, x, M * K),
              "linear_backward_weight_ref: output dW overlaps input dy or x");
  eigen_single_threaded();

  const int64_t n_blocks = (N + kBwdTile - 1) / kBwdTile, k_blocks = (K + kBwdTile - 1) / kBwdTile;
  parallel_for(n_blocks * k_blocks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = (t / k_blocks) * kBwdTile, nn = std::min(kBwdTile, N - n0);
      const int64_t k0 = (t % k_blocks) * kBwdTile, kk = std::min(kBwdTile, K - k0);
      ConstStrided dyb(dy + n0, M, nn, Eigen::OuterStride<>(N));
      ConstStrided xb(x + k0, M, kk, Eigen::OuterStride<>(K));
      Strided dwb(dW + n0 * K + k0, nn, kk, Eigen::OuterStride<>(K));
      dwb.noalias() += dyb.transpose() * xb;
    }
  });
}

}  // namespace qwenq
