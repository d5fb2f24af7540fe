#include "core/jsonl.h"

#include "core/error.h"

namespace qwenq {

void for_each_nonblank_line(const std::string& text, const std::function<void(const std::string&, size_t)>& fn) {
  size_t start = 0, line_no = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    ++line_no;
    const std::string line = text.substr(start, end - start);
    start = end + 1;
    if (line.find_first_not_of(" \t\r") != std::string::npos) fn(line, line_no);
  }
}

std::string parse_json_line(const std::string& line, nlohmann::ordered_json* out) {
  try {
    *out = nlohmann::ordered_json::parse(line);
  } catch (const nlohmann::json::exception& e) {
    return std::string("not valid JSON: ") + e.what();
  }
  return "";
}

void for_each_json_line(const std::string& text, const std::string& path,
                        const std::function<void(const nlohmann::ordered_json&, const std::string&)>& fn) {
  for_each_nonblank_line(text, [&](const std::string& line, size_t line_no) {
    const std::string where = path + ":" + std::to_string(line_no);
    nlohmann::ordered_json j;
    const std::string why = parse_json_line(line, &j);
    QWENQ_CHECK(why.empty(), where << ": " << why);
    fn(j, where);
  });
}

}  // namespace qwenq
