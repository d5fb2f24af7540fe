// Q2_K and Q3_K, llama.cpp's 2- and 3-bit k-quants, as ggml computes them (math: quant/ggml_kquants.h). Every
// expression keeps ggml's operation order and fp32 types; the file is compiled with -ffp-contract=off.
//
// Block layouts (256 values, 16 sub-blocks of 16; value v: half h = v/128, j = (v%128)/32, k = v%32):
//   Q2_K (84 bytes): scales[16] (low nibble the sub-block's 4-bit scale, high nibble its 4-bit min), qs[64] (2 bits of v
//     at bits 2j of qs[32h + k]), fp16 d, fp16 dmin;  x = d·(scales & 15)·q − dmin·(scales >> 4).
//   Q3_K (110 bytes): hmask[32] (bit 4h + j of hmask[k]: set when q ≥ 4), qs[64] (the low 2 bits as Q2_K), scales[12]
//     (16 6-bit codes: low nibbles in bytes 0-7, j < 8 low and j ≥ 8 high, top 2 bits of sub-block j at bits 2(j/4) of
//     byte 8 + j%4), fp16 d;  x = d·(s_j − 32)·(q − 4), q in 0..7.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "quant/ggml_block_fields.h"
#include "quant/ggml_kquants.h"
#include "quant/ggml_search.h"

