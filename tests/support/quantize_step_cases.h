// Seeded weights for the quantize-step tests (tests/test_quantize_step.cpp on the CPU, tests/gpu/
// test_quantize_step_cuda.cpp against the GPU): N(0, sigma) values with awkward rows written over them, so that
// every sweep shape meets the edge cases of the grid and the block scale. Row r (when r < N) is:
//   0  all +0 (GPTQ rule: the [-1, 1] fallback; AWQ: the 1e-5 floor; NF4/FP4: absmax 0, the zero code)
//   1  one value repeated (lo == hi)
//   2  alternating -0 and +0 with one 0.5 every 37th element (signed zeros in min/max and in the codes)
//   3  huge: ±3e38 and ±7e4 (range overflow to an fp16-infinite scale; |w|/absmax near 1)
//   4  tiny: ±1e-41 subnormals and ±1e-39 (fp16 scale underflow; the block scale's division fallback)
//   5  positive and below 1e-9 (GPTQ-rule asym: the scale rounds to fp16 zero, zero point 0)
//   6  all negative
//   7  exact ties: 1.0 every 8th element (absmax 1 in any block), multiples of 1/16 (halves of RTN steps), the NF4
//      midpoints and the FP4 thresholds themselves (ties to the lower code)
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "core/rng.h"
#include "quant/format/nf4_pack.h"

namespace qwenq::test {

inline std::vector<float> awkward_weights(int64_t N, int64_t K, uint64_t seed, float sigma = 0.02f) {
  Rng rng(seed);
  std::vector<float> w(static_cast<size_t>(N * K));
  for (auto& v : w) v = static_cast<float>(rng.normal()) * sigma;
  for (int64_t r = 0; r < std::min<int64_t>(N, 8); ++r) {
    float* row = w.data() + r * K;
    for (int64_t k = 0; k < K; ++k) {
      const float sign = k % 2 == 0 ? 1.f : -1.f;
      switch (r) {
        case 0: row[k] = 0.f; break;
        case 1: row[k] = 0.0123f; break;
        case 2: row[k] = k % 37 == 36 ? 0.5f : (k % 2 == 0 ? -0.f : 0.f); break;
        case 3: row[k] = k % 3 == 0 ? sign * 3e38f : sign * 7e4f * static_cast<float>(rng.uniform()); break;
        case 4: row[k] = k % 3 == 0 ? sign * 1e-39f : sign * 1e-41f; break;
        case 5: row[k] = 1e-9f * static_cast<float>(rng.uniform()); break;
        case 6: row[k] = -std::fabs(row[k]) - 1e-3f; break;
        case 7:
          row[k] = k % 8 == 0   ? 1.0f
                   : k % 2 == 0 ? static_cast<float>(k % 33 - 16) / 16.f
                   : k % 4 == 1 ? kNf4Midpoints[(k / 4) % 15]
                                : sign * kFp4Thresholds[(k / 4) % 7];
          break;
      }
    }
  }
  return w;
}

}  // namespace qwenq::test
