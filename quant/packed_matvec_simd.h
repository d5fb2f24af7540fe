// Internal to quant/packed_matvec_*.cpp: the 16-lane vectors and the row chunking their kernels share.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "core/error.h"

// The 16-lane helpers pass vectors by value; without AVX-512 the compilers warn that such an ABI differs between
// targets. They are internal to these files and inlined, so no ABI is involved.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace qwenq::packed_detail {

constexpr int kMaxRows = 8;  // rows of x per pass over the packed weight

// 16 lanes in the compiler's vector extension (GCC, Clang): AVX-512 registers here, pairs of AVX2 or quads of SSE
// registers elsewhere. The files using them are compiled with -ffp-contract=fast, so `a += b * c` is one fused
// multiply-add.
using f32x16 = float __attribute__((vector_size(64)));
using i32x16 = int32_t __attribute__((vector_size(64)));
using u32x16 = uint32_t __attribute__((vector_size(64)));
constexpr int64_t kLanes = 16;

// Scalar code spells its multiply-adds out: contraction is the compiler's choice per loop (its vectorizer may
// leave a product unfused in one instantiation and fuse it in another), and a row of y must be the same bits
// whatever M. Where the target has no fused instruction, nothing is contracted either.
inline float fmadd(float a, float b, float c) {
#ifdef __FP_FAST_FMAF
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

template <typename V, typename T>
V load16(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store16(float* p, const f32x16& v) { std::memcpy(p, &v, sizeof v); }
// The bit fields (v >> shift) & mask of 16 packed words, as floats (exact: fields of at most 8 bits).
inline f32x16 fields16(const u32x16& v, int shift, uint32_t mask) {
  return __builtin_convertvector((i32x16)((v >> shift) & mask), f32x16);
}

inline void check_args(const float* x, int64_t M, const float* y, int64_t N, int64_t K, const char* what) {
  QWENQ_CHECK(M >= 1 && N >= 1 && K >= 1, what << ": shapes must be positive, got M=" << M << " N=" << N << " K=" << K);
  QWENQ_CHECK(x != nullptr && y != nullptr, what << ": null x or y");
}

// Calls chunk(m0, R) over [0, M) in chunks of kMax (8, 4 or 2), then 4, 2, 1 rows, with R a compile-time count.
template <int kMax = kMaxRows, typename F>
void for_row_chunks(int64_t M, F&& chunk) {
  static_assert(kMax == 8 || kMax == 4 || kMax == 2, "chunks of 8, 4 or 2 rows");
  int64_t m = 0;
  for (; m + kMax <= M; m += kMax) chunk(m, std::integral_constant<int, kMax>());
  if constexpr (kMax == 8) {
    if (m + 4 <= M) chunk(m, std::integral_constant<int, 4>()), m += 4;
  }
  if constexpr (kMax >= 4) {
    if (m + 2 <= M) chunk(m, std::integral_constant<int, 2>()), m += 2;
  }
  if (m < M) chunk(m, std::integral_constant<int, 1>());
}

}  // namespace qwenq::packed_detail
