#include "lora/lora_config.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/files.h"
#include "core/json_file.h"
#include "core/python_regex.h"

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

bool lora_target_entry(const std::string& entry, LoraTarget* out) {
  const size_t dot = entry.rfind('.');
  if (dot == std::string::npos) return lora_target_from_name(entry, out);
  if (dot == 0 || entry.find("..") != std::string::npos || entry.front() == '.') return false;
  return lora_target_from_name(entry.substr(dot + 1), out);
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
  for (const std::string& e : target_modules) {
    LoraTarget et;
    if (lora_target_entry(e, &et) && et == t) return true;
  }
  return false;
}

bool LoraConfig::selects_finely() const {
  const bool paths = std::any_of(target_modules.begin(), target_modules.end(),
                                 [](const std::string& e) { return e.find('.') != std::string::npos; });
  return paths || !target_regex.empty() || !layers_to_transform.empty() || !layers_pattern.empty() || !exclude_modules.empty() ||
         !exclude_regex.empty() || !rank_pattern.empty() || !alpha_pattern.empty();
}

namespace {

// PEFT's own spelling of a selection field's value (messages, and the JSON written).
nlohmann::ordered_json rank_pattern_json(const LoraConfig& c) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  for (const auto& [k, v] : c.rank_pattern) j[k] = v;
  return j;
}

nlohmann::ordered_json number_json(double v) {
  // PEFT declares lora_alpha an int; integral values stay integral so the file reads as PEFT's own.
  if (v == std::floor(v) && std::fabs(v) < 1e15) return static_cast<int64_t>(v);
  return v;
}

nlohmann::ordered_json alpha_pattern_json(const LoraConfig& c) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  for (const auto& [k, v] : c.alpha_pattern) j[k] = number_json(v);
  return j;
}

}  // namespace

std::string lora_selection_str(const LoraConfig& c) {
  std::string s = c.target_regex.empty() ? lora_targets_str(c.target_modules) : "regex " + c.target_regex;
  if (!c.layers_to_transform.empty()) s += "; layers_to_transform " + nlohmann::json(c.layers_to_transform).dump();
  if (!c.layers_pattern.empty()) s += "; layers_pattern " + nlohmann::json(c.layers_pattern).dump();
  if (!c.exclude_modules.empty()) s += "; exclude_modules " + nlohmann::json(c.exclude_modules).dump();
  if (!c.exclude_regex.empty()) s += "; exclude_modules regex " + c.exclude_regex;
  if (!c.rank_pattern.empty()) s += "; rank_pattern " + rank_pattern_json(c).dump();
  if (!c.alpha_pattern.empty()) s += "; alpha_pattern " + alpha_pattern_json(c).dump();
  return s;
}

bool same_lora_selection(const LoraConfig& a, const LoraConfig& b) {
  return a.target_modules == b.target_modules && a.target_regex == b.target_regex &&
         a.layers_to_transform == b.layers_to_transform && a.layers_pattern == b.layers_pattern &&
         a.exclude_modules == b.exclude_modules && a.exclude_regex == b.exclude_regex &&
         a.rank_pattern == b.rank_pattern && a.alpha_pattern == b.alpha_pattern;
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
  } else if (c.target_modules.empty() && c.target_regex.empty()) {
    os << "LoRA target_modules is empty (valid: " << lora_valid_target_list() << ")";
  } else if (!c.target_regex.empty() && !c.target_modules.empty()) {
    os << "LoRA target_modules is either a list of names or one regular expression, not both";
  } else if (!c.target_regex.empty() && (!c.layers_to_transform.empty() || !c.layers_pattern.empty())) {
    os << "layers_to_transform and layers_pattern cannot be used when target_modules is a regular expression (PEFT "
          "refuses the combination)";
  } else if (!c.layers_pattern.empty() && c.layers_to_transform.empty()) {
    os << "layers_pattern needs layers_to_transform (PEFT refuses it alone)";
  } else if (!c.exclude_modules.empty() && !c.exclude_regex.empty()) {
    os << "exclude_modules is either a list of names or one regular expression, not both";
  }
  for (int64_t l : c.layers_to_transform) {
    if (os.tellp() == 0 && l < 0) os << "layers_to_transform holds the negative layer index " << l;
  }
  for (const auto& [k, r] : c.rank_pattern) {
    if (os.tellp() == 0 && (k.empty() || r < 1)) os << "rank_pattern \"" << k << "\": " << r << " is not a pattern and a rank >= 1";
  }
  for (const auto& [k, a] : c.alpha_pattern) {
    if (os.tellp() == 0 && (k.empty() || !std::isfinite(a))) os << "alpha_pattern \"" << k << "\": " << a << " is not a pattern and a finite alpha";
  }
  for (const std::string& m : c.target_modules) {
    LoraTarget t;
    if (os.tellp() == 0 && !lora_target_entry(m, &t))
      os << "unknown LoRA target module '" << m << "' (valid: " << lora_valid_target_list()
         << ", all-linear, or a module path ending in one: self_attn.q_proj, model.layers.3.mlp.down_proj)";
  }
  return os.str();
}

}  // namespace

