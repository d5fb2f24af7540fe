// Dense linear layer on the CPU with bf16 operands (the CPU trainer's `--cpu-matmul bf16`):
//
//   y[m, n]  = Σ_k bf16(x[m, k]) · bf16(W[n, k])  (+ bias[n])     linear_forward_bf16
//   dx[m, k] = Σ_n bf16(dy[m, n]) · bf16(W[n, k])                 linear_backward_input_bf16
//
// bf16(v): v rounded to bfloat16, to nearest even. A product of two bf16 values is exact in fp32; the sums are
// fp32. These are the numerics of the GPU path on a 16-bit weight (cuBLASLt rounds fp32 activations to the weight's
// dtype, kernels/blas_lt.h) and of the 4-bit tensor-core products (bf16(ŵ)), and what torch computes on the CPU under
// bf16 autocast; the fp32 products of kernels/gemm.h stay the reference.
//
// Same arguments and checks as linear_forward_ref / linear_backward_input_ref; W in F32 (rounded here) or BF16 (read
// as is). F16 is refused: rounding an f16 weight to bf16 would drop 3 bits of it that the GPU keeps.
//
// With AVX512_BF16 (checked at run time; the kernel is compiled into every x86-64 build): vdpbf16ps on packed
// operand pairs, a 12 x 32 register tile. The reduction (K forward, N backward) runs from its start in slices of
// kBf16SliceR values; within a slice each output's pairs (r, r+1) go into one fp32 accumulator in increasing r,
// and the slice's sum is added to the output (the first slice writes it). The order depends on the shape alone, so
// the bits are the same for any number of threads. The instruction and the fp32 -> bf16 conversion flush denormal
// inputs and results to zero. Elsewhere (or with QWENQ_CPU_BF16_PORTABLE=1): the rounded operands (x as fp32, W as
// BF16) through the fp32 GEMM of kernels/gemm.h, in its order (the forward's tiles depend on the thread count there);
// denormals kept. The two paths agree to fp32
// summation error, which tests/test_gemm_bf16.cpp bounds against double sums of the rounded operands.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "quant/format/qgemm_layout.h"

namespace qwenq {

constexpr int64_t kBf16SliceR = 256;  // reduction values per accumulator slice (128 pairs)

// Whether this CPU runs the AVX512_BF16 kernel (and the OS saves the zmm registers), and whether it is used: not
// with QWENQ_CPU_BF16_PORTABLE=1, read once.
bool cpu_has_avx512_bf16();
bool bf16_gemm_uses_avx512();

void linear_forward_bf16(const float* x, int64_t M, int64_t K, const void* w, DType w_dtype, int64_t N,
                         const void* bias, DType bias_dtype, float* y);

void linear_backward_input_bf16(const float* dy, int64_t M, int64_t N, const void* w, DType w_dtype, int64_t K,
                                float* dx);

// A CPU product with a switchable operand type: the bf16 products above when `bf16` is set and W is F32 or BF16 (and
// M > 0), else the fp32 ones of kernels/gemm.h (an F16 W always: the kernel refuses it). The trainer's
// --cpu-matmul and eval's (trainer/qwen_weights.h, set_cpu_bf16_products) both choose through these.
void linear_forward_cpu(bool bf16, const float* x, int64_t M, int64_t K, const void* w, DType w_dtype, int64_t N,
                        const void* bias, DType bias_dtype, float* y);
void linear_backward_input_cpu(bool bf16, const float* dy, int64_t M, int64_t N, const void* w, DType w_dtype,
                               int64_t K, float* dx);

// The same products with a 4-bit weight in the Q4 layout (quant/format/qgemm_layout.h; with or without a permutation:
// act-order rows sorted by group, input k in layout row inv[k] where perm[inv[k]] = k), Ŵ never materialized:
//
//   y[m, n]  = Σ_k bf16(x[m, k]) · bf16(ŵ[n, k])  (+ bias[n])     qgemm_int4_forward_bf16
//   dx[m, k] = Σ_n bf16(dy[m, n]) · bf16(ŵ[n, k])                 qgemm_int4_backward_input_bf16
//
// With AVX512_BF16 each B panel's 32 outputs x 256 reduction values of ŵ are dequantized (q4_dequant's fp32 values)
// into a tile of the thread's and packed from there as an F32 weight, so the bits are those of
// linear_forward_bf16 / linear_backward_input_bf16 on q4_unpack(w) as an F32 weight, which is what the portable path
// computes; a permuted weight's tiles are read input by input (one word load per input instead of per 8), in the
// inputs' own order, so the sums are still the dense product's. For the CPU trainer's and eval's `--cpu-matmul bf16` on GPTQ, AWQ and bitsandbytes 4-bit Linears (their
// Q4 form per product: q4_transient_int_linear / q4_transient_nf4): no fp32 copy of the weight, 8x fewer bytes read.
void qgemm_int4_forward_bf16(const Q4View& w, const float* x, int64_t M, const void* bias, DType bias_dtype, float* y);
void qgemm_int4_backward_input_bf16(const Q4View& w, const float* dy, int64_t M, float* dx);

// Tests: the portable path whatever the CPU (true), or back to the default choice (false).
void set_bf16_gemm_portable_for_testing(bool portable);

}  // namespace qwenq
