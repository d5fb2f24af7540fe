// Chat templates applied natively (trainer/tokenizer_chat.cpp) with Qwen2.5's and Qwen3's own templates
// (tests/data/chat_templates/): rendered text and assistant spans written out by hand from the templates' Jinja,
// chat records (trainer/chat_record.h) and Python's json.dumps, the SFT loss spans, and the refusals.
// tests/oracle/test_chat_template_oracle.py checks the same renderer against transformers over many more cases.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "core/files.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_tokenizers.h"
#include "trainer/chat_record.h"
#include "trainer/quantize_output.h"
#include "trainer/sft_data.h"
#include "trainer/text_data.h"

namespace qwenq {
namespace {

using test::error_of;

std::string fixture_template(const std::string& name) {
  return read_file(test::source_dir() + "/tests/data/chat_templates/" + name);
}

std::vector<std::string> spans_of(const ChatRender& r) {
  std::vector<std::string> out;
  for (const auto& s : r.assistant_spans) out.push_back(r.text.substr(s.first, s.second - s.first));
  return out;
}

ChatMessage assistant_with_reasoning(const std::string& content, const std::string& reasoning) {
  ChatMessage m("assistant", content);
  m.reasoning = reasoning;
  m.has_reasoning = true;
  return m;
}

// A conversation with tools: the text opens with `head` (the system turn's start), lists `tool` in its <tools>
// section, and is `rest` from the first occurrence of `rest_start` on.
void expect_tools_turn_then(const std::string& text, const std::string& head, const std::string& tool,
                            const std::string& rest_start, const std::string& rest) {
  EXPECT_EQ(text.compare(0, head.size(), head), 0) << text;
  EXPECT_NE(text.find("<tools>\n" + tool + "\n</tools>"), std::string::npos) << text;
  const size_t at = text.find(rest_start);
  ASSERT_NE(at, std::string::npos) << text;
  EXPECT_EQ(text.substr(at), rest);
}

// The tokens of the loss, decoded (one-to-one onto bytes with the byte tokenizer).
std::string loss_text(const SftExample& ex, const Tokenizer& tok) {
  std::vector<int32_t> ids;
  for (size_t t = 0; t < ex.tokens.size(); ++t)
    if (ex.loss_mask[t]) ids.push_back(ex.tokens[t]);
  return tok.decode(ids);
}

TEST(ChatTemplate, Qwen3ReasoningBlocksAndGenerationPrompt) {
  const Tokenizer tok = test::byte_tokenizer(test::scratch_dir(), fixture_template("qwen3.jinja"));
  EXPECT_TRUE(tok.chat_template_has_thinking_switch());
  // History before the last user query loses its reasoning; the last answer gets a block, empty if need be.
  const std::vector<ChatMessage> m = {{"user", "q1"}, {"assistant", "<think>r1</think>a1"}, {"user", "q2"}, {"assistant", "a2"}};
  ChatOptions o;
  ChatRender r = tok.render_chat(m, o);
  EXPECT_EQ(r.text,
            "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n<|im_start|>user\nq2<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\na2<|im_end|>\n");
  EXPECT_EQ(spans_of(r), (std::vector<std::string>{"a1<|im_end|>", "<think>\n\n</think>\n\na2<|im_end|>"}));
  // enable_thinking=False: the same text; the empty block is the generation prompt's, so not in the span.
  o.enable_thinking = false;
  r = tok.render_chat(m, o);
  EXPECT_EQ(spans_of(r), (std::vector<std::string>{"a1<|im_end|>", "a2<|im_end|>"}));
  // Generation prompts.
  o.add_generation_prompt = true;
  EXPECT_EQ(tok.render_chat({{"user", "hi"}}, o).text, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  o.enable_thinking = true;
  EXPECT_EQ(tok.render_chat({{"system", "s"}, {"user", "hi"}}, o).text,
            "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  // reasoning_content wins over <think> in the content (whose text then stays as it is); outer "\n" stripped.
  r = tok.render_chat({{"user", "q"}, assistant_with_reasoning("\nx</think>y", "\n\nr\n")}, ChatOptions());
  EXPECT_EQ(r.text, "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\nr\n</think>\n\nx</think>y<|im_end|>\n");
  // A content's reasoning: before the first </think>, after the last <think> in that part; the answer after the
  // last </think>.
  r = tok.render_chat({{"user", "q"}, {"assistant", "<think>\na <think>\nb\n</think>mid</think>\n\nend"}}, ChatOptions());
  EXPECT_EQ(spans_of(r), (std::vector<std::string>{"<think>\nb\n</think>\n\nend<|im_end|>"}));
}

TEST(ChatTemplate, Qwen3ToolsAndMultiStepQueries) {
  const Tokenizer tok = test::byte_tokenizer(test::scratch_dir(), fixture_template("qwen3.jinja"));
  ChatMessage call("assistant", "");
  call.content_is_null = true;
  call.tool_calls = {{"f", "{\"a\": 1}", false}, {"g", "raw text", true}};
  call.reasoning = "plan";
  call.has_reasoning = true;
  // The last real query is message 0: a wrapped tool response in a user turn does not count, so every
  // assistant message after it is "after the query": the last one gets a think block, and so does any other
  // with reasoning.
  const std::vector<ChatMessage> m = {{"user", "q"}, call, {"user", "<tool_response>\nok\n</tool_response>"},
                                      {"tool", "t1"}, {"tool", "t2"}, {"assistant", "done"}};
  ChatOptions o;
  o.tools = {"{\"name\": \"f\"}"};
  const ChatRender r = tok.render_chat(m, o);
  expect_tools_turn_then(r.text, "<|im_start|>system\n# Tools\n\nYou may call one or more functions", "{\"name\": \"f\"}",
                         "<|im_start|>user\nq<|im_end|>",
                         "<|im_start|>user\nq<|im_end|>\n"
                         "<|im_start|>assistant\n<think>\nplan\n</think>\n\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>\n"
                         "<tool_call>\n{\"name\": \"g\", \"arguments\": raw text}\n</tool_call><|im_end|>\n"
                         "<|im_start|>user\n<tool_response>\nok\n</tool_response><|im_end|>\n"
                         "<|im_start|>user\n<tool_response>\nt1\n</tool_response>\n<tool_response>\nt2\n</tool_response><|im_end|>\n"
                         "<|im_start|>assistant\n<think>\n\n</think>\n\ndone<|im_end|>\n");
  EXPECT_EQ(spans_of(r).size(), 2u);
}

TEST(ChatTemplate, Qwen25DefaultSystemToolsAndStringArguments) {
  const Tokenizer tok = test::byte_tokenizer(test::scratch_dir(), fixture_template("qwen2.5.jinja"));
  EXPECT_FALSE(tok.chat_template_has_thinking_switch());
  EXPECT_EQ(tok.apply_chat_template({{"user", "x"}}, true),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n");
  ChatMessage call("assistant", "Checking.");
  call.tool_calls = {{"f", "{\"q\": \"x\"}", true}};  // a string: Qwen2.5's tojson quotes it
  ChatOptions o;
  o.tools = {"{\"name\": \"f\"}"};
  const ChatRender r = tok.render_chat({{"user", "x"}, call, {"tool", "r"}, {"assistant", "done"}}, o);
  expect_tools_turn_then(r.text, "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools",
                         "{\"name\": \"f\"}", "<|im_start|>user\nx<|im_end|>",
                         "<|im_start|>user\nx<|im_end|>\n"
                         "<|im_start|>assistant\nChecking.\n<tool_call>\n{\"name\": \"f\", \"arguments\": \"{\\\"q\\\": \\\"x\\\"}\"}\n"
                         "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\nr\n</tool_response><|im_end|>\n"
                         "<|im_start|>assistant\ndone<|im_end|>\n");
  EXPECT_EQ(spans_of(r), (std::vector<std::string>{
                             "Checking.\n<tool_call>\n{\"name\": \"f\", \"arguments\": \"{\\\"q\\\": \\\"x\\\"}\"}\n</tool_call><|im_end|>",
                             "done<|im_end|>"}));
}

TEST(ChatTemplate, RefusesWhatItCannotRender) {
  const std::string dir = test::scratch_dir();
  // Tools with a template that has no tools branch; a reasoning template that is not Qwen3's (QwQ-like).
  const Tokenizer plain = test::byte_tokenizer(dir + "/a",
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n'}}"
      "{% endfor %}");
  ChatOptions o;
  o.tools = {"{}"};
  EXPECT_NE(error_of([&] { plain.render_chat({{"user", "x"}}, o); }).find("tokenizer_config.json: the record's tools cannot be rendered: the chat template has no tools branch"),
            std::string::npos);
  ChatMessage call("assistant", "");
  call.tool_calls = {{"f", "{}", false}};
  EXPECT_NE(error_of([&] { plain.render_chat({{"user", "x"}, call}, ChatOptions()); }).find("message 1 calls tools"),
            std::string::npos);
  const Tokenizer qwq = test::byte_tokenizer(dir + "/b",
      "{%- for message in messages %}{%- set content = message.content.split('</think>')[-1] %}"
      "{{ '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}{%- endfor %}"
      "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}");
  EXPECT_NE(error_of([&] { qwq.apply_chat_template({{"user", "x"}}, true); })
                .find("handles <think> blocks but is not Qwen3's"),
            std::string::npos);
  // Tool calls in another format (a Qwen3-Coder-like XML call): plain turns render, tools are refused.
  const Tokenizer xml = test::byte_tokenizer(dir + "/x",
      "{%- for message in messages %}{{ '<|im_start|>' + message.role + '\\n' + message.content }}"
      "{%- for tool_call in message.tool_calls %}{{ '<tool_call>\\n<function=' + tool_call.name + '>' }}{%- endfor %}"
      "{{ '<|im_end|>\\n' }}{%- endfor %}");
  EXPECT_EQ(xml.apply_chat_template({{"user", "x"}}, false), "<|im_start|>user\nx<|im_end|>\n");
  EXPECT_NE(error_of([&] { xml.render_chat({{"user", "x"}, call}, ChatOptions()); }).find("format other than Qwen2.5/Qwen3's JSON"),
            std::string::npos);
  EXPECT_NE(error_of([&] { xml.render_chat({{"user", "x"}, {"tool", "r"}}, ChatOptions()); }).find("message 1 is a tool response"),
            std::string::npos);
  // A Qwen3-style template with other reasoning rules (here: a block only where there is reasoning).
  std::string q3 = fixture_template("qwen3.jinja");
  const std::string rule = "loop.last or (not loop.last and reasoning_content)";
  ASSERT_NE(q3.find(rule), std::string::npos);
  q3.replace(q3.find(rule), rule.size(), "reasoning_content");
  const Tokenizer q3x = test::byte_tokenizer(dir + "/q3x", q3);
  EXPECT_NE(error_of([&] { q3x.apply_chat_template({{"user", "x"}}, true); }).find("whose reasoning rules are not worded as Qwen3's"),
            std::string::npos);
  // Null content outside a tool call.
  const Tokenizer q25 = test::byte_tokenizer(dir + "/c", fixture_template("qwen2.5.jinja"));
  ChatMessage null_msg("assistant", "");
  null_msg.content_is_null = true;
  EXPECT_NE(error_of([&] { q25.render_chat({{"user", "x"}, null_msg}, ChatOptions()); }).find("got null"), std::string::npos);
}

TEST(ChatRecord, ParsesMessagesToolsAndReasoning) {
  const auto j = nlohmann::ordered_json::parse(R"({"messages": [
      {"role": "user", "content": "q", "name": "ignored"},
      {"role": "assistant", "content": null, "reasoning_content": "r",
       "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"z": 1, "a": [true, null]}}},
                      {"name": "g", "arguments": "s"}]},
      {"role": "tool", "content": "out"},
      {"role": "assistant", "content": "done", "reasoning_content": null}],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"b": 2, "a": 1.5}}}]})");
  std::vector<ChatMessage> m;
  std::vector<std::string> tools;
  ASSERT_EQ(parse_chat_record(j, true, &m, &tools), "");
  ASSERT_EQ(m.size(), 4u);
  EXPECT_TRUE(m[1].content_is_null);
  EXPECT_TRUE(m[1].has_reasoning);
  EXPECT_EQ(m[1].reasoning, "r");
  ASSERT_EQ(m[1].tool_calls.size(), 2u);
  EXPECT_EQ(m[1].tool_calls[0].arguments, "{\"z\": 1, \"a\": [true, null]}");  // keys in their order
  EXPECT_TRUE(m[1].tool_calls[1].arguments_is_string);
  EXPECT_FALSE(m[3].has_reasoning);
  EXPECT_EQ(tools, (std::vector<std::string>{"{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {\"b\": 2, \"a\": 1.5}}}"}));

  auto why = [](const char* text, bool need_assistant = true) {
    std::vector<ChatMessage> mm;
    std::vector<std::string> tt;
    return parse_chat_record(nlohmann::ordered_json::parse(text), need_assistant, &mm, &tt);
  };
  EXPECT_EQ(why(R"({"messages": [{"role": "user", "content": "x"}]})"), "no assistant message (nothing to train on)");
  EXPECT_EQ(why(R"({"messages": [{"role": "user", "content": "x"}]})", false), "");
  EXPECT_EQ(why(R"({"messages": []})"), "\"messages\" is empty");
  EXPECT_EQ(why(R"({"messages": [{"role": "assistant", "content": null}]})"),
            "messages[0]: field \"content\" is null, expected a string");
  EXPECT_EQ(why(R"({"messages": [{"role": "assistant", "content": "a", "reasoning_content": 3}]})"),
            "messages[0]: \"reasoning_content\" is number, expected a string or null");
  EXPECT_EQ(why(R"({"messages": [{"role": "assistant", "content": "a", "tool_calls": [{"function": {"arguments": {}}}]}]})"),
            "messages[0]: tool_calls[0]: expected a string \"name\"");
  EXPECT_EQ(why(R"({"messages": [{"role": "assistant", "content": "a"}], "tools": [1]})"),
            "tools[0]: expected an object, got number");
}

