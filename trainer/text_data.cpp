#include "trainer/text_data.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/jsonl.h"
#include "core/strings.h"
#include "trainer/chat_record.h"

namespace qwenq {

namespace {

bool looks_like_jsonl(const std::string& path, const std::string& text) {
  if (ends_with(path, ".jsonl")) return true;
  size_t i = text.find_first_not_of(" \t\r\n");
  return i != std::string::npos && text[i] == '{';
}

}  // namespace

std::vector<std::string> load_text_documents(const std::string& path, const std::string& field, const Tokenizer* chat,
                                             bool* rendered_chat) {
  if (rendered_chat != nullptr) *rendered_chat = false;
  std::string text = read_file(path);
  QWENQ_CHECK(text.find_first_not_of(" \t\r\n") != std::string::npos, path << ": file is empty");
  const bool jsonl = looks_like_jsonl(path, text);
  std::vector<std::string> docs;
  if (!jsonl) {
    for_each_nonblank_line(text, [&](const std::string& line, size_t) { docs.push_back(line); });
  } else {
    for_each_json_line(text, path, [&](const nlohmann::ordered_json& j, const std::string& where) {
      if (chat != nullptr && is_chat_record(j) && !j.contains(field)) {
        ChatOptions o;
        std::vector<ChatMessage> messages;
        const std::string why = parse_chat_record(j, /*need_assistant=*/false, &messages, &o.tools);
        QWENQ_CHECK(why.empty(), where << ": " << why);
        try {
          docs.push_back(chat->render_chat(messages, o).text);
        } catch (const Error& e) {
          QWENQ_FAIL(where << ": " << e.what());
        }
        if (rendered_chat != nullptr) *rendered_chat = true;
        return;
      }
      QWENQ_CHECK(j.is_object() && j.contains(field) && j[field].is_string(),
                  where << ": expected an object with a string field \"" << field << "\""
                        << (chat != nullptr ? " or a chat record with \"messages\"" : ""));
      docs.push_back(j[field].get<std::string>());
    });
  }
  QWENQ_CHECK(!docs.empty(), path << ": no records");
  return docs;
}

std::string load_text_corpus(const std::string& path, const std::string& field, const Tokenizer* chat,
                             bool* rendered_chat) {
  if (rendered_chat != nullptr) *rendered_chat = false;
  std::string text = read_file(path);
  QWENQ_CHECK(text.find_first_not_of(" \t\r\n") != std::string::npos, path << ": file is empty");
  if (!looks_like_jsonl(path, text)) return text;
  std::string out;
  size_t n = 0;
  for (const std::string& doc : load_text_documents(path, field, chat, rendered_chat)) {
    if (n++) out += "\n\n";
    out += doc;
  }
  return out;
}

}  // namespace qwenq
