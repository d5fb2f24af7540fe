// Flash attention on the GPU: the CUDA twins of attention_forward_ref / attention_backward_ref
// (kernels/attention.h has the math; kernels/flash_attention.cu has the tiling).
//
//   forward   out = softmax(scale · q·kᵀ + causal mask) · v per sequence and query head, lse = log Σ exp (fp32,
//             natural log), scale = 1/sqrt(D); q, k, v, out in bf16.
//   backward  dq = scale · dS·k, dk = scale · Σ_group dSᵀ·q, dv = Σ_group Pᵀ·dout with P = exp(S − lse),
//             dS = P ⊙ (dout·vᵀ − δ), δ = rowsum(dout ⊙ out); dout, q, k, v, out in bf16, dq, dk, dv in fp32.
//
// What is the same as the refs: the layouts ([T, H, D] and [T, Hkv, D], rows of sequences packed back to back and
// described by cu_seqlens), causal attention inside each sequence only, GQA (query head h reads kv head
// h / (H / Hkv)), dk and dv summed over the query heads of a group, outputs written (not accumulated), the
// argument checks with the refs' messages.
// What differs: the element type. q, k, v, out, dout are bf16 (DType::BF16; other dtypes are refused), the
// products run on the tensor cores with fp32 accumulation, P and dS are rounded to bf16 before their second
// product (as FlashAttention-2 does); the softmax statistics (running max and sum), lse and δ stay in fp32.
// Gradients are fp32 because an optimizer step on LoRA adapters wants them there, and so that the dk/dv sums over
// a group's heads round once. The result is deterministic: every output element is computed by one thread
// block in a fixed order (dq has its own pass instead of atomics).
// Non-finite inputs: the causal mask zeroes P (and dS) of hidden keys, but the tensor-core products then take
// 0 · NaN = NaN, so a NaN or inf in a row of v, k or dout also reaches the rows of its 64-row diagonal tile that
// precede it, where the refs keep it causal. Finite inputs are unaffected (nothing trains on from a NaN anyway).
//
// Head dims 64 (Qwen2.5-0.5B) and 128 (1.5B ... 72B, Qwen3) have kernels; the build compiles those listed in
// CMake's QWENQ_FLASH_HEAD_DIMS (both by default). Any other D is refused naming it and the compiled dims.
#pragma once

#include <cstdint>

#include "core/dtype.h"

#ifdef QWENQ_HAVE_CUDA
#include "kernels/cuda_check.h"

namespace qwenq {

// True when this build has the flash attention kernels for head dim D; and the compiled dims as text ("64, 128").
bool flash_attention_compiled(int64_t D);
const char* flash_attention_compiled_dims();

// q: [T, H, D], k and v: [T, Hkv, D], out: [T, H, D], all in `dtype` (BF16) in device memory, 16-byte aligned;
// lse: [T, H] fp32 in device memory, or null. cu_seqlens: n_seqs + 1 row offsets in HOST memory, as the ref's
// (the launcher reads them to plan the thread blocks and uploads a small tile table); T = cu_seqlens[n_seqs]:
// the buffers must hold that many rows. Queued on `stream` (asynchronous); the argument checks throw before
// anything is queued. out must not overlap the inputs.
void attention_forward_cuda(const void* q, const void* k, const void* v, const int32_t* cu_seqlens, int64_t n_seqs,
                            int64_t H, int64_t Hkv, int64_t D, void* out, float* lse, DType dtype,
                            CudaStream stream = nullptr);

// The Hopper forward (kernels/flash_attention_wgmma.cu): attention_forward_cuda's arguments, outputs and bound on
// wgmma; only the order of the fp32 sums in the tensor cores differs. It needs an sm_90 device running this
// build's sm_90a code (cuda_wgmma_supported(), kernels/cuda_check.h; refused with a message otherwise).
// attention_forward_cuda runs it instead of the mma.sync kernel when cuda_wgmma_enabled() (the default on such a
// device; QWENQ_WGMMA=0 turns it off). H200, 2026-12-04: 375 / 307 TFLOP/s forward / backward at 16K tokens, 1.6x
// the mma.sync kernels (benchmarks/results/2026-12-04-h200-first-gpu-run.md).
void attention_forward_wgmma_cuda(const void* q, const void* k, const void* v, const int32_t* cu_seqlens,
                                  int64_t n_seqs, int64_t H, int64_t Hkv, int64_t D, void* out, float* lse,
                                  DType dtype, CudaStream stream = nullptr);
// The Hopper backward (kernels/flash_attention_wgmma.cu): attention_backward_cuda's arguments, outputs, two
// deterministic passes and bound on wgmma. attention_backward_cuda runs it when cuda_wgmma_enabled().
void attention_backward_wgmma_cuda(const void* dout, const void* q, const void* k, const void* v, const void* out,
                                   const float* lse, const int32_t* cu_seqlens, int64_t n_seqs, int64_t H,
                                   int64_t Hkv, int64_t D, float* dq, float* dk, float* dv, DType dtype,
                                   CudaStream stream = nullptr);

// dout, q, out: [T, H, D] and k, v: [T, Hkv, D] in `dtype` (BF16), device memory, 16-byte aligned; lse: [T, H]
// fp32 from attention_forward_cuda (required). dq: [T, H, D], dk and dv: [T, Hkv, D], fp32, written. cu_seqlens
// in host memory, as in the forward. Uses a [T, H] fp32 scratch buffer (δ), allocated and freed on `stream`.
// The outputs must not overlap the inputs or each other.
void attention_backward_cuda(const void* dout, const void* q, const void* k, const void* v, const void* out,
                             const float* lse, const int32_t* cu_seqlens, int64_t n_seqs, int64_t H, int64_t Hkv,
                             int64_t D, float* dq, float* dk, float* dv, DType dtype, CudaStream stream = nullptr);

}  // namespace qwenq
#endif  // QWENQ_HAVE_CUDA
