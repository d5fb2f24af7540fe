// Qwen's chat templates applied natively instead of through a Jinja engine: the text transformers'
// apply_chat_template renders, and where each assistant message's output lies in it (for the SFT loss mask).
// The template is recognised by what it spells; tests/oracle/test_chat_template_oracle.py checks every variant
// against transformers 4.51.3 rendering the templates in tests/data/chat_templates/.
//
//   ChatML (Qwen1.5, Qwen2, Qwen2.5 and their -Coder/-Math kin):
//     a system turn: messages[0] when it is a system message, else the template's default system text when it
//       spells one ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. ...<|im_end|>\n");
//       with tools (Qwen2.5's branch) that turn is "<|im_start|>system\n{system or default}\n\n# Tools ...<tools>"
//       + "\n{tool json}" per tool + "\n</tools>\n\nFor each function call, ...</tool_call><|im_end|>\n";
//     then per message "<|im_start|>{role}\n{content}<|im_end|>\n", except
//       an assistant message with tool calls: "<|im_start|>assistant" + ("\n" + content if any) + per call
//         "\n<tool_call>\n{\"name\": \"N\", \"arguments\": A}\n</tool_call>" (A = tojson(arguments)) + "<|im_end|>\n";
//       tool messages: a run of them is one user turn, "<|im_start|>user" + per message
//         "\n<tool_response>\n{content}\n</tool_response>" + "<|im_end|>\n";
//     then "<|im_start|>assistant\n" when add_generation_prompt.
//   early Qwen2-Instruct: "<|im_end|>\n<|im_start|>assistant\n" is written after every user turn, assistant
//     replies follow it directly, add_generation_prompt and other roles are ignored.
//   Qwen3 (its rules recognised by their wording; a variant worded otherwise is refused): the system turn only
//     when messages[0] is one (the tools branch writes "{system}\n\n# Tools ..." without a default);
//     last_query = the index of the last user message that is not a "<tool_response>...</tool_response>"
//     wrapper (the last message when there is none); an assistant
//     message's reasoning is its reasoning_content when given, else, when its content holds "</think>", the
//     text before the first "</think>" (right-stripped of "\n", after its last "<think>", left-stripped) with the
//     content becoming the text after the last "</think>" (left-stripped); after last_query, the last message and
//     every message with reasoning render "<|im_start|>assistant\n<think>\n{reasoning without outer \n}\n
//     </think>\n\n{content left-stripped}", all others "<|im_start|>assistant\n{content}"; tool calls follow as
//     "\n"-separated (no "\n" before the first when content is empty) "<tool_call>\n{...}\n</tool_call>" with
//     A = the arguments string as given or tojson(arguments); the generation prompt "<|im_start|>assistant\n"
//     closes an empty "<think>\n\n</think>\n\n" when enable_thinking is false (the hybrid models' switch) or
//     opens "<think>\n" (a thinking-only template that spells that prompt).
// Other templates (not ChatML, or a <think> template that is not Qwen3's, like QwQ's) are refused, naming the file.
#include <algorithm>

#include "core/error.h"
#include "core/strings.h"
#include "trainer/chat_record.h"
#include "trainer/tokenizer_impl.h"

