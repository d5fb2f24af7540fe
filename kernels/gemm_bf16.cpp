// CPU linear layer on bf16 operands (kernels/gemm_bf16.h). One product shape serves both directions:
//
//   C[M, Nc] = A[M, R] · B,  A fp32 row-major (x or dy, rounded to bf16 when packed),
//   B either "rows": B[r, j] = Bt[j, r] with Bt [Nc, R] row-major (the forward's W [N, K]),
//   or "cols": B[r, j] with B [R, Nc] row-major (the backward's W [N, K], reduced over N).
//
// AVX512_BF16 path: A packed once per call, B per thread, a block of column panels for one slice of the reduction,
// through kernels/gemm_bf16_tile.h's packers and 12 x 32 micro-kernel.
#include "kernels/gemm_bf16.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/gemm.h"
#include "kernels/gemm_bf16_tile.h"
#include "quant/format/nf4_pack.h"

#ifdef QWENQ_HAVE_BF16_KERNEL
#include <cpuid.h>
#endif

namespace qwenq {

namespace {

using namespace bf16_tile;

constexpr size_t kCachedA = size_t{1} << 20;  // bytes of packed A that stay cached across column blocks
constexpr int64_t kMaxBlockPanels = 16;        // a block's B panels: 16 x 16 KB per thread

std::atomic<int> g_portable_override{-1};  // -1: the default choice; 0/1: set by a test

bool env_portable() {
  static const bool p = [] {
    const char* v = std::getenv("QWENQ_CPU_BF16_PORTABLE");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return p;
}

enum class BLayout { Rows, Cols };

void check_bias(const char* what, const void* bias, DType bias_dtype) {
  QWENQ_CHECK(bias == nullptr || bias_dtype == DType::F32 || bias_dtype == DType::BF16 || bias_dtype == DType::F16,
              what << ": bias dtype " << dtype_name(bias_dtype) << " is not supported (F32, BF16 or F16)");
}

void check_weight(const char* what, DType w_dtype) {
  QWENQ_CHECK(w_dtype == DType::F32 || w_dtype == DType::BF16,
              what << ": weight dtype " << dtype_name(w_dtype)
                   << " is not supported (F32 or BF16; an F16 weight takes the fp32 products of kernels/gemm.h)");
}

// ---- portable path: bf16-rounded fp32 copies through the fp32 GEMM -----------------------------------------

std::vector<float> rounded_copy(const float* v, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  parallel_for(n, 65536, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) out[i] = bf16_round(v[i]);
  });
  return out;
}

// The weight as the portable path multiplies it: BF16 as is, F32 rounded into a BF16 copy `keep` (so both take the
// same fp32 code path, and an fp32 weight gives the bits of its bf16 copy).
const void* rounded_weight(const void* w, DType w_dtype, int64_t n, std::vector<uint16_t>* keep) {
  if (w_dtype == DType::BF16) return w;
  keep->resize(static_cast<size_t>(n));
  const float* f = static_cast<const float*>(w);
  parallel_for(n, 65536, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) (*keep)[i] = f32_to_bf16(f[i]);
  });
  return keep->data();
}

// The portable path's operands: fn(a rounded to bf16 as fp32, W as BF16).
template <typename Fn>
void on_rounded(const float* a, int64_t na, const void* w, DType w_dtype, int64_t nw, Fn&& fn) {
  const std::vector<float> ar = rounded_copy(a, na);
  std::vector<uint16_t> keep;
  fn(ar.data(), rounded_weight(w, w_dtype, nw, &keep));
}

#ifdef QWENQ_HAVE_BF16_KERNEL

// ---- AVX512_BF16 path: the packers and micro-kernel of kernels/gemm_bf16_tile.h ---------------------------

// The B panels of a dense weight: B in `layout` (see the top of the file), in dtype bt (F32 or BF16).
struct DensePanels {
  const void* B;
  DType bt;
  BLayout layout;
  int64_t R, Nc;
  QWENQ_BF16_FN void operator()(int64_t j0, int64_t cols, int64_t p0, int64_t np, uint32_t* panel,
                                std::vector<float>& /*scratch*/) const {
    if (layout == BLayout::Rows) {
      pack_b_rows(B, bt, R, R, j0, cols, p0, np, panel);
    } else {
      pack_b_cols(B, bt, R, Nc, j0, cols, p0, np, panel);
    }
  }
};