TEST(ChatRecord, PythonJsonDumps) {
  // What Python 3's json.dumps(x, ensure_ascii=False) prints for each (repr of floats, ", " and ": ").
  const std::pair<const char*, const char*> cases[] = {
      {"0.25", "0.25"}, {"1e-7", "1e-07"}, {"1e20", "1e+20"}, {"100.0", "100.0"}, {"1e16", "1e+16"},
      {"1234567890123456.0", "1234567890123456.0"}, {"0.0001", "0.0001"}, {"0.00001", "1e-05"}, {"-0.5", "-0.5"},
      {"5e-324", "5e-324"}, {"1.7976931348623157e308", "1.7976931348623157e+308"}, {"0.30000000000000004", "0.30000000000000004"},
      {"-0.0", "-0.0"}, {"123456789012345678", "123456789012345678"}, {"-3", "-3"}, {"[]", "[]"}, {"{}", "{}"},
      {R"({"b": [1, {"c": null}], "a": false})", R"({"b": [1, {"c": null}], "a": false})"},
      {R"("tab\t nl\n quote\" back\\ ctl\u0001 é 東 /")", "\"tab\\t nl\\n quote\\\" back\\\\ ctl\\u0001 é 東 /\""},
  };
  for (const auto& c : cases) EXPECT_EQ(python_json_dumps(nlohmann::ordered_json::parse(c.first)), c.second) << c.first;
  // Values JSON text cannot spell, as json.dumps writes them (allow_nan=True).
  EXPECT_EQ(python_json_dumps(nlohmann::ordered_json(0.0)), "0.0");
  EXPECT_EQ(python_json_dumps(nlohmann::ordered_json(std::nan(""))), "NaN");
  EXPECT_EQ(python_json_dumps(nlohmann::ordered_json(HUGE_VAL)), "Infinity");
  EXPECT_EQ(python_json_dumps(nlohmann::ordered_json(-HUGE_VAL)), "-Infinity");
}