namespace {

// Every regular expression of the selection compiles as PEFT would use it (lora/lora_select.h); throws "<where>: ...".
void check_selection_regexes(const LoraConfig& c, const std::string& where) {
  if (!c.target_regex.empty()) compile_python_regex(c.target_regex, where + ": target_modules");
  if (!c.exclude_regex.empty()) compile_python_regex(c.exclude_regex, where + ": exclude_modules");
  for (const std::string& p : c.layers_pattern) compile_python_regex(p, where + ": layers_pattern");
  for (const auto& kv : c.rank_pattern) compile_python_regex(kv.first, where + ": rank_pattern key");
  for (const auto& kv : c.alpha_pattern) compile_python_regex(kv.first, where + ": alpha_pattern key");
}

}  // namespace

void LoraConfig::validate() const {
  const std::string problem = config_problem(*this);
  QWENQ_CHECK(problem.empty(), problem);
  check_selection_regexes(*this, "LoRA config");
}

namespace {

// Short names in table order, then module paths ("self_attn.q_proj", "model.layers.3.mlp.down_proj") in their given
// order; without duplicates.
std::vector<std::string> in_table_order(const std::vector<std::string>& names) {
  std::vector<std::string> out;
  for (const LoraTargetInfo& info : kLoraTargets) {
    if (std::find(names.begin(), names.end(), info.name) != names.end()) out.push_back(info.name);
  }
  for (const std::string& n : names) {
    if (n.find('.') != std::string::npos && std::find(out.begin(), out.end(), n) == out.end()) out.push_back(n);
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

// The comma-separated items of a command-line list, each trimmed ("" for an empty one: the caller names it).
std::vector<std::string> comma_items(const std::string& spec) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= spec.size()) {
    const size_t comma = std::min(spec.find(',', start), spec.size());
    out.push_back(trim(spec.substr(start, comma - start)));
    start = comma + 1;
  }
  return out;
}

}  // namespace

std::vector<std::string> parse_lora_targets(const std::string& spec) {
  if (trim(spec) == "all-linear") return all_targets();
  const std::vector<std::string> names = comma_items(spec);
  for (const std::string& name : names) {
    LoraTarget t;
    QWENQ_CHECK(!name.empty(), "empty LoRA target in '" << spec << "' (valid: " << lora_valid_target_list()
                                                        << ", or all-linear)");
    QWENQ_CHECK(lora_target_entry(name, &t), "unknown LoRA target '" << name << "' in '" << spec << "' (valid: "
                                                                      << lora_valid_target_list()
                                                                      << ", all-linear, or a module path ending in "
                                                                      << "one: self_attn.q_proj)");
  }
  return in_table_order(names);
}

std::vector<std::string> parse_name_list(const std::string& spec, const std::string& flag) {
  const std::vector<std::string> out = comma_items(spec);
  for (const std::string& item : out) {
    QWENQ_CHECK(!item.empty(), flag << ": empty item in '" << spec << "' (a comma-separated list)");
  }
  return out;
}

