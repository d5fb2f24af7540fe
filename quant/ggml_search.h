// The scale searches ggml's quantizers share (ggml-quants.c), in its fp32 operation order (the .cpp is compiled
// -ffp-contract=off, so the results are llama.cpp's x86-64 bytes). Internal to quant/ggml_kquants*.cpp.
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

#include <cstdint>

namespace qwenq::ggml_detail {

int nearest_int(float v);
void store_f16(uint8_t* p, float v);
float load_f16(const uint8_t* p);

float make_qx_quants(int n, int nmax, const float* x, int8_t* L, const float* qw);
float make_q3_quants(int n, int nmax, const float* x, int8_t* L);
float make_qkx2_quants(int n, int nmax, const float* x, const float* w, uint8_t* L, float* the_min, uint8_t* Laux,
                       float rmin, float rdelta, int nstep, bool use_mad);
float make_qkx3_quants(int n, int nmax, const float* x, const float* w, uint8_t* L, float* the_min, uint8_t* Laux,
                       float rmin, float rdelta, int nstep);
float make_qp_quants(int n, int nmax, const float* x, uint8_t* L, const float* w);

}  // namespace qwenq::ggml_detail
