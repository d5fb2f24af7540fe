#include "lora/lora_select.h"

#include <algorithm>
#include <cmath>
#include <regex>
#include <set>

#include "core/error.h"
#include "core/python_regex.h"
#include "core/strings.h"

namespace qwenq {

std::string lora_module_key(const LoraSlot& slot) { return "model.layers." + std::to_string(slot.layer) + "." + slot.path; }

namespace {

// The config's regular expressions, compiled once for every key.
struct Selector {
  const LoraConfig& c;
  std::regex target, exclude;
  std::vector<std::regex> layer_index;  // layers_pattern's, or the one without it
  std::vector<std::regex> rank_keys, alpha_keys;

  Selector(const LoraConfig& config, const std::string& source) : c(config) {
    if (!c.target_regex.empty()) target = compile_python_regex(c.target_regex, source + ": target_modules");
    if (!c.exclude_regex.empty()) exclude = compile_python_regex(c.exclude_regex, source + ": exclude_modules");
    if (c.layers_pattern.empty() && !c.layers_to_transform.empty()) {  // (read only with layers_to_transform)
      layer_index.push_back(compile_python_regex(R"(.*\.[^.]*\.(\d+)\.)", source + ": layer index"));
    }
    for (const std::string& p : c.layers_pattern) {
      layer_index.push_back(compile_python_regex(".*\\." + p + "\\.(\\d+)\\.", source + ": layers_pattern"));
    }
    for (const auto& kv : c.rank_pattern) {
      rank_keys.push_back(compile_python_regex("(.*\\.)?(" + kv.first + ")", source + ": rank_pattern key"));
    }
    for (const auto& kv : c.alpha_pattern) {
      alpha_keys.push_back(compile_python_regex("(.*\\.)?(" + kv.first + ")", source + ": alpha_pattern key"));
    }
  }

  bool excluded(const std::string& key) const {
    if (!c.exclude_regex.empty()) return python_fullmatch(exclude, key);
    for (const std::string& e : c.exclude_modules) {
      if (key == e || ends_with(key, "." + e)) return true;
    }
    return false;
  }

  // check_target_module_exists.
  bool selects(const std::string& key) const {
    if (excluded(key)) return false;
    if (!c.target_regex.empty()) return python_fullmatch(target, key);
    bool found = false;
    for (const std::string& name : c.target_modules) {
      if (key == name) return true;  // named in full: no layer filter (PEFT's first branch)
      found = found || ends_with(key, "." + name);
    }
    if (!found || c.layers_to_transform.empty()) return found;
    std::string index;
    bool matched = false;
    for (const std::regex& re : layer_index) {
      if ((matched = python_match(re, key, &index))) break;
    }
    if (!matched) return false;
    const int64_t l = index.size() > 18 ? -1 : std::stoll(index);
    return std::find(c.layers_to_transform.begin(), c.layers_to_transform.end(), l) != c.layers_to_transform.end();
  }

