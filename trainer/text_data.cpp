#include "trainer/text_data.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"

namespace qwenq {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool looks_like_jsonl(const std::string& path, const std::string& text) {
  if (ends_with(path, ".jsonl")) return true;
  size_t i = text.find_first_not_of(" \t\r\n");
  return i != std::string::npos && text[i] == '{';
}

}  // namespace

std::string load_text_corpus(const std::string& path, const std::string& field) {
  std::string text = read_file(path);
  QWENQ_CHECK(text.find_first_not_of(" \t\r\n") != std::string::npos, path << ": file is empty");
  if (!looks_like_jsonl(path, text)) return text;

  std::string out;
  size_t line_no = 0, start = 0, records = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    ++line_no;
    std::string line = text.substr(start, end - start);
    start = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      QWENQ_FAIL(path << ":" << line_no << ": not valid JSON: " << e.what());
    }
    QWENQ_CHECK(j.is_object() && j.contains(field) && j[field].is_string(),
                path << ":" << line_no << ": expected an object with a string field \"" << field << "\"");
    if (records++) out += "\n\n";
    out += j[field].get<std::string>();
  }
  QWENQ_CHECK(records > 0, path << ": no records");
  return out;
}

}  // namespace qwenq
