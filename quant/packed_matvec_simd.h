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

// The target's own vector width, for kernels whose lanes never mix (or that keep 16 partial sums as kHalves halves):
// AVX-512's 16 lanes, 8 (one AVX2 register) elsewhere. GCC 12 moves arrays of 64-byte generic vectors through the
// stack 16 bytes at a time when the target has no 64-byte registers (an x86-64-v3 build's exact Q4_K product of a
// Qwen2.5-7B gate_proj took 111 ms at 8 rows against 31 with 8-lane vectors). Each lane takes the same operations at
// either width, so the results are the same bits.
#ifdef __AVX512F__
using f32xV = f32x16;
using u32xV = u32x16;
using i32xV = i32x16;
#else
using f32xV = float __attribute__((vector_size(32)));
using u32xV = uint32_t __attribute__((vector_size(32)));
using i32xV = int32_t __attribute__((vector_size(32)));
#endif
constexpr int64_t kVLanes = static_cast<int64_t>(sizeof(f32xV) / sizeof(float));
constexpr int kHalves = static_cast<int>(kLanes / kVLanes);  // native vectors per 16 lanes
inline void storeV(float* p, const f32xV& v) { std::memcpy(p, &v, sizeof v); }
inline f32xV fieldsV(const u32xV& v, int shift, uint32_t mask) {
  return __builtin_convertvector((i32xV)((v >> shift) & mask), f32xV);
}
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