namespace qwenq::ggml_detail {

namespace {

constexpr int kQKK = 256;

// 2-bit codes L[256] into qs[64] (Q2_K's and Q3_K's low bits).
void pack_2bit(const uint8_t* L, uint8_t* qs) {
  for (int j = 0; j < kQKK; j += 128)
    for (int l = 0; l < 32; ++l)
      qs[j / 4 + l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

void put_q3_scale_code(uint8_t* sc, int j, int l) {
  if (j < 8) sc[j] = static_cast<uint8_t>(l & 0xF);
  else sc[j - 8] |= static_cast<uint8_t>((l & 0xF) << 4);
  sc[j % 4 + 8] |= static_cast<uint8_t>((l >> 4) << (2 * (j / 4)));
}

}  // namespace

void quantize_q2_k(const float* x, uint8_t* out, const float* qw) {
  uint8_t L[kQKK], Laux[16];
  float weights[16], mins[16], scales[16];
  uint8_t* sc = out;
  uint8_t* qs = out + 16;
  float d, dmin;
  if (!qw) {  // quantize_row_q2_K_ref
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 16; ++j) {
      for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
      scales[j] = make_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, true);
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    if (max_scale > 0) {
      const float iscale = 15.0f / max_scale;
      for (int j = 0; j < 16; ++j) sc[j] = static_cast<uint8_t>(nearest_int(iscale * scales[j]));
      store_f16(out + 80, max_scale / 15.0f);
    } else {
      std::memset(sc, 0, 16);
      store_f16(out + 80, 0.0f);
    }
    if (max_min > 0) {
      const float iscale = 15.0f / max_min;
      for (int j = 0; j < 16; ++j) sc[j] |= static_cast<uint8_t>(nearest_int(iscale * mins[j]) << 4);
      store_f16(out + 82, max_min / 15.0f);
    } else {
      store_f16(out + 82, 0.0f);
    }
    d = load_f16(out + 80);
    dmin = load_f16(out + 82);
  } else {  // quantize_row_q2_K_impl: σ² = Σx²/256 (not 2·), make_qkx3_quants, make_qp_quants for the 4-bit codes
    float sumx2 = 0, sw[16] = {};
    for (int j = 0; j < kQKK; ++j) sumx2 += x[j] * x[j];
    const float sigma2 = sumx2 / kQKK;
    for (int j = 0; j < 16; ++j) {
      for (int l = 0; l < 16; ++l) weights[l] = qw[16 * j + l] * std::sqrt(sigma2 + x[16 * j + l] * x[16 * j + l]);
      for (int l = 0; l < 16; ++l) sw[j] += weights[l];
      scales[j] = make_qkx3_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.9f, 0.05f, 36);
    }
    uint8_t Ls[16], Lm[16];
    const float dm = make_qp_quants(16, 15, scales, Ls, sw);
    const float mm = make_qp_quants(16, 15, mins, Lm, sw);
    store_f16(out + 80, dm);
    store_f16(out + 82, mm);
    d = load_f16(out + 80);
    dmin = load_f16(out + 82);
    for (int j = 0; j < 16; ++j) sc[j] = static_cast<uint8_t>(Ls[j] | (Lm[j] << 4));
  }
  for (int j = 0; j < 16; ++j) {
    const float dd = d * static_cast<float>(sc[j] & 0xF);
    if (dd == 0) continue;
    const float dm = dmin * static_cast<float>(sc[j] >> 4);
    for (int i = 0; i < 16; ++i) {
      const int l = nearest_int((x[16 * j + i] + dm) / dd);
      L[16 * j + i] = static_cast<uint8_t>(std::max(0, std::min(3, l)));
    }
  }
  pack_2bit(L, qs);
}

void quantize_q3_k(const float* x, uint8_t* out, const float* qw) {
  int8_t L[kQKK];
  float scales[16];
  uint8_t* hmask = out;
  uint8_t* qs = out + 32;
  uint8_t* sc = out + 96;
  std::memset(sc, 0, 12);
  if (!qw) {  // quantize_row_q3_K_ref
    float max_scale = 0, amax = 0;
    for (int j = 0; j < 16; ++j) {
      scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
      const float a = std::fabs(scales[j]);
      if (a > amax) {
        amax = a;
        max_scale = scales[j];
      }
    }
    if (max_scale != 0) {
      const float iscale = -32.0f / max_scale;
      for (int j = 0; j < 16; ++j) {
        int l = static_cast<int8_t>(nearest_int(iscale * scales[j]));
        put_q3_scale_code(sc, j, std::max(-32, std::min(31, l)) + 32);
      }
      store_f16(out + 108, 1 / iscale);
    } else {
      store_f16(out + 108, 0.0f);
    }
  } else {  // quantize_row_q3_K_impl: σ² = 2·Σx²/256, make_qx_quants per sub-block and for the 6-bit scale codes
    float sumx2 = 0, weights[16], sw[16];
    for (int j = 0; j < kQKK; ++j) sumx2 += x[j] * x[j];
    const float sigma2 = 2 * sumx2 / kQKK;
    for (int j = 0; j < 16; ++j) {
      for (int l = 0; l < 16; ++l) weights[l] = qw[16 * j + l] * std::sqrt(sigma2 + x[16 * j + l] * x[16 * j + l]);
      float sumw = 0;
      for (int l = 0; l < 16; ++l) sumw += weights[l];
      sw[j] = sumw;
      scales[j] = make_qx_quants(16, 4, x + 16 * j, L + 16 * j, weights);
    }
    int8_t Ls[16];
    const float d_block = make_qx_quants(16, 32, scales, Ls, sw);
    for (int j = 0; j < 16; ++j) put_q3_scale_code(sc, j, Ls[j]);
    store_f16(out + 108, d_block);
  }
  const float d = load_f16(out + 108);
  for (int j = 0; j < 16; ++j) {
    const float dd = d * static_cast<float>(q3_scale_code(sc, j) - 32);
    if (dd == 0) continue;
    for (int i = 0; i < 16; ++i) {
      const int l = nearest_int(x[16 * j + i] / dd);
      L[16 * j + i] = static_cast<int8_t>(std::max(-4, std::min(3, l)) + 4);
    }
  }
  std::memset(hmask, 0, 32);
  uint8_t low[kQKK];
  for (int j = 0; j < kQKK; ++j) {
    int l = L[j];
    if (l > 3) {
      hmask[j % 32] |= static_cast<uint8_t>(1 << (j / 32));
      l -= 4;
    }
    low[j] = static_cast<uint8_t>(l);
  }
  pack_2bit(low, qs);
}

}  // namespace qwenq::ggml_detail
