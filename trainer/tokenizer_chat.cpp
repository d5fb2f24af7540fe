// ChatML chat templates (Qwen), applied natively instead of through a Jinja engine. We recognise a template
// as ChatML when it contains "<|im_start|>" and reproduce the three variants Qwen models ship:
//   * Qwen2.5 / Qwen1.5 / Qwen2-Instruct (and simpler ChatML): optional default system turn (only when the
//     template spells one: "You are Qwen, created by Alibaba Cloud. You are a helpful assistant." or
//     "You are a helpful assistant."), then "<|im_start|>{role}\n{content}<|im_end|>\n" per message, then
//     "<|im_start|>assistant\n" when add_generation_prompt;
//   * the early Qwen2-Instruct template that writes "<|im_end|>\n<|im_start|>assistant\n" after every user
//     turn itself, appends assistant replies right after it and ignores add_generation_prompt (and
//     messages that are neither user nor assistant, apart from the leading system message).
// Tool calls (Qwen2.5's "tools" branch) are not reproduced. Other templates are refused, naming the file.
#include "core/error.h"
#include "trainer/tokenizer_impl.h"

namespace qwenq {

namespace {

// Jinja string literals may spell a newline as "\n" (escape) or as a real newline; compare on one form.
std::string unescape_newlines(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size() && s[i + 1] == 'n') {
      out.push_back('\n');
      ++i;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

}  // namespace

bool Tokenizer::has_chat_template() const { return !impl_->chat_template.empty(); }

std::string Tokenizer::apply_chat_template(const std::vector<ChatMessage>& messages,
                                           bool add_generation_prompt) const {
  const Impl& t = *impl_;
  QWENQ_CHECK(!t.chat_template.empty(), t.source << ": the tokenizer has no chat template (looked for chat_template "
                                                    "in tokenizer_config.json, chat_template.jinja, chat_template.json)");
  QWENQ_CHECK(t.chat_template.find("<|im_start|>") != std::string::npos,
              t.chat_template_file << ": the chat template is not ChatML (no <|im_start|>); only ChatML templates "
                                      "(Qwen) are supported");
  const std::string tpl = unescape_newlines(t.chat_template);
  std::string system_default;
  for (const char* s : {"You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
                        "You are a helpful assistant."}) {
    if (tpl.find(s) != std::string::npos) {
      system_default = s;
      break;
    }
  }
  const bool user_adds_prompt = tpl.find("'<|im_end|>\n<|im_start|>assistant\n'") != std::string::npos;

  std::string out;
  auto turn = [&](const std::string& role, const std::string& content) {
    out += "<|im_start|>" + role + "\n" + content + "<|im_end|>\n";
  };
  size_t first = 0;
  if (!messages.empty() && messages[0].role == "system") {
    turn("system", messages[0].content);
    first = 1;
  } else if (!system_default.empty()) {
    turn("system", system_default);
  }
  if (user_adds_prompt) {
    for (size_t i = first; i < messages.size(); ++i) {
      const ChatMessage& m = messages[i];
      if (m.role == "user") {
        out += "<|im_start|>user\n" + m.content + "<|im_end|>\n<|im_start|>assistant\n";
      } else if (m.role == "assistant") {
        out += m.content + "<|im_end|>\n";
      }
    }
    return out;
  }
  for (size_t i = first; i < messages.size(); ++i) turn(messages[i].role, messages[i].content);
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

}  // namespace qwenq
