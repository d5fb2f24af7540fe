#include "trainer/qwen_config.h"

#include <cmath>
#include <cstdio>
#include <mutex>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/json_file.h"
#include "trainer/json_fields.h"

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

// eos_token_id may be an int or a list (generation stops on any); the first is our primary.
int32_t token_id_field(const json& j, const char* key) {
  if (!j.contains(key) || j[key].is_null()) return -1;
  if (j[key].is_number_integer()) return j[key].get<int32_t>();
  if (j[key].is_array() && !j[key].empty() && j[key][0].is_number_integer()) return j[key][0].get<int32_t>();
  return -1;
}

// A number field of rope_scaling: required (missing or null refused) or optional (fallback when missing or null).
double scaling_number(const json& rs, const char* key, const std::string& type, const std::string& path,
                      const double* fallback) {
  if (!rs.contains(key) || rs[key].is_null()) {
    QWENQ_CHECK(fallback != nullptr,
                path << ": missing required field \"rope_scaling." << key << "\" (rope_scaling of type \"" << type << "\")");
    return *fallback;
  }
  QWENQ_CHECK(rs[key].is_number(), path << ": field \"rope_scaling." << key << "\" must be a number, got " << rs[key].dump());
  const double v = rs[key].get<double>();
  QWENQ_CHECK(std::isfinite(v), path << ": field \"rope_scaling." << key << "\" must be finite, got " << rs[key].dump());
  return v;
}

double required_positive(const json& rs, const char* key, const std::string& type, const std::string& path) {
  const double v = scaling_number(rs, key, type, path, nullptr);
  QWENQ_CHECK(v > 0, path << ": field \"rope_scaling." << key << "\" must be > 0, got " << rs[key].dump());
  return v;
}

int64_t scaling_context(const json& rs, const std::string& path) {
  const json& v = rs["original_max_position_embeddings"];
  QWENQ_CHECK(v.is_number_integer() && v.get<int64_t>() > 0,
              path << ": field \"rope_scaling.original_max_position_embeddings\" must be a positive integer, got "
                   << v.dump());
  return v.get<int64_t>();
}

// rope_scaling -> the RoPE of transformers 4.51.3 (configuration_qwen2/qwen3/llama.py: a "type" key overrides
// "rope_type"; modeling_rope_utils.py: the parameters of each type). `c` has theta and max_position_embeddings.
void parse_rope_scaling(const json& rs, QwenConfig& c, const std::string& path) {
  QWENQ_CHECK(rs.is_object(), path << ": field \"rope_scaling\" must be an object or null, got " << rs.dump());
  const char* type_key = rs.contains("type") ? "type" : "rope_type";
  QWENQ_CHECK(rs.contains(type_key), path << ": rope_scaling has no \"rope_type\" (or \"type\")");
  QWENQ_CHECK(rs[type_key].is_string(),
              path << ": field \"rope_scaling." << type_key << "\" must be a string, got " << rs[type_key].dump());
  const std::string type = rs[type_key].get<std::string>();
  RopeSpec& r = c.rope;
  if (type == "default") return;
  QWENQ_CHECK(type != "dynamic", path << ": rope_scaling of type \"dynamic\" is not supported (its frequencies depend "
                                         "on the running sequence length); remove it to run at the native context length");
  QWENQ_CHECK(type == "linear" || type == "yarn" || type == "llama3",
              path << ": rope_scaling of type \"" << type
                   << "\" is not supported (supported: default, linear, yarn, llama3); remove it to run at the native "
                      "context length");
  r.factor = required_positive(rs, "factor", type, path);
  if (type == "linear") {
    r.type = RopeType::Linear;
    return;
  }
  if (type == "llama3") {
    r.type = RopeType::Llama3;
    QWENQ_CHECK(rs.contains("original_max_position_embeddings"),
                path << ": missing required field \"rope_scaling.original_max_position_embeddings\" (rope_scaling of "
                        "type \"llama3\")");
    r.original_max_position_embeddings = scaling_context(rs, path);
    r.low_freq_factor = required_positive(rs, "low_freq_factor", type, path);
    r.high_freq_factor = required_positive(rs, "high_freq_factor", type, path);
    QWENQ_CHECK(r.high_freq_factor > r.low_freq_factor,
                path << ": field \"rope_scaling.high_freq_factor\" " << r.high_freq_factor
                     << " must be greater than \"rope_scaling.low_freq_factor\" " << r.low_freq_factor);
    return;
  }
  r.type = RopeType::Yarn;
  QWENQ_CHECK(!rs.contains("truncate") || rs["truncate"].is_null() || rs["truncate"] == true,
              path << ": field \"rope_scaling.truncate\" " << rs["truncate"].dump()
                   << " is not supported (transformers 4.51.3 always rounds YaRN's correction range)");
  // transformers 4.51.3: `beta_fast or 32`, `beta_slow or 1` (0 and null take the default).
  const double zero = 0;
  const double beta_fast = scaling_number(rs, "beta_fast", type, path, &zero);
  const double beta_slow = scaling_number(rs, "beta_slow", type, path, &zero);
  r.beta_fast = beta_fast != 0 ? beta_fast : 32.0;
  r.beta_slow = beta_slow != 0 ? beta_slow : 1.0;
  QWENQ_CHECK(r.beta_fast > 0 && r.beta_slow > 0, path << ": fields \"rope_scaling.beta_fast\" and \"beta_slow\" must be "
                                                         "> 0, got " << r.beta_fast << " and " << r.beta_slow);
  // transformers 4.51.3 replaces factor by max_position_embeddings / original_max_position_embeddings when the
  // latter is given (modeling_rope_utils.py, _compute_yarn_parameters).
  r.original_max_position_embeddings = c.max_position_embeddings;
  if (rs.contains("original_max_position_embeddings")) {
    r.original_max_position_embeddings = scaling_context(rs, path);
    const double used =
        static_cast<double>(c.max_position_embeddings) / static_cast<double>(r.original_max_position_embeddings);
    if (used != r.factor) {
      std::ostringstream w;
      w << "warning: " << path << ": rope_scaling yarn uses factor " << used << " = max_position_embeddings "
        << c.max_position_embeddings << " / original_max_position_embeddings " << r.original_max_position_embeddings
        << ", not its factor " << r.factor
        << ", as transformers 4.51.3 does (huggingface/transformers#38224; later versions use the factor); set "
           "max_position_embeddings to factor x original_max_position_embeddings for the same RoPE in both";
      c.rope_warning = w.str();
    }
    r.factor = used;
  }
  const double mscale = scaling_number(rs, "mscale", type, path, &zero);
  const double mscale_all_dim = scaling_number(rs, "mscale_all_dim", type, path, &zero);
  const double by_factor = yarn_default_attention_factor(r.factor, mscale, mscale_all_dim);
  r.attention_factor = scaling_number(rs, "attention_factor", type, path, &by_factor);
  QWENQ_CHECK(r.attention_factor > 0,
              path << ": field \"rope_scaling.attention_factor\" must be > 0, got " << r.attention_factor);
}