// C [M, Nc] (row stride ldc) = A [M, R] · B, B's panels from pack(j0, cols, p0, np, panel, scratch): columns
// [j0, j0 + cols) for pairs [p0, p0 + np), zero past cols and past R (scratch: the calling thread's, for the packer).
template <typename Panels>
QWENQ_BF16_FN void gemm_avx512(const float* A, int64_t M, int64_t R, int64_t Nc, float* C, int64_t ldc,
                               const Panels& pack) {
  const int64_t pairs = (R + 1) / 2, m_panels = (M + kMr - 1) / kMr;
  std::vector<uint32_t> ap(static_cast<size_t>(m_panels * pairs * kMr));
  parallel_for(m_panels, 1, [&](int64_t i0, int64_t i1) { pack_a_panels(A, R, M, R, i0, i1, ap.data()); });
  // Column blocks of nb panels (this choice does not change any output's sums): about 4 blocks per thread, or, when
  // the packed A is past what a core's cache keeps (a long reduction: the lm_head's input gradient, 110 rows x 151936
  // logits, packs 36 MB), one block per thread of up to kMaxBlockPanels, since every block reads all of A again.
  const int64_t n_panels = (Nc + kNr - 1) / kNr, threads = std::max(1, num_threads());
  const bool long_a = ap.size() * sizeof(uint32_t) > kCachedA;
  const int64_t nb = long_a ? std::clamp<int64_t>((n_panels + threads - 1) / threads, 1, kMaxBlockPanels)
                            : std::clamp<int64_t>(n_panels / (4 * threads), 1, 4);
  const int64_t blocks = (n_panels + nb - 1) / nb;
  parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<uint32_t> bp(static_cast<size_t>(nb * kSlicePairs * kNr));
    std::vector<float> scratch;
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t jp0 = blk * nb, jp1 = std::min(n_panels, jp0 + nb);
      for (int64_t s0 = 0; s0 < pairs; s0 += kSlicePairs) {
        const int64_t np = std::min(kSlicePairs, pairs - s0);
        for (int64_t jp = jp0; jp < jp1; ++jp) {
          const int64_t j0 = jp * kNr, cols = std::min(kNr, Nc - j0);
          pack(j0, cols, s0, np, bp.data() + (jp - jp0) * np * kNr, scratch);
        }
        for (int64_t jp = jp0; jp < jp1; ++jp) {
          const int64_t j0 = jp * kNr, cols = std::min(kNr, Nc - j0);
          multiply_b_panel(ap.data(), M, pairs, s0, bp.data() + (jp - jp0) * np * kNr, np, C + j0, ldc, cols,
                           s0 == 0);
        }
      }
    }
  });
}

// ŵ of rows (inputs) [k0, k0 + nk) and columns (outputs) [n0, n0 + nn) of a Q4 weight into tile [nk][ld], row
// k - k0 holding columns n0..: q4_dequant's fp32 values, 16 columns at a time (Int: (code - zero)·scale, the fp16
// scale widened exactly; Nf4/Fp4: book[code]·absmax). Without a permutation (inv null; k0 % 8 == 0) a word-row gives
// 8 inputs; with one, input k is layout row inv[k] (its word-row, nibble and group), one input per load.
// A group's meta words as two factors: Int (the fp16 scale in bits 0..15, widened exactly; the zero in bits 16..23),
// Nf4/Fp4 (the fp32 absmax; b unused). (Helpers, not lambdas: a lambda does not take the target attribute.)
QWENQ_BF16_FN inline void q4_factors(bool int_kind, __m512i meta, __m512* a, __m512* b) {
  if (int_kind) {
    *a = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(meta));
    *b = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(meta, 16), _mm512_set1_epi32(0xFF)));
  } else {
    *a = _mm512_castsi512_ps(meta);
  }
}

// The 16 values of the input in nibble j of the words v: (code − zero)·scale, or book[code]·absmax.
QWENQ_BF16_FN inline __m512 q4_values16(bool int_kind, __m512i v, int j, __m512 a, __m512 b, __m512 codes) {
  const __m512i q = _mm512_and_si512(_mm512_srlv_epi32(v, _mm512_set1_epi32(4 * j)), _mm512_set1_epi32(15));
  return int_kind ? _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(q), b), a)
                  : _mm512_mul_ps(_mm512_permutexvar_ps(q, codes), a);
}

