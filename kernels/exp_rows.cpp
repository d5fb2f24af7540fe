// Row exponentials of the CPU cross-entropy: the formulas are at the top of kernels/exp_rows.h. Three loops compute
// the same operations (scalar, 8 lanes, 16 lanes), so they agree bit for bit; built with -ffp-contract=off, so no
// multiply and add written apart is fused behind our back (GCC contracts vector intrinsics too).
#include "kernels/exp_rows.h"

#include <atomic>
#include <cmath>
#include <cstring>

#include "core/error.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define QWENQ_HAVE_EXP_VECTORS 1
#define QWENQ_EXP_AVX2_FN __attribute__((target("avx2,fma")))
#define QWENQ_EXP_AVX512_FN __attribute__((target("avx512f")))
#endif

namespace qwenq {

namespace {

constexpr float kLo = -104.f, kHi = 89.f;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kRoundMagic = 12582912.f;            // 1.5 · 2^23: x + this rounds x to an integer
constexpr float kLn2Hi = 0.693145751953125f;         // ln 2 to 16 bits (exact in fp32)
constexpr float kLn2Lo = 1.42860682030941723212e-6f;  // ln 2 − kLn2Hi
// 1/k! for k = 7 .. 2 (then 1, 1).
constexpr float kC7 = static_cast<float>(1.0 / 5040), kC6 = static_cast<float>(1.0 / 720),
                kC5 = static_cast<float>(1.0 / 120), kC4 = static_cast<float>(1.0 / 24),
                kC3 = static_cast<float>(1.0 / 6), kC2 = 0.5f;
constexpr int kLanes = 16;

float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Lane j's partial sum of the elements whose index is j mod 16, added in a fixed tree.
double combine(double* lanes) {
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) lanes[j] += lanes[j + w];
  return lanes[0];
}

std::atomic<int> g_forced{-1};

#ifdef QWENQ_HAVE_EXP_VECTORS

// ---- 16 lanes (AVX-512F) ----------------------------------------------------------------------------------------

QWENQ_EXP_AVX512_FN inline __m512 exp16(__m512 x) {
  // max/min return their second operand for a NaN: `lo > x ? lo : x`, `hi < x ? hi : x`, as the scalar code.
  __m512 xc = _mm512_max_ps(_mm512_set1_ps(kLo), x);
  xc = _mm512_min_ps(_mm512_set1_ps(kHi), xc);
  const __m512 magic = _mm512_set1_ps(kRoundMagic);
  const __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(xc, _mm512_set1_ps(kLog2e), magic), magic);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kC7);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kC6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kC5));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kC4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kC3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kC2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  const __m512i ni = _mm512_cvtps_epi32(n);  // an integer already: exact
  const __m512i n1 = _mm512_srai_epi32(ni, 1);
  const __m512i n2 = _mm512_sub_epi32(ni, n1);
  const __m512i bias = _mm512_set1_epi32(127);
  const __m512 s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n1, bias), 23));
  const __m512 s2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n2, bias), 23));
  const __m512 e = _mm512_mul_ps(_mm512_mul_ps(p, s1), s2);
  return _mm512_mask_mov_ps(e, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
}

QWENQ_EXP_AVX512_FN int64_t sum16(const float* l, int64_t n, float m, double* lanes) {
  const __m512 vm = _mm512_set1_ps(m);
  __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
  int64_t v = 0;
  for (; v + kLanes <= n; v += kLanes) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(l + v), vm));
    lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
    hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
  }
  _mm512_storeu_pd(lanes, lo);
  _mm512_storeu_pd(lanes + 8, hi);
  return v;
}

QWENQ_EXP_AVX512_FN int64_t scale16(const float* l, int64_t n, float m, float c, float* out) {
  const __m512 vm = _mm512_set1_ps(m), vc = _mm512_set1_ps(c);
  int64_t v = 0;
  for (; v + kLanes <= n; v += kLanes)
    _mm512_storeu_ps(out + v, _mm512_mul_ps(exp16(_mm512_sub_ps(_mm512_loadu_ps(l + v), vm)), vc));
  return v;
}

// ---- 8 lanes (AVX2 + FMA) ---------------------------------------------------------------------------------------

