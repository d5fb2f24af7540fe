// The sparse mixture-of-experts MLP of a qwen2_moe / qwen3_moe layer on the CPU (transformers 4.51.3's
// Qwen2MoeSparseMoeBlock / Qwen3MoeSparseMoeBlock), forward and backward, for the normalized tokens n[T, C]:
//   r_t    = n_t · W_routerᵀ                                  (router logits [E])
//   p_t    = softmax(r_t);  S_t = its k largest;  w_{t,j} = p_t[S_t[j]] (/ Z_t = Σ_j p_t[S_t[j]] with norm_topk_prob)
//   y_{t,j} = expert_{S_t[j]}(n_t),  expert(x) = (silu(x W_gᵀ) ⊙ x W_uᵀ) W_dᵀ
//   out_t  = Σ_j w_{t,j} · y_{t,j}  +  σ(g_t) · shared(n_t),  g_t = n_t · w_sg       (shared expert: qwen2_moe)
// The experts run in index order, each on the tokens routed to it (gathered in transformers' order: those that chose
// it first, then second, ..., each in token order), and their weighted outputs are added to out in that order, as
// transformers' loop over experts with index_add_ does.
//
// Backward (every weight frozen; the routing choice S is piecewise constant, so no gradient flows through it):
//   dy_{t,j} = w_{t,j} · dout_t            → through expert S_t[j] (SwiGLU backward)  → dn_t
//   dw_{t,j} = dout_t · y_{t,j}
//   dp_t[S_t[j]] = dw_{t,j}   or, renormalized, (dw_{t,j} − Σ_j' dw_{t,j'} w_{t,j'}) / Z_t;   dp_t = 0 elsewhere
//   dr_t     = p_t ⊙ (dp_t − Σ_e p_t[e] dp_t[e])                       (softmax backward, p as the forward kept it)
//                                                                                          → dn_t += dr_t W_router
//   shared:  ds_t = σ(g_t) dout_t → through the shared expert → dn_t;  dg_t = (dout_t · shared(n_t)) σ(g_t)(1 − σ(g_t))
//            → dn_t += dg_t w_sg
// This is what autograd computes through transformers' module (tests/oracle/test_lora_grad_oracle.py, the MoE cases).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "lora/lora_adapter.h"
#include "trainer/lora_inference.h"
#include "trainer/qwen_config.h"
#include "trainer/qwen_weights.h"

