// Products with a packed Linear for few rows of activations, without dequantizing the whole weight:
//
//   y[m, n] = Σ_k x[m, k] · ŵ[n, k]        x [M, K], y [M, N] row-major fp32 (y written, not accumulated)
//
// ŵ[n, k] is exactly the value the format's reader computes (dequantize_int_linear, nf4_dequantize,
// dequantize_ggml_linear: the same float operations on the same stored numbers), so the only difference from
// "dequantize, then multiply" is the order of the fp32 sums.
//
// Why: decoding a token (M = 1) with the dequantize-then-multiply path writes and re-reads 4 bytes per weight
// for every Linear, and dequantizes all of it; a 4-bit weight stores half a byte. These read the packed bytes
// once and multiply as they go, keeping only a tile of outputs' sums in cache:
//   GPTQ (2/3/4/8-bit, act-order g_idx or not) and AWQ GEMM: a thread owns a tile of output columns and walks
//     the packed rows down K; for each input k it turns the tile's codes into ŵ with the group's fp32 scale and
//     zero and adds ŵ · x[m, k] into the tile's sums (AWQ: each word holds 8 outputs of one input, the tile's
//     sums kept in the words' nibble order and put back in column order at the end); a Linear whose rows were
//     sorted by group in memory (PackedIntLinear::perm) multiplies x's columns gathered in that order (dx scattered);
//   NF4 / FP4 (bitsandbytes, with or without double quantization): row by row, a block's 16 code values scaled
//     by its absmax once (ŵ = code · absmax, bnb's one rounding), then table lookups and fused multiply-adds;
//   GGUF blocks: 4 rows at a time into a buffer with dequantize_ggml_row (16 values per vector operation for Q8_0,
//     Q4_0, Q4_K, Q5_K and Q6_K: quant/ggml_decode_vec.cpp), then dot products.
// Rows of x go in chunks of up to 8 (the row-wise formats: 4 for GGUF, 8 for NF4, against blocks of 4 and 2 rows
// of ŵ), so the packed weight is read once per chunk. Each row of y takes the same float steps whatever M and the
// thread count: decoding a token alone and in a batch gives the same bits.
//
// When they pay: below the *_max_rows limits apply_linear (trainer/qwen_weights.h) calls these; above, it
// dequantizes the weight once into a buffer and runs the fp32 GEMM. The limits are where the two cross on the
// Qwen2.5-7B MLP shapes (benchmarks/bench_dequant_cpu, 2 cores with AVX-512;
// benchmarks/results/2026-12-02-packed-matvec-cpu.md). The GPTQ/AWQ kernels run near the FMA peak, so they stay
// ahead of the dequantize-then-GEMM path to 512 rows (act-order to 256); GGUF's and NF4's rows cost their decoding.
#pragma once

#include <cstdint>

#include "quant/fp8.h"
#include "quant/ggml_blocks.h"
#include "quant/int_checkpoint.h"
#include "quant/nf4.h"

namespace qwenq {

void int_linear_matvec(const PackedIntLinear& p, const float* x, int64_t M, float* y);
// An act-order (desc_act) 2/4/8-bit GPTQ Linear with its rows sorted by group (int_linear_sort_inputs_by_group, when
// that makes every group contiguous, as GPTQ's g_idx always does); any other as it is. The loader calls it: the
// grouped kernels then read one scale row per group instead of one per input, and x is gathered once per call
// (Qwen2.5-7B MLP shapes, 2 cores: forward 1.8x faster at 1 to 512 rows, transposed 1.4-1.6x; the sort ~30 ms per
// Linear at load; benchmarks/results/2026-12-02-act-order-sorted-cpu.md).
PackedIntLinear int_linear_for_products(PackedIntLinear p);
// 512 rows for GPTQ without act-order and AWQ, 256 with act-order (a scattered g_idx), 16 for 3-bit GPTQ (one input
// at a time: its codes cross words; not measured beyond decode).
int64_t int_linear_matvec_max_rows(const PackedIntLinear& p);
constexpr int64_t kNf4MatvecMaxRows = 64;
constexpr int64_t kGgmlMatvecMaxRows = 64;

// The transposed product, the gradient with respect to the input (apply_linear_backward_input):
//   dx[M, K] = dy[M, N] · Ŵ        dx[m, k] = Σ_n dy[m, n] · ŵ[n, k]   (dx written)
// GPTQ/AWQ: a thread owns inputs and sums over all N outputs (16-lane partial sums, then the lanes, then the tail);
// NF4/GGUF: a thread owns chunks of 512 inputs and adds dy[m, n]·ŵ[n, :] row by row (4 rows per pass), n in
// order. 3-bit GPTQ is not covered (int_linear_matvec_t throws; its limit is 0). Same bits whatever M and the
// thread count.
void int_linear_matvec_t(const PackedIntLinear& p, const float* dy, int64_t M, float* dx);
void nf4_linear_matvec_t(const Nf4Tensor& t, int64_t N, int64_t K, const float* dy, int64_t M, float* dx);
// The type's block must divide 512 (every type qwenq reads).
void ggml_linear_matvec_t(const GgmlLinear& w, const float* dy, int64_t M, float* dx);
// Where the transposed products stop paying (same benchmark): 64 rows for GPTQ and AWQ, 32 with act-order, 0 for
// 3-bit GPTQ; 32 for NF4 and for GGUF.
int64_t int_linear_matvec_t_max_rows(const PackedIntLinear& p);
constexpr int64_t kNf4MatvecTMaxRows = 32;
constexpr int64_t kGgmlMatvecTMaxRows = 32;
// Block-wise FP8 (quant/fp8.h), forward and transposed: rows of ŵ decoded 16 (AVX-512) or 8 (AVX2) bytes at a time
// times the block's scale (fp8_row), as GGUF's rows are. The limits are where they meet dequantize-then-GEMM at the
// Qwen2.5-7B gate_proj shape (forward 94 vs 90 ms at 64 rows, transposed 68 vs 81 at 32;
// benchmarks/results/2026-12-02-fp8-cpu.md).
void fp8_linear_matvec(const Fp8Linear& w, const float* x, int64_t M, float* y);
void fp8_linear_matvec_t(const Fp8Linear& w, const float* dy, int64_t M, float* dx);
constexpr int64_t kFp8MatvecMaxRows = 64;
constexpr int64_t kFp8MatvecTMaxRows = 32;

// t holds the weight [N, K] flattened row-major (bnb's layout for an nn.Linear).
void nf4_linear_matvec(const Nf4Tensor& t, int64_t N, int64_t K, const float* x, int64_t M, float* y);
void ggml_linear_matvec(const GgmlLinear& w, const float* x, int64_t M, float* y);

}  // namespace qwenq
