// llama.cpp's CPU products for GGUF block weights: each row of activations quantized to 8 bits per block, then integer
// dot products against the weight's codes and one float multiply-add per block. An approximation of the exact
// product (quant/packed_matvec.h: x in fp32 times the exact ŵ), offered because it is how llama.cpp decodes on a CPU.
//
// Activations (a row x of K values; llama.cpp's vec_dot_type of each weight type):
//   Q8_0, for the blocks of 32 (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL), per block b:
//         da_b = fp16(d), d = max|x_b| / 127, a = roundf(x · (1/d))
//         (quantize_row_q8_0_ref, the same bytes as quantize_ggml_row(Q8_0); llama.cpp's Q8_1 for Q4_1 and Q5_1 holds
//         the same codes)
//   Q8_K, for the super-blocks of 256 (Q2_K ... Q6_K, IQ4_XS), per block B:
//         da_B = −max/127 in fp32 with max the x of largest |x|, a = min(127, nearest_int(x · (−127/max)))
//         (quantize_row_q8_K_ref; a in [−127, 127])
//   so x ≈ da · a; sums of 16 consecutive a are kept (ggml's bsums) for the weights' offsets and mins.
//
// Products, with every sum Σ over codes exact in int32 (|Σ| < 2^31 for any block):
//   blocks of 32 with ŵ = d·c + m (Q8_0: c = q; Q4_0: q − 8; Q5_0: q − 16; IQ4_NL: level[q]; Q4_1, Q5_1: c = q
//   and a min m, 0 for the others):
//          y = Σ_b fp16(d_b)·da_b · Σ_{i∈b} c_i·a_i  +  fp16(m_b)·da_b · Σ_{i∈b} a_i
//   Q4_K, Q5_K (sub-blocks j of 32, 6-bit s_j and m_j):
//          y = Σ_B da_B·fp16(d) · Σ_j s_j·Σ_{i∈j} q_i·a_i  −  da_B·fp16(dmin) · Σ_j m_j·Σ_{i∈j} a_i
//   Q6_K (sub-blocks v of 16, int8 s_v):
//          y = Σ_B da_B·fp16(d) · Σ_v s_v·(Σ_{i∈v} q_i·a_i − 32·Σ_{i∈v} a_i)
//   Q3_K (sub-blocks v of 16, 6-bit codes s_v; u = 2 low bits + 4·hmask bit):
//          y = Σ_B da_B·fp16(d) · Σ_v (s_v − 32)·(Σ_{i∈v} u_i·a_i − 4·Σ_{i∈v} a_i)
//   Q2_K (sub-blocks v of 16, 4-bit scale s_v and min m_v, 2-bit q):
//          y = Σ_B da_B·fp16(d) · Σ_v s_v·Σ_{i∈v} q_i·a_i  −  da_B·fp16(dmin) · Σ_v m_v·Σ_{i∈v} a_i
//   IQ4_XS (sub-blocks j of 32, 6-bit ls_j):
//          y = Σ_B da_B·fp16(d) · Σ_j (ls_j − 32)·Σ_{i∈j} level[q_i]·a_i
// which is Σ_i ŵ_i·(da·a_i) up to the fp32 rounding of the per-block terms: the only error against the exact product
// is the activations' 8-bit rounding (relative ~0.4 % of a block's largest |x| per value).
//
// Why: the exact products decode every weight to fp32 and spend a fused multiply-add per weight and row; here 64
// codes take one AVX-512 VNNI instruction (vpdpbusd, u8 × s8 → s32), the rest is unpacking bit fields (and, for the
// IQ4 levels, one byte shuffle). Without AVX-512 VNNI, AVX2's vpmaddubsw + vpmaddwd do 32 codes in two instructions
// (every type), else the same sums run in portable loops (the twin the tests compare against).
#pragma once

#include <cstdint>
#include <vector>

#include "quant/ggml_blocks.h"

namespace qwenq {

// Every quantized type qwenq reads: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K ... Q6_K and IQ4_XS (not F32, F16,
// BF16).
bool ggml_int8_product_supported(GgmlType t);
// The activation type (Q8_0 or Q8_K) weights of type t are multiplied with; throws for an unsupported t.
GgmlType ggml_int8_activation_type(GgmlType t);

// M rows of K activations quantized to `act` (Q8_0 or Q8_K; K a multiple of its block).
struct GgmlInt8Rows {
  GgmlType act = GgmlType::Q8_0;
  int64_t M = 0, K = 0, block = 0;  // block: 32 (Q8_0) or 256 (Q8_K)
  std::vector<int8_t> q;            // [M, K]
  std::vector<float> d;             // [M, K / block]: x ≈ d · q
  std::vector<int16_t> bsums;       // [M, K / 16]: sums of 16 consecutive q
};
void quantize_int8_rows(GgmlType act, const float* x, int64_t M, int64_t K, GgmlInt8Rows* out);

// The product of one weight row (K values of type t at w) with row m of a: AVX-512 VNNI where compiled for it, else
// AVX2 where the CPU has AVX2, FMA and F16C (compiled into every x86-64 build), else the
// portable loops; ggml_int8_dot_portable is always the portable loops.
// For the tests: ggml_int8_force_avx2(true) makes every product (dot and matvec) take the AVX2 kernels instead of the
// VNNI ones until ggml_int8_force_avx2(false); returns false, changing nothing, on a CPU without AVX2.
float ggml_int8_dot(GgmlType t, const uint8_t* w, const GgmlInt8Rows& a, int64_t m);
float ggml_int8_dot_portable(GgmlType t, const uint8_t* w, const GgmlInt8Rows& a, int64_t m);
bool ggml_int8_force_avx2(bool on);

// y[M, N] = x[M, K] · Ŵᵀ through the int8 products, for any M (rows of x quantized 64 at a time, output rows in
// parallel, 4 rows of x per pass over a weight row; each y[m, n] the same bits whatever M and the thread count).
// Throws for an unsupported type.
void ggml_linear_matvec_int8(const GgmlLinear& w, const float* x, int64_t M, float* y);
// The same with the rows already quantized (a.act = ggml_int8_activation_type(w.type), a.K = w.K): y[a.M, N], for
// callers that multiply the same rows with many tables (the output table's blocks).
void ggml_linear_matvec_int8(const GgmlLinear& w, const GgmlInt8Rows& a, float* y);

}  // namespace qwenq
