#include "trainer/qwen_config.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"

namespace qwenq {

namespace {

using nlohmann::json;

int64_t require_int(const json& j, const char* key, const std::string& path) {
  QWENQ_CHECK(j.contains(key), path << ": missing required field \"" << key << "\"");
  QWENQ_CHECK(j[key].is_number_integer(), path << ": field \"" << key << "\" must be an integer, got " << j[key].dump());
  int64_t v = j[key].get<int64_t>();
  QWENQ_CHECK(v > 0, path << ": field \"" << key << "\" must be positive, got " << v);
  return v;
}

int64_t optional_int(const json& j, const char* key, int64_t fallback, const std::string& path) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  QWENQ_CHECK(j[key].is_number_integer(), path << ": field \"" << key << "\" must be an integer, got " << j[key].dump());
  return j[key].get<int64_t>();
}

double optional_number(const json& j, const char* key, double fallback, const std::string& path) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  QWENQ_CHECK(j[key].is_number(), path << ": field \"" << key << "\" must be a number, got " << j[key].dump());
  return j[key].get<double>();
}

bool optional_bool(const json& j, const char* key, bool fallback, const std::string& path) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  QWENQ_CHECK(j[key].is_boolean(), path << ": field \"" << key << "\" must be true or false, got " << j[key].dump());
  return j[key].get<bool>();
}

// eos_token_id may be an int or a list (generation stops on any); the first is our primary.
int32_t token_id_field(const json& j, const char* key) {
  if (!j.contains(key) || j[key].is_null()) return -1;
  if (j[key].is_number_integer()) return j[key].get<int32_t>();
  if (j[key].is_array() && !j[key].empty() && j[key][0].is_number_integer()) return j[key][0].get<int32_t>();
  return -1;
}

}  // namespace

QwenConfig parse_qwen_config(const std::string& text, const std::string& path) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    QWENQ_FAIL(path << ": not valid JSON: " << e.what());
  }
  QWENQ_CHECK(j.is_object(), path << ": expected a JSON object");
  QwenConfig c;
  QWENQ_CHECK(j.contains("model_type") && j["model_type"].is_string(),
              path << ": missing required field \"model_type\" (expected \"qwen2\" or \"qwen3\")");
  c.model_type = j["model_type"].get<std::string>();
  QWENQ_CHECK(c.model_type == "qwen2" || c.model_type == "qwen3" || c.model_type == "llama",
              path << ": model_type \"" << c.model_type
                   << "\" is not supported (supported: qwen2 (Qwen1.5/2/2.5), qwen3, llama)");

  c.vocab_size = require_int(j, "vocab_size", path);
  c.hidden_size = require_int(j, "hidden_size", path);
  c.intermediate_size = require_int(j, "intermediate_size", path);
  c.num_layers = require_int(j, "num_hidden_layers", path);
  c.num_heads = require_int(j, "num_attention_heads", path);
  c.num_kv_heads = optional_int(j, "num_key_value_heads", c.num_heads, path);
  QWENQ_CHECK(c.num_kv_heads > 0 && c.num_heads % c.num_kv_heads == 0,
              path << ": num_attention_heads " << c.num_heads << " is not a multiple of num_key_value_heads "
                   << c.num_kv_heads);
  c.head_dim = optional_int(j, "head_dim", 0, path);
  if (c.head_dim == 0) {
    QWENQ_CHECK(c.hidden_size % c.num_heads == 0, path << ": hidden_size " << c.hidden_size
                                                       << " is not divisible by num_attention_heads " << c.num_heads
                                                       << " and no head_dim is given");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  QWENQ_CHECK(c.head_dim > 0 && c.head_dim % 2 == 0, path << ": head_dim " << c.head_dim << " must be even (RoPE)");
  c.max_position_embeddings = optional_int(j, "max_position_embeddings", 32768, path);
  c.rms_norm_eps = static_cast<float>(optional_number(j, "rms_norm_eps", 1e-6, path));

  // RoPE: rope_theta at top level (released configs) or rope_parameters.rope_theta (newer transformers).
  double theta = optional_number(j, "rope_theta", c.model_type == "llama" ? 10000.0 : 1e6, path);
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
    const json& rp = j["rope_parameters"];
    theta = optional_number(rp, "rope_theta", theta, path);
    std::string type = rp.value("rope_type", std::string("default"));
    QWENQ_CHECK(type == "default", path << ": rope_parameters.rope_type \"" << type << "\" is not supported (only default RoPE)");
  }
  c.rope_theta = static_cast<float>(theta);
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    const json& rs = j["rope_scaling"];
    std::string type = rs.is_object() ? rs.value("rope_type", rs.value("type", std::string("?"))) : std::string("?");
    QWENQ_CHECK(type == "default", path << ": rope_scaling of type \"" << type
                                        << "\" is not supported yet; remove it to run at the native context length");
  }
  if (j.contains("hidden_act")) {
    QWENQ_CHECK(j["hidden_act"] == "silu", path << ": hidden_act " << j["hidden_act"].dump() << " is not supported (only silu)");
  }
  QWENQ_CHECK(!optional_bool(j, "use_sliding_window", false, path),
              path << ": use_sliding_window=true is not supported (no released Qwen2/2.5 checkpoint enables it)");

  c.tie_word_embeddings = optional_bool(j, "tie_word_embeddings", false, path);
  if (c.model_type == "qwen2") {
    c.qkv_bias = true;
    c.qk_norm = false;
  } else {
    c.qkv_bias = optional_bool(j, "attention_bias", false, path);
    c.qk_norm = c.model_type == "qwen3";
  }
  if (c.model_type == "llama") {
    QWENQ_CHECK(!optional_bool(j, "mlp_bias", false, path), path << ": mlp_bias=true is not supported");
  }
  c.bos_token_id = token_id_field(j, "bos_token_id");
  c.eos_token_id = token_id_field(j, "eos_token_id");
  if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) c.torch_dtype = j["torch_dtype"];
  return c;
}

QwenConfig load_qwen_config(const std::string& dir) {
  std::string path = path_join(dir, "config.json");
  QWENQ_CHECK(file_exists(path), "model directory " << dir << " has no config.json");
  return parse_qwen_config(read_file(path), path);
}

}  // namespace qwenq
