// The scale searches ggml's quantizers share (ggml-quants.c), in its fp32 operation order. Defined here, inline, so
// that each quantizer's calls are specialized as ggml's static functions are (constant weights pointers and error
// kinds folded: 1.3x faster than calls into another file). Include only from files compiled with -ffp-contract=off
// (quant/ggml_kquants*.cpp, quant/ggml_iquants.cpp; CMakeLists.txt), so the results are llama.cpp's x86-64 bytes.
//
// nearest_int(v): round half to even through the fp32 mantissa (v + 1.5·2^23), |v| < 2^22.
// make_qx_quants: n values on the signed levels −nmax..nmax−1: codes round(−nmax/m · x) for m the value of largest |x|
//   and the least-squares scale Σwxl/Σwl², then 18 more candidate scales −(nmax + 0.1·is)/m (is = −9..9, not 0), kept
//   when they raise (Σ w x l)²/Σ w l²; weights qw, or x² when null. Codes + nmax in L; returns the scale.
// make_q3_quants: the same first rounding with weights x², then up to 5 passes moving single codes while
//   (Σ w x l)²/Σ w l² grows (Q3_K's reference search). Codes + nmax in L.
// make_qkx2_quants / make_qkx3_quants: scale and min of n values on levels 0..nmax (min clipped to ≤ 0): a first
//   rounding with (max − min)/nmax, then nstep + 1 candidate scales (nmax + rmin + rdelta·is)/(max − min), each with the
//   weighted least-squares fit of scale and min to its codes (min 0 when the fit wants it positive); the least
//   Σ w·(scale·q + min − x)² wins (qkx2: also the first when max == min; qkx3: weights required, max ≤ min all zero).
//   qkx2 with use_mad measures Σ w·|scale·q + min − x| instead (Q2_K). Returns the scale, −min in *the_min.
// make_qp_quants: codes 0..nmax of n non-negative values (a super-block's sub-block scales) and one step: max/nmax,
//   8 more steps (nmax + 0.1·is)/max kept when they lower Σ w (x − step·L)², then up to 5 passes moving single codes;
//   returns Σ wxL / Σ wL².
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/dtype.h"

namespace qwenq::ggml_detail {

// ggml's nearest_int: round half to even through the fp32 mantissa (|v| < 2^22).
inline int nearest_int(float v) {
  const float shifted = v + 12582912.0f;
  int32_t bits;
  std::memcpy(&bits, &shifted, 4);
  return (bits & 0x007fffff) - 0x00400000;
}

inline void store_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}
inline float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// Scale and (through the_min, as −min ≥ 0) offset of n values on nmax + 1 levels, codes in L (see the header).
template <bool kUseMad>
float make_qkx2_quants_t(int n, int nmax, const float* x, const float* w, uint8_t* L, float* the_min, uint8_t* Laux,
                         float rmin, float rdelta, int nstep) {
  constexpr bool use_mad = kUseMad;
  float min = x[0], max = x[0];
  float sum_w = w[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    std::fill(L, L + n, 0);
    *the_min = -min;
    return 0.0f;
  }
  float iscale = static_cast<float>(nmax) / (max - min);
  float scale = 1 / iscale;
  float best = 0;
  for (int i = 0; i < n; ++i) {
    const int l = nearest_int(iscale * (x[i] - min));
    L[i] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    float diff = scale * static_cast<float>(L[i]) + min - x[i];
    diff = use_mad ? std::fabs(diff) : diff * diff;
    best += w[i] * diff;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * static_cast<float>(is) + static_cast<float>(nmax)) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * (x[i] - min));
      l = std::max(0, std::min(nmax, l));
      Laux[i] = static_cast<uint8_t>(l);
      const float fl = static_cast<float>(l);
      sum_l += w[i] * fl;
      sum_l2 += w[i] * fl * fl;
      sum_xl += w[i] * fl * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * static_cast<float>(Laux[i]) + this_min - x[i];
        diff = use_mad ? std::fabs(diff) : diff * diff;
        cur += w[i] * diff;
      }
      if (cur < best) {
        std::copy(Laux, Laux + n, L);
        best = cur;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

inline float make_qkx2_quants(int n, int nmax, const float* x, const float* w, uint8_t* L, float* the_min,
                             uint8_t* Laux, float rmin, float rdelta, int nstep, bool use_mad) {
  return use_mad ? make_qkx2_quants_t<true>(n, nmax, x, w, L, the_min, Laux, rmin, rdelta, nstep)
                 : make_qkx2_quants_t<false>(n, nmax, x, w, L, the_min, Laux, rmin, rdelta, nstep);
}

// The value of largest |x| (the first on ties), or 0 when that magnitude is below ggml's GROUP_MAX_EPS (1e-15).
inline float signed_extreme(int n, const float* x) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  return amax < 1e-15f ? 0.0f : max;
}

