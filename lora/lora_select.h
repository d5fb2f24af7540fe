// Which Linears an adapter adapts, with each one's own rank and scaling, decided as PEFT 0.15 decides them from
// adapter_config.json (peft/tuners/tuners_utils.py check_target_module_exists, peft/utils/other.py get_pattern_key,
// LoraLayer.update_layer) for every module by its full name in the base model,
//   key = "model.layers.<l>.<path>"      path "self_attn.q_proj", "mlp.down_proj", "mlp.experts.3.up_proj"
// (the names of Qwen2ForCausalLM's and Qwen2ForSequenceClassification's modules alike):
//
//   excluded  exclude_modules a regex: fullmatch(regex, key); a list: key is an entry or ends with "." + entry
//   adapted   not excluded, and
//               target_modules a regex: fullmatch(regex, key)      (PEFT refuses layers_to_transform with one)
//               a list of names: key ends with "." + name, and with layers_to_transform the layer index read
//               from key is one of them: the first of layers_pattern's p with re.match(".*\.<p>\.(\d+)\.", key),
//               without layers_pattern re.match(".*\.[^.]*\.(\d+)\.", key), whose greedy ".*" takes the last
//               "<name>.<digits>." of the key (so for a MoE expert's Linear it is the expert's index, as in PEFT)
//   r         rank_pattern's first key k (file order) with re.match("(.*\.)?(k)$", key), else r; lora_alpha the
//             same with alpha_pattern
//   scaling   alpha / r, or alpha / √r with use_rslora, of that Linear's own r and alpha
//
// The order of the result is the adapter's (lora/lora_adapter.h): layer by layer, within a layer the targets in table
// order, a MoE layer's MLP target expert by expert and then the shared expert.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lora/lora_adapter.h"

namespace qwenq {

struct LoraPlanSlot {
  LoraSlot slot;      // layer, target, expert, path
  LoraShape shape;    // the Linear's [N, K]
  int64_t r = 0;      // its rank
  double alpha = 0;   // its lora_alpha
  double scaling = 0; // its s
};

// "model.layers.3.mlp.experts.7.up_proj": PEFT's name for the module of `slot`.
std::string lora_module_key(const LoraSlot& slot);

// The adapted Linears of `config` on a model of `dims` (rules above). Throws, naming `source`, when nothing is
// selected (PEFT: "Target modules ... not found in the base model"), when a regex target_modules also selects a Linear
// that cannot carry an adapter here (lm_head, a MoE router "mlp.gate" or "mlp.shared_expert_gate", a classifier's
// "score"), when a Linear's r exceeds min(N, K) or its r / alpha is invalid, and when a MoE layer's experts get an r or
// alpha other than the config's (rank_pattern / alpha_pattern on experts are not supported).
std::vector<LoraPlanSlot> lora_plan(const LoraDims& dims, const LoraConfig& config, const std::string& source);

// The targets some Linear of `plan` adapts, in table order ("q_proj", "v_proj"): the --target list of an adapter that
// adapts the same targets on every layer, whatever selection (a regex, module paths) named them.
std::vector<std::string> lora_plan_target_names(const std::vector<LoraPlanSlot>& plan);

// "" when `plan` is the uniform adapter the GPU paths lay out (every layer adapts the same targets, each MoE layer's
// target on all its experts, every Linear with the config's r and scaling), else why not (a device line's reason).
std::string lora_plan_gpu_refusal(const std::vector<LoraPlanSlot>& plan, const LoraDims& dims,
                                  const LoraConfig& config);

}  // namespace qwenq
