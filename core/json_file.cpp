// JSON documents read whole (core/json_file.h).
#include "core/json_file.h"

#include "core/error.h"
#include "core/files.h"

namespace qwenq {

namespace {

template <class Json>
Json parse_or_fail(const std::string& text, const std::string& path) {
  try {
    return Json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    QWENQ_FAIL(path << ": not valid JSON: " << e.what());
  }
}

}  // namespace

nlohmann::json parse_json_text(const std::string& text, const std::string& path) {
  return parse_or_fail<nlohmann::json>(text, path);
}

nlohmann::ordered_json parse_ordered_json_text(const std::string& text, const std::string& path) {
  return parse_or_fail<nlohmann::ordered_json>(text, path);
}

nlohmann::json read_json_file(const std::string& path) { return parse_json_text(read_file(path), path); }

nlohmann::ordered_json read_ordered_json_file(const std::string& path) {
  return parse_ordered_json_text(read_file(path), path);
}

nlohmann::json read_json_object(const std::string& path) {
  nlohmann::json j = read_json_file(path);
  QWENQ_CHECK(j.is_object(), path << ": expected a JSON object, got " << j.type_name());
  return j;
}

}  // namespace qwenq
