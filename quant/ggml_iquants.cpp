// IQ4_NL and IQ4_XS, llama.cpp's non-linear 4-bit formats, as ggml's quantize_iq4_nl / quantize_iq4_xs compute them
// for a file (quantize_row_iq4_nl_impl with 7 tries; math: quant/ggml_kquants.h). Every expression keeps ggml's
// operation order and fp32 types; the file is compiled with -ffp-contract=off.
//
// Both store 4-bit indices into the 16 levels kIq4nl (x ≈ scale · kIq4nl[q]), values j and j + 16 of each 32 sharing
// byte j (j low):
//   IQ4_NL (18 bytes per 32): fp16 d, qs[16].
//   IQ4_XS (136 bytes per 256): fp16 d, u16 scales_h (top 2 bits of sub-block i's 6-bit code at bits 2i), scales_l[4]
//     (low 4 bits, sub-block i in the low (even i) or high nibble of byte i/2), qs[128]; sub-block i's scale is
//     d·(code_i − 32).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "quant/ggml_block_fields.h"
#include "quant/ggml_kquants.h"
#include "quant/ggml_search.h"

namespace qwenq::ggml_detail {

namespace {

constexpr const int8_t* kIq4nl = kIq4nlLevels;

// The index of the level nearest to x (the lower one on a tie), by bisection as ggml's best_index_int8.
int nearest_level(float x) {
  if (x <= kIq4nl[0]) return 0;
  if (x >= kIq4nl[15]) return 15;
  int lo = 0, hi = 15;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (x < kIq4nl[mid]) hi = mid;
    else lo = mid;
  }
  return x - kIq4nl[hi - 1] < kIq4nl[hi] - x ? hi - 1 : hi;
}

// One super-block of n values (32: IQ4_NL, 256: IQ4_XS) in blocks of 32: each block's scale by a weighted search over
// 15 candidate inverse scales, then (IQ4_XS) the 6-bit codes of the block scales against d = −max scale/32 and the
// indices again with each block's stored scale. Writes the indices L[n] and returns the super-block's fp16 d value
// (IQ4_NL: the block scale itself); codes[n/32] the 6-bit codes (IQ4_XS).
float iq4_search(const float* x, int n, const float* qw, uint8_t* L, int* codes) {
  constexpr int kTries = 7;
  float sigma2 = 0;
  for (int j = 0; j < n; ++j) sigma2 += x[j] * x[j];
  sigma2 *= 2.0f / static_cast<float>(n);
  float scales[8], weight[32];
  float max_scale = 0, amax_scale = 0;
  for (int ib = 0; ib < n / 32; ++ib) {
    const float* xb = x + 32 * ib;
    uint8_t* Lb = L + 32 * ib;
    for (int j = 0; j < 32; ++j) weight[j] = qw ? qw[32 * ib + j] * std::sqrt(sigma2 + xb[j] * xb[j]) : xb[j] * xb[j];
    float amax = 0, max = 0;
    for (int j = 0; j < 32; ++j) {
      const float ax = std::fabs(xb[j]);
      if (ax > amax) {
        amax = ax;
        max = xb[j];
      }
    }
    if (amax < 1e-15f) {  // GROUP_MAX_EPS
      scales[ib] = 0;
      continue;
    }
    float d = -max / static_cast<float>(kIq4nl[0]);
    float id = 1 / d;
    float sumqx = 0, sumq2 = 0;
    for (int j = 0; j < 32; ++j) {
      const int l = nearest_level(id * xb[j]);
      Lb[j] = static_cast<uint8_t>(l);
      const float q = kIq4nl[l], w = weight[j];
      sumqx += w * q * xb[j];
      sumq2 += w * q * q;
    }
    d = sumqx / sumq2;
    float best = d * sumqx;
    for (int itry = -kTries; itry <= kTries; ++itry) {
      id = static_cast<float>(itry + kIq4nl[0]) / max;
      sumqx = sumq2 = 0;
      for (int j = 0; j < 32; ++j) {
        const float q = kIq4nl[nearest_level(id * xb[j])], w = weight[j];
        sumqx += w * q * xb[j];
        sumq2 += w * q * q;
      }
      if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
        d = sumqx / sumq2;
        best = d * sumqx;
      }
    }
    scales[ib] = d;
    if (std::fabs(d) > amax_scale) {
      amax_scale = std::fabs(d);
      max_scale = d;
    }
  }
  if (n == 32) {  // IQ4_NL: the indices again with the block's fp32 scale
    const float id = scales[0] != 0 ? 1 / scales[0] : 0.0f;
    for (int j = 0; j < 32; ++j) L[j] = static_cast<uint8_t>(nearest_level(id * x[j]));
    return scales[0];
  }
  const float d = -max_scale / 32;
  const float id = d != 0 ? 1 / d : 0.0f;
  for (int ib = 0; ib < n / 32; ++ib) {
    const int l = std::max(-32, std::min(31, nearest_int(id * scales[ib])));
    const float dl = d * static_cast<float>(l);
    const float idl = dl != 0 ? 1 / dl : 0.0f;
    for (int j = 0; j < 32; ++j) L[32 * ib + j] = static_cast<uint8_t>(nearest_level(idl * x[32 * ib + j]));
    codes[ib] = l + 32;
  }
  return d;
}

}  // namespace

void quantize_iq4_nl(const float* x, uint8_t* out, const float* qw) {
  uint8_t L[32];
  store_f16(out, iq4_search(x, 32, qw, L, nullptr));
  pack_nibbles(L, out + 2);
}

void quantize_iq4_xs(const float* x, uint8_t* out, const float* qw) {
  uint8_t L[256];
  int codes[8];
  store_f16(out, iq4_search(x, 256, qw, L, codes));
  uint16_t scales_h = 0;
  uint8_t* scales_l = out + 4;
  for (int ib = 0; ib < 8; ++ib) {
    const uint8_t lo = static_cast<uint8_t>(codes[ib] & 0xF), hi = static_cast<uint8_t>(codes[ib] >> 4);
    if (ib % 2 == 0) scales_l[ib / 2] = lo;
    else scales_l[ib / 2] |= static_cast<uint8_t>(lo << 4);
    scales_h |= static_cast<uint16_t>(hi << (2 * ib));
  }
  std::memcpy(out + 2, &scales_h, 2);
  for (int i = 0; i < 8; ++i) pack_nibbles(L + 32 * i, out + 8 + 16 * i);
}

}  // namespace qwenq::ggml_detail
