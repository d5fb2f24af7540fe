// The LoRA selection flags train and plan share (tools/qlora_cli.h): which Linears an adapter adapts, as PEFT's
// adapter_config.json fields name them (lora/lora_select.h applies them).
#include <string>
#include <vector>

#include "core/error.h"
#include "lora/lora_config.h"
#include "tools/qlora_cli.h"

namespace qwenq::cli {

void add_lora_selection_flags(CLI::App* c, LoraSelectionFlags* f) {
  c->add_option("--target", f->targets,
                "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj, module paths (self_attn.q_proj, "
                "model.layers.3.mlp.down_proj) or all-linear")
      ->capture_default_str();
  c->add_option("--target-regex", f->target_regex,
                "instead of --target: the Linears whose full name (model.layers.3.self_attn.q_proj) the regex matches "
                "whole (PEFT's target_modules as a string)");
  c->add_option("--layers-to-transform", f->layers,
                "adapt only these layers of --target's Linears: indexes and ranges, e.g. 0,1,20-23 (PEFT's "
                "layers_to_transform)");
  c->add_option("--layers-pattern", f->layers_pattern,
                "the name before the layer index in module paths, for --layers-to-transform (PEFT's layers_pattern; "
                "e.g. layers)");
  c->add_option("--exclude-modules", f->exclude,
                "never adapt these modules: names or path suffixes, e.g. 0.self_attn.q_proj (PEFT's exclude_modules)");
  c->add_option("--exclude-regex", f->exclude_regex,
                "never adapt the Linears whose full name the regex matches whole (PEFT's exclude_modules as a string)");
  c->add_option("--rank-pattern", f->rank_pattern,
                "ranks of their own, a JSON object of pattern: r, e.g. '{\"down_proj\": 16}': the first pattern "
                "matching a name's end wins (PEFT's rank_pattern; the CPU trainer)");
  c->add_option("--alpha-pattern", f->alpha_pattern,
                "alphas of their own, a JSON object of pattern: lora_alpha (PEFT's alpha_pattern; the CPU trainer)");
}

bool lora_selection_given(const CLI::App& c) {
  for (const char* flag : {"--target", "--target-regex", "--layers-to-transform", "--layers-pattern",
                           "--exclude-modules", "--exclude-regex", "--rank-pattern", "--alpha-pattern"}) {
    if (c.get_option(flag)->count() > 0) return true;
  }
  return false;
}

void apply_lora_selection(const CLI::App& c, const LoraSelectionFlags& f, LoraConfig* lora) {
  const bool regex = !f.target_regex.empty();
  QWENQ_CHECK(!regex || c.get_option("--target")->count() == 0, "give --target or --target-regex, not both");
  QWENQ_CHECK(f.exclude.empty() || f.exclude_regex.empty(), "give --exclude-modules or --exclude-regex, not both");
  lora->target_modules = regex ? std::vector<std::string>{} : parse_lora_targets(f.targets);
  lora->target_regex = f.target_regex;
  if (!f.layers.empty()) lora->layers_to_transform = parse_layer_list(f.layers, "--layers-to-transform");
  if (!f.layers_pattern.empty()) lora->layers_pattern = parse_name_list(f.layers_pattern, "--layers-pattern");
  if (!f.exclude.empty()) lora->exclude_modules = parse_name_list(f.exclude, "--exclude-modules");
  lora->exclude_regex = f.exclude_regex;
  if (!f.rank_pattern.empty()) lora->rank_pattern = parse_rank_pattern(f.rank_pattern, "--rank-pattern");
  if (!f.alpha_pattern.empty()) lora->alpha_pattern = parse_alpha_pattern(f.alpha_pattern, "--alpha-pattern");
  lora->validate();  // PEFT's own refusals (a regex with layers_to_transform, ...) before any work
}

}  // namespace qwenq::cli
