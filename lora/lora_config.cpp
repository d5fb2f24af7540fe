#include "lora/lora_config.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/files.h"
#include "core/json_file.h"

namespace qwenq {

const LoraTargetInfo kLoraTargets[kNumLoraTargets] = {
    {LoraTarget::QProj, "q_proj", "self_attn"},    {LoraTarget::KProj, "k_proj", "self_attn"},
    {LoraTarget::VProj, "v_proj", "self_attn"},    {LoraTarget::OProj, "o_proj", "self_attn"},
    {LoraTarget::GateProj, "gate_proj", "mlp"},    {LoraTarget::UpProj, "up_proj", "mlp"},
    {LoraTarget::DownProj, "down_proj", "mlp"},
};

const char* lora_target_name(LoraTarget t) { return kLoraTargets[static_cast<int>(t)].name; }

std::string lora_target_path(LoraTarget t) {
  const LoraTargetInfo& info = kLoraTargets[static_cast<int>(t)];
  return std::string(info.parent) + "." + info.name;
}

bool lora_target_from_name(const std::string& name, LoraTarget* out) {
  for (const LoraTargetInfo& info : kLoraTargets) {
    if (name == info.name) {
      *out = info.target;
      return true;
    }
  }
  return false;
}

std::string lora_valid_target_list() {
  std::string s;
  for (const LoraTargetInfo& info : kLoraTargets) s += std::string(s.empty() ? "" : ", ") + info.name;
  return s;
}

std::string lora_targets_str(const std::vector<std::string>& targets) {
  std::string s;
  for (const std::string& t : targets) s += (s.empty() ? "" : ",") + t;
  return s;
}

double LoraConfig::scaling() const {
  return use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
}

bool LoraConfig::targets(LoraTarget t) const {
  return std::find(target_modules.begin(), target_modules.end(), lora_target_name(t)) != target_modules.end();
}

namespace {

// "" when `c` is valid, else what is wrong.
std::string config_problem(const LoraConfig& c) {
  std::ostringstream os;
  if (c.r < 1) {
    os << "LoRA rank r must be at least 1, got " << c.r;
  } else if (!std::isfinite(c.alpha)) {
    os << "LoRA alpha must be a finite number, got " << c.alpha;
  } else if (!(c.dropout >= 0.0 && c.dropout < 1.0)) {
    os << "LoRA dropout must be in [0, 1), got " << c.dropout;
  } else if (c.target_modules.empty()) {
    os << "LoRA target_modules is empty (valid: " << lora_valid_target_list() << ")";
  }
  for (const std::string& m : c.target_modules) {
    LoraTarget t;
    if (os.tellp() == 0 && !lora_target_from_name(m, &t))
      os << "unknown LoRA target module '" << m << "' (valid: " << lora_valid_target_list() << ", all-linear)";
  }
  return os.str();
}

}  // namespace

void LoraConfig::validate() const {
  const std::string problem = config_problem(*this);
  QWENQ_CHECK(problem.empty(), problem);
}

namespace {

// Short names in table order, without duplicates.
std::vector<std::string> in_table_order(const std::vector<std::string>& names) {
  std::vector<std::string> out;
  for (const LoraTargetInfo& info : kLoraTargets) {
    if (std::find(names.begin(), names.end(), info.name) != names.end()) out.push_back(info.name);
  }
  return out;
}

std::vector<std::string> all_targets() {
  std::vector<std::string> out;
  for (const LoraTargetInfo& info : kLoraTargets) out.push_back(info.name);
  return out;
}

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

}  // namespace

std::vector<std::string> parse_lora_targets(const std::string& spec) {
  if (trim(spec) == "all-linear") return all_targets();
  std::vector<std::string> names;
  size_t start = 0;
  while (start <= spec.size()) {
    const size_t comma = std::min(spec.find(',', start), spec.size());
    const std::string name = trim(spec.substr(start, comma - start));
    LoraTarget t;
    QWENQ_CHECK(!name.empty(), "empty LoRA target in '" << spec << "' (valid: " << lora_valid_target_list()
                                                        << ", or all-linear)");
    QWENQ_CHECK(lora_target_from_name(name, &t), "unknown LoRA target '" << name << "' in '" << spec << "' (valid: "
                                                                          << lora_valid_target_list()
                                                                          << ", or all-linear)");
    names.push_back(name);
    start = comma + 1;
  }
  return in_table_order(names);
}

std::string lora_config_to_json(const LoraConfig& config) {
  config.validate();
  using nlohmann::json;
  json j = json::object();
  j["peft_type"] = "LORA";
  j["task_type"] = config.seq_cls() ? "SEQ_CLS" : "CAUSAL_LM";
  j["base_model_name_or_path"] = config.base_model.empty() ? json(nullptr) : json(config.base_model);
  j["revision"] = nullptr;
  j["r"] = config.r;
  // PEFT declares lora_alpha an int; keep integral values integral so the file reads as PEFT's own.
  if (config.alpha == std::floor(config.alpha) && std::fabs(config.alpha) < 1e15) {
    j["lora_alpha"] = static_cast<int64_t>(config.alpha);
  } else {
    j["lora_alpha"] = config.alpha;
  }
  j["lora_dropout"] = config.dropout;
  j["bias"] = "none";
  j["target_modules"] = in_table_order(config.target_modules);
  j["fan_in_fan_out"] = false;
  j["use_rslora"] = config.use_rslora;
  j["use_dora"] = config.use_dora;
  j["init_lora_weights"] = true;
  // PEFT's PeftModelForSequenceClassification saves its classifier heads whole (the names it looks for).
  j["modules_to_save"] = config.seq_cls() ? json::array({"classifier", "score"}) : json(nullptr);
  j["inference_mode"] = true;
  j["layers_to_transform"] = nullptr;
  j["layers_pattern"] = nullptr;
  j["rank_pattern"] = json::object();
  j["alpha_pattern"] = json::object();
  return j.dump(2) + "\n";
}

namespace {

using nlohmann::json;

bool present(const json& j, const char* key) { return j.contains(key) && !j.at(key).is_null(); }

// A field that must be absent, null, false, or an empty list/object/string.
void require_unset(const json& j, const char* key, const std::string& path, const char* why) {
  if (!present(j, key)) return;
  const json& v = j.at(key);
  const bool unset = (v.is_boolean() && !v.get<bool>()) || ((v.is_array() || v.is_object()) && v.empty()) ||
                     (v.is_string() && v.get<std::string>().empty());
  QWENQ_CHECK(unset, path << ": field \"" << key << "\" = " << v.dump() << " is not supported (" << why << ")");
}

double number_field(const json& j, const char* key, const std::string& path) {
  QWENQ_CHECK(j.contains(key), path << ": field \"" << key << "\" is missing");
  QWENQ_CHECK(j.at(key).is_number(), path << ": field \"" << key << "\" must be a number, got " << j.at(key).dump());
  return j.at(key).get<double>();
}

std::vector<std::string> targets_field(const json& j, const std::string& path) {
  QWENQ_CHECK(present(j, "target_modules"), path << ": field \"target_modules\" is missing (PEFT's default for "
                                                 << "Qwen, [q_proj, v_proj], is not assumed; write it out)");
  const json& v = j.at("target_modules");
  std::vector<std::string> names;
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s == "all-linear") return all_targets();
    LoraTarget t;
    QWENQ_CHECK(lora_target_from_name(s, &t),
                path << ": target_modules \"" << s << "\" is a regular expression or an unknown module; only a "
                     << "list of names, one name or \"all-linear\" is supported (valid names: "
                     << lora_valid_target_list() << ")");
    return {s};
  }
  QWENQ_CHECK(v.is_array() && !v.empty(),
              path << ": target_modules must be a non-empty list of names, got " << v.dump());
  for (const json& e : v) {
    QWENQ_CHECK(e.is_string(), path << ": target_modules entries must be strings, got " << e.dump());
    const std::string s = e.get<std::string>();
    LoraTarget t;
    QWENQ_CHECK(lora_target_from_name(s, &t), path << ": target_modules entry \"" << s << "\" is not supported (valid: "
                                                   << lora_valid_target_list() << ")");
    names.push_back(s);
  }
  return in_table_order(names);
}

}  // namespace

