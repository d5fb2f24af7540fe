// Causal grouped-query attention over variable-length sequences packed back to back.
//   For sequence s occupying rows [cu[s], cu[s+1]) and query head h (kv head g = h / (H/Hkv)):
//   S = q_h · k_gᵀ · D^-1/2, causal mask inside the sequence, P = softmax(S) in fp32, out_h = P · v_g.
//   lse[t, h] = log Σ exp(S) (natural log), kept for the backward pass.
#pragma once

#include <cstdint>

namespace qwenq {

// q: [T, H, D], k and v: [T, Hkv, D], out: [T, H, D], all fp32 where T = cu_seqlens[n_seqs].
// lse: [T, H] or null. H must be a multiple of Hkv.
void attention_forward_ref(const float* q, const float* k, const float* v, const int32_t* cu_seqlens,
                           int64_t n_seqs, int64_t H, int64_t Hkv, int64_t D, float* out, float* lse);

}  // namespace qwenq
