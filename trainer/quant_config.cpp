#include "trainer/quant_config.h"

#include <cctype>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/python_regex.h"
#include "core/files.h"
#include "core/json_file.h"
#include "quant/format/int_pack.h"

namespace qwenq {

namespace {

using json = nlohmann::ordered_json;  // GPTQModel's "dynamic" rules apply in the file's order

std::vector<std::string> string_list(const json& q, const char* key) {
  std::vector<std::string> out;
  if (q.contains(key) && q[key].is_array()) {
    for (const auto& v : q[key]) {
      if (v.is_string()) out.push_back(v.get<std::string>());
    }
  }
  return out;
}

QuantConfig parse(const json& q, const std::string& path) {
  QWENQ_CHECK(q.is_object(), path << ": quantization config must be a JSON object");
  QuantConfig c;
  // AutoGPTQ/AutoAWQ synonyms: w_bit -> bits, q_group_size -> group_size.
  const int bits = q.contains("bits") ? q["bits"].get<int>() : q.value("w_bit", 4);
  const int64_t group = q.contains("group_size") ? q["group_size"].get<int64_t>() : q.value("q_group_size", int64_t{-1});
  std::string method = q.value("quant_method", std::string(q.contains("version") ? "awq" : "gptq"));
  for (auto& ch : method) ch = static_cast<char>(std::tolower(ch));
  if (method == "gptq") {
    c.method = QuantConfig::Method::Gptq;
    c.bits = bits;
    c.group_size = group;
    c.sym = q.value("sym", true);
    c.desc_act = q.value("desc_act", false);
    std::string fmt = q.value("checkpoint_format", q.value("format", std::string("gptq")));
    QWENQ_CHECK(fmt == "gptq" || fmt == "gptq_v2",
                path << ": GPTQ checkpoint_format \"" << fmt << "\" is not supported (gptq or gptq_v2)");
    c.layout = fmt == "gptq" ? IntLayout::GptqV1 : IntLayout::GptqV2;
    QWENQ_CHECK(gptq_bits_supported(bits), path << ": GPTQ with bits=" << bits << " is not supported (2, 3, 4 or 8)");
    QWENQ_CHECK(!q.contains("pack_dtype") || q["pack_dtype"] == "int32",
                path << ": GPTQ pack_dtype " << q["pack_dtype"].dump() << " is not supported (int32)");
    // GPTQModel's per-module rules, in the file's order: "-:<regex>" leaves modules unquantized (read as stored: a
    // Linear without qweight is dense), "+:<regex>" or a bare regex gives them their own bits / group_size.
    if (q.contains("dynamic") && !q["dynamic"].is_null()) {
      QWENQ_CHECK(q["dynamic"].is_object(), path << ": GPTQ \"dynamic\" must be an object, got " << q["dynamic"].dump());
      for (const auto& [rule, value] : q["dynamic"].items()) {
        const std::string where = path + ": GPTQ \"dynamic\" rule \"" + rule + "\"";
        QWENQ_CHECK(value.is_object(), where << " must map to an object, got " << value.dump());
        GptqDynamicRule r;
        r.skip = rule.rfind("-:", 0) == 0;
        r.pattern = rule.substr(rule.rfind("-:", 0) == 0 || rule.rfind("+:", 0) == 0 ? 2 : 0);
        r.re = std::make_shared<const std::regex>(compile_python_regex(r.pattern, where));
        if (!r.skip) {
          for (const auto& [key, v] : value.items()) {
            if (key == "bits" || key == "w_bit") {
              QWENQ_CHECK(v.is_number_integer() && gptq_bits_supported(v.get<int>()),
                          where << ": bits " << v.dump() << " is not supported (2, 3, 4 or 8)");
              r.bits = v.get<int>();
            } else if (key == "group_size" || key == "q_group_size") {
              QWENQ_CHECK(v.is_number_integer() && (v.get<int64_t>() > 0 || v.get<int64_t>() == -1),
                          where << ": group_size " << v.dump() << " must be positive or -1");
              r.group_size = v.get<int64_t>();
            }
            // sym, desc_act and the rest do not change how the stored tensors read (zeros and g_idx are stored).
          }
        }
        c.gptq_dynamic.push_back(std::move(r));
      }
    }
  } else if (method == "awq") {
    c.method = QuantConfig::Method::Awq;
    c.bits = bits;
    c.group_size = group;
    c.sym = false;
    c.layout = IntLayout::AwqGemm;
    std::string version = q.value("version", std::string("gemm"));
    for (auto& ch : version) ch = static_cast<char>(std::tolower(ch));
    QWENQ_CHECK(version == "gemm", path << ": AWQ version \"" << version << "\" is not supported (gemm)");
    QWENQ_CHECK(q.value("zero_point", true), path << ": AWQ with zero_point=false is not supported");
    QWENQ_CHECK(bits == 4, path << ": AWQ with bits=" << bits << " is not supported (4)");
    QWENQ_CHECK(group > 0, path << ": AWQ needs a positive group_size, got " << group);
    c.skip_modules = string_list(q, "modules_to_not_convert");
  } else if (method == "bitsandbytes") {
    QWENQ_CHECK(q.value("load_in_4bit", false), path << ": only 4-bit bitsandbytes checkpoints are supported (load_in_4bit)");
    c.method = QuantConfig::Method::Bnb4;
    c.bits = 4;
    c.skip_modules = string_list(q, "llm_int8_skip_modules");
  } else if (method == "fp8") {
    c.method = QuantConfig::Method::Fp8;
    c.bits = 8;
    const std::string fmt = q.value("fmt", std::string("e4m3"));
    QWENQ_CHECK(fmt == "e4m3", path << ": FP8 fmt \"" << fmt << "\" is not supported (e4m3)");
    const std::string act = q.value("activation_scheme", std::string("dynamic"));
    QWENQ_CHECK(act == "dynamic", path << ": FP8 activation_scheme \"" << act << "\" is not supported (dynamic: "
                                       << "static input scales are not read)");
    QWENQ_CHECK(q.contains("weight_block_size") && q["weight_block_size"].is_array() &&
                    q["weight_block_size"].size() == 2 && q["weight_block_size"][0].is_number_integer() &&
                    q["weight_block_size"][1].is_number_integer(),
                path << ": FP8 without \"weight_block_size\": [n, k] (per-tensor FP8) is not supported; "
                     << "block-wise FP8 (Qwen's and DeepSeek's releases) is");
    c.block_n = q["weight_block_size"][0].get<int64_t>();
    c.block_k = q["weight_block_size"][1].get<int64_t>();
    QWENQ_CHECK(c.block_n > 0 && c.block_k > 0, path << ": FP8 weight_block_size " << q["weight_block_size"].dump()
                                                     << " must be positive");
    c.skip_modules = string_list(q, "modules_to_not_convert");
  } else if (method == "compressed-tensors") {
    return parse_compressed_tensors_config(nlohmann::json(q), path);
  } else {
    QWENQ_FAIL(path << ": quant_method \"" << method
                    << "\" is not supported (gptq, awq, bitsandbytes, fp8, compressed-tensors)");
  }
  return c;
}

}  // namespace

const char* QuantConfig::method_name() const {
  switch (method) {
    case Method::None: return "none";
    case Method::Gptq: return "gptq";
    case Method::Awq: return "awq";
    case Method::Bnb4: return "bitsandbytes-4bit";
    case Method::Fp8: return "fp8";
    case Method::CompressedTensors: return "compressed-tensors";
  }
  return "?";
}

void QuantConfig::gptq_params_for(const std::string& prefix, int* bits, int64_t* group_size) const {
  *bits = this->bits;
  *group_size = this->group_size;
  for (const GptqDynamicRule& r : gptq_dynamic) {
    if (!python_match(*r.re, prefix)) continue;
    if (!r.skip) {
      if (r.bits) *bits = r.bits;
      if (r.group_size) *group_size = r.group_size;
    }
    return;
  }
}

bool QuantConfig::gptq_mixed() const {
  for (const GptqDynamicRule& r : gptq_dynamic) {
    if (!r.skip && ((r.bits && r.bits != bits) || (r.group_size && r.group_size != group_size))) return true;
  }
  return false;
}

QuantConfig load_quant_config(const std::string& dir) {
  const std::string cfg_path = path_join(dir, "config.json");
  const json cfg = read_ordered_json_file(cfg_path);
  try {
    if (cfg.contains("quantization_config") && !cfg["quantization_config"].is_null()) {
      return parse(cfg["quantization_config"], cfg_path + " (quantization_config)");
    }
    const std::string qc = path_join(dir, "quantize_config.json");
    if (file_exists(qc)) return parse(read_ordered_json_file(qc), qc);
  } catch (const json::exception& e) {
    QWENQ_FAIL(cfg_path << ": malformed quantization config: " << e.what());
  }
  return QuantConfig{};
}

}  // namespace qwenq
