// Q5_0, Q5_1, Q4_K, Q5_K and Q6_K quantization as ggml's reference code computes it (math: quant/ggml_kquants.h).
// Every expression keeps ggml's operation order and fp32 types; the file is compiled with -ffp-contract=off.
#include "quant/ggml_kquants.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "quant/ggml_search.h"

namespace qwenq::ggml_detail {

namespace {

constexpr int kQK = 32, kQKK = 256;

// Q4_K (nmax 15) and Q5_K (nmax 31): codes L[256] and the 12 scale bytes, d and dmin written to out. Without
// importance (qw null) as quantize_row_q{4,5}_K_ref: weights sqrt(Σx²/32) + |x| per sub-block, make_qkx2_quants,
// 6-bit codes of scale/max scale; with it as quantize_row_q{4,5}_K_impl: weights qw·sqrt(σ² + x²) for σ² = 2·Σx²/256
// over the super-block, make_qkx3_quants (rmin −0.9, rdelta 0.05, 36 steps), the 6-bit codes and the two fp16 steps
// from make_qp_quants weighted by each sub-block's Σw.
void quantize_k_scaled(const float* x, int nmax, float rmin, int nstep, const float* qw, uint8_t* out, uint8_t* L) {
  float scales[8], mins[8], weights[32];
  uint8_t Laux[32], Ls[8], Lm[8];
  float d_block, m_block;
  if (qw) {
    float sum_x2 = 0;
    for (int l = 0; l < kQKK; ++l) sum_x2 += x[l] * x[l];
    const float sigma2 = 2 * sum_x2 / kQKK;
    float sw[8];
    for (int j = 0; j < 8; ++j) {
      for (int l = 0; l < 32; ++l) weights[l] = qw[32 * j + l] * std::sqrt(sigma2 + x[32 * j + l] * x[32 * j + l]);
      float sumw = 0;
      for (int l = 0; l < 32; ++l) sumw += weights[l];
      sw[j] = sumw;
      scales[j] = make_qkx3_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.9f, 0.05f, 36);
    }
    d_block = make_qp_quants(8, 63, scales, Ls, sw);
    m_block = make_qp_quants(8, 63, mins, Lm, sw);
    for (int j = 0; j < 8; ++j) {
      Ls[j] = std::min<uint8_t>(63, Ls[j]);
      Lm[j] = std::min<uint8_t>(63, Lm[j]);
    }
  } else {
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {
      float sum_x2 = 0;
      for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
      const float av_x = std::sqrt(sum_x2 / 32);
      for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
      scales[j] = make_qkx2_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin, 0.1f, nstep, false);
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    for (int j = 0; j < 8; ++j) {
      Ls[j] = std::min<uint8_t>(63, static_cast<uint8_t>(nearest_int(inv_scale * scales[j])));
      Lm[j] = std::min<uint8_t>(63, static_cast<uint8_t>(nearest_int(inv_min * mins[j])));
    }
    d_block = max_scale / 63.0f;
    m_block = max_min / 63.0f;
  }
  uint8_t* sc = out + 4;
  std::memset(sc, 0, 12);
  for (int j = 0; j < 8; ++j) {
    const uint8_t ls = Ls[j], lm = Lm[j];
    if (j < 4) {
      sc[j] = ls;
      sc[j + 4] = lm;
    } else {
      sc[j + 4] = static_cast<uint8_t>((ls & 0xF) | ((lm & 0xF) << 4));
      sc[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
      sc[j] |= static_cast<uint8_t>((lm >> 4) << 6);
    }
  }
  store_f16(out, d_block);
  store_f16(out + 2, m_block);
  const float d = load_f16(out), dmin = load_f16(out + 2);
  for (int j = 0; j < 8; ++j) {
    int s, m;
    if (j < 4) {
      s = sc[j] & 63;
      m = sc[j + 4] & 63;
    } else {
      s = (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4);
      m = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
    }
    const float dd = d * static_cast<float>(s);
    if (dd == 0) continue;
    const float dm = dmin * static_cast<float>(m);
    for (int i = 0; i < 32; ++i) {
      const int l = nearest_int((x[32 * j + i] + dm) / dd);
      L[32 * j + i] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    }
  }
}

}  // namespace

float block_codes_0(const float* x, int levels, uint8_t* q) {
  float amax = 0, m = 0;
  for (int j = 0; j < kQK; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      m = x[j];
    }
  }
  const float d = m / static_cast<float>(-levels / 2);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const float offset = static_cast<float>(levels / 2) + 0.5f;
  for (int j = 0; j < kQK; ++j) {
    const float t = std::trunc(x[j] * id + offset);  // two fp32 roundings, as llama-quantize's x86 build
    q[j] = static_cast<uint8_t>(std::min(static_cast<float>(levels - 1), std::max(0.0f, t)));
  }
  return d;
}

float block_codes_1(const float* x, int levels, uint8_t* q, float* min) {
  float lo = x[0], hi = x[0];
  for (int j = 1; j < kQK; ++j) {
    lo = std::min(lo, x[j]);
    hi = std::max(hi, x[j]);
  }
  const float d = (hi - lo) / static_cast<float>(levels - 1);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int j = 0; j < kQK; ++j) {
    const float t = std::trunc((x[j] - lo) * id + 0.5f);
    q[j] = static_cast<uint8_t>(std::min(static_cast<float>(levels - 1), std::max(0.0f, t)));
  }
  *min = lo;
  return d;
}

