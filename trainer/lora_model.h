// Loss and LoRA gradients of a Qwen model on the CPU: the frozen base (dense bf16/fp32, or packed GPTQ/AWQ/NF4,
// dequantized one Linear at a time, never the whole model) plus a LoRA adapter, forward and hand-written backward
// in the style of llm.c. Only the adapter gets gradients.
//
// Forward (per decoder block, qwen_model.h has the same math without adapters); every adapted Linear computes
//   y = x Wᵀ (+ b) + s · (drop(x) Aᵀ) Bᵀ
// and the loss is L = grad_scale · Σ_t nll(t) over the counted targets (targets[t] != -100); the lm_head runs over
// chunks of rows, so the [T, V] logits never exist at once, and each chunk's dlogits goes straight into dhidden.
// A sequence classifier (LoraStepOptions::score_rows: reward modelling, classification) replaces the lm_head: a
// SEQ_CLS adapter's head W [Cl, H] reads each sequence's pooled row p_j of the final hidden states h (after the final
// norm), z_jc = h[p_j] · W[c], the loss L(z) is the objective's (trainer/reward.h, trainer/classify.h), and the
// backward starts from ∂L/∂h[p_j] = Σ_c ∂L/∂z_jc · W[c], with ∂L/∂W[c] = Σ_j ∂L/∂z_jc · h[p_j].
//
// Backward of a block, given dout = ∂L/∂x_out (residual stream x → h1 = x + attn(norm1(x)) → x_out = h1 + mlp(norm2(h1))):
//   dact = dout W_dᵀᵀ (+ LoRA)               dgate, dup = swiglu'(dact)
//   dn2  = dgate W_g + dup W_u (+ LoRA)      dh1 = dout + rmsnorm'(dn2; h1)
//   da   = dh1 W_o (+ LoRA)                  dq, dk, dv = attention'(da; q, k, v, out, lse)
//   dq, dk = rope⁻¹(dq), rope⁻¹(dk)          (Qwen3: then through the per-head q/k RMSNorm)
//   dn1  = dq W_q + dk W_k + dv W_v (+ LoRA) dx = dh1 + rmsnorm'(dn1; x)
// and each adapter accumulates dB += s·dyᵀu, dA += s·(dy B)ᵀ drop(x) (lora/lora_linear.h).
//
// DoRA (adapter.use_dora(), PEFT 0.15.2's DoraLinearLayer / LoraLayer.forward): with magnitude m [N], x̃ = drop(x)
// (x when dropout is off), and the row norms n = ‖W + s·B A‖₂ (per output row; W dequantized for packed bases)
// DETACHED (no gradient flows through n, DoRA §4.3), each adapted Linear computes
//   z = x̃ Wᵀ (no bias; without dropout PEFT's base_result − b),  u = x̃ Aᵀ,  v = s·u Bᵀ,  g = m / n   [N]
//   y = x Wᵀ + b + (g − 1) ⊙ z + g ⊙ v                              (⊙ per output column j)
// Note that with dropout the correction (g − 1) ⊙ z uses the dropped x̃, as PEFT's does, while x Wᵀ + b sees x.
// Backward, given dy:
//   dm_j += Σ_t dy_tj · (z_tj + v_tj) / n_j
//   dv = g ⊙ dy,  dz = (g − 1) ⊙ dy
//   dA, dB: LoRA's (lora/lora_linear.h) with dy replaced by dv;  dx̃ = dz W + s·(dv B) A
//   dx += dy W (the base term) + drop'(dx̃)
// init_dora_magnitudes sets m = n (PEFT's init: ‖W + s·B A‖, i.e. ‖W‖ while B = 0), so the model starts unchanged.
//
// Activation checkpointing (default): the forward keeps only each block's input x_l; the backward recomputes the
// block's intermediates from it, so memory grows with one block's activations plus L·T·C floats. Without it every
// block's intermediates are kept from the forward. Both give bit-identical results (same operations, same order).
// The recomputation skips only what no backward reads: a dense MLP's down-projection product, whose output fed just
// the residual (its adapter's u = x̃ Aᵀ still runs; a DoRA Linear runs whole, its backward reads z). That is 29 % of
// a Qwen2.5-7B block's Linear weights, about a tenth of the base products of a step.
// bf16 checkpoints (LoraStepOptions::bf16_checkpoints, default on): every block input x_l and the final residual
// x_L are rounded to bf16 (round to nearest even, core/dtype.h's f32_to_bf16) where the forward produces them, and
// the block, the recomputation and the final norm read the rounded values; inside a block the residual stream
// stays fp32. The gradient passes each rounding unchanged (straight through, as in bf16 training). This is the
// GPU trainer's storage (trainer/lora_model_cuda.h keeps the block inputs in bf16, half the memory of fp32), made
// the CPU's semantics so the two trainers compute the same function. Off: the exact fp32 model (finite-difference
// and PyTorch-oracle tests; lora_forward_logits). The loss moves by ~1e-3 relative (tests/test_lora_model.cpp
// measures it on stories260K and the tiny model).
// Dropout masks are counter-based (kernels/dropout_mask.h): element i of the [T, K] input of Linear t (table
// order) in layer l is kept iff u(dropout_key(dropout_seed, l, t), i) >= p, so the recomputation, the backward and
// the GPU trainer (trainer/lora_model_cuda.h) all see the same masks without storing them.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "lora/lora_adapter.h"
#include "trainer/qwen_model.h"

