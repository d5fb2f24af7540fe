// compressed-tensors' quantization_config (what llm-compressor writes; quant/compressed_tensors.h has the tensors):
//   {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
//    "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int",
//        "symmetric": true, "strategy": "group", "group_size": 128, "actorder": null, "dynamic": false, ...},
//        "input_activations": null, "output_activations": null}},
//    "ignore": ["lm_head"], "kv_cache_scheme": null, "sparsity_config": null}
// A scheme may carry its own "format" (top-level "mixed-precision"). What is read: integer weights (2/4/8-bit
// packed, 8-bit unpacked; tensor, channel or group scales; symmetric or not; g_idx) and float8 e4m3 weights (tensor,
// channel, group or block scales). Dynamic input activations are accepted and not applied (qwenq computes with ŵ,
// as the weight-only dequantized model). Everything else is refused here, naming the field.
#include <algorithm>
#include <cctype>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/python_regex.h"
#include "trainer/quant_config.h"

namespace qwenq {

namespace {

using nlohmann::json;

// A "re:" target as a regex; null for a class or module name.
std::shared_ptr<const std::regex> compile(const std::string& target, const std::string& path) {
  if (target.rfind("re:", 0) != 0) return nullptr;
  return std::make_shared<const std::regex>(compile_python_regex(target.substr(3), path));
}

std::vector<std::string> strings(const json& j, const std::string& path, const char* key) {
  std::vector<std::string> out;
  if (!j.contains(key) || j[key].is_null()) return out;
  QWENQ_CHECK(j[key].is_array(), path << ": \"" << key << "\" must be a list of strings, got " << j[key].dump());
  for (const auto& v : j[key]) {
    QWENQ_CHECK(v.is_string(), path << ": \"" << key << "\" must be a list of strings, got " << j[key].dump());
    out.push_back(v.get<std::string>());
  }
  return out;
}

// A string field lower-cased, as compressed-tensors' field validators read "type" and "strategy"; `fallback` when
// absent or null.
std::string lower_field(const json& w, const char* key, const std::string& fallback, const std::string& where) {
  if (!w.contains(key) || w[key].is_null()) return fallback;
  QWENQ_CHECK(w[key].is_string(), where << ": \"" << key << "\" must be a string, got " << w[key].dump());
  std::string v = w[key].get<std::string>();
  for (char& ch : v) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return v;
}

// The strategy a QuantizationArgs without one gets (its validate_model_after): tensor without a group_size, group
// for a positive one, channel for -1.
std::string inferred_strategy(const json& w, const std::string& where) {
  if (!w.contains("group_size") || w["group_size"].is_null()) return "tensor";
  const json& g = w["group_size"];
  QWENQ_CHECK(g.is_number_integer() && (g.get<int64_t>() > 0 || g.get<int64_t>() == -1),
              where << ": group_size " << g.dump() << " without a strategy: use a positive group_size for strategy "
                    << "group or -1 for channel");
  return g.get<int64_t>() > 0 ? "group" : "channel";
}

CtWeightArgs weight_args(const json& w, const std::string& where) {
  CtWeightArgs a;
  const std::string type = lower_field(w, "type", "int", where);
  QWENQ_CHECK(type == "int" || type == "float", where << ": weights of type \"" << type << "\" are not supported (int, float)");
  a.is_float = type == "float";
  QWENQ_CHECK(w.contains("num_bits") && w["num_bits"].is_number_integer(), where << ": weights need an integer num_bits");
  a.bits = w["num_bits"].get<int>();
  a.sym = w.contains("symmetric") && !w["symmetric"].is_null() ? w["symmetric"].get<bool>() : true;
  QWENQ_CHECK(!w.contains("dynamic") || w["dynamic"].is_null() || w["dynamic"] == false,
              where << ": dynamic weight quantization (" << w["dynamic"].dump() << ") is not supported");
  if (a.is_float) {
    QWENQ_CHECK(a.bits == 8, where << ": float" << a.bits << " weights are not supported (float8 e4m3; NVFP4/MXFP4 are not)");
    QWENQ_CHECK(a.sym, where << ": asymmetric float8 weights are not supported");
  } else {
    QWENQ_CHECK(a.bits == 2 || a.bits == 4 || a.bits == 8,
                where << ": int" << a.bits << " weights are not supported (int2, int4, int8)");
  }
  std::string strategy = lower_field(w, "strategy", "", where);
  if (strategy.empty()) strategy = inferred_strategy(w, where);
  if (strategy == "tensor") {
    a.strategy = CtStrategy::Tensor;
  } else if (strategy == "channel") {
    a.strategy = CtStrategy::Channel;
  } else if (strategy == "group") {
    a.strategy = CtStrategy::Group;
    QWENQ_CHECK(w.contains("group_size") && w["group_size"].is_number_integer() && w["group_size"].get<int64_t>() > 0,
                where << ": strategy group needs a positive group_size, got "
                      << (w.contains("group_size") ? w["group_size"].dump() : std::string("none")));
    a.group_size = w["group_size"].get<int64_t>();
  } else if (strategy == "block") {
    a.strategy = CtStrategy::Block;
    const json& b = w.contains("block_structure") ? w["block_structure"] : json();
    QWENQ_CHECK(b.is_array() && b.size() == 2 && b[0].is_number_integer() && b[1].is_number_integer() &&
                    b[0].get<int64_t>() > 0 && b[1].get<int64_t>() > 0,
                where << ": strategy block needs block_structure [n, k] of positive integers, got " << b.dump());
    a.block_n = b[0].get<int64_t>();
    a.block_k = b[1].get<int64_t>();
    QWENQ_CHECK(a.is_float, where << ": integer weights with strategy block are not supported");
  } else {
    QWENQ_FAIL(where << ": weight strategy \"" << strategy << "\" is not supported (tensor, channel, group, block)");
  }
  return a;
}

// The storage of a scheme's weights from its format, checked against its type.
bool packed_storage(const std::string& format, const CtWeightArgs& a, const std::string& where) {
  if (format == "pack-quantized") {
    QWENQ_CHECK(!a.is_float, where << ": format pack-quantized holds integer weights, not float");
    return true;
  }
  if (format == "int-quantized" || format == "float-quantized" || format == "naive-quantized") {
    QWENQ_CHECK(format != "int-quantized" || !a.is_float, where << ": format int-quantized holds integer weights");
    QWENQ_CHECK(format != "float-quantized" || a.is_float, where << ": format float-quantized holds float weights");
    QWENQ_CHECK(a.is_float || a.bits == 8, where << ": int" << a.bits << " weights stored unpacked (" << format
                                                  << ") are not supported (int8)");
    return false;
  }
  QWENQ_FAIL(where << ": format \"" << format << "\" is not supported (pack-quantized, int-quantized, "
                   << "float-quantized, naive-quantized; marlin-24, sparse and NVFP4 formats are not)");
}

bool same_weights(const CtScheme& a, const CtScheme& b) {
  const CtWeightArgs &x = a.weights, &y = b.weights;
  return a.packed == b.packed && x.is_float == y.is_float && x.bits == y.bits && x.sym == y.sym &&
         x.strategy == y.strategy && x.group_size == y.group_size && x.block_n == y.block_n && x.block_k == y.block_k;
}

bool matches(const std::string& name, const std::string& target, const std::regex* re) {
  return re ? python_match(*re, name) : target == name;
}

}  // namespace

QuantConfig parse_compressed_tensors_config(const json& q, const std::string& path) {
  QuantConfig c;
  c.method = QuantConfig::Method::CompressedTensors;
  for (const char* key : {"kv_cache_scheme", "transform_config"}) {
    QWENQ_CHECK(!q.contains(key) || q[key].is_null(),
                path << ": \"" << key << "\" " << q[key].dump() << " is not supported (only weight quantization is)");
  }
  if (q.contains("sparsity_config") && !q["sparsity_config"].is_null()) {
    const json& s = q["sparsity_config"];
    QWENQ_CHECK(s.is_object() && s.value("format", std::string("dense")) == "dense",
                path << ": sparse compressed-tensors checkpoints (sparsity_config " << s.dump() << ") are not supported");
  }
  const std::string format = q.value("format", std::string("dense"));
  QWENQ_CHECK(q.contains("config_groups") && q["config_groups"].is_object() && !q["config_groups"].empty(),
              path << ": compressed-tensors config without \"config_groups\"");
  for (const auto& [name, g] : q["config_groups"].items()) {
    const std::string where = path + ": config_groups." + name;
    QWENQ_CHECK(g.is_object(), where << " must be an object");
    QWENQ_CHECK(!g.contains("output_activations") || g["output_activations"].is_null(),
                where << ": output activation quantization is not supported");
    if (g.contains("input_activations") && !g["input_activations"].is_null()) {
      const json& in = g["input_activations"];
      QWENQ_CHECK(in.is_object() && in.contains("dynamic") && in["dynamic"] == true,
                  where << ": static input activation scales (input_activations " << in.dump()
                        << ") are not read; only dynamic ones are accepted (qwenq computes with unrounded activations)");
    }
    if (!g.contains("weights") || g["weights"].is_null()) continue;  // activations only: the weights stay dense
    CtScheme s;
    s.name = name;
    s.targets = strings(g, where, "targets");
    QWENQ_CHECK(!s.targets.empty(), where << ": no \"targets\"");
    for (const std::string& t : s.targets) s.regexes.push_back(compile(t, where));
    s.weights = weight_args(g["weights"], where + ".weights");
    const std::string fmt = g.contains("format") && g["format"].is_string() ? g["format"].get<std::string>() : format;
    QWENQ_CHECK(fmt != "dense", where << ": format dense with quantized weights: the weights were saved "
                                         "fake-quantized, not compressed (save them with a compressed format)");
    s.packed = packed_storage(fmt, s.weights, where);
    c.ct_schemes.push_back(std::move(s));
  }
  c.ct_ignore = strings(q, path, "ignore");
  for (const std::string& t : c.ct_ignore) c.ct_ignore_regexes.push_back(compile(t, path + ": ignore"));
  QWENQ_CHECK(!c.ct_schemes.empty(), path << ": no config group quantizes weights");
  const CtWeightArgs& first = c.ct_schemes.front().weights;
  c.bits = first.bits;
  c.sym = first.sym;
  c.group_size = first.strategy == CtStrategy::Group ? first.group_size : -1;
  c.layout = IntLayout::GptqV2;
  return c;
}

const CtScheme* QuantConfig::ct_scheme_for(const std::string& prefix) const {
  for (size_t i = 0; i < ct_ignore.size(); ++i) {
    if (matches(prefix, ct_ignore[i], ct_ignore_regexes[i].get())) return nullptr;
  }
  const CtScheme* by_name = nullptr;
  const CtScheme* by_class = nullptr;
  for (const CtScheme& s : ct_schemes) {
    for (size_t i = 0; i < s.targets.size(); ++i) {
      const bool cls = s.targets[i] == "Linear";
      if (!cls && !matches(prefix, s.targets[i], s.regexes[i].get())) continue;
      const CtScheme*& slot = cls ? by_class : by_name;
      QWENQ_CHECK(!slot || same_weights(*slot, s), "compressed-tensors: config groups \"" << slot->name << "\" and \""
                                                       << s.name << "\" both target " << prefix
                                                       << " with different weight schemes");
      if (!slot) slot = &s;
    }
  }
  return by_name ? by_name : by_class;
}

bool QuantConfig::ct_has_int() const {
  for (const CtScheme& s : ct_schemes) {
    if (!s.weights.is_float) return true;
  }
  return false;
}

}  // namespace qwenq
