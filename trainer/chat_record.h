// Chat records as Hugging Face's chat datasets and apply_chat_template spell them, read into ChatMessage lists:
//   {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": C, ...}, ...], "tools": [T, ...]}
// An assistant message may carry "reasoning_content" (a string or null; Qwen3's templates render it) and
// "tool_calls": [{"type": "function", "function": {"name": N, "arguments": A}} or {"name": N, "arguments": A}]
// with A a JSON object (or a string, kept as given); its content may then be null. "tools" are function
// schemas, each kept as the JSON text the template's `tojson` writes (python_json_dumps). Every other key is
// ignored, as the templates ignore it.
// ShareGPT records are read too (LLaMA-Factory's and axolotl's sharegpt format): {"conversations": [{"from": F,
// "value": V}, ...], "system": S, "tools": T} with F human/user, gpt/assistant/model, system, or
// tool/observation/function_response; a record-level "system" becomes the first message, "tools" may also be a
// string holding the JSON array (as LLaMA-Factory stores it).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "trainer/tokenizer.h"

namespace qwenq {

// Whether a parsed record is a chat record: an object with "messages" or ShareGPT's "conversations".
bool is_chat_record(const nlohmann::ordered_json& record);

// Fills messages (and tools, when the record has them) from a parsed record ("messages", or ShareGPT's
// "conversations"); returns "" or why the record is malformed ("messages[2]: role \"bot\" is not system, user,
// assistant or tool"). Requires an assistant message when need_assistant (training data), none otherwise (prompts).
std::string parse_chat_record(const nlohmann::ordered_json& record, bool need_assistant,
                              std::vector<ChatMessage>* messages, std::vector<std::string>* tools);

// A chat record in the "messages" spelling: the record itself when it has "messages", ShareGPT's "conversations"
// (with its "system" and "tools") converted otherwise; returns "" or why it cannot be converted.
std::string chat_record_as_messages(const nlohmann::ordered_json& record, nlohmann::ordered_json* out);

// One message as a chat record holds it, the inverse of parse_chat_record's reading: role, content (null when
// content_is_null), "reasoning_content" when it has reasoning, "tool_calls" as [{"type": "function", "function":
// {"name": N, "arguments": A}}] with A the object (or the string, when given as one): the form apply_chat_template
// takes, so a generated reply can be appended to the conversation and rendered again.
nlohmann::ordered_json chat_message_json(const ChatMessage& message);

// JSON text exactly as Python's json.dumps(value, ensure_ascii=False) writes it (transformers' `tojson` filter):
// ", " and ": " separators, keys in their order, non-ASCII as is, floats as Python's repr.
std::string python_json_dumps(const nlohmann::ordered_json& value);

}  // namespace qwenq
