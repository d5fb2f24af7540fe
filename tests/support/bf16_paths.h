// The two paths of kernels/gemm_bf16.h on this CPU, for tests that run each: the portable one always, the
// AVX512_BF16 one where the CPU has it; PortableScope forces one for its lifetime.
#pragma once

#include <vector>

#include "kernels/gemm_bf16.h"

namespace qwenq::test {

// true: portable, false: AVX512_BF16 (listed only where present).
inline std::vector<bool> bf16_gemm_paths() {
  std::vector<bool> p = {true};
  if (cpu_has_avx512_bf16()) p.push_back(false);
  return p;
}

struct PortableScope {
  explicit PortableScope(bool portable) { set_bf16_gemm_portable_for_testing(portable); }
  ~PortableScope() { set_bf16_gemm_portable_for_testing(false); }
  PortableScope(const PortableScope&) = delete;
  PortableScope& operator=(const PortableScope&) = delete;
};

}  // namespace qwenq::test
