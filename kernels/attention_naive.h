// A plain fp32 causal GQA attention on the GPU: the fallback of the model forward for head dims the flash kernel
// does not compile (kernels/flash_attention.h: D = 64 and 128 only), e.g. the tiny test models (D = 16) and the
// imported stories260K (D = 8). Its CPU twin is attention_forward_ref (kernels/attention.h has the math), with the
// same arguments: q, k, v, out, lse fp32 in device memory, cu_seqlens in HOST memory (as attention_forward_cuda
// takes them; the launcher uploads a copy).
//
// One thread block per (query row, query head), no tiling and no tensor cores: two passes over the row's keys,
//   pass 1  s_j = (scale·q)·k_j for the keys j of the row's sequence up to the row, each thread keeping an online
//           (max, sum of exp) over its keys, merged across the block into m and l;
//   pass 2  the block computes p_j = exp(s_j − m) for a chunk of keys into shared memory, then each thread
//           accumulates Σ_j p_j·v_j for its output columns; out = acc / l, lse = m + log(l).
// The same fp32 softmax as the ref (scale folded into q first, max subtracted); what differs is the order of the
// sums (the dot products, the exp sum across threads) and expf against Eigen's vectorized exp. Work is
// O(T·keys·D) with every k/v row read once per query row and head: fine for the small models it serves, far
// from the flash kernel's speed on a real one.
//
// Backward (attention_naive_backward_cuda, twin attention_backward_ref, the FlashAttention-2 formulas of
// kernels/attention.h with P = exp(S − lse) recomputed from the forward's lse), two kernels on the stream:
//   dq   grid (T, H):   block (i, h) sums δ = dout_i·out_i, then dq_i = scale·Σ_j dS_ij·k_j over chunks of
//                       128 keys (one key's dS per thread into shared memory, then each thread its columns);
//                       writes δ to a [T, H] scratch buffer
//   dkv  grid (T, Hkv): block (j, g) sums over the group's query heads and the queries i >= j of j's sequence:
//                       dv_j = Σ P_ij·dout_i, dk_j = Σ dS_ij·(scale·q_i)
// Each output element has one owner block and a fixed order of sums: deterministic, no atomics. fp32 throughout;
// O(T·keys·D) work and every row re-read per block, like the forward: meant for the small models.
#pragma once

#include <cstdint>

namespace qwenq {

// Largest head dim the naive kernel takes (4 output columns per thread of a 128-thread block); declared in every
// build: the host asks it before an upload.
constexpr int64_t kAttentionNaiveMaxHeadDim = 512;

}  // namespace qwenq

#ifdef QWENQ_HAVE_CUDA
#include "kernels/cuda_check.h"

namespace qwenq {

// q: [T, H, D], k and v: [T, Hkv, D], out: [T, H, D], fp32 device memory, T = cu_seqlens[n_seqs]; lse: [T, H]
// fp32 device memory or null. cu_seqlens: n_seqs + 1 offsets in host memory. Queued on `stream`; the argument
// checks (the ref's messages) throw before anything is queued. out must not overlap the inputs.
void attention_naive_forward_cuda(const float* q, const float* k, const float* v, const int32_t* cu_seqlens,
                                  int64_t n_seqs, int64_t H, int64_t Hkv, int64_t D, float* out, float* lse,
                                  CudaStream stream = nullptr);

// dout, q, out: [T, H, D], k, v: [T, Hkv, D], lse: [T, H] from the forward (required), all fp32 device memory;
// dq [T, H, D], dk and dv [T, Hkv, D] fp32 device memory, written. cu_seqlens in host memory. Uses a [T, H]
// scratch buffer allocated on `stream`. The outputs must not overlap the inputs or each other.
void attention_naive_backward_cuda(const float* dout, const float* q, const float* k, const float* v,
                                   const float* out, const float* lse, const int32_t* cu_seqlens, int64_t n_seqs,
                                   int64_t H, int64_t Hkv, int64_t D, float* dq, float* dk, float* dv,
                                   CudaStream stream = nullptr);

}  // namespace qwenq
#endif  // QWENQ_HAVE_CUDA