// A default system text with Jinja escapes is the text Jinja reads: a literal's \\n is a backslash and an n (it
// was read as a backslash and a newline), \t a tab (it stayed "\t"), \' and \" quotes, \\ a backslash.
// transformers renders the same template in tests/oracle/test_chat_template_oracle.py (qwen2-escapes).
TEST(ChatTemplate, DefaultSystemTextEscapes) {
  const Tokenizer tok = test::byte_tokenizer(test::scratch_dir(),
      R"({% for message in messages %}{% if loop.first and messages[0]['role'] == 'system' %})"
      R"({{ "<|im_start|>system\n" + message['content'] + "<|im_end|>\n" }}{% elif loop.first %})"
      R"({{ '<|im_start|>system\nIt\'s a \"test\": use \\nabla,\tC:\\\\dir\\n.<|im_end|>\n' }}{% endif %})"
      R"({% if not (loop.first and message['role'] == 'system') %})"
      R"({{ "<|im_start|>" + message['role'] + "\n" + message['content'] + "<|im_end|>\n" }}{% endif %}{% endfor %})");
  EXPECT_EQ(tok.apply_chat_template({{"user", "x"}}, false),
            "<|im_start|>system\nIt's a \"test\": use \\nabla,\tC:\\\\dir\\n.<|im_end|>\n<|im_start|>user\nx<|im_end|>\n");
  EXPECT_EQ(tok.apply_chat_template({{"system", "s"}, {"user", "x"}}, false),
            "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nx<|im_end|>\n");
}

