// LoRA hyper-parameters, the table of Linear layers an adapter can target, and adapter_config.json as Hugging
// Face PEFT writes and reads it (REFERENCE A4.1).
//
// scaling s = lora_alpha / r, or lora_alpha / √r with rsLoRA (use_rslora); the adapted layer computes
// y = x Wᵀ + s·(dropout(x) Aᵀ) Bᵀ. With use_dora (DoRA, Liu et al. 2024; PEFT's use_dora=True) each adapted
// Linear also has a magnitude m [N] and computes y = (m/n) ⊙ (x (W + s·B A)ᵀ) + b, n = ‖W + s·B A‖ per row
// (lora/lora_adapter.h, trainer/lora_model.cpp).
//
// Written config: the fields PEFT has read since 0.9 (peft_type, task_type, base_model_name_or_path, revision,
// r, lora_alpha, lora_dropout, bias, target_modules, fan_in_fan_out, use_rslora, use_dora, init_lora_weights,
// modules_to_save, inference_mode, layers_to_transform, layers_pattern, rank_pattern, alpha_pattern). PEFT fills
// every field it does not find with its default, while PEFT before 0.13 raises TypeError on fields it does not
// know (lora_bias, eva_config, ...), so the newer fields are left out on purpose.
//
// Read config: what PEFT 0.15 writes. Refused with an error naming the file and field, because the adapter
// would then not be the plain y = x Wᵀ + s·x Aᵀ Bᵀ on every targeted layer: peft_type other than LORA, task_type
// other than CAUSAL_LM (or null) and SEQ_CLS (a reward model's adapter, with its score head), bias != "none",
// lora_bias, fan_in_fan_out, modules_to_save (but a SEQ_CLS adapter's "classifier" / "score"),
// layers_to_transform, non-empty layers_pattern / rank_pattern / alpha_pattern / exclude_modules,
// layer_replication, trainable_token_indices, target_parameters, use_qalora, init_lora_weights that rewrite
// the base weights (pissa, olora, loftq, eva, corda), and target_modules given as a regex string. target_modules
// may be a list of short names (any order; stored in table order) or one string: "all-linear" or one name.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qwenq {

// The Linear layers of a Qwen decoder layer that LoRA can adapt, in table order (also the order in which
// adapter tensors are initialised and saved).
enum class LoraTarget : int { QProj, KProj, VProj, OProj, GateProj, UpProj, DownProj };
constexpr int kNumLoraTargets = 7;

struct LoraTargetInfo {
  LoraTarget target;
  const char* name;    // PEFT's target_modules spelling: "q_proj"
  const char* parent;  // the module holding it in a decoder layer: "self_attn" or "mlp"
};
extern const LoraTargetInfo kLoraTargets[kNumLoraTargets];

const char* lora_target_name(LoraTarget t);
// "self_attn.q_proj", the path below model.layers.{l}.
std::string lora_target_path(LoraTarget t);
// false when `name` is not one of the seven short names.
bool lora_target_from_name(const std::string& name, LoraTarget* out);
// "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" (for error messages).
std::string lora_valid_target_list();

struct LoraConfig {
  int64_t r = 8;
  double alpha = 16;
  double dropout = 0.0;
  bool use_rslora = false;
  bool use_dora = false;  // DoRA: a magnitude vector per adapted Linear
  std::vector<std::string> target_modules{"q_proj", "v_proj"};  // short names, in table order
  std::string base_model;  // base_model_name_or_path ("" is written as null)
  // A sequence classifier's adapter (PEFT's task_type SEQ_CLS: a reward model, `train --objective reward`): its
  // classifier head `score` [num_labels, C] is trained whole and saved with the adapter (PEFT's modules_to_save,
  // ["classifier", "score"]) as base_model.model.score.weight. 0: a causal LM's adapter (task_type CAUSAL_LM).
  // Not a field of adapter_config.json: a reader takes SEQ_CLS as 1 and the loader the count the tensor holds.
  int64_t num_labels = 0;
  bool seq_cls() const { return num_labels > 0; }

  double scaling() const;  // alpha / r, or alpha / sqrt(r) with use_rslora
  bool targets(LoraTarget t) const;
  // Throws naming the problem: r < 1, alpha not finite, dropout outside [0, 1), unknown or no targets.
  void validate() const;
};

// "q_proj,v_proj": short names joined by commas (messages).
std::string lora_targets_str(const std::vector<std::string>& targets);

// "q_proj,v_proj" (commas, optional spaces) or "all-linear" -> short names in table order, without duplicates.
// Throws listing the valid names for anything else.
std::vector<std::string> parse_lora_targets(const std::string& spec);

// adapter_config.json text (2-space indented JSON).
std::string lora_config_to_json(const LoraConfig& config);
// How parse_lora_config_json takes an init_lora_weights that rewrites the base weights on load.
enum class BaseRewritingInit {
  Refuse,      // loading such an adapter onto a base would split the base again in PEFT
  PissaAsTrue  // "pissa" / "pissa_niter_<n>" read as true: the adapter's tensors alone are wanted (pissa-to-lora)
};
// Parses adapter_config.json text; `path_for_errors` names the file in every error.
LoraConfig parse_lora_config_json(const std::string& json_text, const std::string& path_for_errors,
                                  BaseRewritingInit init = BaseRewritingInit::Refuse);
// Reads `<dir>/adapter_config.json`.
LoraConfig load_lora_config(const std::string& dir, BaseRewritingInit init = BaseRewritingInit::Refuse);

}  // namespace qwenq
