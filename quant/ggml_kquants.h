// The quantizers of llama.cpp's 5-bit and k-quant blocks, as ggml computes them, in fp32 with no fused multiply-adds
// (the file is compiled -ffp-contract=off): without an importance matrix as its reference code (quantize_row_*_ref),
// with one as quantize_row_*_impl (below). The bytes equal llama-quantize's and ggml_quantize_chunk's on x86-64
// (tests/test_gguf_kquants.cpp keeps llama.cpp's hashes).
//
// round(v) below is ggml's nearest_int: round half to even (v + 1.5·2^23 in fp32, the low mantissa bits).
//
// Q5_0 / Q5_1 (blocks of 32): as Q4_0 / Q4_1 with 32 levels: d = m / -16, q = min(31, trunc(x/d + 16.5)) (computed in
//   double, as gguf-py; x ≈ d (q - 16)); Q5_1 d = (max - min)/31, q = min(31, trunc((x - min)/d + 0.5)); the fifth bit of
//   value j is bit j of a u32 qh.
// Q4_K / Q5_K (super-blocks of 256 = 8 sub-blocks of 32, x ≈ d·s_j·q − dmin·m_j, q in [0, 15] / [0, 31]):
//   1. per sub-block j, weights w_i = sqrt(Σx²/32) + |x_i|, and (scale_j, min_j) from make_qkx2_quants: the min
//      clipped to ≤ 0, a first rounding with scale (max − min)/nmax, then nstep + 1 candidate scales
//      (nmax + rmin + rdelta·is)/(max − min) (Q4_K: rmin −1, rdelta 0.1, 20 steps; Q5_K: −0.5, 0.1, 15), each
//      followed by the weighted least-squares fit of scale and min to its codes (min forced to 0 when the fit
//      wants it positive); the candidate with the least Σ w·(scale·q + min − x)² wins;
//   2. 6-bit codes: s_j = round(63/max_j scale · scale_j), m_j = round(63/max_j min · min_j) (at most 63), d =
//      fp16(max scale/63), dmin = fp16(max min/63), packed in 12 bytes;
//   3. q = clamp(round((x + dmin·m_j)/(d·s_j)), 0, nmax) with the stored scales (a sub-block whose d·s_j is 0
//      keeps step 1's codes). Q4_K stores nibbles (values 64p + l low, 64p + 32 + l high); Q5_K the same with the
//      fifth bits in qh[32] (bit 2p for value 64p + l, 2p + 1 for 64p + 32 + l).
// Q6_K (super-blocks of 256 = 16 sub-blocks of 16, x ≈ d·s_j·(q − 32), q in [0, 63]):
//   1. per sub-block, make_qx_quants with nmax 32 and weights x²: the signed extreme m, codes round(−32/m · x)
//      clamped to [−32, 31] and the least-squares scale, then 18 more candidate scales −(32 + 0.1·is)/m (is = −9..9,
//      not 0), kept when they raise (Σ w·x·l)²/Σ w·l²;
//   2. int8 scales s_j = min(127, round(−128/M · scale_j)) for M the scale of largest |scale|, d = fp16(M/−128);
//   3. q = clamp(round(x/(d·s_j)), −32, 31) + 32; low nibbles in ql[128], top two bits in qh[64].
//
// With an importance matrix (llama-imatrix's per-column mean of squared inputs, imp[j] = E[x_j²] over the calibration
// tokens; the error the search minimizes becomes Σ_j w_j (x̂_j − x_j)², an estimate of the output error it causes):
//   Q4_0 / Q5_0: per block, w = imp·sqrt(σ² + x²) for σ² = Σx²/n over the whole row; make_qx_quants with these weights
//     (nmax 8 / 16): codes round(−nmax/m · x) and the least-squares scale, 18 more candidate scales kept when they raise
//     (Σ w x l)²/Σ w l²; d = the scale.
//   Q4_1 / Q5_1: the same weights; make_qkx3_quants (nmax 15 / 31): as make_qkx2_quants with rmin −0.9, rdelta 0.05,
//     36 steps.
//   Q4_K / Q5_K: w = imp·sqrt(σ² + x²) with σ² = 2·Σx²/256 over the super-block; make_qkx3_quants per sub-block; the
//     6-bit scale and min codes and the fp16 d, dmin from make_qp_quants (a weighted search of one step for the 8
//     values, weights Σw of each sub-block); then step 3 as above.
//   Q6_K: make_qx_quants per sub-block of 16 with weights imp itself; then steps 2 and 3 as above.
//   Q2_K / Q3_K: as Q4_K / Q6_K with sub-blocks of 16 (below).
//   Q8_0 and the float types ignore the importance (as ggml does).
// IQ4_NL / IQ4_XS (x ≈ s·v[q], v the 16 non-linear levels −127, −104, ..., 89, 113): per block of 32, weights
//   imp·sqrt(σ² + x²) (σ² = 2·Σx²/n over the 32 / 256 values; x² without importance), indices nearest to x/d for
//   d = −m/−127 (m the value of largest |x|), the weighted least-squares scale, then 15 candidate inverse scales
//   (i − 127)/m (i = −7..7) kept when they raise (Σ w x v)²/Σ w v²; IQ4_NL stores that scale (fp16) and the indices
//   nearest to x/scale; IQ4_XS stores d = −M/32 (M the block scale of largest |.|), 6-bit codes
//   clamp(round(scale/d), −32, 31) + 32, and the indices nearest to x/(d·code).
// Q2_K (super-blocks of 256 = 16 sub-blocks of 16, x ≈ d·s_j·q − dmin·m_j, q in 0..3, 4-bit s_j and m_j):
//   without importance, make_qkx2_quants per sub-block with weights |x| and the absolute error (rmin −0.5, 0.1, 15
//   steps), s_j = round(15/max scale · scale_j), m_j likewise, d = fp16(max scale/15); with it, weights
//   imp·sqrt(σ² + x²) for σ² = Σx²/256, make_qkx3_quants, and make_qp_quants (nmax 15) for the codes and both steps;
//   then q = clamp(round((x + dmin·m_j)/(d·s_j)), 0, 3).
// Q3_K (x ≈ d·(s_j − 32)·(q − 4), q in 0..7, 6-bit s_j): without importance, make_q3_quants per sub-block (weights x²,
//   single-code moves), s_j = clamp(round(−32/M · scale_j), −32, 31) + 32 for M the scale of largest |scale|, d =
//   fp16(M/−32); with it, make_qx_quants (nmax 4) with weights imp·sqrt(σ² + x²), σ² = 2·Σx²/256, and for the codes
//   make_qx_quants(nmax 32) weighted by each sub-block's Σw; then q = clamp(round(x/(d·(s_j − 32))), −4, 3) + 4.
#pragma once

