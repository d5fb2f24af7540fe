// Run-time x86-64 CPU features, for kernels compiled into every build with function target attributes and chosen
// when the build's own -march lacks a wider kernel (quant/ggml_dot_int8.cpp, quant/int_dot_int8.cpp): CI machines test
// them whatever -march they build for.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>

#define QWENQ_HAVE_AVX2_TARGET 1
#define QWENQ_AVX2_FN __attribute__((target("avx2,fma,f16c")))

namespace qwenq {

// AVX2, FMA and F16C: what a QWENQ_AVX2_FN function may use.
// F16C by cpuid (leaf 1, ECX bit 29): clang's __builtin_cpu_supports does not know "f16c"; AVX2 and FMA through the
// builtin, which also checks that the OS saves the AVX registers.
inline bool cpu_has_avx2_fma_f16c() {
  static const bool has = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    const bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29)) != 0;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
  }();
  return has;
}

}  // namespace qwenq
#endif
