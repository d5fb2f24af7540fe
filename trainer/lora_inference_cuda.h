// A LoRA adapter resident on the GPU for inference with the base unmerged: QwenModelCuda::attach_adapter
// (trainer/qwen_model_cuda.h) uploads one (trainer/lora_inference.h's layout: one fp32 arena of every A and B) and
// points each adapted QwenDeviceLinear at its A and B (QwenDeviceLinear::lora); QwenModelCuda's forward (prefill,
// forward_logits, next_token_nll, block_forward) and QwenDecodeCuda's prefill and M = 1 steps then add, right after
// that Linear's base product (dense cuBLASLt, or the Q4 dequant-matmul / GEMV on the packed weights as uploaded) and
// its bias,
//   y += s · (x Aᵀ) Bᵀ          lora_branch_forward_cuda -> lora_forward_cuda (lora/lora_linear.h)
//   y = g·y + (1 − g)·b         DoRA only (kernels/dora.h's dora_scale_rows_cuda): g = m / ‖W + s·B A‖ per output
//                               row, computed once at attach from the weights as uploaded (dora_row_norms_cuda:
//                               dense, or the Q4 codes exactly as the dequant-matmul reads them), so that
//                               y = g·(x Wᵀ + s·(x Aᵀ) Bᵀ) + b, PEFT's DoRA output with the base unmerged
// two fp32 cuBLASLt matmuls (for M = 1 two GEMVs, r·(N + K) multiply-adds against the base's N·K), with u = x Aᵀ in
// a scratch [T, r] fp32 the caller owns. x is the Linear's fp32 input: the branch never sees the bf16 copy a Q4 or
// BF16 base multiplies, so it adds no rounding beyond fp32 summation order. On a mixture-of-experts layer the MLP
// targets adapt each expert's and the shared expert's Linears (QwenDeviceMoe): the branch follows each expert
// Linear's product on its routed rows in the MoE MLP. Which Linears are adapted, the rank and
// the scaling (alpha / r or rsLoRA's alpha / √r) are the adapter's; dropout is off (inference).
//
// Every base, dense or packed, takes this path on the GPU (qwen-qlora generate/chat --device cuda): one code path,
// the base stays as stored (a merge would make each targeted Linear fp32: 8x a 4-bit one's bytes, 2x a bf16 one's),
// and the numbers are those of the GPU trainer's forward (trainer/lora_model_cuda.h runs the same calls).
#pragma once

#ifdef QWENQ_HAVE_CUDA

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "kernels/cuda_check.h"
#include "kernels/device_allocator.h"
#include "trainer/lora_inference.h"

namespace qwenq {

struct QwenDeviceLayer;
struct QwenDeviceMoe;

// The branch of one Linear: A [r, K], B [N, r] fp32 in device memory, s the scaling. r == 0: no adapter. g [N]
// (DoRA only, else null): m / ‖W + s·B A‖ per output row.
struct LoraDeviceBranch {
  const float* A = nullptr;
  const float* B = nullptr;
  int64_t r = 0;
  float s = 0.f;
  const float* g = nullptr;
};

// y [T, N] += s · (x Aᵀ) Bᵀ with x [T, K] fp32 and u [T, r] fp32 scratch (device, not overlapping x or y), then with
// DoRA y = g·y + (1 − g)·bias (bias [N] in bias_dtype, or null: the Linear's bias, already in y); nothing when the
// branch is empty (r == 0). Asynchronous on `stream`.
void lora_branch_forward_cuda(const LoraDeviceBranch& b, const float* x, int64_t T, int64_t K, int64_t N, float* u,
                              float* y, const void* bias, DType bias_dtype, CudaStream stream);

// The uploaded arena of one adapter. Owned by the QwenModelCuda it is attached to.
class LoraInferenceCuda {
 public:
  // Uploads layout.arena (MemoryTag::Adapter) on `stream` and waits for the copy. Throws OutOfMemoryError naming
  // the adapter (source) when it does not fit.
  LoraInferenceCuda(const LoraInferenceLayout& layout, const std::string& source, CudaStream stream);

  // Points every Linear the adapter targets at its A and B and clears every other Linear's branch; moe[l] (one per
  // layer, null for a dense one) holds a mixture-of-experts layer's experts, whose Linears the adapter's MLP targets
  // adapt there. Throws, before changing anything, naming source, layer and Linear when a Linear's [N, K] is not the
  // adapter's or the Linear is not on the device. A DoRA adapter's gains g are computed here, from those Linears'
  // weights (waits for them: a few row-norm passes over the adapted weights).
  void attach(std::vector<QwenDeviceLayer>& layers, const std::vector<QwenDeviceMoe*>& moe);

  int64_t rank() const { return rank_; }
  float scaling() const { return scaling_; }
  int64_t num_linears() const { return static_cast<int64_t>(slots_.size()); }
  int64_t bytes() const { return static_cast<int64_t>(arena_.bytes() + gains_.bytes()); }
  // A DoRA adapter: its gains were computed from the weights at attach (a replaced weight would need new ones).
  bool has_gains() const { return static_cast<bool>(gains_); }

 private:
  void compute_gains(std::vector<QwenDeviceLayer>& layers, const std::vector<QwenDeviceMoe*>& moe);

  std::string source_;
  int64_t rank_ = 0;
  float scaling_ = 0.f;
  int64_t num_layers_ = 0;
  std::vector<LoraArenaSlot> slots_;
  DeviceAllocation arena_;
  DeviceAllocation gains_;           // DoRA: every slot's g [N] at gain_off_ (floats); empty without DoRA
  std::vector<int64_t> gain_off_;    // per slot
  CudaStream stream_ = nullptr;      // the model's stream (the upload's and attach's work)
};

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