QWENQ_EXP_AVX2_FN inline __m256 exp8(__m256 x) {
  __m256 xc = _mm256_max_ps(_mm256_set1_ps(kLo), x);
  xc = _mm256_min_ps(_mm256_set1_ps(kHi), xc);
  const __m256 magic = _mm256_set1_ps(kRoundMagic);
  const __m256 n = _mm256_sub_ps(_mm256_fmadd_ps(xc, _mm256_set1_ps(kLog2e), magic), magic);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kC7);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC5));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i n1 = _mm256_srai_epi32(ni, 1);
  const __m256i n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  const __m256 e = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  return _mm256_blendv_ps(e, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

QWENQ_EXP_AVX2_FN int64_t sum8(const float* l, int64_t n, float m, double* lanes) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd(), a2 = _mm256_setzero_pd(), a3 = _mm256_setzero_pd();
  int64_t v = 0;
  for (; v + kLanes <= n; v += kLanes) {
    const __m256 e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(l + v), vm));
    const __m256 e1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(l + v + 8), vm));
    a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(e0)));
    a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(e0, 1)));
    a2 = _mm256_add_pd(a2, _mm256_cvtps_pd(_mm256_castps256_ps128(e1)));
    a3 = _mm256_add_pd(a3, _mm256_cvtps_pd(_mm256_extractf128_ps(e1, 1)));
  }
  _mm256_storeu_pd(lanes, a0);
  _mm256_storeu_pd(lanes + 4, a1);
  _mm256_storeu_pd(lanes + 8, a2);
  _mm256_storeu_pd(lanes + 12, a3);
  return v;
}

QWENQ_EXP_AVX2_FN int64_t scale8(const float* l, int64_t n, float m, float c, float* out) {
  const __m256 vm = _mm256_set1_ps(m), vc = _mm256_set1_ps(c);
  int64_t v = 0;
  for (; v + 8 <= n; v += 8)
    _mm256_storeu_ps(out + v, _mm256_mul_ps(exp8(_mm256_sub_ps(_mm256_loadu_ps(l + v), vm)), vc));
  return v;
}

int detect_best() {
  if (__builtin_cpu_supports("avx512f")) return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
  return 0;
}

#else

int detect_best() { return 0; }

#endif  // QWENQ_HAVE_EXP_VECTORS

}  // namespace

float exp_f32(float x) {
  if (std::isnan(x)) return x;
  float xc = kLo > x ? kLo : x;
  xc = kHi < xc ? kHi : xc;
  const float n = std::fma(xc, kLog2e, kRoundMagic) - kRoundMagic;
  float r = std::fma(-n, kLn2Hi, xc);
  r = std::fma(-n, kLn2Lo, r);
  float p = kC7;
  p = std::fma(p, r, kC6);
  p = std::fma(p, r, kC5);
  p = std::fma(p, r, kC4);
  p = std::fma(p, r, kC3);
  p = std::fma(p, r, kC2);
  p = std::fma(p, r, 1.f);
  p = std::fma(p, r, 1.f);
  const int32_t ni = static_cast<int32_t>(n);  // an integer in [−150, 128]
  const int32_t n1 = ni >> 1;                  // ⌊n / 2⌋ (an arithmetic shift, as vpsrad)
  const int32_t n2 = ni - n1;
  const float s1 = bits_to_float(static_cast<uint32_t>(n1 + 127) << 23);
  const float s2 = bits_to_float(static_cast<uint32_t>(n2 + 127) << 23);
  return (p * s1) * s2;
}

int exp_rows_best_path() {
  static const int best = detect_best();
  return best;
}

int exp_rows_path() {
  const int forced = g_forced.load(std::memory_order_relaxed);
  return forced >= 0 ? forced : exp_rows_best_path();
}

void set_exp_rows_path_for_testing(int p) {
  QWENQ_CHECK(p >= -1 && p <= exp_rows_best_path(),
              "set_exp_rows_path_for_testing: path " << p << " (this CPU's best is " << exp_rows_best_path() << ")");
  g_forced.store(p, std::memory_order_relaxed);
}

double exp_sum_row(const float* l, int64_t n, float m) {
  double lanes[kLanes] = {};
  int64_t v = 0;
#ifdef QWENQ_HAVE_EXP_VECTORS
  const int path = exp_rows_path();
  if (path == 2) v = sum16(l, n, m, lanes);
  else if (path == 1) v = sum8(l, n, m, lanes);
#endif
  for (; v < n; ++v) lanes[v % kLanes] += exp_f32(l[v] - m);
  return combine(lanes);
}

void exp_scale_row(const float* l, int64_t n, float m, float c, float* out) {
  int64_t v = 0;
#ifdef QWENQ_HAVE_EXP_VECTORS
  const int path = exp_rows_path();
  if (path == 2) v = scale16(l, n, m, c, out);
  else if (path == 1) v = scale8(l, n, m, c, out);
#endif
  for (; v < n; ++v) out[v] = exp_f32(l[v] - m) * c;
}

}  // namespace qwenq