// Tool messages without a tools branch: the plain template writes a "tool" turn, the early Qwen2 one skips them
// and refuses tool calls; a template without one has no thinking switch, and no template none at all.
TEST(ChatTemplate, ToolMessagesWithoutATemplateToolsBranch) {
  const std::string dir = test::scratch_dir();
  const Tokenizer plain = test::byte_tokenizer(dir + "/plain",
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n'}}"
      "{% endfor %}");
  EXPECT_EQ(plain.apply_chat_template({{"tool", "r"}, {"user", "q"}}, false),
            "<|im_start|>tool\nr<|im_end|>\n<|im_start|>user\nq<|im_end|>\n");
  EXPECT_FALSE(plain.chat_template_has_thinking_switch());
  const Tokenizer early = test::byte_tokenizer(dir + "/early",
      "{% set system_message = 'You are a helpful assistant.' %}{% if messages[0]['role'] == 'system' %}"
      "{% set system_message = messages[0]['content'] %}{% endif %}{% if system_message is defined %}"
      "{{ '<|im_start|>system\\n' + system_message + '<|im_end|>\\n' }}{% endif %}{% for message in messages %}"
      "{% set content = message['content'] %}{% if message['role'] == 'user' %}"
      "{{ '<|im_start|>user\\n' + content + '<|im_end|>\\n<|im_start|>assistant\\n' }}"
      "{% elif message['role'] == 'assistant' %}{{ content + '<|im_end|>' + '\\n' }}{% endif %}{% endfor %}");
  EXPECT_EQ(early.apply_chat_template({{"user", "q"}, {"tool", "r"}, {"assistant", "a"}}, false),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nq<|im_end|>\n"
            "<|im_start|>assistant\na<|im_end|>\n");
  ChatMessage call("assistant", "");
  call.tool_calls = {{"f", "{}", false}};
  EXPECT_NE(error_of([&] { early.render_chat({{"user", "x"}, call}, ChatOptions()); })
                .find("message 1 calls tools but the chat template has no tools branch"),
            std::string::npos);
  const Tokenizer none = test::byte_tokenizer(dir + "/none", "");
  ASSERT_FALSE(none.has_chat_template());
  EXPECT_FALSE(none.chat_template_has_thinking_switch());
}

