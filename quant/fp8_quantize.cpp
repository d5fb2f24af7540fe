#include "quant/fp8_quantize.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/threads.h"

namespace qwenq {

uint8_t f32_to_e4m3(float x) {
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  if (std::isnan(x)) return static_cast<uint8_t>(sign | 0x7F);
  const float a = std::fabs(x);
  if (a >= 448.0f) return static_cast<uint8_t>(sign | 0x7E);
  if (a < 0x1p-6f) {  // subnormal: m · 2^-9, m in [0, 8]; m = 8 is the smallest normal, byte 0x08
    const float m = std::nearbyint(a * 512.0f);  // exact scaling; nearbyint rounds half to even
    return static_cast<uint8_t>(sign | static_cast<uint8_t>(m));
  }
  int e = std::ilogb(a);                           // a = (1 + f) · 2^e, e in [-6, 8]
  float m = std::nearbyint(std::ldexp(a, -e) * 8.0f - 8.0f);  // the 3 mantissa bits, rounded half to even
  if (m == 8.0f) m = 0.0f, ++e;                    // rounded up into the next binade (at most 448: a < 448)
  return static_cast<uint8_t>(sign | ((e + 7) << 3) | static_cast<int>(m));
}

Fp8Blocks quantize_fp8_blocks(const float* W, int64_t N, int64_t K, int64_t block_n, int64_t block_k) {
  QWENQ_CHECK(N > 0 && K > 0 && block_n > 0 && block_k > 0,
              "quantize_fp8_blocks: bad shape [" << N << ", " << K << "] or block " << block_n << " x " << block_k);
  Fp8Blocks q;
  q.N = N;
  q.K = K;
  q.block_n = block_n;
  q.block_k = std::min(block_k, K);
  const int64_t SN = (N + block_n - 1) / block_n, SK = (K + q.block_k - 1) / q.block_k;
  q.codes.resize(static_cast<size_t>(N * K));
  q.scale.resize(static_cast<size_t>(SN * SK));
  parallel_for(SN * SK, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = (b / SK) * block_n, n1 = std::min(N, n0 + block_n);
      const int64_t k0 = (b % SK) * q.block_k, k1 = std::min(K, k0 + q.block_k);
      float amax = 0.0f;
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(W[n * K + k]));
      const float s = std::max(amax / 448.0f, std::numeric_limits<float>::epsilon());
      q.scale[static_cast<size_t>(b)] = s;
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t k = k0; k < k1; ++k)
          q.codes[static_cast<size_t>(n * K + k)] = f32_to_e4m3(std::clamp(W[n * K + k] / s, -448.0f, 448.0f));
    }
  });
  return q;
}

nlohmann::ordered_json fp8_block_quantization_config(int64_t block) {
  return {{"activation_scheme", "dynamic"},
          {"fmt", "e4m3"},
          {"quant_method", "fp8"},
          {"weight_block_size", {block, block}}};
}

}  // namespace qwenq
