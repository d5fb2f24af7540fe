// Top-k routing of a sparse mixture-of-experts block (Qwen2-MoE, Qwen3-MoE; transformers 4.51.3's
// Qwen3MoeSparseMoeBlock), for each token t with router logits r[t, 0..E):
//   p_t      = softmax(r_t)                         (fp32, max-subtracted)
//   S_t      = the k experts of largest p_t, in descending order (a tie goes to the lower index)
//   w_{t,j}  = p_t[S_t[j]]                          or, with norm_topk_prob, p_t[S_t[j]] / Σ_{j'} p_t[S_t[j']]
// The block's output is then y_t = Σ_j w_{t,j} · expert_{S_t[j]}(x_t) (trainer/moe_block.h, which also holds the
// backward through the weights, the softmax and the router, from the p this writes). Host only: the GPU forward
// (trainer/qwen_model_cuda.cpp) copies a layer's router logits to the host and routes them with this function.
#pragma once

#include <cstdint>

namespace qwenq {

// logits [T, E] fp32; experts [T, k] (indices in [0, E)) and weights [T, k] are written, and p [T, E] into probs
// when it is given (the backward's softmax). Throws unless 1 <= k <= E.
void moe_route_ref(const float* logits, int64_t T, int64_t E, int64_t k, bool norm_topk_prob, int32_t* experts,
                   float* weights, float* probs = nullptr);

}  // namespace qwenq
