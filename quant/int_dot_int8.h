// int8-activation products of GPTQ weights (`--int8-activations` on a GPTQ or AWQ checkpoint): each activation row
// rounded to 8 bits per block of 32 inputs, integer dot products against the 4- or 8-bit codes, one float
// multiply-add per block and one per group. An approximation of the exact product (quant/packed_matvec.h: x in fp32
// times the exact ŵ), the same trade llama.cpp makes on a CPU (quant/ggml_dot_int8.h for GGUF weights).
//
// Weights: GPTQ v1/v2 qweight [K·bits/32, N] (word r of column n holds inputs r·(32/bits) + j at bits·j), fp16
// scales s[g, n], zero points z[g, n] (v1 stores z − 1), groups in input order (g(k) = k / group),
// ŵ[n, k] = (q[k, n] − z[g(k), n]) · s[g(k), n]. AWQ GEMM weights are first repacked into this layout
// (int_linear_for_int8 below, through int_linear_to_gptq_v2 in quant/int_checkpoint.h; the same ŵ bit for bit), and
// act-order (desc_act) weights have their rows sorted by group (int_linear_sort_inputs_by_group: stored row i is
// input perm[i]), so every x below is read as x[perm[i]] when the activations are quantized, as ExLlama and vLLM
// reorder an act-order weight's rows once and gather the activations on every call.
//
// Activations (a row x of K values, blocks b of 32):
//   d_b = max_{i∈b} |x_i| / 127 (fp32),  a_i = round-half-even(x_i · (127 / max|x|)) ∈ [−127, 127],  x_i ≈ d_b · a_i;
//   S_g = Σ_{b∈g} d_b · Σ_{i∈b} a_i (fp32, blocks in order), one per group.
// Product (the integer sums exact in int32: |Σ_{i∈b} q·a| ≤ 32·255·127 < 2^31):
//   y[n] = Σ_g s[g, n] · ( Σ_{b∈g} d_b · Σ_{i∈b} q[i, n]·a_i  −  z[g, n] · S_g )
// evaluated as G_g = fma(float(Σ q·a), d_b, G_g) over the blocks of g, then y = fma(s, fma(−z, S_g, G_g), y) over
// the groups: the same float operations in the same order in the vector kernel and its portable twin, so the two
// agree bit for bit. The only error against the exact product is the activations' 8-bit rounding.
//
// Why: the exact product decodes every weight to fp32 and spends a fused multiply-add per weight and row; here one
// AVX-512 VNNI vpdpbusd multiplies 64 unsigned codes by 64 signed activations (AVX2's vpmaddubsw + vpmaddwd do 32
// in two instructions). A GPTQ word already holds 8 (4-bit)
// or 4 (8-bit) consecutive inputs of one column: the 8-bit word is a vpdpbusd lane as it is; the 4-bit word's low
// nibbles are inputs 0, 2, 4, 6 and its high nibbles 1, 3, 5, 7, so the activations are stored in that order
// (per 8 inputs: 0 2 4 6 1 3 5 7) and a word costs one AND, one shift and two vpdpbusd for 16 columns at once.
#pragma once

#include <cstdint>
#include <vector>

#include "quant/int_checkpoint.h"

namespace qwenq {

// True for GPTQ v1/v2 weights of 4 or 8 bits whose groups follow the stored rows (g_idx[i] = i / group) with group
// and K multiples of 32; the others (act-order before sorting, 2/3 bits, AWQ before repacking) keep the exact product.
bool int_int8_product_supported(const PackedIntLinear& p);
// Why int_int8_product_supported(p) is false, for messages ("" when it is true).
std::string int_int8_unsupported_reason(const PackedIntLinear& p);
// An AWQ Linear the int8 products can read once repacked (4-bit, K and group multiples of 32) in the GPTQ v2 layout
// (int_linear_to_gptq_v2: the same ŵ); an act-order 4/8-bit GPTQ Linear with its rows sorted by group when that makes
// it supported (every group `group` inputs long, as GPTQ's desc_act writes them); any other Linear as it is. The
// loader calls it when the switch is on.
PackedIntLinear int_linear_for_int8(PackedIntLinear p);

// M rows of K activations quantized for weights of `bits` bits and `group` inputs per group.
struct IntInt8Rows {
  int bits = 4;
  int64_t M = 0, K = 0, group = 0;
  std::vector<int8_t> q;    // [M, K]: codes, 4-bit: per 8 inputs in the order 0 2 4 6 1 3 5 7; 8-bit: in order
  std::vector<float> d;     // [M, K / 32]: x ≈ d · a per block of 32
  std::vector<float> gsum;  // [M, ceil(K / group)]: S_g
  std::vector<int32_t> bsum;  // [M, K / 32]: Σ a per block (the AVX2 kernel's 8-bit offset)
};
// x [M, K] row-major (read as x[m, perm[i]] when p has a perm). A block holding an inf or a NaN gets zero codes and d = NaN (its row's outputs come out NaN,
// as the exact product's would).
void quantize_int_activations(const PackedIntLinear& p, const float* x, int64_t M, IntInt8Rows* out);

// y [a.M, p.N] = the product above (p supported, a quantized for p): the AVX-512 VNNI kernel where the build targets
// it, else the AVX2 kernel where the CPU has AVX2, FMA and F16C (compiled into every x86-64 build), else the portable
// loops. _portable always runs the loops (the twin the tests compare against); _avx2 runs the AVX2 kernel and
// returns false, computing nothing, on a CPU without it (for the tests, whatever the build's target).
void int_linear_matvec_int8(const PackedIntLinear& p, const IntInt8Rows& a, float* y);
void int_linear_matvec_int8_portable(const PackedIntLinear& p, const IntInt8Rows& a, float* y);
bool int_linear_matvec_int8_avx2(const PackedIntLinear& p, const IntInt8Rows& a, float* y);
// Quantizes x [M, K] in passes of 64 rows and multiplies.
void int_linear_matvec_int8(const PackedIntLinear& p, const float* x, int64_t M, float* y);

}  // namespace qwenq
