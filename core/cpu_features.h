// Run-time x86-64 CPU features, for kernels compiled into every build with function target attributes and chosen
// when the build's own -march lacks a wider kernel (quant/ggml_dot_int8.cpp, quant/int_dot_int8.cpp): CI machines test
// them whatever -march they build for.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define QWENQ_HAVE_AVX2_TARGET 1
#define QWENQ_AVX2_FN __attribute__((target("avx2,fma,f16c")))

namespace qwenq {

// AVX2, FMA and F16C: what a QWENQ_AVX2_FN function may use.
inline bool cpu_has_avx2_fma_f16c() {
  static const bool has =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return has;
}

}  // namespace qwenq
#endif
