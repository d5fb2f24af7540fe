// The small data-movement ops of a GPU forward pass, with their CPU twins (kernels/convert_ref.cpp):
//
//   f32_to_bf16    y[i] = bf16(x[i])        round to nearest, ties to even, NaN kept a quiet NaN: core/dtype.h's
//                                          f32_to_bf16 bit for bit (what torch's .to(torch.bfloat16) does)
//   f32_to_bf16_strided  y[r·ld + c] = bf16(scale·x[r·cols + c])   rows of x into the first cols columns of a
//                                          wider bf16 matrix (scale·x one fp32 product, a NaN taken as it is, then
//                                          f32_to_bf16), +0 in columns [cols, padded); the columns from padded on are
//                                          not touched
//   bf16_to_f32    y[i] = fp32(x[i])        exact (a bf16 is the top half of an fp32)
//   embedding_gather  out[t, :] = fp32(table[tokens[t], :])   table [V, C] in F32, BF16 or F16; exact widening
//   add_inplace    y[i] += x[i]             fp32 (the residual stream: x = x + sublayer(x))
//   add_bias_rows  y[r, n] += fp32(bias[n]) fp32 output [rows, N], bias [N] in F32, BF16 or F16 (the q/k/v
//                                          biases after a fused dequant-matmul, which has no bias epilogue)
//   store_row      cache[row[0], :] = x     x [n] fp32 into row row[0] of a [rows, n] cache in F32, or BF16 rounded
//                                          as f32_to_bf16; the index is read from memory (a decode step replayed
//                                          as a CUDA graph finds its position on the device)
// All are exact or one fp32 rounding per element, so the twins agree bit for bit (the GPU tests require it).
// There is no backward: the embeddings are frozen, the casts and adds are identities for the gradient.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace qwenq {

// x: [n] fp32, y: [n] bf16 bits. Must not overlap.
void f32_to_bf16_ref(const float* x, int64_t n, uint16_t* y);
// x: [n] bf16 bits, y: [n] fp32. Must not overlap.
void bf16_to_f32_ref(const uint16_t* x, int64_t n, float* y);
// x: [rows, cols] fp32; y: rows of ld >= padded >= cols bf16 values, columns [0, padded) written. Must not overlap.
void f32_to_bf16_strided_ref(const float* x, int64_t rows, int64_t cols, int64_t padded, float scale, uint16_t* y,
                             int64_t ld);

// table: [V, C] in `dtype` (F32, BF16 or F16); tokens: [T]; out: [T, C] fp32. Every token id must be in [0, V):
// the error names the first one that is not and its position.
void embedding_gather_ref(const void* table, DType dtype, int64_t V, int64_t C, const int32_t* tokens, int64_t T,
                          float* out);
// The gathers' check of host token ids against [0, V): the first one outside, with its position.
void check_token_ids(const int32_t* tokens, int64_t T, int64_t V);

// y, x: [n] fp32; y += x. x may equal y (doubling).
void add_inplace_ref(float* y, const float* x, int64_t n);
// y: [rows, N] fp32; bias: [N] in bias_dtype (F32, BF16 or F16); y[r, :] += bias.
void add_bias_rows_ref(float* y, int64_t rows, int64_t N, const void* bias, DType bias_dtype);
// x: [n] fp32; row: one index in [0, rows) (the error names it otherwise); cache: [rows, n] in cache_dtype (F32 or
// BF16). Must not overlap.
void store_row_ref(const float* x, int64_t n, const int32_t* row, int64_t rows, void* cache, DType cache_dtype);

}  // namespace qwenq

#ifdef QWENQ_HAVE_CUDA
#include "kernels/cuda_check.h"

namespace qwenq {

// CUDA twins (kernels/convert.cu): the same arguments in device memory, queued on `stream` (asynchronous; the
// argument checks are the refs' and throw before anything is queued). Grid-stride elementwise kernels.
void f32_to_bf16_cuda(const float* x, int64_t n, uint16_t* y, CudaStream stream = nullptr);
void bf16_to_f32_cuda(const uint16_t* x, int64_t n, float* y, CudaStream stream = nullptr);
void f32_to_bf16_strided_cuda(const float* x, int64_t rows, int64_t cols, int64_t padded, float scale, uint16_t* y,
                              int64_t ld, CudaStream stream = nullptr);
// tokens in device memory: the launcher copies them to the host to check them against V with the ref's message
// before the launch, so the call waits for the work already queued on `stream` (as cross_entropy_forward_cuda
// does with its targets). One block row per token, the C columns of the row across the threads. host_tokens (may
// be null): the host's copy of the ids the device array holds (a caller that just uploaded them, as the MoE layers'
// gather): checked instead, so the call does not wait for the stream.
void embedding_gather_cuda(const void* table, DType dtype, int64_t V, int64_t C, const int32_t* tokens, int64_t T,
                           float* out, CudaStream stream = nullptr, const int32_t* host_tokens = nullptr);
void add_inplace_cuda(float* y, const float* x, int64_t n, CudaStream stream = nullptr);
void add_bias_rows_cuda(float* y, int64_t rows, int64_t N, const void* bias, DType bias_dtype,
                        CudaStream stream = nullptr);
// row in device memory, read by the kernel: an index outside [0, rows) writes nothing (the launcher cannot read it
// without waiting; the ref throws).
void store_row_cuda(const float* x, int64_t n, const int32_t* row, int64_t rows, void* cache, DType cache_dtype,
                    CudaStream stream = nullptr);

}  // namespace qwenq
#endif  // QWENQ_HAVE_CUDA
