// JSON Lines, as every reader of a user's .jsonl file walks it (SFT data, text corpora, tokenize's records,
// generate's prompts): the text split at '\n' (a '\r' before it is whitespace to the parser), lines numbered from
// 1 as an editor numbers them, lines of blanks skipped, each error naming "path:line".
#pragma once

#include <cstddef>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

namespace qwenq {

// fn(line, line_no) for every line of `text` holding anything but ' ', '\t' and '\r' (the line without its '\n').
void for_each_nonblank_line(const std::string& text, const std::function<void(const std::string&, size_t)>& fn);

// "" after parsing `line` into *out (key order kept), or why it is not JSON: "not valid JSON: <the parser's words>".
std::string parse_json_line(const std::string& line, nlohmann::ordered_json* out);

// The two for readers that stop at the first bad line: fn(record, "path:N") for each non-blank line; a line that is
// not JSON throws "path:N: not valid JSON: ...".
void for_each_json_line(const std::string& text, const std::string& path,
                        const std::function<void(const nlohmann::ordered_json&, const std::string&)>& fn);

}  // namespace qwenq
