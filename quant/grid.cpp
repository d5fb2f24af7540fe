#include "quant/grid.h"

#include <algorithm>
#include <cmath>

#include "core/dtype.h"
#include "core/error.h"
#include "core/threads.h"

namespace qwenq {

namespace {
float round_to_f16(float x) { return f16_to_f32(f32_to_f16(x)); }
}  // namespace

void grid_for_group(const float* w, int64_t len, int64_t stride, int bits, bool sym, GridRule rule, float* scale,
                    uint8_t* zero) {
  const int maxq = (1 << bits) - 1;
  float lo = w[0], hi = w[0];
  for (int64_t i = 1; i < len; ++i) {
    lo = std::min(lo, w[i * stride]);
    hi = std::max(hi, w[i * stride]);
  }
  float s;
  float z;
  if (rule == GridRule::Gptq) {
    lo = std::min(lo, 0.f);
    hi = std::max(hi, 0.f);
    if (sym) {
      hi = std::max(std::fabs(lo), hi);
      if (lo < 0) lo = -hi;
    }
    if (lo == 0.f && hi == 0.f) lo = -1.f, hi = 1.f;
    s = round_to_f16((hi - lo) / maxq);
    z = sym ? (maxq + 1) / 2 : std::nearbyint(-lo / s);
  } else {
    if (sym) {
      const float amax = std::max(std::fabs(lo), std::fabs(hi));
      s = round_to_f16(std::max(amax, 1e-5f) / ((maxq - 1) / 2));  // AWQ sym: [-2^(b-1), 2^(b-1)-1]
      z = (maxq + 1) / 2;
    } else {
      s = round_to_f16(std::max(hi - lo, 1e-5f) / maxq);
      z = std::min<float>(std::max<float>(-std::nearbyint(lo / s), 0.f), maxq);
    }
  }
  if (s == 0.f) s = round_to_f16(1e-5f);  // fp16 underflow of a tiny range: any positive scale is exact here
  *scale = s;
  // z is NaN when a GPTQ-rule asym range [0, hi] is so small that its scale rounded to fp16 zero (0/0 above);
  // such a group gets zero point 0 (what x86 made of the former unguarded cast, without its undefined behaviour).
  *zero = z >= 0.f ? static_cast<uint8_t>(std::min<float>(z, maxq)) : 0;
}

GroupGrid find_grid(const float* W, int64_t N, int64_t K, int bits, int64_t group_size, bool sym, GridRule rule) {
  QWENQ_CHECK(bits >= 2 && bits <= 8, "bits must be in 2..8, got " << bits);
  QWENQ_CHECK(group_size == -1 || group_size > 0, "group size must be positive or -1, got " << group_size);
  GroupGrid g;
  g.bits = bits;
  g.group = group_size == -1 ? K : group_size;
  g.K = K;
  g.N = N;
  const int64_t G = g.num_groups();
  g.scale.resize(G * N);
  g.zero.resize(G * N);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t gi = 0; gi < G; ++gi) {
      const int64_t k0 = gi * g.group, len = std::min(g.group, K - k0);
      grid_for_group(W + n * K + k0, len, 1, bits, sym, rule, &g.scale[gi * N + n], &g.zero[gi * N + n]);
    }
  }
  return g;
}

std::vector<uint8_t> quantize_rtn(const float* W, const GroupGrid& g) {
  std::vector<uint8_t> codes(g.K * g.N);
  for (int64_t n = 0; n < g.N; ++n) {
    for (int64_t k = 0; k < g.K; ++k) {
      const int64_t gi = k / g.group;
      codes[k * g.N + n] = quantize_value(W[n * g.K + k], g.scale[gi * g.N + n], g.zero[gi * g.N + n], g.maxq());
    }
  }
  return codes;
}

std::vector<float> dequantize_codes(const uint8_t* codes, const GroupGrid& g, const int32_t* g_idx) {
  for (int64_t k = 0; g_idx && k < g.K; ++k) {
    QWENQ_CHECK(g_idx[k] >= 0 && g_idx[k] < g.num_groups(),
                "g_idx[" << k << "] = " << g_idx[k] << " is outside [0, " << g.num_groups() << ")");
  }
  std::vector<float> W(g.N * g.K);
  // A transposition ([K, N] codes to [N, K] values) in tiles of kTile x kTile, by every thread over the column
  // tiles: each tile reads its codes along n and writes its values along k within a few cache lines (a 7B gate_proj
  // took 0.52 s on one thread column by column; GPTQ dequantizes every Linear it writes).
  constexpr int64_t kTile = 64;
  parallel_for((g.N + kTile - 1) / kTile, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t n0 = t0 * kTile; n0 < std::min(g.N, t1 * kTile); n0 += kTile) {
      const int64_t n1 = std::min(g.N, n0 + kTile);
      for (int64_t k0 = 0; k0 < g.K; k0 += kTile) {
        const int64_t k1 = std::min(g.K, k0 + kTile);
        for (int64_t k = k0; k < k1; ++k) {
          const int64_t gi = g_idx ? g_idx[k] : k / g.group;
          const uint8_t* c = codes + k * g.N;
          const float* sc = g.scale.data() + gi * g.N;
          const uint8_t* z = g.zero.data() + gi * g.N;
          for (int64_t n = n0; n < n1; ++n) W[n * g.K + k] = dequantize_value(c[n], sc[n], z[n]);
        }
      }
    }
  });
  return W;
}

}  // namespace qwenq
