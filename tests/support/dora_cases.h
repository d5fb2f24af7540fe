// Hand-made Q4 weights for the DoRA kernels' tests (tests/test_dora_kernels.cpp, tests/gpu/test_dora_cuda.cpp):
// every pad filled with garbage, so a kernel that reads past K or N shows it.
#pragma once

#include <cstdint>
#include <numeric>
#include <utility>

#include "core/dtype.h"
#include "core/rng.h"
#include "quant/format/qgemm_layout.h"

namespace qwenq::test {

// A Q4 layout made by hand: random codes and metas (Int: fp16 scales in ±[0.005, 0.05], zeros 0..15; Nf4/Fp4:
// absmax in [0.01, 0.1]), a random act-order permutation if asked, and garbage in every pad: codes in rows K..Kp−1,
// words and metas of columns N..Np−1 (NaN metas: a kernel that decodes a pad gets a NaN norm).
inline Q4Layout padded_q4(Q4Kind kind, int64_t N, int64_t K, int64_t group, bool act_order, uint64_t seed) {
  Rng rng(seed);
  Q4Layout q;
  q.kind = kind;
  q.N = N;
  q.K = K;
  q.Kp = q4_padded_k(K);
  q.Np = q4_padded_n(N);
  q.group = group;
  q.qweight.resize(static_cast<size_t>(q.Kp / kQ4CodesPerWord * q.Np));
  for (uint32_t& w : q.qweight) w = static_cast<uint32_t>(rng.next_u64());
  q.meta.resize(static_cast<size_t>(q.num_groups() * q.Np));
  for (int64_t g = 0; g < q.num_groups(); ++g) {
    for (int64_t n = 0; n < q.Np; ++n) {
      uint32_t& m = q.meta[g * q.Np + n];
      if (n >= N) {
        m = 0x7FC00001u;  // NaN as fp32, and an fp16 NaN scale in the low half as well
        continue;
      }
      if (kind == Q4Kind::Int) {
        const float scale = rng.uniform(0.005f, 0.05f) * (rng.below(2) ? -1.f : 1.f);
        m = q4_int_meta(f32_to_f16(scale), static_cast<uint8_t>(rng.below(16)));
      } else {
        m = q4_float_meta(rng.uniform(0.01f, 0.1f));
      }
    }
  }
  if (act_order) {
    q.perm.resize(static_cast<size_t>(K));
    std::iota(q.perm.begin(), q.perm.end(), 0);
    for (int64_t i = K - 1; i > 0; --i) std::swap(q.perm[i], q.perm[rng.below(static_cast<uint64_t>(i + 1))]);
  }
  return q;
}

}  // namespace qwenq::test