// The sparse-MoE fields of qwen2_moe / qwen3_moe, with transformers 4.51.3's defaults (Qwen2MoeConfig,
// Qwen3MoeConfig) for the ones a config leaves out.
void parse_moe(const json& j, QwenConfig& c, const std::string& path) {
  const bool q3 = c.model_type == "qwen3_moe";
  c.num_experts = optional_int(j, "num_experts", q3 ? 128 : 60, path);
  c.experts_per_token = optional_int(j, "num_experts_per_tok", q3 ? 8 : 4, path);
  c.moe_intermediate_size = optional_int(j, "moe_intermediate_size", q3 ? 768 : 1408, path);
  if (!q3) c.shared_expert_intermediate_size = optional_int(j, "shared_expert_intermediate_size", 5632, path);
  c.norm_topk_prob = optional_bool(j, "norm_topk_prob", false, path);
  const int64_t step = optional_int(j, "decoder_sparse_step", 1, path);
  QWENQ_CHECK(c.num_experts >= 0, path << ": field \"num_experts\" must be >= 0, got " << c.num_experts);
  if (c.num_experts == 0) return;  // every layer dense (transformers: num_experts > 0 is required for a MoE block)
  QWENQ_CHECK(c.experts_per_token >= 1 && c.experts_per_token <= c.num_experts,
              path << ": field \"num_experts_per_tok\" " << c.experts_per_token << " must be in [1, num_experts "
                   << c.num_experts << "]");
  QWENQ_CHECK(c.moe_intermediate_size > 0,
              path << ": field \"moe_intermediate_size\" must be positive, got " << c.moe_intermediate_size);
  QWENQ_CHECK(c.shared_expert_intermediate_size >= 0, path << ": field \"shared_expert_intermediate_size\" must be >= 0, got "
                                                            << c.shared_expert_intermediate_size);
  QWENQ_CHECK(step >= 1, path << ": field \"decoder_sparse_step\" must be >= 1, got " << step);
  QWENQ_CHECK(!optional_bool(j, "output_router_logits", false, path),
              path << ": output_router_logits=true (the router's auxiliary loss) is not supported");
  std::vector<bool> dense_only(c.num_layers, false);
  if (j.contains("mlp_only_layers") && !j["mlp_only_layers"].is_null()) {
    const json& m = j["mlp_only_layers"];
    QWENQ_CHECK(m.is_array(), path << ": field \"mlp_only_layers\" must be a list of layer indices, got " << m.dump());
    for (const json& v : m) {
      QWENQ_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() < c.num_layers,
                  path << ": field \"mlp_only_layers\" holds " << v.dump() << ", not a layer index in [0, "
                       << c.num_layers << ")");
      dense_only[v.get<int64_t>()] = true;
    }
  }
  c.moe_layer.assign(c.num_layers, false);
  for (int64_t l = 0; l < c.num_layers; ++l) c.moe_layer[l] = !dense_only[l] && (l + 1) % step == 0;
}

}  // namespace