namespace qwenq {

namespace {

constexpr const char* kImStart = "<|im_start|>";
constexpr const char* kImEnd = "<|im_end|>";

// Jinja string literals may spell a newline as "\n" (escape) or as a real newline; compare on one form. An escaped
// backslash stays as it is (a literal's \\n is a backslash and an n to Jinja, not a newline).
std::string unescape_newlines(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size() && s[i + 1] == '\\') {
      out += "\\\\";
      ++i;
    } else if (s[i] == '\\' && i + 1 < s.size() && s[i + 1] == 'n') {
      out.push_back('\n');
      ++i;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

bool contains(const std::string& s, const char* what) { return s.find(what) != std::string::npos; }
bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }
std::string lstrip_nl(const std::string& s) { return s.substr(std::min(s.find_first_not_of('\n'), s.size())); }
std::string rstrip_nl(const std::string& s) {
  const size_t e = s.find_last_not_of('\n');
  return e == std::string::npos ? std::string() : s.substr(0, e + 1);
}

// The default system text a ChatML template spells: a string literal that continues right after
// "<|im_start|>system\n" up to "<|im_end|>" (Qwen2.5: 'You are Qwen, created by Alibaba Cloud. ...'), or the
// `set system_message = '...'` of the early Qwen2 template. Jinja's \\, \', \" and \t escapes are undone (\n was).
std::string default_system_text(const std::string& tpl) {
  auto literal = [](const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '\\' && i + 1 < s.size() && s[i + 1] == 't') {
        out.push_back('\t');
        ++i;
        continue;
      }
      if (s[i] == '\\' && i + 1 < s.size() && (s[i + 1] == '\\' || s[i + 1] == '\'' || s[i + 1] == '"')) ++i;
      out.push_back(s[i]);
    }
    return out;
  };
  const std::string head = std::string(kImStart) + "system\n";
  for (size_t at = tpl.find(head); at != std::string::npos; at = tpl.find(head, at + 1)) {
    const size_t from = at + head.size();
    if (from >= tpl.size() || tpl[from] == '\'' || tpl[from] == '"') continue;  // '... system\n' + variable
    const size_t end = tpl.find(kImEnd, from);
    if (end != std::string::npos) return literal(tpl.substr(from, end - from));
  }
  const std::string set = "set system_message = '";
  const size_t s = tpl.find(set);
  if (s != std::string::npos) {
    size_t e = s + set.size();
    while (e < tpl.size() && !(tpl[e] == '\'' && tpl[e - 1] != '\\')) ++e;
    return literal(tpl.substr(s + set.size(), e - s - set.size()));
  }
  return "";
}

enum class ChatKind { kChatml, kEarlyQwen2, kQwen3 };

struct TemplateTraits {
  ChatKind kind = ChatKind::kChatml;
  std::string default_system;    // ChatML: the system turn written when messages[0] is not one ("" = none)
  bool tools = false;            // has the "# Tools" branch with Qwen2.5/Qwen3's JSON <tool_call>s
  bool other_tools = false;      // speaks of tool calls in another format (Qwen3-Coder's XML, ...)
  bool thinking_switch = false;  // Qwen3: enable_thinking false closes an empty think block in the prompt
  bool forced_think = false;     // Qwen3: the generation prompt opens "<think>\n"
};

TemplateTraits traits_of(const std::string& raw, const std::string& file) {
  const std::string tpl = unescape_newlines(raw);
  QWENQ_CHECK(contains(tpl, kImStart), file << ": the chat template is not ChatML (no <|im_start|>); only ChatML "
                                               "templates (Qwen) are supported");
  TemplateTraits t;
  t.tools = contains(tpl, "<tools>") && contains(tpl, "<tool_call>\n{\"name\": \"");
  t.other_tools = !t.tools && contains(tpl, "tool_call");
  if (contains(tpl, "last_query_index") && contains(tpl, "reasoning_content")) {
    // Qwen3's rules, spelled as its template spells them; a variant that words them otherwise may render
    // otherwise, so it is refused rather than guessed at.
    QWENQ_CHECK(contains(tpl, "loop.last or (not loop.last and reasoning_content)") &&
                    contains(tpl, "+ reasoning_content.strip(") && contains(tpl, "content.split('</think>')[-1]"),
                file << ": a Qwen3-style chat template (reasoning_content, last_query_index) whose reasoning rules "
                        "are not worded as Qwen3's; it is not supported");
    t.kind = ChatKind::kQwen3;
    t.thinking_switch = contains(tpl, "enable_thinking");
    t.forced_think = contains(tpl, "'<|im_start|>assistant\n<think>\n'");
    return t;
  }
  QWENQ_CHECK(!contains(tpl, "<think>"),
              file << ": the chat template handles <think> blocks but is not Qwen3's (QwQ's or another reasoning "
                      "template); only Qwen1.5/Qwen2/Qwen2.5 ChatML and Qwen3 templates are supported");
  t.kind = contains(tpl, "'<|im_end|>\n<|im_start|>assistant\n'") ? ChatKind::kEarlyQwen2 : ChatKind::kChatml;
  t.default_system = default_system_text(tpl);
  return t;
}

// Qwen3's rule for reasoning written into content: when it holds "</think>", the reasoning is the text before the
// first "</think>" (right-stripped of "\n", after its last "<think>", left-stripped) and the content the text after
// the last "</think>" (left-stripped). Returns whether it applied.
bool split_think_block(std::string* content, std::string* reasoning) {
  if (!contains(*content, "</think>")) return false;
  const std::string before = rstrip_nl(content->substr(0, content->find("</think>")));
  const size_t open = before.rfind("<think>");
  *reasoning = lstrip_nl(open == std::string::npos ? before : before.substr(open + 7));
  *content = lstrip_nl(content->substr(content->rfind("</think>") + 8));
  return true;
}

