// LoRA/QLoRA training on the GPU: the loss and adapter gradients of trainer/lora_model.h (same math, same
// contract), computed op by op through the launchers of kernels/ on the weights a QwenModelCuda uploaded (dense
// as stored, packed GPTQ/AWQ/NF4 repacked to Q4), plus the AdamW step, so that a training step never leaves
// the device (the host sees the loss, the gradient norm and, on request, the adapter).
//
// Every adapted Linear computes y = x Wᵀ (+ b) + s · (x Aᵀ) Bᵀ; with g = s · dy B its backward is
//   dB += s · dyᵀ u (u = x Aᵀ saved)     dA += gᵀ x     dx = dy W + g A
// (lora/lora_linear.h). The base dy W is linear_backward_input_cuda for a dense W and qgemm_int4_t_cuda
// (dy rounded to bf16, as the forward rounds x) for a Q4 one; the four adapter products are fp32 cuBLASLt
// matmuls (linear_forward_cuda for u, BlasLt::matmul with alpha = s and beta = 1 for the rest, so the scaling and
// the accumulation cost no extra pass). The block backward is lora_model.h's, kernel for kernel:
// rmsnorm_backward_cuda, swiglu_backward_cuda, rope_backward_cuda, attention_backward_cuda (flash, D = 64/128:
// bf16 q/k/v/out/dout, fp32 grads) or attention_naive_backward_cuda (other D, fp32), and
// cross_entropy_fused_cuda over chunks of lm_head rows (every row, or only the rows with a target, gathered, when a
// 16th or more have none), each chunk's dlogits multiplied into dhidden at once.
//
// Mixture-of-experts layers (qwen3_moe, qwen2_moe; the adapter's MLP targets there adapt every expert and the shared
// expert, trainer/moe_block.h): the router logits (and Qwen2-MoE's shared-gate logit) go to the host, where the CPU
// block's routing (moe_dispatch) picks the experts and keeps the softmax for the backward; the routed rows are gathered
// into one [T·k, C] buffer grouped by expert, each expert runs its three Linears with their adapters on its rows
// (dropout keyed by expert_dropout_key, the CPU's masks), the shared expert on every token, and moe_combine_cuda adds
// them. Backward: moe_combine_backward_cuda gives each row's dy = w·dout, ∂L/∂w (to the host: moe_router_backward,
// whose ∂L/∂logits come back for dr·W_router) and the shared expert's dy and gate gradient; each expert's Linears
// backward on its rows; moe_scatter_add_cuda adds each token's rows back in ascending expert order. The host waits
// for the device once per MoE layer in a forward (the routing) and once in a backward (∂L/∂w): the launchers check
// the indices on the host's copies (MoeDispatch) instead of downloading them; each expert's GEMMs have its own
// row count, so cuBLASLt's plan cache (kernels/blas_lt.h) gains entries per distinct count (at most T per shape).
// tests/test_moe_lora_composition.cpp composes this from the kernels' CPU twins against the CPU block.
// `qwen-qlora plan --device cuda` counts them (trainer/memory_plan.h: the expert arenas, the MoE buffer rows).
//
// DoRA adapters (use_dora; every adapted Linear, a MoE layer's experts' included: their z and v in the MoE columns of
// the DoRA rows, lora_cuda_dora_moe), the CPU Runner's and MoE block's formulas (trainer/lora_model.h) on kernels/dora.h: at the start of each call the row
// norms n = ‖W + s·B A‖ of every adapted Linear from the current A, B and the base as uploaded (dense, or the Q4
// codes); each adapted Linear's forward keeps z = x̃ Wᵀ and v = s·u Bᵀ (the DoRA rows of trainer/lora_cuda_buffers.h,
// one block's worth) and adds (g − 1) ⊙ z + g ⊙ v (dora_combine_cuda, g = m / n); its backward takes dm, dz, dv
// (dora_split_grad_cuda), the LoRA gradients of v, dx = dy W + dz W + (s·dv B) A (through the dropout mask when
// there is one). m sits after B in the arenas, so it is clipped and updated with A and B (the CPU loop's order).
//
// Data types: the forward's of trainer/qwen_model_cuda.h (fp32 residual stream and activations; x rounded to
// bf16 for a BF16 or Q4 W and for flash attention). Adapter A, B, their gradients and AdamW's m, v are fp32
// device arrays, one allocation each, laid out layer by layer, targets in table order, A then B (then DoRA's m): the
// order of the CPU trainer's tensor list, so gradient clipping sums the same tensors in the same order.
//
// Activation checkpointing is always on: the forward keeps each block's input [T, C] (L + 1 of them, the last
// the final residual), the backward recomputes the block's intermediates from it into one set of buffers.
// (LoraStepOptions::checkpointing = false gives the same numbers on the CPU by construction; here it is ignored.)
// The kept inputs are bf16 by default (LoraStepOptions::bf16_checkpoints, the CPU trainer's semantics): each
// block output is rounded to bf16 into its slot, and every block, in the forward as in the recomputation, reads
// its input widened back from the slot (so both see the same values; the residual stream stays fp32 inside a
// block, and the gradient passes the rounding unchanged). bf16_checkpoints = false keeps fp32 slots (the math
// of fp32 training; twice the memory), a choice per call that re-makes the buffers when it changes.
// Input embedding: an untied table is not uploaded (QwenModelCudaOptions::upload_embedding = false): each step
// gathers the batch's T rows on the host into pinned memory and uploads them on the trainer's stream, so the
// QwenModel must outlive the trainer: a bf16 table's rows as they are, by every thread, through act16 and widened on
// the device (bf16_to_f32_cuda, exact; 15 MB at T = 2048, C = 3584); another dtype's widened on the host
// (embedding_gather_ref) and uploaded [T, C] fp32. A tied table
// is on the device anyway (the lm_head) and is gathered there.
// Dropout (lora_dropout = p > 0, training only): the CPU trainer's counter-based masks, bit for bit
// (kernels/dropout.h: key dropout_key(opt.dropout_seed, layer, target), element index into the [T, K] input).
// The forward writes x̃ = m ⊙ x into the scratch `tmp` for u = x̃ Aᵀ; the backward regenerates x̃ there for
// dA += gᵀ x̃, then overwrites it with g A and adds m ⊙ (g A) into dx (dropout_backward_cuda). No mask or
// dropped input is stored, so dropout costs no memory, only two or three elementwise passes per adapted Linear.
//
// Memory: the QwenModelCuda's weights (an untied embedding table excluded), 4 · (adapter parameters) fp32 (A/B,
// grads, m, v), and for the largest batch seen (T tokens) the buffers of trainer/lora_cuda_buffers.h: with flash
// attention and no dropout about T · ((L + 1)·C/2 + 7·C + 3·I + 3·H·D + 3·Hkv·D + max(C, H·D, I)/2 + 8·r) 4-byte
// words (fp32 checkpoints: (L + 1)·C, no xin; naive attention: + 2·H·D + 2·Hkv·D, no bf16 copies; dropout:
// + max(C, H·D, I)), the backward's gradients living on the storage of forward buffers whose lifetimes end before
// (the table lists each pair and why); and one chunk of logits (at most 64 MiB, or QWENQ_LOGITS_CHUNK logits).
// That table is also what `qwen-qlora plan` counts (trainer/memory_plan.h). Host: T·C fp32 pinned (the gathered
// embeddings; half of it for a bf16 table).
// Not thread-safe (the buffers are reused by every call).
#pragma once

