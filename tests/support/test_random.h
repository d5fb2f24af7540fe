// Seeded test inputs shared by the CPU and GPU tests: the same seed gives the same values on every platform
// (core/rng.h).
#pragma once

#include <cstdint>
#include <vector>

#include "core/rng.h"

namespace qwenq::test {

// n values drawn from N(0, stddev²).
inline std::vector<float> normal_vector(int64_t n, uint64_t seed, float stddev = 1.f) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<float>(rng.normal()) * stddev;
  return v;
}

}  // namespace qwenq::test
