// Causal grouped-query attention over variable-length sequences packed back to back.
//   For sequence s occupying rows [cu[s], cu[s+1]) and query head h (kv head g = h / (H/Hkv)):
//   S = q_h · k_gᵀ · D^-1/2, causal mask inside the sequence, P = softmax(S) in fp32, out_h = P · v_g.
//   lse[t, h] = log Σ exp(S) (natural log), kept for the backward pass.
//
// Backward (FlashAttention-2 style, P recomputed from the saved lse: P = exp(S − lse)), per sequence and head:
//   δ_i  = Σ_d dout[i,d] · out[i,d]
//   dP   = dout · v_gᵀ,   dS = P ⊙ (dP − δ)           (the softmax Jacobian; masked entries have P = 0)
//   dq_h = dS · k_g · D^-1/2
//   dk_g = Σ_{h in group g} dSᵀ · q_h · D^-1/2,   dv_g = Σ_{h in group g} Pᵀ · dout_h
// dq, dk and dv are written, not accumulated.
//
// With `bf16` (the CPU's --cpu-matmul bf16; the numerics of the GPU's flash attention, kernels/flash_attention.h, on
// the CPU): every product takes bf16 operands with fp32 sums (kernels/gemm_bf16_block.h: AVX512_BF16 where the CPU has
// it), as the GPU's mma.sync/wgmma kernels do:
//   S = bf16(q)·bf16(k)ᵀ · scale;  l sums the fp32 exp(S − m);  out = Σ bf16(exp(S − m))·bf16(v) / l
//   backward: dP = bf16(dout)·bf16(v)ᵀ, dS = P ⊙ (dP − δ) in fp32, dv = Σ bf16(P)ᵀ·bf16(dout),
//             dq = scale · bf16(dS)·bf16(k), dk = scale · Σ bf16(dS)ᵀ·bf16(q)
// The softmax statistics, lse, δ and the outputs stay fp32. The same blocks, tasks and causality as without it (a
// value finite in fp32 but past bf16's range counts as non-finite: it rounds to inf).
// Non-finite inputs stay causal: a NaN or inf in row j of q, k, v or dout reaches exactly the outputs that depend
// on row j (never an earlier query row, another sequence or a key it hides), as plain loops over the visible keys
// would give (tests/test_kernels_backward.cpp, AttentionNanStaysCausal).
#pragma once

#include <cstdint>

namespace qwenq {

// q: [T, H, D], k and v: [T, Hkv, D], out: [T, H, D], all fp32 where T = cu_seqlens[n_seqs].
// lse: [T, H] or null. H must be a multiple of Hkv.
void attention_forward_ref(const float* q, const float* k, const float* v, const int32_t* cu_seqlens,
                           int64_t n_seqs, int64_t H, int64_t Hkv, int64_t D, float* out, float* lse,
                           bool bf16 = false);

// The same attention for the last n rows of one sequence whose first p0 rows' keys and values come before them (a KV
// cache): q, out [n, H, D] are rows p0 .. p0 + n - 1; k, v [p0 + n, Hkv, D] rows 0 .. p0 + n - 1. Query row p0 + i
// sees keys 0 .. p0 + i. The forward's blocks (query blocks from row p0, key blocks from row 0), so with p0 = 0 it is
// attention_forward_ref of that one sequence; no lse.
void attention_forward_suffix_ref(const float* q, const float* k, const float* v, int64_t p0, int64_t n, int64_t H,
                                  int64_t Hkv, int64_t D, float* out, bool bf16 = false);

// dout, q, out, dq: [T, H, D]; k, v, dk, dv: [T, Hkv, D]; lse: [T, H] from the forward (required). Shapes and
// cu_seqlens as in the forward. The outputs must not overlap the inputs or each other.
void attention_backward_ref(const float* dout, const float* q, const float* k, const float* v, const float* out,
                            const float* lse, const int32_t* cu_seqlens, int64_t n_seqs, int64_t H, int64_t Hkv,
                            int64_t D, float* dq, float* dk, float* dv, bool bf16 = false);

}  // namespace qwenq
