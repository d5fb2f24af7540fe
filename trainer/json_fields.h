// Optional fields of a Hugging Face JSON config (config.json, generation_config.json): a missing or null key gives
// the fallback, a value of the wrong type is an error naming the file and the key.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace qwenq {

inline int64_t optional_int(const nlohmann::json& j, const char* key, int64_t fallback, const std::string& path) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  QWENQ_CHECK(j[key].is_number_integer(), path << ": field \"" << key << "\" must be an integer, got " << j[key].dump());
  return j[key].get<int64_t>();
}

inline double optional_number(const nlohmann::json& j, const char* key, double fallback, const std::string& path) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  QWENQ_CHECK(j[key].is_number(), path << ": field \"" << key << "\" must be a number, got " << j[key].dump());
  return j[key].get<double>();
}

inline bool optional_bool(const nlohmann::json& j, const char* key, bool fallback, const std::string& path) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  QWENQ_CHECK(j[key].is_boolean(), path << ": field \"" << key << "\" must be true or false, got " << j[key].dump());
  return j[key].get<bool>();
}

}  // namespace qwenq
