// The sparse mixture-of-experts MLP of a qwen2_moe / qwen3_moe layer on the CPU (transformers 4.51.3's
// Qwen2MoeSparseMoeBlock / Qwen3MoeSparseMoeBlock), for the normalized tokens n[T, C]:
//   r_t   = n_t · W_routerᵀ                                   (router logits [E])
//   S_t, w_t = top-k routing of r_t                            (kernels/moe_route.h: softmax, top k, optional renorm)
//   y_t   = Σ_{j<k} w_{t,j} · expert_{S_t[j]}(n_t)             expert(x) = (silu(x W_gᵀ) ⊙ x W_uᵀ) W_dᵀ
//         + σ(n_t · w_sg) · shared(n_t)                        (qwen2_moe's shared expert, when present)
// The experts run in index order, each on the tokens routed to it (gathered, in token order), and their weighted
// outputs are added to y in that order, as transformers' loop over experts with index_add_ does. A packed expert is
// widened to fp32 only when some token is routed to it.
#pragma once

#include <cstdint>
#include <functional>

#include "trainer/qwen_config.h"
#include "trainer/qwen_weights.h"

namespace qwenq {

// Sees the inputs of one expert's Linears as the block runs: expert e in [0, E) or -1 for the shared expert; `at` =
// GateUp: x [rows, C] the tokens routed to it (in token order; every token for the shared expert), Down: x [rows, Im]
// the SwiGLU output entering its down_proj. An expert no token chose is not called. (GPTQ's Hessians per expert.)
enum class BlockLinear;
using MoeInputHook = std::function<void(BlockLinear at, int64_t expert, const float* x, int64_t rows)>;

// out[T, C] = the block's output for n[T, C]; out may alias n. hook (may be empty) sees each expert's inputs.
void moe_block_forward(const QwenConfig& c, const MoeWeights& m, const float* n, int64_t T, float* out,
                       const MoeInputHook& hook = nullptr);

}  // namespace qwenq
