// The quantizers of llama.cpp's 5-bit and k-quant blocks (without an importance matrix), as ggml's reference code
// (quantize_row_*_ref) computes them, in fp32 with no fused multiply-adds (the file is compiled -ffp-contract=off):
// the bytes equal llama-quantize's on x86-64 (tests/test_gguf_kquants.cpp keeps llama.cpp's hashes).
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
#pragma once

#include <cstdint>

namespace qwenq::ggml_detail {

// The codes q[32] of one block of a "_0" format with `levels` codes (16: Q4_0, 32: Q5_0): d = m / -(levels/2) for m
// the value of largest |x| (the first on ties), q = min(levels - 1, trunc(x·(1/d) + levels/2 + 0.5)) in fp32. Returns d.
float block_codes_0(const float* x, int levels, uint8_t* q);
// The same for a "_1" format (Q4_1, Q5_1): d = (max - min)/(levels - 1), q = min(levels - 1, trunc((x - min)·(1/d) +
// 0.5)). Returns d, and the minimum in *min.
float block_codes_1(const float* x, int levels, uint8_t* q, float* min);

// One block: 32 values for Q5_0 / Q5_1, 256 for the k-quants; out holds the block's bytes (22, 24, 144, 176, 210).
void quantize_q5_0(const float* x, uint8_t* out);
void quantize_q5_1(const float* x, uint8_t* out);
void quantize_q4_k(const float* x, uint8_t* out);
void quantize_q5_k(const float* x, uint8_t* out);
void quantize_q6_k(const float* x, uint8_t* out);

}  // namespace qwenq::ggml_detail