std::string tool_call_text(const ChatToolCall& c, bool raw_string_arguments) {
  const std::string args =
      c.arguments_is_string && !raw_string_arguments ? python_json_dumps(c.arguments) : c.arguments;  // a quoted string
  return "<tool_call>\n{\"name\": \"" + c.name + "\", \"arguments\": " + args + "}\n</tool_call>";
}

std::string tools_system_turn(const std::string& system, const std::vector<std::string>& tools) {
  std::string out = std::string(kImStart) + "system\n" + system +
                    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
  for (const std::string& t : tools) out += "\n" + t;
  return out +
         "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
         "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
         "<args-json-object>}\n</tool_call>" + kImEnd + "\n";
}

// Appends "<|im_start|>user" ... for tool message i of a run (opening and closing the shared user turn).
void append_tool_message(const std::vector<ChatMessage>& m, size_t i, std::string* out) {
  if (i == 0 || m[i - 1].role != "tool") *out += std::string(kImStart) + "user";
  *out += "\n<tool_response>\n" + m[i].content + "\n</tool_response>";
  if (i + 1 == m.size() || m[i + 1].role != "tool") *out += std::string(kImEnd) + "\n";
}

class Renderer {
 public:
  Renderer(const TemplateTraits& t, const ChatOptions& o, const std::string& file) : t_(t), o_(o), file_(file) {}

  ChatRender run(const std::vector<ChatMessage>& m) {
    QWENQ_CHECK(o_.tools.empty() || t_.tools, file_ << ": the record's tools cannot be rendered: " << no_tools());
    for (size_t i = 0; i < m.size(); ++i)
      QWENQ_CHECK(m[i].role != "tool" || t_.tools || !t_.other_tools,
                  file_ << ": message " << i << " is a tool response but " << no_tools());
    if (t_.kind == ChatKind::kQwen3) {
      qwen3(m);
    } else if (t_.kind == ChatKind::kEarlyQwen2) {
      early_qwen2(m);
    } else {
      chatml(m);
    }
    return std::move(r_);
  }

 private:
  // The generation prompt, as rendered after the messages.
  std::string generation_prompt() const {
    std::string g = std::string(kImStart) + "assistant\n";
    if (t_.kind == ChatKind::kQwen3 && t_.thinking_switch && !o_.enable_thinking) g += "<think>\n\n</think>\n\n";
    if (t_.kind == ChatKind::kQwen3 && t_.forced_think) g += "<think>\n";
    return g;
  }

  // Appends an assistant turn `turn` (from its "<|im_start|>assistant" on) and records its span: after the
  // generation prompt when the turn starts with it, else after "<|im_start|>assistant\n", through "<|im_end|>".
  void assistant_turn(const std::string& turn) {
    const std::string base = std::string(kImStart) + "assistant\n";
    const std::string gen = generation_prompt();
    QWENQ_CHECK(starts_with(turn, base) && ends_with(turn, kImEnd),
                file_ << ": internal: an assistant turn does not start with the generation prompt");
    const size_t skip = starts_with(turn, gen) ? gen.size() : base.size();
    r_.assistant_spans.emplace_back(r_.text.size() + skip, r_.text.size() + turn.size());
    r_.text += turn + "\n";
  }

  void turn(const std::string& role, const std::string& content) {
    r_.text += std::string(kImStart) + role + "\n" + content + kImEnd + "\n";
  }

  void require_content(const ChatMessage& msg, size_t i) const {
    QWENQ_CHECK(!msg.content_is_null, file_ << ": this chat template needs a string content in message " << i
                                            << " (" << msg.role << "), got null");
  }

  std::string no_tools() const {
    return t_.other_tools ? "the chat template writes tool calls in a format other than Qwen2.5/Qwen3's JSON "
                            "<tool_call> (Qwen3-Coder's XML?), which is not supported"
                          : "the chat template has no tools branch";
  }

  void require_tools_branch(size_t i) const {
    QWENQ_CHECK(t_.tools, file_ << ": message " << i << " calls tools but " << no_tools());
  }