std::vector<int64_t> parse_layer_list(const std::string& spec, const std::string& flag) {
  std::vector<int64_t> out;
  auto index = [&](const std::string& t) {
    QWENQ_CHECK(!t.empty() && t.size() <= 9 && t.find_first_not_of("0123456789") == std::string::npos,
                flag << ": '" << t << "' in '" << spec << "' is not a layer index (0, 1, ...) or a range such as 4-7");
    return static_cast<int64_t>(std::stoll(t));
  };
  for (const std::string& item : parse_name_list(spec, flag)) {
    const size_t dash = item.find('-');
    if (dash == std::string::npos) {
      out.push_back(index(item));
      continue;
    }
    const int64_t a = index(trim(item.substr(0, dash))), b = index(trim(item.substr(dash + 1)));
    QWENQ_CHECK(a <= b, flag << ": the range '" << item << "' runs backwards");
    for (int64_t l = a; l <= b; ++l) out.push_back(l);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

namespace {

nlohmann::ordered_json pattern_object(const std::string& text, const std::string& flag) {
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(text, nullptr, false);
  QWENQ_CHECK(!j.is_discarded() && j.is_object() && !j.empty(),
              flag << " must be a JSON object of module pattern: value, e.g. '{\"down_proj\": 16}', not " << text);
  for (auto it = j.begin(); it != j.end(); ++it) {
    QWENQ_CHECK(!it.key().empty() && it.value().is_number(),
                flag << ": \"" << it.key() << "\": " << it.value().dump() << " is not a pattern and a number");
  }
  return j;
}

}  // namespace

std::vector<std::pair<std::string, int64_t>> parse_rank_pattern(const std::string& json_text, const std::string& flag) {
  std::vector<std::pair<std::string, int64_t>> out;
  const nlohmann::ordered_json j = pattern_object(json_text, flag);
  for (auto it = j.begin(); it != j.end(); ++it) {
    const double r = it.value().get<double>();
    QWENQ_CHECK(r >= 1 && r == std::floor(r) && r < 1e9,
                flag << ": \"" << it.key() << "\": " << it.value().dump() << " is not a rank (a positive integer)");
    out.emplace_back(it.key(), static_cast<int64_t>(r));
  }
  return out;
}

std::vector<std::pair<std::string, double>> parse_alpha_pattern(const std::string& json_text, const std::string& flag) {
  std::vector<std::pair<std::string, double>> out;
  const nlohmann::ordered_json j = pattern_object(json_text, flag);
  for (auto it = j.begin(); it != j.end(); ++it) {
    const double a = it.value().get<double>();
    QWENQ_CHECK(std::isfinite(a) && a > 0, flag << ": \"" << it.key() << "\": " << it.value().dump()
                                                << " is not an alpha (a positive number)");
    out.emplace_back(it.key(), a);
  }
  return out;
}

std::string lora_config_to_json(const LoraConfig& config) {
  config.validate();
  using json = nlohmann::ordered_json;  // rank_pattern's and alpha_pattern's keys keep their order (the first match wins)
  json j = json::object();
  j["peft_type"] = "LORA";
  j["task_type"] = config.seq_cls() ? "SEQ_CLS" : "CAUSAL_LM";
  j["base_model_name_or_path"] = config.base_model.empty() ? json(nullptr) : json(config.base_model);
  j["revision"] = nullptr;
  j["r"] = config.r;
  j["lora_alpha"] = number_json(config.alpha);
  j["lora_dropout"] = config.dropout;
  j["bias"] = "none";
  if (config.target_regex.empty()) {
    j["target_modules"] = in_table_order(config.target_modules);
  } else {
    j["target_modules"] = config.target_regex;
  }
  j["fan_in_fan_out"] = false;
  j["use_rslora"] = config.use_rslora;
  j["use_dora"] = config.use_dora;
  j["init_lora_weights"] = true;
  // PEFT's PeftModelForSequenceClassification saves its classifier heads whole (the names it looks for).
  j["modules_to_save"] = config.seq_cls() ? json::array({"classifier", "score"}) : json(nullptr);
  j["inference_mode"] = true;
  j["layers_to_transform"] = config.layers_to_transform.empty() ? json(nullptr) : json(config.layers_to_transform);
  j["layers_pattern"] = config.layers_pattern.empty() ? json(nullptr) : json(config.layers_pattern);
  j["rank_pattern"] = rank_pattern_json(config);
  j["alpha_pattern"] = alpha_pattern_json(config);
  // exclude_modules only when set: PEFT before 0.14 does not know the field (and refuses a file that has it).
  if (!config.exclude_regex.empty()) j["exclude_modules"] = config.exclude_regex;
  if (!config.exclude_modules.empty()) j["exclude_modules"] = config.exclude_modules;
  // Keys sorted, as before the patterns kept their order (and as Python's json.dumps(sort_keys=True) of PEFT writes).
  std::map<std::string, json> sorted;
  for (auto it = j.begin(); it != j.end(); ++it) sorted.emplace(it.key(), it.value());
  json out = json::object();
  for (auto& [k, v] : sorted) out[k] = std::move(v);
  return out.dump(2) + "\n";
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

// target_modules: the short names, or (a string that is neither "all-linear" nor a name) none and *regex set.
std::vector<std::string> targets_field(const json& j, const std::string& path, std::string* regex) {
  QWENQ_CHECK(present(j, "target_modules"), path << ": field \"target_modules\" is missing (PEFT's default for "
                                                 << "Qwen, [q_proj, v_proj], is not assumed; write it out)");
  const json& v = j.at("target_modules");
  std::vector<std::string> names;
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s == "all-linear") return all_targets();
    LoraTarget t;
    if (lora_target_from_name(s, &t)) return {s};
    *regex = s;  // PEFT: re.fullmatch(target_modules, key) for every module
    return {};
  }
  QWENQ_CHECK(v.is_array() && !v.empty(),
              path << ": target_modules must be a non-empty list of names, got " << v.dump());
  for (const json& e : v) {
    QWENQ_CHECK(e.is_string(), path << ": target_modules entries must be strings, got " << e.dump());
    const std::string s = e.get<std::string>();
    LoraTarget t;
    QWENQ_CHECK(lora_target_entry(s, &t), path << ": target_modules entry \"" << s << "\" is not supported (valid: "
                                               << lora_valid_target_list() << ", or a module path ending in one)");
    names.push_back(s);
  }
  return in_table_order(names);
}

// A string, or a list of strings (PEFT's `str | list[str]` fields): the list, a lone string as one entry.
template <typename Json>
std::vector<std::string> string_list(const Json& v, const char* key, const std::string& path) {
  std::vector<std::string> out;
  if (v.is_string()) return {v.template get<std::string>()};
  QWENQ_CHECK(v.is_array(), path << ": field \"" << key << "\" must be a string or a list of strings, got " << v.dump());
  for (const auto& e : v) {
    QWENQ_CHECK(e.is_string(), path << ": field \"" << key << "\" must hold strings, got " << e.dump());
    out.push_back(e.template get<std::string>());
  }
  return out;
}

// layers_to_transform, layers_pattern, exclude_modules, rank_pattern and alpha_pattern (the patterns in file order).
void read_selection(const nlohmann::ordered_json& j, const std::string& path, LoraConfig* c) {
  auto set = [&](const char* key) {
    if (!j.contains(key) || j.at(key).is_null()) return false;
    const auto& v = j.at(key);
    return !((v.is_array() || v.is_object() || v.is_string()) && v.empty());
  };
  if (set("layers_to_transform")) {  // an int or a list of ints
    const auto& v = j.at("layers_to_transform");
    auto index = [&](const nlohmann::ordered_json& e) {
      QWENQ_CHECK(e.is_number_integer() && e.get<int64_t>() >= 0,
                  path << ": layers_to_transform must hold layer indexes (integers >= 0), got " << e.dump());
      return e.get<int64_t>();
    };
    if (v.is_array()) {
      for (const auto& e : v) c->layers_to_transform.push_back(index(e));
    } else {
      c->layers_to_transform.push_back(index(v));
    }
  }
  if (set("layers_pattern")) c->layers_pattern = string_list(j.at("layers_pattern"), "layers_pattern", path);
  if (set("exclude_modules")) {
    const auto& v = j.at("exclude_modules");
    if (v.is_string()) {
      c->exclude_regex = v.get<std::string>();
    } else {
      c->exclude_modules = string_list(v, "exclude_modules", path);
    }
  }
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    if (!set(key)) continue;
    const auto& v = j.at(key);
    QWENQ_CHECK(v.is_object(), path << ": field \"" << key << "\" must be an object of pattern: number, got "
                                    << v.dump());
    for (auto it = v.begin(); it != v.end(); ++it) {
      QWENQ_CHECK(it.value().is_number(), path << ": " << key << " \"" << it.key() << "\" must be a number, got "
                                               << it.value().dump());
      const double x = it.value().get<double>();
      if (std::string(key) == "rank_pattern") {
        QWENQ_CHECK(x >= 1 && x == std::floor(x) && x < 1e9,
                    path << ": rank_pattern \"" << it.key() << "\" must be a positive integer, got " << it.value().dump());
        c->rank_pattern.emplace_back(it.key(), static_cast<int64_t>(x));
      } else {
        c->alpha_pattern.emplace_back(it.key(), x);
      }
    }
  }
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
  c.target_modules = targets_field(j, path, &c.target_regex);
  read_selection(parse_ordered_json_text(json_text, path), path, &c);
  if (present(j, "base_model_name_or_path")) {
    QWENQ_CHECK(j.at("base_model_name_or_path").is_string(), path << ": base_model_name_or_path must be a string");
    c.base_model = j.at("base_model_name_or_path").get<std::string>();
  }
  const std::string problem = config_problem(c);
  QWENQ_CHECK(problem.empty(), path << ": " << problem);
  check_selection_regexes(c, path);
  return c;
}

LoraConfig load_lora_config(const std::string& dir, BaseRewritingInit init) {
  const std::string path = path_join(dir, "adapter_config.json");
  QWENQ_CHECK(file_exists(path), "no adapter_config.json in " << dir << " (not a PEFT adapter directory)");
  return parse_lora_config_json(read_file(path), path, init);
}

}  // namespace qwenq
