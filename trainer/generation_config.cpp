// trainer/generation_config.h: generation_config.json read with transformers' defaults and ranges.
#include "trainer/generation_config.h"

#include <cmath>
#include <cstdint>
#include <utility>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/json_file.h"
#include "trainer/json_fields.h"

namespace qwenq {

GenerationConfig load_generation_config(const std::string& model_path) {
  GenerationConfig g;
  if (!dir_exists(model_path)) return g;
  const std::string path = path_join(model_path, "generation_config.json");
  if (!file_exists(path)) return g;
  const nlohmann::json j = read_json_object(path);
  g.path = path;
  g.do_sample = optional_bool(j, "do_sample", g.do_sample, path);
  g.temperature = static_cast<float>(optional_number(j, "temperature", g.temperature, path));
  g.top_k = optional_int(j, "top_k", g.top_k, path);
  g.top_p = static_cast<float>(optional_number(j, "top_p", g.top_p, path));
  g.min_p = static_cast<float>(optional_number(j, "min_p", g.min_p, path));
  g.repetition_penalty = static_cast<float>(optional_number(j, "repetition_penalty", g.repetition_penalty, path));
  for (const auto& [key, v] : {std::pair<const char*, float>{"temperature", g.temperature}, {"top_p", g.top_p},
                                {"min_p", g.min_p}, {"repetition_penalty", g.repetition_penalty}}) {
    QWENQ_CHECK(std::isfinite(v), path << ": \"" << key << "\" is not a finite 32-bit float");
  }
  QWENQ_CHECK(!g.do_sample || g.temperature > 0,
              path << ": \"temperature\" " << g.temperature << " with \"do_sample\": true (sampling needs it above 0)");
  QWENQ_CHECK(g.top_p > 0 && g.top_p <= 1, path << ": \"top_p\" " << g.top_p << " outside (0, 1]");
  QWENQ_CHECK(g.top_k >= 0, path << ": \"top_k\" " << g.top_k << " is negative");
  QWENQ_CHECK(g.min_p >= 0 && g.min_p <= 1, path << ": \"min_p\" " << g.min_p << " outside [0, 1]");
  QWENQ_CHECK(g.repetition_penalty > 0,
              path << ": \"repetition_penalty\" " << g.repetition_penalty << " must be above 0");
  if (j.contains("eos_token_id") && !j["eos_token_id"].is_null()) {
    const nlohmann::json& e = j["eos_token_id"];
    const nlohmann::json ids = e.is_array() ? e : nlohmann::json::array({e});
    for (const auto& id : ids) {
      QWENQ_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() <= INT32_MAX,
                  path << ": \"eos_token_id\" must be a token id or a list of them, got " << e.dump());
      g.eos_token_ids.push_back(id.get<int32_t>());
    }
  }
  return g;
}

}  // namespace qwenq
