// attention_decode_ref (kernels/attention_decode.h): plain loops, one (sequence, head) per task, fp32 throughout.
// For each task: qs = scale·q, s_j = qs·k_j in key order (d ascending), m = max s, p_j = exp(s_j − m),
// l = Σ p_j (key order), out = (Σ_j p_j·v_j) / l. The simplest correct code: the GPU kernel is checked against it.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/attention_decode.h"

namespace qwenq {

bool attention_decode_check_args(const char* name, const float* q, const float* k_cache, const float* v_cache,
                                 const int32_t* lens, int64_t B, int64_t H, int64_t Hkv, int64_t D, int64_t capacity,
                                 int64_t max_len, const float* out) {
  QWENQ_CHECK(B >= 0 && H > 0 && Hkv > 0 && D > 0,
              name << ": bad shape B=" << B << " H=" << H << " Hkv=" << Hkv << " D=" << D);
  QWENQ_CHECK(H % Hkv == 0, name << ": query heads H=" << H << " must be a multiple of kv heads Hkv=" << Hkv);
  QWENQ_CHECK(D <= kAttentionDecodeMaxHeadDim,
              name << ": head dim D=" << D << " exceeds the decode kernel's limit " << kAttentionDecodeMaxHeadDim);
  QWENQ_CHECK(max_len >= 1 && max_len <= capacity,
              name << ": max_len=" << max_len << " must be in [1, capacity=" << capacity << "]");
  if (B == 0) return false;
  QWENQ_CHECK(q != nullptr && k_cache != nullptr && v_cache != nullptr && lens != nullptr && out != nullptr,
              name << ": null pointer");
  return true;
}

void attention_decode_ref(const float* q, const float* k_cache, const float* v_cache, const int32_t* lens, int64_t B,
                          int64_t H, int64_t Hkv, int64_t D, int64_t capacity, int64_t max_len, float* out) {
  const char* name = "attention_decode_ref";
  if (!attention_decode_check_args(name, q, k_cache, v_cache, lens, B, H, Hkv, D, capacity, max_len, out)) return;
  for (int64_t b = 0; b < B; ++b)
    QWENQ_CHECK(lens[b] >= 1 && lens[b] <= max_len,
                name << ": lens[" << b << "]=" << lens[b] << " must be in [1, max_len=" << max_len << "]");

  const int64_t group = H / Hkv;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  parallel_for(B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qs(D), s, acc(D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / H, h = task % H, g = h / group, len = lens[b];
      const float* qh = q + (b * H + h) * D;
      for (int64_t d = 0; d < D; ++d) qs[d] = qh[d] * scale;
      const float* kb = k_cache + (b * capacity * Hkv + g) * D;  // key j at kb + j·Hkv·D
      const float* vb = v_cache + (b * capacity * Hkv + g) * D;
      s.assign(len, 0.f);
      float m = -INFINITY;
      for (int64_t j = 0; j < len; ++j) {
        const float* kj = kb + j * Hkv * D;
        float dot = 0.f;
        for (int64_t d = 0; d < D; ++d) dot += qs[d] * kj[d];
        s[j] = dot;
        m = std::max(m, dot);
      }
      float l = 0.f;
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t j = 0; j < len; ++j) {
        const float p = std::exp(s[j] - m);
        l += p;
        const float* vj = vb + j * Hkv * D;
        for (int64_t d = 0; d < D; ++d) acc[d] += p * vj[d];
      }
      float* o = out + (b * H + h) * D;
      for (int64_t d = 0; d < D; ++d) o[d] = acc[d] / l;
    }
  });
}

}  // namespace qwenq