  // The ChatML templates' system turn (messages[0] if it is one, else the default, if any; with tools, the tools
  // section too); returns the index of the first message left to render.
  size_t chatml_system_turn(const std::vector<ChatMessage>& m) {
    const bool has_system = !m.empty() && m[0].role == "system";
    if (!o_.tools.empty()) {
      r_.text += tools_system_turn((has_system ? m[0].content : t_.default_system) + "\n\n", o_.tools);
    } else if (has_system) {
      turn("system", m[0].content);
    } else if (!t_.default_system.empty()) {
      turn("system", t_.default_system);
    }
    return has_system ? 1 : 0;
  }

  void chatml(const std::vector<ChatMessage>& m) {
    for (size_t i = chatml_system_turn(m); i < m.size(); ++i) {
      const ChatMessage& msg = m[i];
      if (msg.role == "tool" && t_.tools) {
        require_content(msg, i);
        append_tool_message(m, i, &r_.text);
      } else if (msg.role == "assistant" && !msg.tool_calls.empty()) {
        require_tools_branch(i);
        std::string t = std::string(kImStart) + "assistant";
        if (!msg.content_is_null && !msg.content.empty()) t += "\n" + msg.content;
        for (const ChatToolCall& c : msg.tool_calls) t += "\n" + tool_call_text(c, /*raw_string_arguments=*/false);
        assistant_turn(t + kImEnd);
      } else if (msg.role == "assistant") {
        require_content(msg, i);
        assistant_turn(std::string(kImStart) + "assistant\n" + msg.content + kImEnd);
      } else {
        require_content(msg, i);
        turn(msg.role, msg.content);
      }
    }
    if (o_.add_generation_prompt) r_.text += generation_prompt();
  }

  void early_qwen2(const std::vector<ChatMessage>& m) {
    for (size_t i = chatml_system_turn(m); i < m.size(); ++i) {
      const ChatMessage& msg = m[i];
      if (!msg.tool_calls.empty()) require_tools_branch(i);
      if (msg.role == "user") {
        r_.text += std::string(kImStart) + "user\n" + msg.content + kImEnd + "\n" + kImStart + "assistant\n";
      } else if (msg.role == "assistant") {
        require_content(msg, i);
        r_.assistant_spans.emplace_back(r_.text.size(), r_.text.size() + msg.content.size() + std::string(kImEnd).size());
        r_.text += msg.content + kImEnd + "\n";
      }
    }
  }

  void qwen3(const std::vector<ChatMessage>& m) {
    const size_t n = m.size();
    const bool has_system = n > 0 && m[0].role == "system";
    if (!o_.tools.empty()) {
      r_.text += tools_system_turn(has_system ? m[0].content + "\n\n" : std::string(), o_.tools);
    } else if (has_system) {
      turn("system", m[0].content);
    }
    size_t last_query = n == 0 ? 0 : n - 1;
    for (size_t k = n; k-- > 0;) {
      const ChatMessage& msg = m[k];
      if (msg.role == "user" && !msg.content_is_null &&
          !(starts_with(msg.content, "<tool_response>") && ends_with(msg.content, "</tool_response>"))) {
        last_query = k;
        break;
      }
    }
    for (size_t i = 0; i < n; ++i) {
      const ChatMessage& msg = m[i];
      std::string content = msg.content_is_null ? std::string() : msg.content;
      if (msg.role == "user" || (msg.role == "system" && i != 0)) {
        turn(msg.role, content);
      } else if (msg.role == "assistant") {
        std::string reasoning;
        if (msg.has_reasoning) {
          reasoning = msg.reasoning;
        } else {
          split_think_block(&content, &reasoning);
        }
        std::string t = std::string(kImStart) + "assistant\n";
        if (i > last_query && (i + 1 == n || !reasoning.empty())) {
          t += "<think>\n" + rstrip_nl(lstrip_nl(reasoning)) + "\n</think>\n\n" + lstrip_nl(content);
        } else {
          t += content;
        }
        for (size_t c = 0; c < msg.tool_calls.size(); ++c) {
          require_tools_branch(i);
          if (c > 0 || !content.empty()) t += "\n";
          t += tool_call_text(msg.tool_calls[c], /*raw_string_arguments=*/true);
        }
        assistant_turn(t + kImEnd);
      } else if (msg.role == "tool") {
        append_tool_message(m, i, &r_.text);
      }
    }
    if (o_.add_generation_prompt) r_.text += generation_prompt();
  }