#include <cstdint>

namespace qwenq::ggml_detail {

// The codes q[32] of one block of a "_0" format with `levels` codes (16: Q4_0, 32: Q5_0): d = m / -(levels/2) for m
// the value of largest |x| (the first on ties), q = min(levels - 1, trunc(x·(1/d) + levels/2 + 0.5)) in fp32. Returns d.
float block_codes_0(const float* x, int levels, uint8_t* q);
// The same for a "_1" format (Q4_1, Q5_1): d = (max - min)/(levels - 1), q = min(levels - 1, trunc((x - min)·(1/d) +
// 0.5)). Returns d, and the minimum in *min.
float block_codes_1(const float* x, int levels, uint8_t* q, float* min);

// 4-bit codes q[32] of one 32-block into 16 bytes: q[j] in the low nibble of byte j, q[j + 16] in the high one (Q4_0,
// Q4_1, IQ4_NL, each 32 of IQ4_XS).
void pack_nibbles(const uint8_t* q, uint8_t* out);

// The importance-weighted codes of one block (w[32]: the per-value weights imp·sqrt(σ² + x²)): "_0" by
// make_qx_quants (q = l + levels/2, returns d), "_1" by make_qkx3_quants (returns d, the minimum in *min).
float block_codes_0_weighted(const float* x, int levels, const float* w, uint8_t* q);
float block_codes_1_weighted(const float* x, int levels, const float* w, uint8_t* q, float* min);

// One block: 32 values for Q5_0 / Q5_1, 256 for the k-quants; out holds the block's bytes (22, 24, 144, 176, 210).
// Q5_0 / Q5_1 take the block's weights w[32] (null: no importance matrix); the k-quants take the importance qw[256]
// of the block's columns (null: none) and compute their weights themselves.
void quantize_q5_0(const float* x, uint8_t* out, const float* w = nullptr);
void quantize_q5_1(const float* x, uint8_t* out, const float* w = nullptr);
void quantize_q4_k(const float* x, uint8_t* out, const float* qw = nullptr);
void quantize_q5_k(const float* x, uint8_t* out, const float* qw = nullptr);
void quantize_q6_k(const float* x, uint8_t* out, const float* qw = nullptr);
// Q2_K (84 bytes) and Q3_K (110 bytes), quant/ggml_kquants_low.cpp (layouts there; read by quant/ggml_decode_vec.cpp).
void quantize_q2_k(const float* x, uint8_t* out, const float* qw = nullptr);
void quantize_q3_k(const float* x, uint8_t* out, const float* qw = nullptr);
// IQ4_NL (18 bytes per 32) and IQ4_XS (136 bytes per 256), quant/ggml_iquants.cpp (layouts there; read by
// quant/ggml_decode_vec.cpp): qw the importance
// of the block's columns, or null (weights x² then, as ggml's quantize_iq4_nl / quantize_iq4_xs).
void quantize_iq4_nl(const float* x, uint8_t* out, const float* qw = nullptr);
void quantize_iq4_xs(const float* x, uint8_t* out, const float* qw = nullptr);

}  // namespace qwenq::ggml_detail