#ifdef QWENQ_HAVE_CUDA

#include <cstdint>
#include <memory>
#include <vector>

#include "lora/lora_adapter.h"
#include "trainer/lora_model.h"
#include "trainer/step_profile.h"
#include "trainer/qwen_model_cuda.h"

namespace qwenq {

class ProcessGroup;

struct LoraModelCudaOptions {
  // Rows of one lm_head / loss chunk: 0 is trainer/lora_cuda_buffers.h's rule (2^24 logits, what `qwen-qlora
  // plan` counts); > 0 caps a chunk at that many rows (tests: several chunks and a partial last one on a small
  // vocabulary).
  int64_t logits_chunk_rows = 0;
};

class LoraModelCuda {
 public:
  // Uploads `model` (a QwenModelCuda of its own, without an untied embedding table) and `adapter` (A and B), with
  // zero gradients and optimizer state. `model` must outlive the trainer (its embedding table is read every step).
  // Throws when the adapter was made for another model, when anything does not fit on the device, or for a
  // negative options.logits_chunk_rows.
  LoraModelCuda(const QwenModel& model, const LoraAdapter& adapter, const LoraModelCudaOptions& options = {});
  ~LoraModelCuda();
  LoraModelCuda(const LoraModelCuda&) = delete;
  LoraModelCuda& operator=(const LoraModelCuda&) = delete;