TEST(ChatTemplate, SftLossSpansFollowTheTemplate) {
  const std::string dir = test::scratch_dir();
  const Tokenizer tok = test::byte_tokenizer(dir, fixture_template("qwen3.jinja"));
  SftRecord rec;
  rec.format = SftFormat::kChat;
  rec.where = "t.jsonl:1";
  rec.messages = {{"user", "q1"}, {"assistant", "<think>r1</think>a1"}, {"user", "q2"}, assistant_with_reasoning("a2", "r2")};
  const SftExample ex = format_sft_record(rec, tok);
  EXPECT_EQ(tok.decode(ex.tokens),
            "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n<|im_start|>user\nq2<|im_end|>\n"
            "<|im_start|>assistant\n<think>\nr2\n</think>\n\na2<|im_end|>\n");
  EXPECT_EQ(loss_text(ex, tok), "a1<|im_end|><think>\nr2\n</think>\n\na2<|im_end|>");
  // enable_thinking=False only moves an empty block into the prompt.
  rec.messages.back() = {"assistant", "a2"};
  SftTemplateOptions o;
  EXPECT_EQ(loss_text(format_sft_record(rec, tok, o), tok), "a1<|im_end|><think>\n\n</think>\n\na2<|im_end|>");
  o.enable_thinking = false;
  EXPECT_EQ(loss_text(format_sft_record(rec, tok, o), tok), "a1<|im_end|>a2<|im_end|>");
  // train_on_prompt: every token but the first is a target.
  o.train_on_prompt = true;
  const SftExample all = format_sft_record(rec, tok, o);
  EXPECT_EQ(loss_text(all, tok), tok.decode(std::vector<int32_t>(all.tokens.begin() + 1, all.tokens.end())));
  EXPECT_EQ(all.tokens, format_sft_record(rec, tok).tokens);
  // A record the template cannot render names the record.
  rec.tools = {"{}"};
  const Tokenizer plain = test::byte_tokenizer(dir + "/plain",
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n'}}{% endfor %}");
  const std::string err = error_of([&] { format_sft_record(rec, plain); });
  EXPECT_NE(err.find("t.jsonl:1: "), std::string::npos) << err;
  EXPECT_NE(err.find("no tools branch"), std::string::npos) << err;
}

// Calibration and evaluation text from chat records: each rendered without a generation prompt, joined with the
// text records by "\n\n"; the calibration windows are slices of its encoding (special tokens parsed).
TEST(ChatTemplate, CalibrationTextFromChatRecords) {
  const std::string dir = test::scratch_dir();
  const Tokenizer tok = test::byte_tokenizer(dir + "/tok", fixture_template("qwen3.jinja"));
  write_file_atomic(dir + "/calib.jsonl",
                    "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\n"
                    "{\"text\": \"plain document\"}\n");
  const std::string expected = tok.apply_chat_template({{"user", "q"}, {"assistant", "a"}}, false) + "\n\nplain document";
  EXPECT_EQ(expected.substr(0, 30), "<|im_start|>user\nq<|im_end|>\n<");
  EXPECT_EQ(load_text_corpus(dir + "/calib.jsonl", "text", &tok), expected);
  const std::vector<int32_t> ids = tok.encode(expected, false);
  EXPECT_EQ(ids.front(), 257);  // <|im_start|> parsed as the special token
  for (const auto& w : calibration_windows(dir + "/calib.jsonl", "text", 8, 16, 1, tok))
    EXPECT_NE(std::search(ids.begin(), ids.end(), w.begin(), w.end()), ids.end());
  // Without a tokenizer (imatrix) a chat record is not text; a malformed one is named by its line.
  EXPECT_NE(error_of([&] { load_text_corpus(dir + "/calib.jsonl"); }).find("calib.jsonl:1: expected an object with a string field \"text\""),
            std::string::npos);
  write_file_atomic(dir + "/bad.jsonl", "{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}\n");
  EXPECT_NE(error_of([&] { load_text_corpus(dir + "/bad.jsonl", "text", &tok); }).find("bad.jsonl:1: messages[0]: role \"bot\""),
            std::string::npos);
}

// ShareGPT records read as the same conversation in the "messages" spelling; Alpaca records as LLaMA-Factory's
// conversation (system, history pairs, instruction + "\n" + input, output) with --alpaca-prompt chat.
TEST(ChatRecord, ShareGptAndAlpacaAsConversations) {
  const auto parse = [](const char* text, std::vector<ChatMessage>* m, std::vector<std::string>* tools) {
    return parse_chat_record(nlohmann::ordered_json::parse(text), true, m, tools);
  };
  std::vector<ChatMessage> a, b;
  std::vector<std::string> ta, tb;
  ASSERT_EQ(parse(R"({"system": "S", "tools": "[{\"name\": \"f\"}]", "conversations": [
      {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}, {"from": "observation", "value": "o"},
      {"from": "assistant", "value": "b"}]})", &a, &ta), "");
  ASSERT_EQ(parse(R"({"tools": [{"name": "f"}], "messages": [{"role": "system", "content": "S"},
      {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "tool", "content": "o"},
      {"role": "assistant", "content": "b"}]})", &b, &tb), "");
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].role + ":" + a[i].content, b[i].role + ":" + b[i].content);
  EXPECT_EQ(ta, tb);
  EXPECT_EQ(parse(R"({"conversations": [{"from": "bot", "value": "x"}]})", &a, &ta),
            "conversations[0]: \"from\": \"bot\" is not human, gpt, system or tool (or user, assistant, model, observation, function_response)");
  EXPECT_EQ(parse(R"({"conversations": [{"from": "gpt"}]})", &a, &ta), "conversations[0]: expected a string \"value\"");

  const std::string dir = test::scratch_dir();
  const Tokenizer tok = test::byte_tokenizer(dir, fixture_template("qwen2.5.jinja"));
  SftRecord rec;
  rec.format = SftFormat::kAlpaca;
  rec.where = "a.json: record 1";
  rec.system = "Be brief.";
  rec.history = {{"h1", "r1"}};
  rec.instruction = "Add";
  rec.input = "1 2";
  rec.output = "3";
  SftTemplateOptions o;
  o.alpaca_chat = true;
  const SftExample ex = format_sft_record(rec, tok, o);
  EXPECT_EQ(tok.decode(ex.tokens), tok.apply_chat_template({{"system", "Be brief."}, {"user", "h1"}, {"assistant", "r1"},
                                                            {"user", "Add\n1 2"}, {"assistant", "3"}}, false));
  EXPECT_EQ(loss_text(ex, tok), "r1<|im_end|>3<|im_end|>");
  o.mask_history = true;  // only the last answer
  EXPECT_EQ(loss_text(format_sft_record(rec, tok, o), tok), "3<|im_end|>");
  // The Stanford prompt ignores system and history.
  EXPECT_EQ(tok.decode(format_sft_record(rec, tok).tokens), alpaca_prompt("Add", "1 2") + "3<|im_end|>");
}

