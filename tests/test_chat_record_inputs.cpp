// The less common spellings of chat and SFT records, and their refusals, worked out by hand from the readers' rules
// (trainer/chat_record.h, trainer/sft_data.h): ShareGPT's "tools" as a string holding the JSON array (LLaMA-Factory
// stores it so) or as the array itself, a tool-call message without "content" (OpenAI's spelling), and Alpaca's
// "history" of [query, response] pairs. Their renderings against transformers: tests/oracle/test_generate_prompts_oracle.py.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "tests/support/test_paths.h"
#include "trainer/chat_record.h"
#include "trainer/sft_data.h"

namespace qwenq {
namespace {

using test::error_of;

struct Parsed {
  std::string why;
  std::vector<ChatMessage> messages;
  std::vector<std::string> tools;
};

Parsed parse(const char* text, bool need_assistant = false) {
  Parsed p;
  p.why = parse_chat_record(nlohmann::ordered_json::parse(text), need_assistant, &p.messages, &p.tools);
  return p;
}

TEST(ChatRecordInputs, ShareGptToolsAsStringOrArray) {
  // The string is read as JSON, and each schema kept as Python's json.dumps writes it (", ", ": ", keys in order).
  const Parsed s = parse(R"({"tools": "[{\"name\":\"f\",\"parameters\":{\"b\":1,\"a\":[2.5,null]}}]",
                             "conversations": [{"from": "human", "value": "q"}]})");
  ASSERT_EQ(s.why, "");
  EXPECT_EQ(s.tools, (std::vector<std::string>{R"({"name": "f", "parameters": {"b": 1, "a": [2.5, null]}})"}));
  ASSERT_EQ(s.messages.size(), 1u);
  EXPECT_EQ(s.messages[0].role, "user");
  // The array itself gives the same schemas.
  const Parsed a = parse(R"({"tools": [{"name": "f", "parameters": {"b": 1, "a": [2.5, null]}}],
                             "conversations": [{"from": "human", "value": "q"}]})");
  ASSERT_EQ(a.why, "");
  EXPECT_EQ(a.tools, s.tools);
  // An empty string is no tools, as null is.
  for (const char* none : {R"({"tools": "", "conversations": [{"from": "human", "value": "q"}]})",
                           R"({"tools": null, "conversations": [{"from": "human", "value": "q"}]})"}) {
    const Parsed n = parse(none);
    EXPECT_EQ(n.why, "") << none;
    EXPECT_TRUE(n.tools.empty()) << none;
  }
  // A string that is not JSON, and JSON that is not an array (in the string or as is), are refused with the reason.
  EXPECT_EQ(parse(R"({"tools": "[{\"name\": \"f\"}", "conversations": [{"from": "human", "value": "q"}]})").why,
            "field \"tools\" is a string that is not JSON");
  EXPECT_EQ(parse(R"({"tools": "get_weather", "conversations": [{"from": "human", "value": "q"}]})").why,
            "field \"tools\" is a string that is not JSON");
  EXPECT_EQ(parse(R"({"tools": "{\"name\": \"f\"}", "conversations": [{"from": "human", "value": "q"}]})").why,
            "field \"tools\" is object, expected an array");
  EXPECT_EQ(parse(R"({"tools": 3, "conversations": [{"from": "human", "value": "q"}]})").why,
            "field \"tools\" is number, expected an array");
  EXPECT_EQ(parse(R"({"tools": ["f"], "conversations": [{"from": "human", "value": "q"}]})").why,
            "tools[0]: expected an object, got string");
}

TEST(ChatRecordInputs, ToolCallMessageWithoutContent) {
  // OpenAI's tool-call message has no "content": read as null content, written back as null.
  const Parsed p = parse(R"({"messages": [{"role": "user", "content": "q"},
      {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]},
      {"role": "tool", "content": "r"}, {"role": "assistant", "content": "done"}]})",
                         /*need_assistant=*/true);
  ASSERT_EQ(p.why, "");
  ASSERT_EQ(p.messages.size(), 4u);
  const ChatMessage& m = p.messages[1];
  EXPECT_TRUE(m.content_is_null);
  EXPECT_EQ(m.content, "");
  ASSERT_EQ(m.tool_calls.size(), 1u);
  EXPECT_EQ(m.tool_calls[0].name, "f");
  EXPECT_EQ(m.tool_calls[0].arguments, R"({"x": 1})");
  EXPECT_EQ(chat_message_json(m).dump(),
            R"({"role":"assistant","content":null,"tool_calls":[{"type":"function","function":{"name":"f","arguments":{"x":1}}}]})");
  EXPECT_FALSE(p.messages[3].content_is_null);
  // Without tool calls (none, null, or an empty list) the content is required.
  EXPECT_EQ(parse(R"({"messages": [{"role": "assistant"}]})").why, "messages[0]: missing field \"content\"");
  EXPECT_EQ(parse(R"({"messages": [{"role": "assistant", "tool_calls": null}]})").why,
            "messages[0]: missing field \"content\"");
  EXPECT_EQ(parse(R"({"messages": [{"role": "assistant", "tool_calls": []}]})").why,
            "messages[0]: missing field \"content\"");
  // Only an assistant message carries tool calls: a user message's are ignored, its content still required.
  EXPECT_EQ(parse(R"({"messages": [{"role": "user", "tool_calls": [{"name": "f", "arguments": {}}]}]})").why,
            "messages[0]: missing field \"content\"");
}