  // lora_loss_and_grad's contract: targets [T] (kIgnoreIndex for uncounted positions); the gradient of
  // opt.grad_scale · Σ nll is added to the device gradients; dropout as on the CPU (opt.train, opt.dropout_seed).
  LoraStepResult loss_and_grad(const PackedBatch& batch, const std::vector<int32_t>& targets,
                               const LoraStepOptions& opt);
  // The loss only (evaluation: no dropout, no gradients, two checkpoint slots alternate); of opt only
  // bf16_checkpoints is read (the same loss function as training's).
  LoraStepResult loss(const PackedBatch& batch, const std::vector<int32_t>& targets,
                      const LoraStepOptions& opt = LoraStepOptions{});

  // clip_grad_norm (torch semantics; max_grad_norm <= 0: no clipping) then AdamW (kernels/optim.h) on every A and
  // B, `step` the 1-based count after this update. Returns the norm before clipping; when it is not finite,
  // nothing is updated (the caller stops, as the CPU loop does). LoRA+ (TrainOptions::loraplus_lr_ratio): each B
  // and DoRA magnitude learns at loraplus_lr_ratio · lr, each A at lr.
  float adamw_step(double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step,
                   double max_grad_norm, double loraplus_lr_ratio = 1.0);
  void zero_grads();
  // Data parallelism (trainer/train_loop.h): replaces the gradients by their sum over the group's ranks, through
  // the host (a device -> host copy, ProcessGroup::all_reduce_sum, host -> device); returns when they are back.
  void all_reduce_grads(ProcessGroup& group);

  // Host <-> device copies of A/B, of the gradients, of AdamW's m and v (adapters of the same config and shapes;
  // the targets must match the uploaded adapter's).
  void download(LoraAdapter* adapter) const;
  void upload(const LoraAdapter& adapter);
  void download_grads(LoraAdapter* grads) const;
  void download_optimizer(LoraAdapter* m, LoraAdapter* v) const;
  void upload_optimizer(const LoraAdapter& m, const LoraAdapter& v);

  // The uploaded base. Without its input embedding when untied: its embedding calls (forward_logits, ...) refuse.
  QwenModelCuda& base();

  // `qwen-qlora train --profile` (trainer/step_profile.h): from now on each loss_and_grad and adamw_step marks its
  // phases with CUDA events on the trainer's stream (evaluation calls do not); the caller ends each step
  // (StepProfile::end_step). Returns the profile, which lives as long as the trainer. profile(): null until then.
  StepProfile* enable_profile();
  StepProfile* profile() const;

  // The adapted Linears' products that QWENQ_LORA_FOLD=1 folded the adapter into since construction (forward ones,
  // backward input gradients): zero without the switch or where it does not apply (kernels/qgemm.h).
  struct FoldCounts {
    int64_t forward = 0, backward = 0;
  };
  FoldCounts fold_counts() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