namespace {

// 5-bit codes: low nibbles of values j and j + 16 in qs[j], the fifth bit of value j as bit j of the u32 qh.
void pack_5bit(const uint8_t* q, uint8_t* qh_out, uint8_t* qs) {
  uint32_t qh = 0;
  for (int j = 0; j < kQK / 2; ++j) {
    qs[j] = static_cast<uint8_t>((q[j] & 0xF) | ((q[j + kQK / 2] & 0xF) << 4));
    qh |= static_cast<uint32_t>((q[j] >> 4) & 1) << j;
    qh |= static_cast<uint32_t>((q[j + kQK / 2] >> 4) & 1) << (j + kQK / 2);
  }
  std::memcpy(qh_out, &qh, 4);
}

}  // namespace

void pack_nibbles(const uint8_t* q, uint8_t* out) {
  for (int j = 0; j < kQK / 2; ++j) out[j] = static_cast<uint8_t>(q[j] | (q[j + kQK / 2] << 4));
}

float block_codes_0_weighted(const float* x, int levels, const float* w, uint8_t* q) {
  int8_t L[kQK];
  const float d = make_qx_quants(kQK, levels / 2, x, L, w);
  for (int j = 0; j < kQK; ++j) q[j] = static_cast<uint8_t>(L[j]);
  return d;
}

float block_codes_1_weighted(const float* x, int levels, const float* w, uint8_t* q, float* min) {
  uint8_t Laux[kQK];
  float neg_min;
  const float d = make_qkx3_quants(kQK, levels - 1, x, w, q, &neg_min, Laux, -0.9f, 0.05f, 36);
  *min = -neg_min;
  return d;
}

void quantize_q5_0(const float* x, uint8_t* out, const float* w) {
  uint8_t q[kQK];
  store_f16(out, w ? block_codes_0_weighted(x, 32, w, q) : block_codes_0(x, 32, q));
  pack_5bit(q, out + 2, out + 6);
}

void quantize_q5_1(const float* x, uint8_t* out, const float* w) {
  uint8_t q[kQK];
  float min;
  store_f16(out, w ? block_codes_1_weighted(x, 32, w, q, &min) : block_codes_1(x, 32, q, &min));
  store_f16(out + 2, min);
  pack_5bit(q, out + 4, out + 8);
}

void quantize_q4_k(const float* x, uint8_t* out, const float* qw) {
  uint8_t L[kQKK];
  quantize_k_scaled(x, 15, -1.0f, 20, qw, out, L);
  uint8_t* q = out + 16;
  for (int j = 0; j < kQKK; j += 64, q += 32)
    for (int l = 0; l < 32; ++l) q[l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
}

void quantize_q5_k(const float* x, uint8_t* out, const float* qw) {
  uint8_t L[kQKK];
  quantize_k_scaled(x, 31, -0.5f, 15, qw, out, L);
  uint8_t* qh = out + 16;
  uint8_t* ql = out + 48;
  std::memset(qh, 0, 32);
  uint8_t m1 = 1, m2 = 2;
  for (int n = 0; n < kQKK; n += 64, ql += 32) {
    for (int j = 0; j < 32; ++j) {
      int l1 = L[n + j];
      if (l1 > 15) {
        l1 -= 16;
        qh[j] |= m1;
      }
      int l2 = L[n + j + 32];
      if (l2 > 15) {
        l2 -= 16;
        qh[j] |= m2;
      }
      ql[j] = static_cast<uint8_t>(l1 | (l2 << 4));
    }
    m1 = static_cast<uint8_t>(m1 << 2);
    m2 = static_cast<uint8_t>(m2 << 2);
  }
}

void quantize_q6_k(const float* x, uint8_t* out, const float* qw) {
  int8_t L[kQKK];
  float scales[16];
  float max_scale = 0, max_abs = 0;
  for (int ib = 0; ib < 16; ++ib) {
    scales[ib] = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib, qw ? qw + 16 * ib : nullptr);
    const float a = std::fabs(scales[ib]);
    if (a > max_abs) {
      max_abs = a;
      max_scale = scales[ib];
    }
  }
  std::memset(out, 0, 210);
  if (max_abs < 1e-15f) {  // GROUP_MAX_EPS: an all-zero block
    store_f16(out + 208, 0.0f);
    return;
  }
  int8_t* sc = reinterpret_cast<int8_t*>(out + 192);
  const float iscale = -128.0f / max_scale;
  store_f16(out + 208, 1 / iscale);
  for (int ib = 0; ib < 16; ++ib) sc[ib] = static_cast<int8_t>(std::min(127, nearest_int(iscale * scales[ib])));
  const float d = load_f16(out + 208);
  for (int j = 0; j < 16; ++j) {
    const float dd = d * static_cast<float>(sc[j]);
    if (dd == 0) continue;
    for (int i = 0; i < 16; ++i) {
      const int l = nearest_int(x[16 * j + i] / dd);
      L[16 * j + i] = static_cast<int8_t>(std::max(-32, std::min(31, l)) + 32);
    }
  }
  uint8_t* ql = out;
  uint8_t* qh = out + 128;
  for (int h = 0; h < 2; ++h, ql += 64, qh += 32) {
    const int j = 128 * h;
    for (int l = 0; l < 32; ++l) {
      const int a = L[j + l], b = L[j + l + 32], c = L[j + l + 64], e = L[j + l + 96];
      ql[l] = static_cast<uint8_t>((a & 0xF) | ((c & 0xF) << 4));
      ql[l + 32] = static_cast<uint8_t>((b & 0xF) | ((e & 0xF) << 4));
      qh[l] = static_cast<uint8_t>((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6));
    }
  }
}

}  // namespace qwenq::ggml_detail