// Scale of n values on the signed levels −nmax..nmax−1 with weights qw (null: x², rmse_type 1), codes + nmax in L.
inline float make_qx_quants(int n, int nmax, const float* x, int8_t* L, const float* qw) {
  const float max = signed_extreme(n, x);
  if (max == 0.0f) {  // |max| < GROUP_MAX_EPS
    std::fill(L, L + n, 0);
    return 0.0f;
  }
  auto code = [nmax](float v) { return std::max(-nmax, std::min(nmax - 1, nearest_int(v))); };
  float iscale = static_cast<float>(-nmax) / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = code(iscale * x[i]);
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = qw ? qw[i] : x[i] * x[i], fl = static_cast<float>(l);
    sumlx += w * x[i] * fl;
    suml2 += w * fl * fl;
  }
  float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(is)) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const float w = qw ? qw[i] : x[i] * x[i], fl = static_cast<float>(code(iscale * x[i]));
      sumlx += w * x[i] * fl;
      suml2 += w * fl * fl;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(nmax + code(iscale * x[i]));
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// ggml's make_qkx3_quants is make_qkx2_quants' search with the squared error (and x² weights when none are given,
// which no caller here does): the same operations, so the same function. (Its "max <= min" test of an all-equal block
// is qkx2's "max == min": min is clipped to at most x[0] <= max.)
inline float make_qkx3_quants(int n, int nmax, const float* x, const float* w, uint8_t* L, float* the_min, uint8_t* Laux,
                       float rmin, float rdelta, int nstep) {
  return make_qkx2_quants(n, nmax, x, w, L, the_min, Laux, rmin, rdelta, nstep, false);
}

// Codes L[n] in [0, nmax] of n non-negative values (a super-block's sub-block scales or mins) and their common step:
// max/nmax, then 8 more steps (nmax + 0.1·is)/max (is = −4..4, not 0) kept when they lower Σ w·(x − step·L)², then
// up to 5 passes that move single codes while (Σ w x L)²/Σ w L² grows. Returns the least-squares step Σ wxL / Σ wL².
inline float make_qp_quants(int n, int nmax, const float* x, uint8_t* L, const float* w) {
  float max = 0;
  for (int i = 0; i < n; ++i) max = std::max(max, x[i]);
  if (max == 0) {
    std::fill(L, L + n, 0);
    return 0.0f;
  }
  float iscale = static_cast<float>(nmax) / max;
  for (int i = 0; i < n; ++i) L[i] = static_cast<uint8_t>(nearest_int(iscale * x[i]));
  const float scale = 1 / iscale;
  float best = 0;
  for (int i = 0; i < n; ++i) {
    const float diff = x[i] - scale * static_cast<float>(L[i]);
    best += w[i] * diff * diff;
  }
  for (int is = -4; is <= 4; ++is) {
    if (is == 0) continue;
    const float iscale_is = (0.1f * static_cast<float>(is) + static_cast<float>(nmax)) / max;
    const float scale_is = 1 / iscale_is;
    float mse = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::min(nmax, nearest_int(iscale_is * x[i]));
      const float diff = x[i] - scale_is * static_cast<float>(l);
      mse += w[i] * diff * diff;
    }
    if (mse < best) {
      best = mse;
      iscale = iscale_is;
    }
  }
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::min(nmax, nearest_int(iscale * x[i]));
    L[i] = static_cast<uint8_t>(l);
    const float fl = static_cast<float>(l);
    sumlx += w[i] * x[i] * fl;
    suml2 += w[i] * fl * fl;
  }
  for (int itry = 0; itry < 5; ++itry) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      const float fl = static_cast<float>(L[i]);
      float slx = sumlx - w[i] * x[i] * fl;
      float sl2 = suml2 - w[i] * fl * fl;
      if (slx > 0 && sl2 > 0) {
        const int new_l = std::min(nmax, nearest_int(x[i] * sl2 / slx));
        if (new_l != L[i]) {
          const float fn = static_cast<float>(new_l);
          slx += w[i] * x[i] * fn;
          sl2 += w[i] * fn * fn;
          if (slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = static_cast<uint8_t>(new_l);
            sumlx = slx;
            suml2 = sl2;
            ++changed;
          }
        }
      }
    }
    if (!changed) break;
  }
  return sumlx / suml2;
}

inline float make_q3_quants(int n, int nmax, const float* x, int8_t* L) {
  const float max = signed_extreme(n, x);
  if (max == 0.0f) {  // |max| < GROUP_MAX_EPS
    std::fill(L, L + n, 0);
    return 0.0f;
  }
  const float iscale = static_cast<float>(-nmax) / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = nearest_int(iscale * x[i]);
    l = std::max(-nmax, std::min(nmax - 1, l));
    L[i] = static_cast<int8_t>(l);
    const float w = x[i] * x[i], fl = static_cast<float>(l);
    sumlx += w * x[i] * fl;
    suml2 += w * fl * fl;
  }
  for (int itry = 0; itry < 5; ++itry) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i], fl = static_cast<float>(L[i]);
      float slx = sumlx - w * x[i] * fl;
      if (slx > 0) {
        float sl2 = suml2 - w * fl * fl;
        int new_l = nearest_int(x[i] * sl2 / slx);
        new_l = std::max(-nmax, std::min(nmax - 1, new_l));
        if (new_l != L[i]) {
          const float fn = static_cast<float>(new_l);
          slx += w * x[i] * fn;
          sl2 += w * fn * fn;
          if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = static_cast<int8_t>(new_l);
            sumlx = slx;
            suml2 = sl2;
            ++changed;
          }
        }
      }
    }
    if (!changed) break;
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(L[i] + nmax);
  return sumlx / suml2;
}

}  // namespace qwenq::ggml_detail
