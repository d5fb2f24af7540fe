// The one JSON Lines walk every reader of a user's .jsonl file shares (core/jsonl.h): editor line numbers across
// blank, whitespace-only and CRLF lines, a last line without '\n', key order kept, and the error naming path:line.
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "core/jsonl.h"
#include "tests/support/test_errors.h"

namespace qwenq {
namespace {

TEST(Jsonl, NonBlankLinesKeepTheirEditorNumbers) {
  const std::string text = "first\n\n  \t\r\nsecond\r\n\nthird";
  std::vector<std::pair<std::string, size_t>> seen;
  for_each_nonblank_line(text, [&](const std::string& l, size_t n) { seen.emplace_back(l, n); });
  const std::vector<std::pair<std::string, size_t>> want = {{"first", 1}, {"second\r", 4}, {"third", 6}};
  EXPECT_EQ(seen, want);
  seen.clear();
  for_each_nonblank_line("", [&](const std::string& l, size_t n) { seen.emplace_back(l, n); });
  for_each_nonblank_line("\n\n \n", [&](const std::string& l, size_t n) { seen.emplace_back(l, n); });
  EXPECT_TRUE(seen.empty());
}

TEST(Jsonl, RecordsParsedInOrderWithKeyOrderKept) {
  std::vector<std::string> where, keys;
  for_each_json_line("{\"b\": 1, \"a\": 2}\r\n\n\"x\"\n", "d.jsonl",
                     [&](const nlohmann::ordered_json& j, const std::string& w) {
                       where.push_back(w);
                       if (j.is_object()) {
                         for (const auto& [k, v] : j.items()) keys.push_back(k);
                       }
                     });
  EXPECT_EQ(where, (std::vector<std::string>{"d.jsonl:1", "d.jsonl:3"}));
  EXPECT_EQ(keys, (std::vector<std::string>{"b", "a"}));
}

TEST(Jsonl, ABadLineIsNamed) {
  nlohmann::ordered_json j;
  EXPECT_EQ(parse_json_line("[1, 2]", &j), "");
  EXPECT_EQ(j.size(), 2u);
  EXPECT_EQ(parse_json_line("{\"a\": ", &j).rfind("not valid JSON: ", 0), 0u);
  int calls = 0;
  test::expect_error(
      [&] { for_each_json_line("{}\n\n{\"a\": 1,}\n{}\n", "d.jsonl", [&](const auto&, const auto&) { ++calls; }); },
      {"d.jsonl:3: not valid JSON: "});
  EXPECT_EQ(calls, 1);  // the records before the bad line, none after
}

}  // namespace
}  // namespace qwenq