  const TemplateTraits& t_;
  const ChatOptions& o_;
  const std::string& file_;
  ChatRender r_;
};

// The "<tool_call>" blocks of `content` (Qwen2.5/Qwen3's JSON form) into msg->tool_calls and the text before the
// first into msg->content; "" or why they cannot be read (msg untouched then).
std::string read_tool_calls(const std::string& content, ChatMessage* msg) {
  const std::string open = "<tool_call>", close = "</tool_call>";
  const size_t first = content.find(open);
  if (first == std::string::npos) return "";
  std::vector<ChatToolCall> calls;
  size_t at = first;
  while (at < content.size()) {
    const size_t body = at + open.size(), end = content.find(close, body);
    if (end == std::string::npos) return "tool call " + std::to_string(calls.size() + 1) + " has no </tool_call>";
    nlohmann::ordered_json j;
    try {
      j = nlohmann::ordered_json::parse(content.substr(body, end - body));
    } catch (const nlohmann::json::exception& e) {
      return "tool call " + std::to_string(calls.size() + 1) + " is not valid JSON: " + e.what();
    }
    if (!j.is_object() || !j.contains("name") || !j["name"].is_string() || !j.contains("arguments") ||
        !(j["arguments"].is_object() || j["arguments"].is_string())) {
      return "tool call " + std::to_string(calls.size() + 1) +
             " is not {\"name\": string, \"arguments\": object or string}";
    }
    ChatToolCall c;
    c.name = j["name"].get<std::string>();
    c.arguments_is_string = j["arguments"].is_string();
    c.arguments = c.arguments_is_string ? j["arguments"].get<std::string>() : python_json_dumps(j["arguments"]);
    calls.push_back(std::move(c));
    at = end + close.size();
    const size_t next = content.find_first_not_of(" \t\r\n", at);
    if (next == std::string::npos) break;
    if (content.compare(next, open.size(), open) != 0)
      return "text follows tool call " + std::to_string(calls.size()) + " (the template writes none there)";
    at = next;
  }
  msg->content = rstrip_nl(content.substr(0, first));
  msg->content_is_null = msg->content.empty();
  msg->tool_calls = std::move(calls);
  return "";
}

}  // namespace

bool Tokenizer::has_chat_template() const { return !impl_->chat_template.empty(); }

bool Tokenizer::chat_template_has_thinking_switch() const {
  if (impl_->chat_template.empty()) return false;
  const TemplateTraits t = traits_of(impl_->chat_template, impl_->chat_template_file);
  return t.kind == ChatKind::kQwen3 && t.thinking_switch;
}

ChatReply Tokenizer::parse_chat_reply(const std::string& generated) const {
  const Impl& t = *impl_;
  QWENQ_CHECK(!t.chat_template.empty(), t.source << ": the tokenizer has no chat template to read a reply by");
  const TemplateTraits traits = traits_of(t.chat_template, t.chat_template_file);
  ChatReply r;
  r.message.role = "assistant";
  std::string content = generated;
  if (traits.kind == ChatKind::kQwen3) {
    // The split needs no "<think>": a thinking-only prompt's "<think>\n" is not in `generated`, and after a prompt
    // that closed an empty block there is nothing to split.
    std::string reasoning;
    if (split_think_block(&content, &reasoning) && !reasoning.empty()) {
      r.message.reasoning = reasoning;
      r.message.has_reasoning = true;
    }
  }
  r.message.content = content;
  if (traits.tools) r.error = read_tool_calls(content, &r.message);
  return r;
}

ChatRender Tokenizer::render_chat(const std::vector<ChatMessage>& messages, const ChatOptions& options) const {
  const Impl& t = *impl_;
  QWENQ_CHECK(!t.chat_template.empty(), t.source << ": the tokenizer has no chat template (looked for chat_template "
                                                    "in tokenizer_config.json, chat_template.jinja, chat_template.json)");
  const TemplateTraits traits = traits_of(t.chat_template, t.chat_template_file);
  return Renderer(traits, options, t.chat_template_file).run(messages);
}

std::string Tokenizer::apply_chat_template(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
  ChatOptions o;
  o.add_generation_prompt = add_generation_prompt;
  return render_chat(messages, o).text;
}

}  // namespace qwenq