QWENQ_BF16_FN void q4_tile(const Q4View& w, const int32_t* inv, int64_t k0, int64_t nk, int64_t n0, int64_t nn,
                           float* tile, int64_t ld) {
  const __m512 codes = _mm512_loadu_ps(w.kind == Q4Kind::Fp4 ? kFp4Code : kNf4Code);
  const bool int_kind = w.kind == Q4Kind::Int;
  __m512 fa = _mm512_setzero_ps(), fb = _mm512_setzero_ps();
  for (int64_t c = 0; c < nn; c += 16) {
    const int64_t cn = std::min<int64_t>(16, nn - c);
    const __mmask16 m = cn == 16 ? 0xFFFF : static_cast<__mmask16>((1u << cn) - 1);
    if (inv != nullptr) {
      for (int64_t k = k0; k < k0 + nk; ++k) {
        const int64_t r = inv[k];
        const __m512i v = _mm512_maskz_loadu_epi32(m, w.qweight + r / kQ4CodesPerWord * w.Np + n0 + c);
        q4_factors(int_kind, _mm512_maskz_loadu_epi32(m, w.meta + r / w.group * w.Np + n0 + c), &fa, &fb);
        _mm512_mask_storeu_ps(tile + (k - k0) * ld + c, m,
                              q4_values16(int_kind, v, static_cast<int>(r % kQ4CodesPerWord), fa, fb, codes));
      }
      continue;
    }
    for (int64_t k = k0; k < k0 + nk; k += kQ4CodesPerWord) {
      const int64_t r = k / kQ4CodesPerWord, g = k / w.group;
      const __m512i v = _mm512_maskz_loadu_epi32(m, w.qweight + r * w.Np + n0 + c);
      q4_factors(int_kind, _mm512_maskz_loadu_epi32(m, w.meta + g * w.Np + n0 + c), &fa, &fb);
      const int rows = static_cast<int>(std::min<int64_t>(kQ4CodesPerWord, k0 + nk - k));
      float* out = tile + (k - k0) * ld + c;
      for (int j = 0; j < rows; ++j) _mm512_mask_storeu_ps(out + j * ld, m, q4_values16(int_kind, v, j, fa, fb, codes));
    }
  }
}

// The B panels of a Q4 weight, from tiles of ŵ dequantized into the thread's scratch and packed as an F32 weight
// (so the bits are those of the dense product on q4_unpack's values). Forward (y = x·Ŵᵀ, reduction over K): B[k, n]
// = ŵ[n, k], the tile [pairs' k][panel's n] packed in the Cols layout. Transposed (dx = dy·Ŵ, reduction over N):
// B[n, k] = ŵ[n, k], the tile [panel's k][pairs' n] packed in the Rows layout.
struct Q4Panels {
  const Q4View& w;
  const int32_t* inv;  // the inverse of w.perm (input k is layout row inv[k]), or null without one
  bool transposed;
  QWENQ_BF16_FN void operator()(int64_t j0, int64_t cols, int64_t p0, int64_t np, uint32_t* panel,
                                std::vector<float>& scratch) const {
    scratch.resize(static_cast<size_t>(2 * kSlicePairs * kNr));
    if (!transposed) {
      const int64_t nk = std::min(2 * np, w.K - 2 * p0);
      q4_tile(w, inv, 2 * p0, nk, j0, cols, scratch.data(), kNr);
      pack_b_cols(scratch.data(), DType::F32, nk, kNr, 0, cols, 0, np, panel);
    } else {
      const int64_t nn = std::min(2 * np, w.N - 2 * p0);
      q4_tile(w, inv, j0, cols, 2 * p0, nn, scratch.data(), nn);
      pack_b_rows(scratch.data(), DType::F32, nn, nn, 0, cols, 0, np, panel);
    }
  }
};

bool detect_avx512_bf16() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  // Leaf 7 subleaf 1, EAX bit 5: AVX512_BF16. The builtin checks AVX-512 F/BW/VL and the OS's zmm state.
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512vl"))
    return false;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, 1, a, b, c, d);
  return (a & (1u << 5)) != 0;
}

void add_bias(float* y, int64_t M, int64_t N, const void* bias, DType bias_dtype) {
  std::vector<float> b(static_cast<size_t>(N));
  to_f32(bias_dtype, bias, b.data(), static_cast<size_t>(N));
  parallel_for(M, std::max<int64_t>(1, 65536 / N), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t n = 0; n < N; ++n) y[m * N + n] += b[n];
  });
}

#endif  // QWENQ_HAVE_BF16_KERNEL

}  // namespace