// Each malformed part of a record gets its own message naming where it is.
TEST(ChatRecordInputs, MalformedPartsAreNamed) {
  const std::pair<const char*, const char*> cases[] = {
      {R"([{"role": "user", "content": "q"}])", "expected a JSON object, got array"},
      {R"({"messages": [1]})", "messages[0]: expected an object, got number"},
      {R"({"messages": [{"content": "q"}]})", "messages[0]: missing field \"role\""},
      {R"({"messages": [{"role": 3, "content": "q"}]})", "messages[0]: field \"role\" is number, expected a string"},
      {R"({"messages": [{"role": "assistant", "content": "a", "tool_calls": "f"}]})",
       "messages[0]: \"tool_calls\" is string, expected an array"},
      {R"({"messages": [{"role": "assistant", "content": "a", "tool_calls": {"name": "f", "arguments": {}}}]})",
       "messages[0]: \"tool_calls\" is object, expected an array"},
      {R"({"messages": [{"role": "assistant", "content": "a", "tool_calls": ["f"]}]})",
       "messages[0]: tool_calls[0]: expected an object, got string"},
      {R"({"messages": [{"role": "assistant", "content": "a", "tool_calls": [{"type": "function", "function": null}]}]})",
       "messages[0]: tool_calls[0]: \"function\" is null, expected an object"},
      {R"({"messages": [{"role": "assistant", "content": "a", "tool_calls": [{"name": 3, "arguments": {}}]}]})",
       "messages[0]: tool_calls[0]: expected a string \"name\""},
      {R"({"messages": [{"role": "assistant", "content": "a", "tool_calls": [{"function": {"name": "f"}}]}]})",
       "messages[0]: tool_calls[0]: missing \"arguments\""},
      {R"({"conversations": {"from": "human", "value": "q"}})", "field \"conversations\" is object, expected an array"},
      {R"({"system": 3, "conversations": [{"from": "human", "value": "q"}]})", "field \"system\" is number, expected a string"},
      {R"({"conversations": [["human", "q"]]})", "conversations[0]: expected an object, got array"},
      {R"({"conversations": [{"value": "q"}]})", "conversations[0]: expected a string \"from\""},
      {R"({"conversations": [{"from": null, "value": "q"}]})", "conversations[0]: expected a string \"from\""},
      {R"({"conversations": [{"from": "human", "value": 3}]})", "conversations[0]: expected a string \"value\""},
  };
  for (const auto& [record, why] : cases) EXPECT_EQ(parse(record).why, why) << record;
  EXPECT_FALSE(is_chat_record(nlohmann::ordered_json::parse(R"([{"messages": []}])")));
  EXPECT_FALSE(is_chat_record(nlohmann::ordered_json::parse(R"({"text": "x"})")));
  EXPECT_TRUE(is_chat_record(nlohmann::ordered_json::parse(R"({"conversations": []})")));
}