// TRL's prompt-completion records: standard (strings: loss on the completion and EOS) and conversational (message
// lists: the whole conversation rendered, loss on the completion's assistant messages only).
TEST(ChatRecord, PromptCompletionRecords) {
  const std::string dir = test::scratch_dir();
  const Tokenizer tok = test::byte_tokenizer(dir + "/tok", fixture_template("qwen2.5.jinja"));
  write_file_atomic(dir + "/pc.jsonl",
                    R"({"prompt": "Q: 1+1\nA:", "completion": " 2"})" "\n"
                    R"({"prompt": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},)"
                    R"( {"role": "user", "content": "q2"}], "completion": [{"role": "assistant", "content": "a2"}]})" "\n");
  SftDataStats st;
  const std::vector<SftRecord> recs = read_sft_records(dir + "/pc.jsonl", SftFormat::kAuto, false, &st);
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(st.format, SftFormat::kPromptCompletion);
  const SftExample plain = format_sft_record(recs[0], tok);
  EXPECT_EQ(tok.decode(plain.tokens), "Q: 1+1\nA: 2<|im_end|>");
  EXPECT_EQ(loss_text(plain, tok), " 2<|im_end|>");
  const SftExample conv = format_sft_record(recs[1], tok);
  EXPECT_EQ(tok.decode(conv.tokens), tok.apply_chat_template({{"user", "q1"}, {"assistant", "a1"}, {"user", "q2"},
                                                              {"assistant", "a2"}}, false));
  EXPECT_EQ(loss_text(conv, tok), "a2<|im_end|>");
  SftTemplateOptions all;
  all.train_on_prompt = true;
  const SftExample every = format_sft_record(recs[1], tok, all);
  EXPECT_EQ(std::count(every.loss_mask.begin(), every.loss_mask.end(), 1), static_cast<long>(every.tokens.size()) - 1);

  const auto why = [&](const std::string& line) {
    write_file_atomic(dir + "/bad.jsonl", line + "\n");
    SftDataStats s2;
    return error_of([&] { read_sft_records(dir + "/bad.jsonl", SftFormat::kAuto, false, &s2); });
  };
  EXPECT_NE(why(R"({"prompt": "x", "completion": [{"role": "assistant", "content": "y"}]})")
                .find("bad.jsonl:1: \"prompt\" and \"completion\" must both be strings or both be message lists"),
            std::string::npos);
  EXPECT_NE(why(R"({"prompt": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "z"}],)"
                R"( "completion": [{"role": "user", "content": "y"}]})")
                .find("bad.jsonl:1: no assistant message in \"completion\""),
            std::string::npos);
  // A malformed message is named where the record has it ("messages[1]" named a field the record does not have).
  const std::string end = " (pass --skip-bad to skip such records)";
  EXPECT_EQ(why(R"({"prompt": [{"role": "user", "content": "x"}], "completion": [{"role": "assistant"}]})"),
            dir + "/bad.jsonl:1: completion[0]: missing field \"content\"" + end);
  EXPECT_EQ(why(R"({"prompt": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}],)"
                R"( "completion": [{"role": "assistant", "content": "z"}]})"),
            dir + "/bad.jsonl:1: prompt[1]: role \"bot\" is not system, user, assistant or tool" + end);
  EXPECT_EQ(why(R"({"prompt": [], "completion": [{"role": "assistant", "content": "z"}, 7]})"),
            dir + "/bad.jsonl:1: completion[1]: expected an object, got number" + end);
  EXPECT_EQ(why(R"({"prompt": [], "completion": []})"), dir + "/bad.jsonl:1: \"prompt\" and \"completion\" are both empty" + end);
  // The record's tools are the conversation's; a forced format names the fields it needs.
  EXPECT_EQ(why(R"({"prompt": [{"role": "user", "content": "x"}], "completion": [{"role": "assistant", "content": "z"}],)"
                R"( "tools": "f"})"),
            dir + "/bad.jsonl:1: field \"tools\" is string, expected an array" + end);
  write_file_atomic(dir + "/tools.jsonl", R"({"prompt": [{"role": "user", "content": "x"}], "completion": [{"role": )"
                                          R"("assistant", "content": "z"}], "tools": [{"type": "function", "function": {"name": "f"}}]})" "\n");
  SftDataStats s3;
  const std::vector<SftRecord> with_tools = read_sft_records(dir + "/tools.jsonl", SftFormat::kAuto, false, &s3);
  ASSERT_EQ(with_tools.size(), 1u);
  EXPECT_EQ(with_tools[0].tools, std::vector<std::string>{R"({"type": "function", "function": {"name": "f"}})"});
  EXPECT_EQ(with_tools[0].completion_from, 1u);
  write_file_atomic(dir + "/text.jsonl", R"({"text": "x"})" "\n");
  EXPECT_EQ(error_of([&] { read_sft_records(dir + "/text.jsonl", SftFormat::kPromptCompletion, false, &s3); }),
            dir + "/text.jsonl:1: expected \"prompt\" and \"completion\" fields" + end);
}

}  // namespace
}  // namespace qwenq