  // get_pattern_key, then dict.get(key, default).
  template <typename V>
  V pattern_value(const std::vector<std::regex>& keys, const std::vector<std::pair<std::string, V>>& pattern,
                  const std::string& key, V fallback) const {
    for (size_t i = 0; i < keys.size(); ++i) {
      if (std::regex_match(key, keys[i])) return pattern[i].second;
    }
    return fallback;
  }
};

// Every Linear a Qwen model has that LoRA can adapt here, as (slot, shape), in the adapter's order.
std::vector<std::pair<LoraSlot, LoraShape>> adaptable_linears(const LoraDims& d) {
  std::vector<std::pair<LoraSlot, LoraShape>> out;
  for (int64_t l = 0; l < d.num_layers; ++l) {
    for (const LoraTargetInfo& info : kLoraTargets) {
      const LoraTarget t = info.target;
      if (!d.is_moe_layer(l) || std::string(info.parent) != "mlp") {
        out.push_back({{l, t, kNoExpert, lora_target_path(t)}, lora_target_shape(d, t)});
        continue;
      }
      auto shape = [&](int64_t width) {
        return t == LoraTarget::DownProj ? LoraShape{d.hidden_size, width} : LoraShape{width, d.hidden_size};
      };
      for (int64_t e = 0; e < d.num_experts; ++e) {
        out.push_back({{l, t, e, "mlp.experts." + std::to_string(e) + "." + info.name}, shape(d.moe_intermediate_size)});
      }
      if (d.shared_expert_intermediate_size > 0) {
        out.push_back({{l, t, -1, std::string("mlp.shared_expert.") + info.name},
                       shape(d.shared_expert_intermediate_size)});
      }
    }
  }
  return out;
}

// The Linears (and the embedding) a regex could also name that no adapter here can carry.
std::vector<std::string> unadaptable_modules(const LoraDims& d, const LoraConfig& c) {
  std::vector<std::string> out = {"lm_head", "model.embed_tokens"};
  if (c.seq_cls()) out.push_back("score");
  for (int64_t l = 0; l < d.num_layers; ++l) {
    if (!d.is_moe_layer(l)) continue;
    const std::string p = "model.layers." + std::to_string(l) + ".mlp.";
    out.push_back(p + "gate");
    if (d.shared_expert_intermediate_size > 0) out.push_back(p + "shared_expert_gate");
  }
  return out;
}

double scaling_of(double alpha, int64_t r, bool rslora) {
  return rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
}

}  // namespace

std::vector<LoraPlanSlot> lora_plan(const LoraDims& dims, const LoraConfig& config, const std::string& source) {
  const Selector sel(config, source.empty() ? "LoRA config" : source);
  const std::string at = source.empty() ? "" : source + ": ";  // each refusal's prefix
  if (!config.target_regex.empty()) {
    for (const std::string& key : unadaptable_modules(dims, config)) {
      QWENQ_CHECK(!sel.selects(key), at << "target_modules \"" << config.target_regex << "\" selects " << key
                                            << ", which LoRA here cannot adapt (only the decoder layers' q, k, v, o, "
                                            << "gate, up and down projections and the experts')");
    }
  }
  std::vector<LoraPlanSlot> out;
  for (auto& [slot, shape] : adaptable_linears(dims)) {
    const std::string key = lora_module_key(slot);
    if (!sel.selects(key)) continue;
    LoraPlanSlot p;
    p.r = sel.pattern_value(sel.rank_keys, config.rank_pattern, key, config.r);
    p.alpha = sel.pattern_value(sel.alpha_keys, config.alpha_pattern, key, config.alpha);
    p.scaling = scaling_of(p.alpha, p.r, config.use_rslora);
    QWENQ_CHECK(p.r >= 1 && std::isfinite(p.alpha),
                at << key << " gets r " << p.r << " and lora_alpha " << p.alpha << " (r must be >= 1)");
    QWENQ_CHECK(p.r <= std::min(shape.N, shape.K),
                at << "LoRA rank r=" << p.r << " exceeds min(N, K) = " << std::min(shape.N, shape.K) << " of "
                       << key << " [" << shape.N << ", " << shape.K << "]; choose r <= " << std::min(shape.N, shape.K));
    QWENQ_CHECK(slot.expert == kNoExpert || (p.r == config.r && p.alpha == config.alpha),
                at << key << " gets r " << p.r << " and lora_alpha " << p.alpha
                       << " from rank_pattern / alpha_pattern, the config's being " << config.r << " and "
                       << config.alpha << "; ranks or alphas of their own on a mixture-of-experts layer's experts are "
                       << "not supported");
    p.slot = std::move(slot);
    p.shape = shape;
    out.push_back(std::move(p));
  }
  QWENQ_CHECK(!out.empty(), at << "the module selection (" << lora_selection_str(config)
                                   << ") matches no Linear of the model's " << dims.num_layers
                                   << " layers (PEFT: target modules not found in the base model)");
  return out;
}

std::vector<std::string> lora_plan_target_names(const std::vector<LoraPlanSlot>& plan) {
  std::set<int> used;
  for (const LoraPlanSlot& p : plan) used.insert(static_cast<int>(p.slot.target));
  std::vector<std::string> names;
  for (int t : used) names.push_back(kLoraTargets[t].name);
  return names;
}

std::string lora_plan_gpu_refusal(const std::vector<LoraPlanSlot>& plan, const LoraDims& dims,
                                  const LoraConfig& config) {
  for (const LoraPlanSlot& p : plan) {
    if (p.r != config.r || p.scaling != config.scaling()) {
      return "the adapter gives " + lora_module_key(p.slot) + " a rank or alpha of its own (rank_pattern / "
             "alpha_pattern), which the GPU paths do not lay out";
    }
  }
  // Every layer the same targets (all experts of a MoE layer's): the plan of those targets on every layer.
  LoraConfig uniform;
  uniform.target_modules = lora_plan_target_names(plan);
  uniform.r = config.r;
  uniform.alpha = config.alpha;
  uniform.use_rslora = config.use_rslora;
  uniform.num_labels = config.num_labels;
  const Selector sel(uniform, "lora_plan_gpu_refusal");
  size_t every_layer = 0;
  for (const auto& linear : adaptable_linears(dims)) every_layer += sel.selects(lora_module_key(linear.first)) ? 1 : 0;
  if (every_layer == plan.size()) return "";
  return "the adapter adapts other Linears in some layers than in others (layers_to_transform, exclude_modules or a "
         "regex target_modules), which the GPU paths do not lay out";
}

}  // namespace qwenq