namespace qwenq {

struct LoraStepOptions {
  bool checkpointing = true;
  double grad_scale = 1.0;     // ∂L/∂(Σ nll): 1/(counted targets of the whole optimizer step) for a mean loss
  uint64_t dropout_seed = 0;   // per step; only used when the adapter's dropout > 0
  bool train = true;           // false: no dropout (evaluation)
  bool bf16_checkpoints = true;  // block inputs rounded to bf16 (see above); false: the exact fp32 model
  // The base Linears' and the lm_head's products (forward, recomputation, input gradients) and the attention's
  // (forward and backward, kernels/attention.h with bf16) on bf16 operands with fp32 sums (kernels/gemm_bf16.h), as
  // the GPU computes them; an F16 base keeps the fp32 products. The adapter's
  // own products, a MoE layer's experts and router, and the loss-only lm_head (evaluation) stay fp32. CPU only (the
  // GPU trainer ignores it).
  bool bf16_matmul = false;
  // Tests only: DoRA's detached norms n from this adapter's A and B (same shapes) instead of the adapter's own, so
  // that finite differences see the function whose gradient the backward computes (n held fixed).
  const LoraAdapter* dora_norms_from = nullptr;
  // A loss over whole sequences instead of grad_scale·Σ nll (trainer/dpo.h's preference losses). Given the NLL sum
  // of each sequence of the batch, S_j = Σ nll(t) over its counted targets (LoraStepResult::seq_nll), it returns
  // ∂L/∂S_j for every j; the backward then takes row t's dlogits = ∂L/∂S_seq(t) · (softmax − onehot), and
  // grad_scale is unused. The lm_head runs twice over the scored rows (the sums first, then the gradients); the
  // blocks run as for the token loss. Empty: the token loss. Only read with gradients (not by the loss alone).
  std::function<std::vector<double>(const std::vector<double>& seq_nll)> sequence_objective;
  // The same per token: given the nll of every counted target in row order (LoraStepResult::row_nll), it returns
  // ∂L/∂nll(t) for each (GRPO's KL term, whose derivative differs token by token). At most one of the two. CPU only
  // (the GPU trainer refuses it).
  std::function<std::vector<double>(const std::vector<float>& row_nll)> token_objective;
  // The head's logits times this before the loss, nll(t) = −log softmax(c·z_t)[y_t] with c = logit_scale, and its
  // gradient through c (GRPO's log-probabilities are those of the sampling distribution at temperature T, c = 1/T,
  // as TRL's GRPOTrainer divides its logits by the temperature). The CPU scales the head's input rows (c·h)·Wᵀ and
  // their gradient by c. 1: none. CPU only (the GPU trainer refuses another value).
  double logit_scale = 1.0;
  // Sequence classification (`train --objective reward`, trainer/reward.h; `--objective classify`,
  // trainer/classify.h): the adapter's score head W = score [Cl, H] (LoraAdapter::score(), a SEQ_CLS adapter with
  // Cl = num_labels labels) replaces the lm_head. Sequence j's scores are z_jc = h[score_rows[j]] · W[c], h the final
  // hidden states (after the final norm) and score_rows[j] the batch row it is pooled at (transformers' last token
  // that is not the pad id), returned in LoraStepResult::scores row-major [sequence, label] (a reward model: one per
  // sequence); with gradients score_objective(scores) gives ∂L/∂z_jc, the backward starts from ∂L/∂h[score_rows[j]]
  // = Σ_c ∂L/∂z_jc · W[c] and grads->score()[c] gets Σ_j ∂L/∂z_jc · h[score_rows[j]]. The targets are not read;
  // grad_scale, the other objectives and logit_scale do not apply. Set when score_rows is not empty (one row per
  // sequence of the batch). CPU only.
  std::vector<int64_t> score_rows;
  std::function<std::vector<double>(const std::vector<double>& scores)> score_objective;
  // NEFTune (Jain et al. 2023, transformers' neftune_noise_alpha): in training (train = true) the first block's input,
  // the batch's embeddings [T, C] row-major, gets U[−a, a) noise, a = neftune_half_width, drawn by
  // kernels/dropout.h's uniform_noise_add with noise_key(dropout_seed) (the same bits on both trainers); the
  // checkpoint keeps the noisy input, so recomputation sees what the forward saw. The caller sets a = α/√(L·C), L the
  // micro-batch's row length, as transformers' hook takes output.size(1)·output.size(2). 0: none.
  float neftune_half_width = 0.f;
};

// The dropout seed of micro-batch `micro` of optimizer step `step` (0-based) of a run seeded `run_seed`: each part
// mixed in turn, so two micro-batches share masks only by a 64-bit hash accident. Both trainers' steps (SFT, DPO,
// KTO, GRPO) key their LoraStepOptions::dropout_seed with it.
uint64_t micro_batch_dropout_seed(uint64_t run_seed, int64_t step, int64_t micro);

struct LoraStepResult {
  double nll_sum = 0.0;  // Σ nll over counted targets (fp64 sum of fp32 values)
  int64_t counted = 0;
  std::vector<double> seq_nll;  // per sequence of the batch: Σ nll over its counted targets (0 without any)
  std::vector<float> row_nll;   // CPU: the nll of each counted target, in row order
  std::vector<double> scores;   // with LoraStepOptions::score_rows: each sequence's scores z_j (num_labels each)
};

// ∂L/∂S_j of a sequence objective checked (one finite value per sequence) and spread over the scored rows:
// row_scale[i] = dS[sequence of token rows[i]] (cu_seqlens: the batch's). Shared by both trainers.
std::vector<float> sequence_row_scales(const std::vector<double>& dS, const std::vector<int32_t>& cu_seqlens,
                                       const std::vector<int64_t>& rows);
// Σ nll per sequence from the scored rows' nll (rows[i]'s value nll[i]).
std::vector<double> sequence_nll_sums(const float* nll, const std::vector<int32_t>& cu_seqlens,
                                      const std::vector<int64_t>& rows);

// The adapter shapes a model calls for.
LoraDims lora_dims_of(const QwenConfig& c);

// The base Linear an adapter slot adapts: a block's own, or an expert's (-1: the shared expert's) in a MoE layer.
const LinearWeight& slot_linear(const QwenWeights& w, const LoraSlot& slot);

// DoRA's detached norms n[j] = ‖W[j, :] + s·(B A)[j, :]‖₂ of base w (dense or packed, dequantized for the call) and
// adapter weights lw, as PEFT's DoraLinearLayer.get_weight_norm (sums of squares in double, rounded to fp32).
std::vector<float> dora_row_norms(const LinearWeight& w, const LoraWeights& lw, float s);
// DoRA's last forward step for rows [rows, N] of one adapted Linear (a block's or an expert's): with g = m / n,
//   y += (g − 1) ⊙ z + g ⊙ v.
void dora_combine(const float* m, const float* n, const float* z, const float* v, int64_t rows, int64_t N, float* y);
// DoRA's first backward step: dm[j] += Σ_t dy·(z + v) / n_j (summed in double, t ascending), dz = (g − 1) ⊙ dy and
// dv = g ⊙ dy [rows, N] (written).
void dora_split_grad(const float* m, const float* n, const float* z, const float* v, const float* dy, int64_t rows,
                     int64_t N, float* dm, float* dz, float* dv);

// targets [T]: the token each position must predict, or kIgnoreIndex. When grads is not null (same config and
// shapes as adapter), the gradient of grad_scale·Σ nll is *added* to it.
LoraStepResult lora_loss_and_grad(const QwenModel& model, const LoraAdapter& adapter, const PackedBatch& batch,
                                  const std::vector<int32_t>& targets, LoraAdapter* grads, const LoraStepOptions& opt);

// DoRA: every magnitude m of `adapter` set to the row norms ‖W + s·B A‖ of its base Linear (PEFT's init; after
// init_peft, m = ‖W‖). Throws when the adapter does not use DoRA.
void init_dora_magnitudes(const QwenModel& model, LoraAdapter* adapter);

// Logits [T, V] of the adapted model (tests, generation with an adapter).
std::vector<float> lora_forward_logits(const QwenModel& model, const LoraAdapter& adapter, const PackedBatch& batch);

}  // namespace qwenq