// ShareGPT's other speaker names and "content" for "value"; a null or empty record-level "system" adds no message,
// a system turn inside the conversation stays where it is.
TEST(ChatRecordInputs, ShareGptSpeakersAndSystem) {
  const char* speakers = R"([{"from": "system", "value": "s"}, {"from": "user", "value": "q"},
      {"from": "model", "content": "a"}, {"from": "function_response", "value": "r"}, {"from": "tool", "value": "t"},
      {"from": "assistant", "value": "b"}])";
  for (const char* system : {"null", "\"\""}) {
    const std::string record = std::string("{\"system\": ") + system + ", \"conversations\": " + speakers + "}";
    const Parsed p = parse(record.c_str());
    ASSERT_EQ(p.why, "") << record;
    std::string roles;
    for (const ChatMessage& m : p.messages) roles += m.role + ":" + m.content + " ";
    EXPECT_EQ(roles, "system:s user:q assistant:a tool:r tool:t assistant:b ") << record;
  }
}

// A tool call's string arguments are written back as the string (the form apply_chat_template takes again).
TEST(ChatRecordInputs, StringArgumentsWrittenBackAsGiven) {
  const Parsed p = parse(R"({"messages": [{"role": "assistant", "content": "",
      "tool_calls": [{"name": "f", "arguments": "{\"x\": 1}"}, {"name": "g", "arguments": null}]}]})");
  ASSERT_EQ(p.why, "");
  ASSERT_EQ(p.messages[0].tool_calls.size(), 2u);
  EXPECT_EQ(chat_message_json(p.messages[0]).dump(),
            R"({"role":"assistant","content":"","tool_calls":[{"type":"function","function":{"name":"f","arguments":"{\"x\": 1}"}},)"
            R"({"type":"function","function":{"name":"g","arguments":null}}]})");
}

TEST(SftReadInputs, AlpacaHistoryPairs) {
  const std::string dir = test::scratch_dir();
  const std::string path = dir + "/h.jsonl";
  write_file_atomic(path, R"({"instruction": "i", "output": "o", "history": [["q1", "r1"], ["q2", "r2"]]})" "\n"
                          R"({"instruction": "i", "output": "o", "history": null})" "\n");
  SftDataStats st;
  const std::vector<SftRecord> recs = read_sft_records(path, SftFormat::kAuto, false, &st);
  ASSERT_EQ(recs.size(), 2u);
  using Pairs = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(recs[0].history, (Pairs{{"q1", "r1"}, {"q2", "r2"}}));
  EXPECT_TRUE(recs[1].history.empty());

  // Each malformed entry is named by its index, the record by its line, with the way out.
  const char* bad[] = {
      R"({"instruction": "i", "output": "o", "history": [["q1", "r1"], ["q2"]]})",
      R"({"instruction": "i", "output": "o", "history": [["q1", "r1"], ["q2", "r2", "x"]]})",
      R"({"instruction": "i", "output": "o", "history": [["q1", "r1"], ["q2", 2]]})",
      R"({"instruction": "i", "output": "o", "history": [["q1", "r1"], "q2"]})",
      R"({"instruction": "i", "output": "o", "history": [["q1", "r1"], {"q2": "r2"}]})",
  };
  for (const char* line : bad) {
    write_file_atomic(path, std::string(R"({"instruction": "i", "output": "o"})") + "\n" + line + "\n");
    EXPECT_EQ(error_of([&] { read_sft_records(path, SftFormat::kAuto, false, &st); }),
              path + ":2: history[1]: expected a [query, response] pair of strings (pass --skip-bad to skip such records)")
        << line;
  }
  // --skip-bad skips such a record and reports it.
  write_file_atomic(path, std::string(R"({"instruction": "i", "output": "o"})") + "\n" + bad[0] + "\n");
  SftDataStats skipped;
  EXPECT_EQ(read_sft_records(path, SftFormat::kAuto, true, &skipped).size(), 1u);
  EXPECT_EQ(skipped.skipped, 1);
  ASSERT_EQ(skipped.first_skipped.size(), 1u);
  EXPECT_EQ(skipped.first_skipped[0], path + ":2: history[1]: expected a [query, response] pair of strings");
}

}  // namespace
}  // namespace qwenq
