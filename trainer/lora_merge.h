// Folding a LoRA adapter into its base model: in memory (so generate, eval and anything else that runs a QwenModel
// sees the adapted model with no adapter code on the hot path), or into a dense Hugging Face directory.
//
// For every decoder layer l and every Linear the adapter targets, with base weight W [N, K], A [r, K], B [N, r]
// and scaling s (alpha / r, or alpha / √r with rsLoRA; lora/lora_config.h):
//   y = x Wᵀ + s·(x Aᵀ) Bᵀ = x (W + s·B A)ᵀ      so      W' = W + s·B A      [N, K]
//   W'[n, k] = W[n, k] + Σ_j (s·B[n, j])·A[j, k]    j = 0..r-1, in fp32, j ascending
// W is the fp32 value of the stored weight: the dense bf16/fp16/fp32 values, or what a packed GPTQ/AWQ/NF4/FP4
// weight dequantizes to (LinearWeight::dequantize). The merged model equals the adapted one up to fp32
// reassociation (x (W + sBA)ᵀ is summed in another order than x Wᵀ + s(xAᵀ)Bᵀ), plus, on disk, the rounding of W'
// to the output dtype. Dropout plays no part (it is off at inference). Untargeted Linears are left as they are.
//
// DoRA (use_dora; PEFT's LoraLayer.merge): with magnitude m [N] and n = ‖W + s·B A‖₂ per row n (over k),
//   W'[n, :] = (m[n] / n[n]) · (W[n, :] + s·(B A)[n, :])
// since PEFT's y = x Wᵀ + b + (m/n − 1) ⊙ (x Wᵀ) + (m/n) ⊙ s·(x Aᵀ) Bᵀ = (m/n) ⊙ (x (W + s·B A)ᵀ) + b at inference
// (dropout off). The bias is not scaled. n is summed in double from the fp32 row and rounded to fp32.
//
// A merged 4-bit base is no longer 4-bit: W + sBA does not lie on the quantization grid, so merging a QLoRA adapter
// gives a dense model (which `qwen-quant gptq/awq/nf4` can quantize again).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "core/dtype.h"
#include "lora/lora_adapter.h"
#include "trainer/qwen_model.h"
#include "trainer/quantize_model.h"

namespace qwenq {

// Where each LoRA target lives in a QwenModel (QwenModel::linear_weight's selector).
struct LoraTargetSlot {
  BlockLinear group;
  int index;
};
LoraTargetSlot lora_target_slot(LoraTarget t);

// W [N, K] += s·B A for one adapted Linear, then each row scaled by m/n when lw.m is set (DoRA; the formulas above).
// Throws when the shapes differ.
void merge_lora_weights(float* W, int64_t N, int64_t K, const LoraWeights& lw, float s);

// Replaces every targeted Linear of `model` by W + s·B A in fp32 (LinearWeight::from_fp32), dequantizing packed
// weights first. Throws, before changing anything, when the adapter was made for other dimensions. Merging twice
// adds the adapter twice.
void merge_adapter_in_memory(QwenModel& model, const LoraAdapter& adapter);

// load_peft_adapter for the base model at `model_dir` (config `cfg`); every refusal (missing directory, shapes of
// another base, unsupported config) is rethrown naming both directories and what the adapter was for: "cannot merge
// the LoRA adapter <adapter_dir> into the base model <model_dir>: <reason>" (Merge: `qwen-qlora merge`), "cannot
// apply the LoRA adapter <adapter_dir> to the base model <model_dir>: <reason>" (Apply: eval and generate, which
// merge it in memory on the CPU and run it unmerged on the GPU). Apply refuses a reward model's adapter (task_type
// SEQ_CLS), Score (eval --objective reward) anything else: "cannot score with the LoRA adapter ...".
enum class AdapterUse { Merge, Apply, Score };
LoraAdapter load_adapter_for_base(const std::string& adapter_dir, const std::string& model_dir, const QwenConfig& cfg,
                                  AdapterUse use);

struct MergeOptions {
  std::string model_dir;    // base: dense bf16/fp16/fp32, or GPTQ/AWQ/bitsandbytes-4bit
  std::string adapter_dir;  // PEFT layout (lora/peft_io.h)
  std::string out_dir;
  // Output dtype of the decoder Linear weights (BF16, F16 or F32). Unset: the dtype of the base's dense Linear
  // weights, BF16 for a quantized base.
  std::optional<DType> dtype;
  bool overwrite = false;
  uint64_t max_shard_bytes = uint64_t{4} << 30;
  bool quiet = false;
};

// The dtype a merge writes when MergeOptions::dtype is unset: that of the base's dense Linear weights (bf16, fp16
// or fp32), BF16 for a quantized base.
DType default_merge_dtype(const std::string& model_dir);

// Writes a dense Hugging Face directory at out_dir: config.json (without quantization_config, torch_dtype = the
// output dtype), safetensors shards of at most max_shard_bytes, model.safetensors.index.json when there are several,
// and the tokenizer files copied. Every decoder Linear weight is written in the output dtype (merged when targeted,
// dequantized when packed); every other tensor (embeddings, norms, biases, lm_head) is copied byte for byte. The
// directory is built under a temporary name and renamed when complete (StagedDir), so nothing half-written ever
// appears under out_dir. An adapter whose shapes do not fit the base is refused, naming both directories, before
// anything is written. The report counts in `linears` the Linears merged with the adapter and in params_quantized
// their weights (N·K summed); bytes, shards, seconds and peak RSS as for the quantizers.
QuantizeReport merge_adapter_to_dir(const MergeOptions& opt);

}  // namespace qwenq