bool cpu_has_avx512_bf16() {
#ifdef QWENQ_HAVE_BF16_KERNEL
  static const bool has = detect_avx512_bf16();
  return has;
#else
  return false;
#endif
}

bool bf16_gemm_uses_avx512() {
  const int forced = g_portable_override.load();
  if (forced >= 0) return forced == 0 && cpu_has_avx512_bf16();
  return cpu_has_avx512_bf16() && !env_portable();
}

void set_bf16_gemm_portable_for_testing(bool portable) { g_portable_override.store(portable ? 1 : -1); }

void linear_forward_bf16(const float* x, int64_t M, int64_t K, const void* w, DType w_dtype, int64_t N,
                         const void* bias, DType bias_dtype, float* y) {
  check_weight("linear_forward_bf16", w_dtype);
  QWENQ_CHECK(M > 0 && K > 0 && N > 0,
              "linear_forward_bf16: shapes must be positive, got M=" << M << " K=" << K << " N=" << N);
  check_bias("linear_forward_bf16", bias, bias_dtype);
  QWENQ_CHECK(x != nullptr && w != nullptr && y != nullptr, "linear_forward_bf16: null x, weight or output pointer");
  const auto xb = reinterpret_cast<uintptr_t>(x), yb = reinterpret_cast<uintptr_t>(y);
  QWENQ_CHECK(yb + static_cast<uintptr_t>(M * N) * 4 <= xb || xb + static_cast<uintptr_t>(M * K) * 4 <= yb,
              "linear_forward_bf16: output y overlaps input x (in-place is not supported)");
#ifdef QWENQ_HAVE_BF16_KERNEL
  if (bf16_gemm_uses_avx512()) {
    gemm_avx512(x, M, K, N, y, N, DensePanels{w, w_dtype, BLayout::Rows, K, N});
    if (bias != nullptr) add_bias(y, M, N, bias, bias_dtype);
    return;
  }
#endif
  on_rounded(x, M * K, w, w_dtype, N * K, [&](const float* xr, const void* wr) {
    linear_forward_ref(xr, M, K, wr, DType::BF16, N, bias, bias_dtype, y);
  });
}

void linear_backward_input_bf16(const float* dy, int64_t M, int64_t N, const void* w, DType w_dtype, int64_t K,
                                float* dx) {
  check_weight("linear_backward_input_bf16", w_dtype);
  QWENQ_CHECK(M > 0 && K > 0 && N > 0,
              "linear_backward_input_bf16: shapes must be positive, got M=" << M << " K=" << K << " N=" << N);
  QWENQ_CHECK(dy != nullptr && w != nullptr && dx != nullptr, "linear_backward_input_bf16: null dy, weight or dx pointer");
  const auto a = reinterpret_cast<uintptr_t>(dx), b = reinterpret_cast<uintptr_t>(dy);
  QWENQ_CHECK(a + static_cast<uintptr_t>(M * K) * 4 <= b || b + static_cast<uintptr_t>(M * N) * 4 <= a,
              "linear_backward_input_bf16: output dx overlaps input dy");
#ifdef QWENQ_HAVE_BF16_KERNEL
  if (bf16_gemm_uses_avx512()) {
    gemm_avx512(dy, M, N, K, dx, K, DensePanels{w, w_dtype, BLayout::Cols, N, K});
    return;
  }
#endif
  on_rounded(dy, M * N, w, w_dtype, N * K, [&](const float* dyr, const void* wr) {
    linear_backward_input_ref(dyr, M, N, wr, DType::BF16, K, dx);
  });
}

namespace {
// ŵ [N, K] of a Q4 weight, as q4_unpack computes it (that one lives in quant/, which kernels do not link): the
// portable path's F32 weight. Input k is layout row inv[k] (k without a permutation).
std::vector<float> q4_values(const Q4View& w, const int32_t* inv) {
  std::vector<float> W(static_cast<size_t>(w.N * w.K));
  parallel_for(w.N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t k = 0; k < w.K; ++k) {
        const int64_t r = inv != nullptr ? inv[k] : k;
        const uint32_t word = w.qweight[r / kQ4CodesPerWord * w.Np + n], meta = w.meta[r / w.group * w.Np + n];
        W[n * w.K + k] = q4_dequant(w.kind, (word >> (kQ4Bits * (r % kQ4CodesPerWord))) & 15u, meta);
      }
  });
  return W;
}