QwenConfig parse_qwen_config(const std::string& text, const std::string& path) {
  const json j = parse_json_text(text, path);
  QWENQ_CHECK(j.is_object(), path << ": expected a JSON object");
  QwenConfig c;
  QWENQ_CHECK(j.contains("model_type") && j["model_type"].is_string(),
              path << ": missing required field \"model_type\" (expected \"qwen2\" or \"qwen3\")");
  c.model_type = j["model_type"].get<std::string>();
  QWENQ_CHECK(c.model_type == "qwen2" || c.model_type == "qwen3" || c.model_type == "llama" ||
                  c.model_type == "qwen2_moe" || c.model_type == "qwen3_moe",
              path << ": model_type \"" << c.model_type
                   << "\" is not supported (supported: qwen2 (Qwen1.5/2/2.5), qwen3, llama, qwen2_moe, qwen3_moe)");

  c.vocab_size = require_int(j, "vocab_size", path);
  c.hidden_size = require_int(j, "hidden_size", path);
  c.intermediate_size = require_int(j, "intermediate_size", path);
  c.num_layers = require_int(j, "num_hidden_layers", path);
  c.num_heads = require_int(j, "num_attention_heads", path);
  c.num_kv_heads = optional_int(j, "num_key_value_heads", c.num_heads, path);
  QWENQ_CHECK(c.num_kv_heads > 0 && c.num_heads % c.num_kv_heads == 0,
              path << ": num_attention_heads " << c.num_heads << " is not a multiple of num_key_value_heads "
                   << c.num_kv_heads);
  // Qwen2-MoE's attention always splits hidden_size (transformers ignores a head_dim field there).
  c.head_dim = c.model_type == "qwen2_moe" ? 0 : optional_int(j, "head_dim", 0, path);
  if (c.head_dim == 0) {
    QWENQ_CHECK(c.hidden_size % c.num_heads == 0, path << ": hidden_size " << c.hidden_size
                                                       << " is not divisible by num_attention_heads " << c.num_heads
                                                       << " and no head_dim is given");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  QWENQ_CHECK(c.head_dim > 0 && c.head_dim % 2 == 0, path << ": head_dim " << c.head_dim << " must be even (RoPE)");
  // transformers' defaults: LlamaConfig 2048, Qwen2Config / Qwen3Config 32768 (yarn reads it).
  c.max_position_embeddings =
      optional_int(j, "max_position_embeddings", c.model_type == "llama" ? 2048 : 32768, path);
  QWENQ_CHECK(c.max_position_embeddings > 0,
              path << ": field \"max_position_embeddings\" must be positive, got " << c.max_position_embeddings);
  c.rms_norm_eps = static_cast<float>(optional_number(j, "rms_norm_eps", 1e-6, path));

  // RoPE: rope_theta at top level (released configs) or rope_parameters.rope_theta (newer transformers).
  // transformers 4.51.3 defaults rope_theta to 10000 for every supported model_type (released configs all set it).
  double theta = optional_number(j, "rope_theta", 10000.0, path);
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
    const json& rp = j["rope_parameters"];
    theta = optional_number(rp, "rope_theta", theta, path);
    std::string type = rp.value("rope_type", std::string("default"));
    QWENQ_CHECK(type == "default", path << ": rope_parameters.rope_type \"" << type << "\" is not supported (only default RoPE)");
  }
  QWENQ_CHECK(std::isfinite(theta) && theta > 0, path << ": field \"rope_theta\" must be > 0, got " << theta);
  c.rope = rope_spec_default(theta);
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) parse_rope_scaling(j["rope_scaling"], c, path);
  rope_table(c.rope, c.head_dim, path.c_str());  // the remaining checks of the table, with the file's name
  if (j.contains("hidden_act")) {
    QWENQ_CHECK(j["hidden_act"] == "silu", path << ": hidden_act " << j["hidden_act"].dump() << " is not supported (only silu)");
  }
  QWENQ_CHECK(!optional_bool(j, "use_sliding_window", false, path),
              path << ": use_sliding_window=true is not supported (no released Qwen2/2.5 checkpoint enables it)");

  c.tie_word_embeddings = optional_bool(j, "tie_word_embeddings", false, path);
  if (c.model_type == "qwen2") {
    c.qkv_bias = true;
    c.qk_norm = false;
  } else if (c.model_type == "qwen2_moe") {
    c.qkv_bias = optional_bool(j, "qkv_bias", true, path);
    c.qk_norm = false;
  } else {
    c.qkv_bias = optional_bool(j, "attention_bias", false, path);
    c.qk_norm = c.model_type == "qwen3" || c.model_type == "qwen3_moe";
  }
  if (c.model_type == "qwen2_moe" || c.model_type == "qwen3_moe") parse_moe(j, c, path);
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
  QwenConfig c = parse_qwen_config(read_file(path), path);
  if (!c.rope_warning.empty()) {
    static std::mutex mutex;
    static std::set<std::string> warned;
    std::lock_guard<std::mutex> lock(mutex);
    if (warned.insert(path).second) std::fprintf(stderr, "%s\n", c.rope_warning.c_str());
  }
  return c;
}

}  // namespace qwenq
