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
// know (lora_bias, eva_config, ...), so the newer fields are left out on purpose (exclude_modules, PEFT 0.14's, only
// when set). Keys sorted as PEFT writes them; rank_pattern's and alpha_pattern's keys keep the config's order.
//
// Read config: what PEFT 0.15 writes. Refused with an error naming the file and field, because the adapter
// would then not be y = x Wᵀ + s·x Aᵀ Bᵀ on each adapted Linear: peft_type other than LORA, task_type
// other than CAUSAL_LM (or null) and SEQ_CLS (a reward model's adapter, with its score head), bias != "none",
// lora_bias, fan_in_fan_out, modules_to_save (but a SEQ_CLS adapter's "classifier" / "score"),
// layer_replication, trainable_token_indices, target_parameters, use_qalora, init_lora_weights that rewrite
// the base weights (pissa, olora, loftq, eva, corda). target_modules may be a list of short names (any order; stored
// in table order; module paths ending in one, "self_attn.q_proj", as PEFT matches them) or one string: "all-linear", one name, or a regular expression (PEFT matches a string that is not
// "all-linear" as a regex over each module's full name). PEFT's finer selection is read and applied as PEFT applies
// it (lora/lora_select.h): layers_to_transform (an index or a list) with layers_pattern (a name or a list),
// exclude_modules (a list or a regex), rank_pattern and alpha_pattern (per-module r and lora_alpha). PEFT's own
// refusals are kept: layers_to_transform or layers_pattern with a regex target_modules, layers_pattern without
// layers_to_transform. A regex in PEFT's Python syntax that ECMAScript reads differently (named groups, lookbehind,
// inline flags, \A, \Z) is refused by name.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
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
// A target_modules list entry: a short name, or a module path ending in one ("self_attn.q_proj",
// "model.layers.3.mlp.down_proj": PEFT matches a module whose name is the entry or ends with "." + entry); its target.
bool lora_target_entry(const std::string& entry, LoraTarget* out);
// "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" (for error messages).
std::string lora_valid_target_list();

struct LoraConfig {
  int64_t r = 8;
  double alpha = 16;
  double dropout = 0.0;
  bool use_rslora = false;
  bool use_dora = false;  // DoRA: a magnitude vector per adapted Linear
  // Short names in table order, then any module paths ("self_attn.q_proj", "model.layers.3.mlp.down_proj") as given.
  std::vector<std::string> target_modules{"q_proj", "v_proj"};
  std::string base_model;  // base_model_name_or_path ("" is written as null)
  // A sequence classifier's adapter (PEFT's task_type SEQ_CLS: a reward model, `train --objective reward`): its
  // classifier head `score` [num_labels, C] is trained whole and saved with the adapter (PEFT's modules_to_save,
  // ["classifier", "score"]) as base_model.model.score.weight. 0: a causal LM's adapter (task_type CAUSAL_LM).
  // Not a field of adapter_config.json: a reader takes SEQ_CLS as 1 and the loader the count the tensor holds.
  int64_t num_labels = 0;
  bool seq_cls() const { return num_labels > 0; }

  // PEFT's finer selection of the adapted Linears and their own r and alpha (lora/lora_select.h applies it; all unset:
  // every layer adapts target_modules with r and alpha). Written to adapter_config.json under PEFT's names.
  std::string target_regex;                     // target_modules as one regular expression; target_modules is then empty
  std::vector<int64_t> layers_to_transform;     // only these layer indexes (empty: every layer)
  std::vector<std::string> layers_pattern;      // the name before a layer's index in a module path ("layers"); empty: any
  std::vector<std::string> exclude_modules;     // module names or dotted path suffixes left out
  std::string exclude_regex;                    // exclude_modules as one regular expression
  std::vector<std::pair<std::string, int64_t>> rank_pattern;  // pattern -> r, file order (the first match wins)
  std::vector<std::pair<std::string, double>> alpha_pattern;  // pattern -> lora_alpha, likewise
  // Any of the seven fields above set, or a module path among target_modules.
  bool selects_finely() const;

  double scaling() const;  // alpha / r, or alpha / sqrt(r) with use_rslora
  bool targets(LoraTarget t) const;
  // Throws naming the problem: r < 1, alpha not finite, dropout outside [0, 1), unknown or no targets.
  void validate() const;
};

// "q_proj,v_proj": short names joined by commas (messages).
std::string lora_targets_str(const std::vector<std::string>& targets);
// The whole selection for messages: "q_proj,v_proj", or the regex, then any finer field as PEFT names it
// ("q_proj,v_proj; layers_to_transform [0, 1]; rank_pattern {\"v_proj\": 4}").
std::string lora_selection_str(const LoraConfig& config);
// The selection fields (targets, regex, layers, pattern, exclusions, rank and alpha patterns) equal.
bool same_lora_selection(const LoraConfig& a, const LoraConfig& b);

// "q_proj,v_proj" (commas, optional spaces) or "all-linear" -> short names in table order, without duplicates.
// Throws listing the valid names for anything else.
std::vector<std::string> parse_lora_targets(const std::string& spec);

// "0,1,4-7" -> {0, 1, 4, 5, 6, 7}: layers_to_transform from a command line (`flag` names it in errors).
std::vector<int64_t> parse_layer_list(const std::string& spec, const std::string& flag);
// "a,b" -> {"a", "b"} (spaces trimmed; an empty item refused): exclude_modules or layers_pattern from a command line.
std::vector<std::string> parse_name_list(const std::string& spec, const std::string& flag);
// '{"down_proj": 16, "v_proj": 4}' -> rank_pattern entries in the text's order (ranks positive integers), and the
// same for alpha_pattern (finite numbers); throws naming `flag`.
std::vector<std::pair<std::string, int64_t>> parse_rank_pattern(const std::string& json_text, const std::string& flag);
std::vector<std::pair<std::string, double>> parse_alpha_pattern(const std::string& json_text, const std::string& flag);

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
