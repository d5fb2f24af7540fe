// Generated replies read back into messages (Tokenizer::parse_chat_reply): for Qwen2.5's and Qwen3's own templates,
// every assistant message rendered by render_chat (checked against transformers by the chat template oracle) and
// cut out of its span parses back to the same message, under each generation-prompt variant; and what a model may
// write that the template cannot (a broken, open or trailed tool call) keeps the text and names the problem.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/files.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_tokenizers.h"
#include "trainer/chat_record.h"

namespace qwenq {
namespace {

Tokenizer tokenizer_with(const std::string& name, const std::string& dir) {
  return test::byte_tokenizer(test::scratch_dir() + "/" + dir,
                              read_file(test::source_dir() + "/tests/data/chat_templates/" + name));
}

// The text the model generated for the conversation's last assistant message: its span (after the generation
// prompt rendered with `o`) without the closing "<|im_end|>".
std::string generated_part(const Tokenizer& tok, const std::vector<ChatMessage>& m, const ChatOptions& o) {
  const ChatRender r = tok.render_chat(m, o);
  const auto [b, e] = r.assistant_spans.back();
  const std::string span = r.text.substr(b, e - b);
  EXPECT_EQ(span.substr(span.size() - 10), "<|im_end|>");
  return span.substr(0, span.size() - 10);
}

void expect_same_message(const ChatMessage& got, const ChatMessage& want) {
  EXPECT_EQ(got.role, "assistant");
  EXPECT_EQ(got.content_is_null, want.content_is_null || (want.content.empty() && !want.tool_calls.empty()));
  if (!got.content_is_null) {
    EXPECT_EQ(got.content, want.content);
  }
  EXPECT_EQ(got.has_reasoning, want.has_reasoning && !want.reasoning.empty());
  if (got.has_reasoning) {
    EXPECT_EQ(got.reasoning, want.reasoning);
  }
  ASSERT_EQ(got.tool_calls.size(), want.tool_calls.size());
  for (size_t i = 0; i < got.tool_calls.size(); ++i) {
    EXPECT_EQ(got.tool_calls[i].name, want.tool_calls[i].name);
    EXPECT_EQ(got.tool_calls[i].arguments, want.tool_calls[i].arguments);
    EXPECT_EQ(got.tool_calls[i].arguments_is_string, want.tool_calls[i].arguments_is_string);
  }
}

std::vector<ChatMessage> replies() {
  std::vector<ChatMessage> r;
  r.emplace_back("assistant", "Just an answer.\nOn two lines.");
  ChatMessage think("assistant", "The answer is 4.");
  think.reasoning = "2 + 2:\nfirst 2, then 2 more.";
  think.has_reasoning = true;
  r.push_back(think);
  ChatMessage call("assistant", "");
  call.content_is_null = true;
  call.tool_calls = {{"get_weather", "{\"city\": \"Paris\", \"days\": [1, 2]}", false}};
  r.push_back(call);
  ChatMessage both("assistant", "Let me look both up.");
  both.tool_calls = {{"f", "{\"a\": 1.5, \"b\": {\"c\": null}}", false}, {"g", "{}", false}};
  r.push_back(both);
  ChatMessage think_call = both;
  think_call.reasoning = "Two lookups are needed.";
  think_call.has_reasoning = true;
  r.push_back(think_call);
  return r;
}

TEST(ChatReply, Qwen3RepliesRoundTripUnderEveryGenerationPrompt) {
  const Tokenizer tok = tokenizer_with("qwen3.jinja", "reply-qwen3");
  for (bool thinking : {true, false}) {
    SCOPED_TRACE(thinking);
    ChatOptions o;
    o.enable_thinking = thinking;
    for (const ChatMessage& want : replies()) {
      SCOPED_TRACE(want.content);
      if (!thinking && want.has_reasoning) continue;  // with thinking off the template's prompt closes the block
      const std::vector<ChatMessage> m = {{"user", "question"}, want};
      const std::string gen = generated_part(tok, m, o);
      const ChatReply r = tok.parse_chat_reply(gen);
      EXPECT_EQ(r.error, "");
      expect_same_message(r.message, want);
      // As `generate --prompts` writes it (chat_message_json), read back as a chat record: the same message.
      std::vector<ChatMessage> back;
      std::vector<std::string> tools;
      const nlohmann::ordered_json rec = {{"messages", {{{"role", "user"}, {"content", "q"}}, chat_message_json(r.message)}}};
      ASSERT_EQ(parse_chat_record(rec, /*need_assistant=*/true, &back, &tools), "") << rec.dump();
      ASSERT_EQ(back.size(), 2u);
      expect_same_message(back[1], want);
    }
  }
  // The reply as a model writes it in thinking mode, and after a thinking-only template's "<think>\n" prompt.
  for (const std::string gen : {"<think>\nsteps\n</think>\n\nanswer", "steps\n</think>\n\nanswer"}) {
    const ChatReply r = tok.parse_chat_reply(gen);
    EXPECT_TRUE(r.message.has_reasoning);
    EXPECT_EQ(r.message.reasoning, "steps");
    EXPECT_EQ(r.message.content, "answer");
  }
  const ChatReply plain = tok.parse_chat_reply("answer");
  EXPECT_FALSE(plain.message.has_reasoning);
  EXPECT_EQ(plain.message.content, "answer");
}

TEST(ChatReply, Qwen25RepliesRoundTrip) {
  const Tokenizer tok = tokenizer_with("qwen2.5.jinja", "reply-qwen25");
  ChatOptions o;
  std::vector<ChatMessage> want = replies();
  ChatMessage str_args("assistant", "");
  str_args.content_is_null = true;
  str_args.tool_calls = {{"f", "{\"q\": \"x\"}", true}};  // a string: Qwen2.5's tojson quotes it, and back
  want.push_back(str_args);
  for (const ChatMessage& w : want) {
    if (w.has_reasoning) continue;  // Qwen2.5 has no reasoning blocks
    SCOPED_TRACE(w.content);
    const ChatReply r = tok.parse_chat_reply(generated_part(tok, {{"user", "question"}, w}, o));
    EXPECT_EQ(r.error, "");
    expect_same_message(r.message, w);
  }
  // "<think>" means nothing to Qwen2.5's template: kept as content.
  EXPECT_EQ(tok.parse_chat_reply("<think>x</think>y").message.content, "<think>x</think>y");
}

TEST(ChatReply, WhatTheTemplateCannotWriteStaysText) {
  const Tokenizer tok = tokenizer_with("qwen2.5.jinja", "reply-bad");
  const struct {
    std::string text, error;
  } cases[] = {
      {"ok\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}\n</tool_call>", "tool call 1 is not valid JSON: "},
      {"<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"g\"",
       "tool call 2 has no </tool_call>"},
      {"<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>\nDone.", "text follows tool call 1"},
      {"<tool_call>\n{\"name\": 3, \"arguments\": {}}\n</tool_call>", "tool call 1 is not {\"name\": string"},
      {"<tool_call>\n[1, 2]\n</tool_call>", "tool call 1 is not {\"name\": string"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    const ChatReply r = tok.parse_chat_reply(c.text);
    EXPECT_EQ(r.error.rfind(c.error, 0), 0u) << r.error;
    EXPECT_EQ(r.message.content, c.text);
    EXPECT_TRUE(r.message.tool_calls.empty());
    EXPECT_FALSE(r.message.content_is_null);
  }
  // A template without a tools branch reads no tool calls at all.
  const Tokenizer plain = test::byte_tokenizer(
      test::scratch_dir() + "/reply-plain",
      "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
      "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}");
  const ChatReply r = plain.parse_chat_reply("<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>");
  EXPECT_TRUE(r.message.tool_calls.empty());
  EXPECT_EQ(r.error, "");
}

}  // namespace
}  // namespace qwenq
