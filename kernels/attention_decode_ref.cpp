// attention_decode_ref (kernels/attention_decode.h): plain loops, one (sequence, head) per task, fp32 throughout.
// For each task: qs = scale·q, s_j = qs·k_j in key order (d ascending), m = max s, p_j = exp(s_j − m),
// l = Σ p_j (key order), out = (Σ_j p_j·v_j) / l. The simplest correct code: the GPU kernel is checked against it.
// One template over the cache's element type: fp32 rows as they are, bf16 rows widened exactly (core/dtype.h) into
// an fp32 row first; both then go through the same two out-of-line row functions, so the bf16 twin is the fp32
// one on the widened cache bit for bit (inlined into two instantiations, -march=native code may contract a·b + c
// into an fma in one and not the other).
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/threads.h"
#include "kernels/attention_decode.h"

namespace qwenq {

bool attention_decode_check_args(const char* name, const float* q, const void* k_cache, const void* v_cache,
                                 const int32_t* lens, int64_t B, int64_t H, int64_t Hkv, int64_t D, int64_t capacity,
                                 int64_t max_len, const float* out, int cache_elem_bytes, bool kernel_limits) {
  QWENQ_CHECK(B >= 0 && H > 0 && Hkv > 0 && D > 0,
              name << ": bad shape B=" << B << " H=" << H << " Hkv=" << Hkv << " D=" << D);
  QWENQ_CHECK(H % Hkv == 0, name << ": query heads H=" << H << " must be a multiple of kv heads Hkv=" << Hkv);
  QWENQ_CHECK(!kernel_limits || D <= kAttentionDecodeMaxHeadDim,
              name << ": head dim D=" << D << " exceeds the decode kernel's limit " << kAttentionDecodeMaxHeadDim);
  QWENQ_CHECK(!kernel_limits || cache_elem_bytes == 4 || D % 2 == 0,
              name << ": head dim D=" << D << " is odd; a bf16 KV cache needs an even D (pairs of columns per load)");
  QWENQ_CHECK(max_len >= 1 && max_len <= capacity,
              name << ": max_len=" << max_len << " must be in [1, capacity=" << capacity << "]");
  if (B == 0) return false;
  QWENQ_CHECK(q != nullptr && k_cache != nullptr && v_cache != nullptr && lens != nullptr && out != nullptr,
              name << ": null pointer");
  return true;
}

namespace {

// Row r of D elements as fp32: the row itself, or its bf16 bits widened into buf.
inline const float* fp32_row(const float* r, int64_t, float*) { return r; }
inline const float* fp32_row(const uint16_t* r, int64_t D, float* buf) {
  for (int64_t d = 0; d < D; ++d) buf[d] = bf16_to_f32(r[d]);
  return buf;
}

// Σ_d qs[d]·k[d], d ascending.
[[gnu::noinline]] float dot_row(const float* qs, const float* k, int64_t D) {
  float dot = 0.f;
  for (int64_t d = 0; d < D; ++d) dot += qs[d] * k[d];
  return dot;
}

// acc[d] += p·v[d].
[[gnu::noinline]] void axpy_row(float p, const float* v, int64_t D, float* acc) {
  for (int64_t d = 0; d < D; ++d) acc[d] += p * v[d];
}

template <typename T>
void decode_ref(const char* name, const float* q, const T* k_cache, const T* v_cache, const int32_t* lens, int64_t B,
                int64_t H, int64_t Hkv, int64_t D, int64_t capacity, int64_t max_len, float* out) {
  if (!attention_decode_check_args(name, q, k_cache, v_cache, lens, B, H, Hkv, D, capacity, max_len, out,
                                   static_cast<int>(sizeof(T))))
    return;
  for (int64_t b = 0; b < B; ++b)
    QWENQ_CHECK(lens[b] >= 1 && lens[b] <= max_len,
                name << ": lens[" << b << "]=" << lens[b] << " must be in [1, max_len=" << max_len << "]");

  const int64_t group = H / Hkv;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  parallel_for(B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qs(D), s, acc(D), row(D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / H, h = task % H, g = h / group, len = lens[b];
      const float* qh = q + (b * H + h) * D;
      for (int64_t d = 0; d < D; ++d) qs[d] = qh[d] * scale;
      const T* kb = k_cache + (b * capacity * Hkv + g) * D;  // key j at kb + j·Hkv·D
      const T* vb = v_cache + (b * capacity * Hkv + g) * D;
      s.assign(len, 0.f);
      float m = -INFINITY;
      for (int64_t j = 0; j < len; ++j) {
        const float dot = dot_row(qs.data(), fp32_row(kb + j * Hkv * D, D, row.data()), D);
        s[j] = dot;
        m = std::max(m, dot);
      }
      float l = 0.f;
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t j = 0; j < len; ++j) {
        const float p = std::exp(s[j] - m);
        l += p;
        axpy_row(p, fp32_row(vb + j * Hkv * D, D, row.data()), D, acc.data());
      }
      float* o = out + (b * H + h) * D;
      for (int64_t d = 0; d < D; ++d) o[d] = acc[d] / l;
    }
  });
}

}  // namespace

void attention_decode_ref(const float* q, const float* k_cache, const float* v_cache, const int32_t* lens, int64_t B,
                          int64_t H, int64_t Hkv, int64_t D, int64_t capacity, int64_t max_len, float* out) {
  decode_ref("attention_decode_ref", q, k_cache, v_cache, lens, B, H, Hkv, D, capacity, max_len, out);
}

void attention_decode_bf16_ref(const float* q, const uint16_t* k_cache, const uint16_t* v_cache, const int32_t* lens,
                               int64_t B, int64_t H, int64_t Hkv, int64_t D, int64_t capacity, int64_t max_len,
                               float* out) {
  decode_ref("attention_decode_bf16_ref", q, k_cache, v_cache, lens, B, H, Hkv, D, capacity, max_len, out);
}

}  // namespace qwenq