namespace qwenq {

// Sees the inputs of one expert's Linears as the block runs: expert e in [0, E) or -1 for the shared expert; `at` =
// GateUp: x [rows, C] the tokens routed to it (in the block's row order above; every token for the shared expert),
// Down: x [rows, Im] the SwiGLU output entering its down_proj. Row r is token tokens[r] of the block's input (tokens
// null: the shared expert, row r is token r). An expert no token chose is not called. (GPTQ's Hessians and AWQ's inputs per expert.)
enum class BlockLinear;
using MoeInputHook =
    std::function<void(BlockLinear at, int64_t expert, const float* x, int64_t rows, const int64_t* tokens)>;

// The LoRA adapters on one MoE layer's experts (PEFT's gate_proj / up_proj / down_proj targets there adapt every
// expert's and the shared expert's Linear): y += s·(drop(x) Aᵀ) Bᵀ on each adapted one, x the rows that Linear sees.
// Dropout masks: kernels/dropout_mask.h keyed by expert_dropout_key, indexed over those rows.
// DoRA (the adapter's use_dora; PEFT's DoraLinearLayer, as trainer/lora_model.h's dense Linears), per adapted Linear
// W [N, K] of an expert on its rows x:
//   x̃ = drop(x), u = x̃ Aᵀ, v = s·u Bᵀ, z = x̃ Wᵀ (= the base output without dropout), n_j = ‖W_j + s(B A)_j‖ (detached),
//   g = m / n,   y = x Wᵀ + (g − 1) ⊙ z + g ⊙ v
// backward: dm_j = Σ_t dy_tj (z_tj + v_tj) / n_j;  dz = (g − 1) ⊙ dy, dv = g ⊙ dy;  dx̃ = dz W + (LoRA's backward of dv).
// An attached adapter at inference (QwenModel::attach_adapter; forward only) instead of `adapter`: one adapted expert
// Linear's A [r, K] and B [N, r] (views into trainer/lora_inference.h's arena) and, with DoRA, its gains
// g = m / ‖W + s·B A‖ [N] computed once at attach, so y = g ⊙ (x Wᵀ + s·(x Aᵀ) Bᵀ) (experts have no bias): PEFT's
// unmerged DoRA at inference, as the layer's own Linears run it (kernels/dora.h's dora_scale_rows_ref).
struct MoeLora {
  const LoraAdapter* adapter = nullptr;  // null: no adapter on the experts (unless `branches`)
  int64_t layer = 0;
  float dropout = 0.f;
  uint64_t dropout_seed = 0;
  LoraAdapter* grads = nullptr;  // the backward's dA, dB (and DoRA's dm) accumulate here (same slots as adapter)
  const LoraAdapter* dora_norms_from = nullptr;  // tests: DoRA's n from this adapter's A, B (LoraStepOptions)
  // Inference with an attached adapter (adapter null, no backward): branches[(e + 1)·3 + j] is expert e's (-1: the
  // shared expert's) Linear j (moe_expert_index), E + 1 experts' worth, each with scaling `scaling` and rank `rank`.
  const LoraBranch* branches = nullptr;
  float scaling = 0.f;
  int64_t rank = 0;
};
// An MLP target's Linear in an expert: 0 gate_proj, 1 up_proj, 2 down_proj (QwenModel::expert_linear's `which`).
inline int moe_expert_index(LoraTarget t) {
  return static_cast<int>(t) - static_cast<int>(LoraTarget::GateProj);
}
// The mask key of Linear `which` (0 gate, 1 up, 2 down) of expert `expert` (-1: shared) of `layer`: a lane of its own,
// apart from the seven layer-level Linears' keys (dropout_key(seed, layer, 0..6)).
uint64_t expert_dropout_key(uint64_t seed, int64_t layer, int64_t expert, int which);

// What the forward keeps for the backward. The T·k choices are grouped by expert: rows [start[e], start[e+1]) are
// expert e's, row r is choice slot[r] of token token[r].
struct MoeBlockActs {
  std::vector<float> probs;            // [T, E] p, the softmax of the router logits
  std::vector<int32_t> chosen;         // [T, k] S
  std::vector<float> weight;           // [T, k] w
  std::vector<int64_t> start, token;   // [E + 1], [T·k]
  std::vector<int32_t> slot;           // [T·k]
  std::vector<float> gate, up, act, y;  // per row: [T·k, Im] x 3, [T·k, C] (unweighted expert outputs)
  std::vector<float> sgate, sup, sact, sy, g;  // shared expert: [T, Is] x 3, [T, C], [T] (its gate logit)
  // With adapters on the experts: the block input, each row's input, and per Linear (gate, up, down) x Aᵀ [rows, r]
  // and, with dropout, the dropped input; the shared expert's the same per token.
  std::vector<float> n, xs, u[3], xd[3], su[3], sxd[3];
  // DoRA on the experts: per row z = x̃ Wᵀ and v = s·u Bᵀ [T·k, N] and each expert's detached norms [E, N]; the shared
  // expert's per token [T, N] and [N].
  std::vector<float> z[3], v[3], norm[3], sz[3], sv[3], snorm[3];
};

// The T·k routing choices chosen [T, k] grouped by expert (a counting sort) in transformers' order within an expert
// (torch.where over its [k, T] mask: the tokens that chose it first, then second, ..., each in token order): rows
// [start[e], start[e+1]) are expert e's, row r is choice slot[r] of token token[r]. (Each token meets an expert at
// most once, so the order changes no token's sum; it decides which rows AWQ's clip search samples.)
void moe_group_by_expert(const int32_t* chosen, int64_t T, int64_t k, int64_t E, std::vector<int64_t>* start,
                         std::vector<int64_t>* token, std::vector<int32_t>* slot);
// σ(g), the shared expert's gate (Qwen2-MoE), as the block computes it.
float moe_shared_gate(float g);

// A block's routing as the index arrays of a gather / per-expert / combine evaluation (the GPU forward's,
// trainer/qwen_model_cuda.cpp, whose kernels have CPU twins: embedding_gather_ref, moe_combine_ref): from the router
// logits [T, E] (and the shared expert's gate logits [T], null without one) by moe_route_ref and moe_group_by_expert,
// so the experts and the order are the CPU block's.
//   rows [start[e], start[e+1]) of the grouped order are expert e's; gather[r] the token of grouped row r;
//   combine[t·k + j] token t's grouped rows in ascending expert order, weight[t·k + j] their routing weights;
//   shared_gate[t] = σ(g_t) (empty without a shared expert).
// Then out_t = Σ_j weight[t·k + j] · y[combine[t·k + j]] + shared_gate[t] · shared(n_t) is moe_block_forward's out_t.
// With for_backward (the GPU trainer, kernels/moe_combine_backward.h), also what moe_router_backward needs: the
// softmax p [T, E], the choices chosen [T, k] and their weights routed [T, k] in the routing's order (largest first),
// and choice[t·k + j] = the routing slot t·k + j' of combine entry t·k + j.
struct MoeDispatch {
  std::vector<int64_t> start;
  std::vector<int32_t> gather, combine;
  std::vector<float> weight, shared_gate;
  std::vector<float> probs, routed;  // for_backward only
  std::vector<int32_t> chosen, choice;
};
MoeDispatch moe_dispatch(const QwenConfig& c, const float* router_logits, const float* gate_logits, int64_t T,
                         bool for_backward = false);

// The routing's backward (the router is frozen; the choice S is piecewise constant): from dw [T, k] = ∂L/∂w_{t,j} in
// the routing's slot order, the softmax p [T, E], the choices chosen [T, k] and their weights [T, k], writes
// dr [T, E] = ∂L/∂r_t (moe_block.h's formulas: through the renormalization when norm_topk_prob, then the softmax).
// moe_block_backward's and the GPU trainer's (which then adds dr · W_router into dn on the device).
void moe_router_backward(const QwenConfig& c, const float* probs, const int32_t* chosen, const float* weight,
                         const float* dw, int64_t T, float* dr);

// out[T, C] = the block's output for n[T, C]; out may alias n. hook (may be empty) sees each expert's inputs; acts
// (may be null) receives what moe_block_backward needs.
// lora (may be null) adds the experts' adapters (acts then required when a backward follows).
void moe_block_forward(const QwenConfig& c, const MoeWeights& m, const float* n, int64_t T, float* out,
                       const MoeInputHook& hook = nullptr, MoeBlockActs* acts = nullptr, const MoeLora* lora = nullptr);

// dn[T, C] += ∂L/∂n given dout[T, C] = ∂L/∂out, from the forward's acts (same n, T, lora); the adapters' gradients
// accumulate into lora->grads.
void moe_block_backward(const QwenConfig& c, const MoeWeights& m, const MoeBlockActs& acts, int64_t T,
                        const float* dout, float* dn, const MoeLora* lora = nullptr);

}  // namespace qwenq
