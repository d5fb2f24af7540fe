// JSON documents read whole (config.json, generation_config.json, tokenizer files, a run's state and config files,
// a safetensors index): one error naming the file when the text is not JSON, "PATH: not valid JSON: <the parser's
// words>", or not the object expected, "PATH: expected a JSON object, got <its type>". (JSON Lines: core/jsonl.h.)
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace qwenq {

// `text`, read from `path`, parsed (ordered: the keys in the file's order, for documents written back out).
nlohmann::json parse_json_text(const std::string& text, const std::string& path);
nlohmann::ordered_json parse_ordered_json_text(const std::string& text, const std::string& path);

// The file at `path` read whole, then parsed as above.
nlohmann::json read_json_file(const std::string& path);
nlohmann::ordered_json read_ordered_json_file(const std::string& path);

// read_json_file's document, which must be a JSON object.
nlohmann::json read_json_object(const std::string& path);

}  // namespace qwenq
