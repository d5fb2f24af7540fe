#include "quant/format/nf4_pack.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace qwenq {

namespace {

// torch.linspace(0.1, 1, n, dtype=float32), bit for bit (see the header).
std::vector<float> linspace_f32(float start, float end, int n) {
  std::vector<float> b(n);
  if (n == 1) {
    b[0] = start;
    return b;
  }
  const float step = (end - start) / static_cast<float>(n - 1);
  const int halfway = n / 2;
  for (int k = 0; k < n; ++k)
    b[k] = k < halfway ? std::fma(step, static_cast<float>(k), start)
                       : std::fma(-step, static_cast<float>(n - 1 - k), end);
  return b;
}

std::array<float, kDynamicMapSize> build_dynamic_map() {
  // 10^(e-6) as Python evaluates 10 ** (e - 6) (a double), then cast to float32 by torch's scalar multiply.
  constexpr double kPow10[7] = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0};
  std::vector<float> values;
  values.reserve(kDynamicMapSize);
  for (int e = 0; e < 7; ++e) {
    const std::vector<float> b = linspace_f32(0.1f, 1.0f, (1 << e) + 1);
    const float scale = static_cast<float>(kPow10[e]);
    for (size_t k = 0; k + 1 < b.size(); ++k) {
      const float mean = (b[k] + b[k + 1]) / 2.0f;
      const float v = scale * mean;
      values.push_back(v);
      values.push_back(-v);
    }
  }
  values.push_back(0.0f);
  values.push_back(1.0f);
  QWENQ_CHECK(values.size() == kDynamicMapSize, "dynamic map has " << values.size() << " entries, not 256");
  std::sort(values.begin(), values.end());
  std::array<float, kDynamicMapSize> out;
  std::copy(values.begin(), values.end(), out.begin());
  return out;
}

}  // namespace

std::vector<uint8_t> nf4_pack(const uint8_t* codes, int64_t n) {
  QWENQ_CHECK(n >= 0, "nf4_pack: negative count " << n);
  std::vector<uint8_t> out(nf4_packed_bytes(n), 0);
  for (int64_t i = 0; i < n; ++i) {
    QWENQ_CHECK(codes[i] < 16, "nf4_pack: code " << int(codes[i]) << " at index " << i << " does not fit 4 bits");
    out[i / 2] |= static_cast<uint8_t>(i % 2 == 0 ? codes[i] << 4 : codes[i]);
  }
  return out;
}

void nf4_unpack(const uint8_t* packed, int64_t n, uint8_t* codes) {
  QWENQ_CHECK(n >= 0, "nf4_unpack: negative count " << n);
  for (int64_t i = 0; i < n; ++i) codes[i] = i % 2 == 0 ? packed[i / 2] >> 4 : packed[i / 2] & 0x0F;
}

const std::array<float, kDynamicMapSize>& dynamic_map() {
  static const std::array<float, kDynamicMapSize> map = build_dynamic_map();
  return map;
}

uint8_t dynamic_map_index(const float* map, float x) {
  // First entry >= x; the nearest is it or its left neighbour (|x - c| in float32 is monotone on each side).
  const float* hi = std::lower_bound(map, map + kDynamicMapSize, x);
  if (hi == map) return 0;
  if (hi == map + kDynamicMapSize) return kDynamicMapSize - 1;
  const float* lo = hi - 1;
  const float d_lo = std::fabs(x - *lo), d_hi = std::fabs(x - *hi);
  return static_cast<uint8_t>((d_hi < d_lo ? hi : lo) - map);
}

}  // namespace qwenq