LoraConfig parse_lora_config_json(const std::string& json_text, const std::string& path, BaseRewritingInit init) {
  const json j = parse_json_text(json_text, path);
  QWENQ_CHECK(j.is_object(), path << ": expected a JSON object");

  QWENQ_CHECK(present(j, "peft_type") && j.at("peft_type") == "LORA",
              path << ": peft_type must be \"LORA\", got " << (j.contains("peft_type") ? j.at("peft_type").dump()
                                                                                        : std::string("nothing")));
  const bool seq_cls = present(j, "task_type") && j.at("task_type") == "SEQ_CLS";
  if (present(j, "task_type")) {
    QWENQ_CHECK(j.at("task_type") == "CAUSAL_LM" || seq_cls,
                path << ": task_type " << j.at("task_type").dump()
                     << " is not supported (CAUSAL_LM, or SEQ_CLS: a reward model's adapter)");
  }
  if (present(j, "bias")) {
    QWENQ_CHECK(j.at("bias") == "none", path << ": field \"bias\" = " << j.at("bias").dump()
                                             << " is not supported (only \"none\": base biases stay frozen)");
  }
  require_unset(j, "lora_bias", path, "a trainable bias on lora_B");
  require_unset(j, "fan_in_fan_out", path, "Conv1D-style transposed weights");
  if (seq_cls && present(j, "modules_to_save")) {  // the classifier head PEFT saves whole, and nothing else
    const json& v = j.at("modules_to_save");
    QWENQ_CHECK(v.is_array(), path << ": field \"modules_to_save\" must be a list, got " << v.dump());
    for (const json& e : v) {
      QWENQ_CHECK(e == "classifier" || e == "score",
                  path << ": modules_to_save entry " << e.dump() << " is not supported (a SEQ_CLS adapter may save "
                       << "only its classifier head, \"score\")");
    }
  } else {
    require_unset(j, "modules_to_save", path, "full copies of other modules");
  }
  require_unset(j, "layers_to_transform", path, "LoRA on a subset of layers");
  require_unset(j, "layers_pattern", path, "LoRA on a subset of layers");
  require_unset(j, "rank_pattern", path, "per-module ranks");
  require_unset(j, "alpha_pattern", path, "per-module alphas");
  require_unset(j, "exclude_modules", path, "excluded modules");
  require_unset(j, "layer_replication", path, "replicated layers");
  require_unset(j, "trainable_token_indices", path, "trainable embedding rows");
  require_unset(j, "target_parameters", path, "LoRA on parameters");
  require_unset(j, "use_qalora", path, "QA-LoRA");
  if (present(j, "init_lora_weights")) {
    const json& v = j.at("init_lora_weights");
    const std::string name = v.is_string() ? v.get<std::string>() : "";
    const bool ok = v.is_boolean() || name == "gaussian" ||
                    (init == BaseRewritingInit::PissaAsTrue && name.rfind("pissa", 0) == 0);
    QWENQ_CHECK(ok, path << ": field \"init_lora_weights\" = " << v.dump() << " is not supported (it changes the "
                         << "base weights; only true, false and \"gaussian\" leave them as they are)");
  }

  LoraConfig c;
  c.num_labels = seq_cls ? 1 : 0;  // the loader reads the head's count from its tensor
  const double r = number_field(j, "r", path);
  QWENQ_CHECK(r >= 1 && r == std::floor(r) && r < 1e9, path << ": field \"r\" must be a positive integer, got "
                                                             << j.at("r").dump());
  c.r = static_cast<int64_t>(r);
  c.alpha = j.contains("lora_alpha") ? number_field(j, "lora_alpha", path) : 8.0;  // PEFT's default
  c.dropout = present(j, "lora_dropout") ? number_field(j, "lora_dropout", path) : 0.0;
  if (present(j, "use_rslora")) {
    QWENQ_CHECK(j.at("use_rslora").is_boolean(), path << ": field \"use_rslora\" must be true or false");
    c.use_rslora = j.at("use_rslora").get<bool>();
  } else {
    c.use_rslora = false;
  }
  if (present(j, "use_dora")) {
    QWENQ_CHECK(j.at("use_dora").is_boolean(), path << ": field \"use_dora\" must be true or false, got "
                                                    << j.at("use_dora").dump());
    c.use_dora = j.at("use_dora").get<bool>();
  }
  c.target_modules = targets_field(j, path);
  if (present(j, "base_model_name_or_path")) {
    QWENQ_CHECK(j.at("base_model_name_or_path").is_string(), path << ": base_model_name_or_path must be a string");
    c.base_model = j.at("base_model_name_or_path").get<std::string>();
  }
  const std::string problem = config_problem(c);
  QWENQ_CHECK(problem.empty(), path << ": " << problem);
  return c;
}

LoraConfig load_lora_config(const std::string& dir, BaseRewritingInit init) {
  const std::string path = path_join(dir, "adapter_config.json");
  QWENQ_CHECK(file_exists(path), "no adapter_config.json in " << dir << " (not a PEFT adapter directory)");
  return parse_lora_config_json(read_file(path), path, init);
}

}  // namespace qwenq