// The inverse of w.perm (empty without one), checked to be a permutation of [0, K).
std::vector<int32_t> q4_inverse_perm(const Q4View& w, const char* fn) {
  std::vector<int32_t> inv;
  if (w.perm == nullptr) return inv;
  inv.assign(static_cast<size_t>(w.K), -1);
  for (int64_t r = 0; r < w.K; ++r) {
    const int32_t k = w.perm[r];
    QWENQ_CHECK(k >= 0 && k < w.K && inv[static_cast<size_t>(k)] < 0,
                fn << ": perm[" << r << "] = " << k << " is outside [0, " << w.K << ") or repeats an input");
    inv[static_cast<size_t>(k)] = static_cast<int32_t>(r);
  }
  return inv;
}

void check_q4(const char* fn, const Q4View& w, const float* in, int64_t M, int64_t in_width, const float* out,
              int64_t out_width) {
  q4_check(w, fn);
  QWENQ_CHECK(M > 0, fn << ": M=" << M << " rows (K=" << w.K << " N=" << w.N << ")");
  QWENQ_CHECK(in != nullptr && out != nullptr, fn << ": null input or output pointer");
  const auto a = reinterpret_cast<uintptr_t>(out), b = reinterpret_cast<uintptr_t>(in);
  QWENQ_CHECK(a + static_cast<uintptr_t>(M * out_width) * 4 <= b || b + static_cast<uintptr_t>(M * in_width) * 4 <= a,
              fn << ": the output overlaps the input");
}
}  // namespace

void qgemm_int4_forward_bf16(const Q4View& w, const float* x, int64_t M, const void* bias, DType bias_dtype, float* y) {
  check_q4("qgemm_int4_forward_bf16", w, x, M, w.K, y, w.N);
  check_bias("qgemm_int4_forward_bf16", bias, bias_dtype);
  const std::vector<int32_t> inv = q4_inverse_perm(w, "qgemm_int4_forward_bf16");
  const int32_t* ip = inv.empty() ? nullptr : inv.data();
#ifdef QWENQ_HAVE_BF16_KERNEL
  if (bf16_gemm_uses_avx512()) {
    gemm_avx512(x, M, w.K, w.N, y, w.N, Q4Panels{w, ip, false});
    if (bias != nullptr) add_bias(y, M, w.N, bias, bias_dtype);
    return;
  }
#endif
  const std::vector<float> W = q4_values(w, ip);
  linear_forward_bf16(x, M, w.K, W.data(), DType::F32, w.N, bias, bias_dtype, y);
}

void qgemm_int4_backward_input_bf16(const Q4View& w, const float* dy, int64_t M, float* dx) {
  check_q4("qgemm_int4_backward_input_bf16", w, dy, M, w.N, dx, w.K);
  const std::vector<int32_t> inv = q4_inverse_perm(w, "qgemm_int4_backward_input_bf16");
  const int32_t* ip = inv.empty() ? nullptr : inv.data();
#ifdef QWENQ_HAVE_BF16_KERNEL
  if (bf16_gemm_uses_avx512()) {
    gemm_avx512(dy, M, w.N, w.K, dx, w.K, Q4Panels{w, ip, true});
    return;
  }
#endif
  const std::vector<float> W = q4_values(w, ip);
  linear_backward_input_bf16(dy, M, w.N, W.data(), DType::F32, w.K, dx);
}

namespace {
bool takes_bf16(bool bf16, int64_t M, DType w_dtype) {
  return bf16 && M > 0 && (w_dtype == DType::F32 || w_dtype == DType::BF16);
}
}  // namespace

void linear_forward_cpu(bool bf16, const float* x, int64_t M, int64_t K, const void* w, DType w_dtype, int64_t N,
                        const void* bias, DType bias_dtype, float* y) {
  if (takes_bf16(bf16, M, w_dtype)) {
    linear_forward_bf16(x, M, K, w, w_dtype, N, bias, bias_dtype, y);
  } else {
    linear_forward_ref(x, M, K, w, w_dtype, N, bias, bias_dtype, y);
  }
}

void linear_backward_input_cpu(bool bf16, const float* dy, int64_t M, int64_t N, const void* w, DType w_dtype,
                               int64_t K, float* dx) {
  if (takes_bf16(bf16, M, w_dtype)) {
    linear_backward_input_bf16(dy, M, N, w, w_dtype, K, dx);
  } else {
    linear_backward_input_ref(dy, M, N, w, w_dtype, K, dx);
  }
}

}  // namespace qwenq
