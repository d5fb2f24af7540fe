// LoRA adapters on disk, in the Hugging Face PEFT layout (REFERENCE A4): a directory holding
//   adapter_config.json          (lora/lora_config.h)
//   adapter_model.safetensors    __metadata__ {"format": "pt"}; for every layer l and targeted Linear
//     base_model.model.model.layers.{l}.{self_attn|mlp}.{name}.lora_A.weight   [r, K]
//     base_model.model.model.layers.{l}.{self_attn|mlp}.{name}.lora_B.weight   [N, r]
//     base_model.model.model.layers.{l}.{self_attn|mlp}.{name}.lora_magnitude_vector   [N]   (DoRA only)
//     base_model.model.score.weight   [num_labels, C]   (a SEQ_CLS adapter's classifier head, PEFT's modules_to_save)
// (the keys of a PeftModel wrapping Qwen2ForCausalLM, or Qwen2ForSequenceClassification for SEQ_CLS, adapter name
// "default" dropped, as save_pretrained writes).
//
// Saving builds the directory under "<dir>.partial.<pid>" and renames it when both files are complete
// (core/files.h StagedDir), so a crash never leaves a half-written adapter under the final name. The dtype is
// F32 by default: PEFT keeps adapter weights in fp32 even on a bf16 base (autocast_adapter_dtype, REFERENCE
// A4.3), so its own files are F32; BF16 (round to nearest even) halves the size.
//
// Loading reads an adapter made by PEFT or by us: every tensor's dtype (F32, BF16, F16) is widened to fp32, and
// every shape is checked against the base model's dimensions; a mismatch names the tensor, the file, and the
// expected and found shapes ("adapter for a different base"). A key the config does not explain (a module not in
// target_modules, a layer the base lacks, biases, DoRA magnitudes without use_dora, embeddings) is refused by name,
// as is a missing A, B or (with use_dora) magnitude, and a non-finite magnitude. adapter_model.bin (pickle) is refused: re-save with safe_serialization=True.
#pragma once

#include <cstdint>
#include <string>

#include "core/dtype.h"
#include "core/safetensors.h"
#include "lora/lora_adapter.h"

namespace qwenq {

// "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight" (is_b: lora_B).
std::string peft_tensor_name(int64_t layer, LoraTarget t, bool is_b);
// "base_model.model.model.layers.3.self_attn.q_proj.lora_magnitude_vector" (DoRA's m; PEFT drops ".weight").
// "base_model.model.score.weight": a SEQ_CLS adapter's classifier head.
extern const char* const kPeftScoreName;
std::string peft_magnitude_name(int64_t layer, LoraTarget t);
// The same for any adapted Linear, a MoE expert's too: "base_model.model.model.layers.3.mlp.experts.7.up_proj.lora_A.weight".
std::string peft_tensor_name(const LoraSlot& s, bool is_b);
std::string peft_magnitude_name(const LoraSlot& s);

struct PeftSaveOptions {
  DType dtype = DType::F32;  // F32 or BF16
  bool overwrite = false;    // replace an existing directory (else refused)
};

// Writes `dir` (adapter_config.json + adapter_model.safetensors) atomically.
void save_peft_adapter(const std::string& dir, const LoraAdapter& adapter, const PeftSaveOptions& options = {});
// The same directory from a config and the tensors as given (`weights` with PEFT's {"format": "pt"} metadata set):
// staged, renamed when both files are complete. save_peft_adapter's last step; lora/pissa_convert.h's output.
void write_peft_adapter_dir(const std::string& dir, const LoraConfig& config, const SafetensorsWriter& weights,
                            bool overwrite);
// `<dir>/adapter_model.safetensors`, refused by name when absent (a PyTorch pickle in its place: with the advice to
// re-save it as safetensors).
std::string peft_weights_path(const std::string& dir);

// Reads `dir` for a base model of dimensions `dims`; the config is adapter.config().
LoraAdapter load_peft_adapter(const std::string& dir, const LoraDims& dims);

}  // namespace qwenq
