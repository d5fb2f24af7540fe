// A LoRA adapter laid out for inference with the adapter unmerged (trainer/lora_inference_cuda.h uploads it): the
// base keeps its weights as stored (dense, or packed 4-bit), and every adapted Linear adds its branch after the
// base product,
//   y = x Wᵀ (+ b) + s · (x Aᵀ) Bᵀ      x [T, K], W [N, K], A [r, K], B [N, r]        (lora/lora_linear.h)
// with s the Linear's scaling (alpha / r, or alpha / √r with rsLoRA, of its own r and alpha: lora/lora_select.h) and no dropout
// (inference). This equals the merged model of trainer/lora_merge.h, x (W + s·B A)ᵀ, up to fp32 reassociation.
//
// Layout: one fp32 arena holding, layer by layer and within a layer the targets in table order (q, k, v, o, gate,
// up, down; untargeted ones absent; on a mixture-of-experts layer an MLP target expert by expert, then the shared
// expert: the adapter's slots() order), A [r, K] row-major then B [N, r] row-major. Every A and B starts at a multiple
// of kLoraArenaAlignFloats floats (16 bytes), so each is as aligned as the arena for cuBLASLt's vectorized loads;
// the gaps are zero (a DoRA adapter's m [N] follows B, aligned the same way). fp32, not bf16: the branch then adds no rounding of its own (the CPU's merged W + s·B A is fp32
// too), and it costs r·(N + K)·4 bytes per Linear (Qwen2.5-7B, r = 16, all seven targets: 161 MB, 1% of the bf16
// base).
//
// Checks, each refusal naming `source` (the adapter directory, or whatever the caller passes): the adapter's
// dimensions are the model's (hidden, intermediate, q_dim, kv_dim, layers; experts, their widths, which layers are
// MoE layers), every A and B has the shape its Linear
// calls for (named by its PEFT tensor name, lora/peft_io.h: "base_model.model.model.layers.3.mlp.up_proj.lora_B.weight"),
// and every value is finite (a NaN in an adapter would turn every logit into NaN with no hint where it came from).
// A DoRA adapter (use_dora, PEFT's DoraLinearLayer) also carries each Linear's magnitude m [N] (its m_off in the arena;
// -1 without DoRA): the GPU then computes, once at attach, g = m / ‖W + s·B A‖ per output row (kernels/dora.h) and
// scales each adapted output, y = g·(x Wᵀ + s·(x Aᵀ) Bᵀ) + b, which is the merged DoRA Linear (trainer/lora_merge.h)
// up to fp32 reassociation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "lora/lora_adapter.h"
#include "trainer/qwen_config.h"

namespace qwenq {

// One adapted Linear's branch at inference: views into a layout's arena (and DoRA's gains, computed at attach by its
// user: QwenModel::attach_adapter). A null: the Linear is not adapted.
struct LoraBranch {
  const float* A = nullptr;     // [r, K]
  const float* B = nullptr;     // [N, r]
  const float* gain = nullptr;  // DoRA's g = m / ‖W + s·B A‖ [N]; null without DoRA
  int64_t N = 0, K = 0, r = 0;
  float s = 0.f;                // the Linear's scaling
};
// y [rows, N] holds x Wᵀ + bias; adds the branch s·(x Aᵀ) Bᵀ (u [rows, r]: its scratch, written), then with DoRA scales
// each row by g, the bias left unscaled: y = g ⊙ (x Wᵀ + s·(x Aᵀ) Bᵀ) + b. `bias`: the Linear's, or empty. The CPU's
// unmerged forward of a layer's Linears and of a MoE layer's experts.
void lora_branch_forward(const LoraBranch& b, const float* x, int64_t rows, const TensorView& bias, float* y, float* u);

constexpr int64_t kLoraArenaAlignFloats = 4;
// n rounded up to a multiple of kLoraArenaAlignFloats (where the next tensor of the arena, or of the GPU's gains,
// starts).
inline int64_t lora_arena_align_up(int64_t n) {
  return (n + kLoraArenaAlignFloats - 1) / kLoraArenaAlignFloats * kLoraArenaAlignFloats;
}

// One adapted Linear: its shape and where its A and B start in the arena (in floats). expert: kNoExpert for a
// layer's own Linear, else the expert of a MoE layer's MLP target (-1: the shared expert).
struct LoraArenaSlot {
  int64_t layer = 0;
  LoraTarget target = LoraTarget::QProj;
  int64_t expert = kNoExpert;
  int64_t N = 0, K = 0, r = 0;
  float s = 0.f;  // its scaling (rank_pattern / alpha_pattern may give it its own)
  int64_t a_off = 0, b_off = 0;
  int64_t m_off = -1;  // DoRA: the magnitude m [N]; -1 without DoRA
};

struct LoraInferenceLayout {
  float scaling = 0.f;  // the config's s (fp32): every MoE expert's (lora/lora_select.h), and with gpu_refusal empty
  int64_t rank = 0;     // the config's r          every Linear's (each slot holds its own: `s`, `r`)
  std::string gpu_refusal;  // "" when the GPU can lay the adapter out (LoraAdapter::gpu_refusal), else why not
  int64_t num_layers = 0;
  std::vector<LoraArenaSlot> slots;  // arena order
  std::vector<float> arena;          // every A and B at its slot's offsets; zero between them

  // The slot of Linear `t` in `layer` (of expert `expert` on a MoE layer's MLP), or null when the adapter does not
  // target it.
  const LoraArenaSlot* find(int64_t layer, LoraTarget t, int64_t expert = kNoExpert) const;
  int64_t bytes() const { return static_cast<int64_t>(arena.size() * sizeof(float)); }
};

// The layout above for `adapter` on a model of config `cfg`; throws (naming `source`) as described at the top.
LoraInferenceLayout lora_inference_layout(const LoraAdapter& adapter, const QwenConfig& cfg, const std::string& source);

}  // namespace qwenq
