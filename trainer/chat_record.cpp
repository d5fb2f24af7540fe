// Chat records -> ChatMessage lists, and Python's json.dumps for the template's `tojson` (see chat_record.h).
#include "trainer/chat_record.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace qwenq {

namespace {

using Json = nlohmann::ordered_json;

void dump_string(const std::string& s, std::string* out) {
  *out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\n': *out += "\\n"; break;
      case '\r': *out += "\\r"; break;
      case '\t': *out += "\\t"; break;
      case '\b': *out += "\\b"; break;
      case '\f': *out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          *out += buf;
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
  }
  *out += '"';
}

// Python's repr of a float: the shortest digits that read back to x; positional for decimal exponents in
// [-4, 16), else d.ddde+XX (at least two exponent digits).
std::string python_float_repr(double x) {
  if (std::isnan(x)) return "NaN";
  if (std::isinf(x)) return x > 0 ? "Infinity" : "-Infinity";
  if (x == 0) return std::signbit(x) ? "-0.0" : "0.0";
  char buf[40];
  int p = 1;
  for (; p <= 17; ++p) {
    std::snprintf(buf, sizeof buf, "%.*e", p - 1, x);
    if (std::strtod(buf, nullptr) == x) break;
  }
  const std::string s = buf;  // [-]d[.ddd]e[+-]XX
  const bool neg = s[0] == '-';
  const size_t epos = s.find('e');
  std::string digits;
  for (size_t i = neg ? 1 : 0; i < epos; ++i)
    if (s[i] != '.') digits.push_back(s[i]);
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  const int e = std::atoi(s.c_str() + epos + 1);
  std::string out = neg ? "-" : "";
  if (e >= -4 && e < 16) {
    if (e >= 0) {
      std::string ip = digits.substr(0, std::min<size_t>(digits.size(), static_cast<size_t>(e) + 1));
      ip.append(static_cast<size_t>(e) + 1 - ip.size(), '0');
      const std::string fp = digits.size() > static_cast<size_t>(e) + 1 ? digits.substr(static_cast<size_t>(e) + 1) : "0";
      out += ip + "." + fp;
    } else {
      out += "0." + std::string(static_cast<size_t>(-e - 1), '0') + digits;
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    out += eb;
  }
  return out;
}

void dump(const Json& j, std::string* out) {
  switch (j.type()) {
    case Json::value_t::object: {
      *out += '{';
      bool first = true;
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (!first) *out += ", ";
        first = false;
        dump_string(it.key(), out);
        *out += ": ";
        dump(it.value(), out);
      }
      *out += '}';
      break;
    }
    case Json::value_t::array: {
      *out += '[';
      for (size_t i = 0; i < j.size(); ++i) {
        if (i) *out += ", ";
        dump(j[i], out);
      }
      *out += ']';
      break;
    }
    case Json::value_t::string: dump_string(j.get_ref<const std::string&>(), out); break;
    case Json::value_t::boolean: *out += j.get<bool>() ? "true" : "false"; break;
    case Json::value_t::number_integer: *out += std::to_string(j.get<int64_t>()); break;
    case Json::value_t::number_unsigned: *out += std::to_string(j.get<uint64_t>()); break;
    case Json::value_t::number_float: *out += python_float_repr(j.get<double>()); break;
    default: *out += "null"; break;
  }
}

// "" when j[key] is a string (copied to *out), or null and null_ok (*is_null set); else why not.
std::string get_text(const Json& j, const char* key, bool null_ok, std::string* out, bool* is_null) {
  auto it = j.find(key);
  if (it == j.end()) return std::string("missing field \"") + key + "\"";
  if (it->is_null() && null_ok) {
    *is_null = true;
    return "";
  }
  if (!it->is_string()) return std::string("field \"") + key + "\" is " + it->type_name() + ", expected a string";
  *out = it->get<std::string>();
  return "";
}

std::string parse_tool_calls(const Json& calls, std::vector<ChatToolCall>* out) {
  if (calls.is_null()) return "";
  if (!calls.is_array()) return std::string("\"tool_calls\" is ") + calls.type_name() + ", expected an array";
  for (size_t c = 0; c < calls.size(); ++c) {
    const std::string at = "tool_calls[" + std::to_string(c) + "]: ";
    const Json* f = &calls[c];
    if (!f->is_object()) return at + "expected an object, got " + f->type_name();
    if (f->contains("function")) {
      f = &(*f)["function"];
      if (!f->is_object()) return at + "\"function\" is " + std::string(f->type_name()) + ", expected an object";
    }
    ChatToolCall call;
    auto name = f->find("name");
    if (name == f->end() || !name->is_string()) return at + "expected a string \"name\"";
    call.name = name->get<std::string>();
    auto args = f->find("arguments");
    if (args == f->end()) return at + "missing \"arguments\"";
    if (args->is_string()) {
      call.arguments_is_string = true;
      call.arguments = args->get<std::string>();
    } else {
      call.arguments = python_json_dumps(*args);
    }
    out->push_back(std::move(call));
  }
  return "";
}

// ShareGPT's speaker names -> the chat roles ("" when unknown).
std::string sharegpt_role(const std::string& from) {
  if (from == "human" || from == "user") return "user";
  if (from == "gpt" || from == "assistant" || from == "model") return "assistant";
  if (from == "system") return "system";
  if (from == "tool" || from == "observation" || from == "function_response") return "tool";
  return "";
}

// {"conversations": [{"from", "value"}], "system", "tools"} -> the same record in the "messages" spelling.
std::string sharegpt_to_messages(const Json& j, Json* out) {
  const Json& conv = j["conversations"];
  if (!conv.is_array()) return std::string("field \"conversations\" is ") + conv.type_name() + ", expected an array";
  Json msgs = Json::array();
  auto sys = j.find("system");
  if (sys != j.end() && !sys->is_null()) {
    if (!sys->is_string()) return std::string("field \"system\" is ") + sys->type_name() + ", expected a string";
    if (!sys->get_ref<const std::string&>().empty()) msgs.push_back({{"role", "system"}, {"content", *sys}});
  }
  for (size_t i = 0; i < conv.size(); ++i) {
    const std::string at = "conversations[" + std::to_string(i) + "]: ";
    const Json& t = conv[i];
    if (!t.is_object()) return at + "expected an object, got " + t.type_name();
    auto from = t.find("from");
    if (from == t.end() || !from->is_string()) return at + "expected a string \"from\"";
    const std::string role = sharegpt_role(from->get<std::string>());
    if (role.empty())
      return at + "\"from\": \"" + from->get<std::string>() + "\" is not human, gpt, system or tool (or user, assistant, "
             "model, observation, function_response)";
    auto value = t.find("value");
    if (value == t.end()) value = t.find("content");
    if (value == t.end() || !value->is_string()) return at + "expected a string \"value\"";
    msgs.push_back({{"role", role}, {"content", *value}});
  }
  Json rec = {{"messages", msgs}};
  auto tools = j.find("tools");
  if (tools != j.end() && tools->is_string()) {
    try {
      rec["tools"] = tools->get_ref<const std::string&>().empty() ? Json() : Json::parse(tools->get<std::string>());
    } catch (const nlohmann::json::exception&) {
      return "field \"tools\" is a string that is not JSON";
    }
  } else if (tools != j.end()) {
    rec["tools"] = *tools;
  }
  *out = std::move(rec);
  return "";
}

}  // namespace

std::string chat_record_as_messages(const nlohmann::ordered_json& record, nlohmann::ordered_json* out) {
  if (!record.is_object()) return std::string("expected a JSON object, got ") + record.type_name();
  if (record.contains("messages") || !record.contains("conversations")) {
    *out = record;
    return "";
  }
  return sharegpt_to_messages(record, out);
}

bool is_chat_record(const nlohmann::ordered_json& record) {
  return record.is_object() && (record.contains("messages") || record.contains("conversations"));
}

std::string python_json_dumps(const nlohmann::ordered_json& value) {
  std::string out;
  dump(value, &out);
  return out;
}

std::string parse_chat_record(const nlohmann::ordered_json& record, bool need_assistant,
                              std::vector<ChatMessage>* messages, std::vector<std::string>* tools) {
  if (!record.is_object()) return std::string("expected a JSON object, got ") + record.type_name();
  Json converted;
  if (!record.contains("messages") && record.contains("conversations")) {
    const std::string why = sharegpt_to_messages(record, &converted);
    if (!why.empty()) return why;
  }
  const Json& j = converted.is_null() ? record : converted;
  auto it = j.find("messages");
  if (it == j.end()) return "missing field \"messages\"";
  if (!it->is_array()) return std::string("field \"messages\" is ") + it->type_name() + ", expected an array";
  if (it->empty()) return "\"messages\" is empty";
  bool has_assistant = false;
  for (size_t i = 0; i < it->size(); ++i) {
    const Json& m = (*it)[i];
    const std::string at = "messages[" + std::to_string(i) + "]: ";
    if (!m.is_object()) return at + "expected an object, got " + m.type_name();
    ChatMessage msg;
    std::string err;
    bool role_null = false;
    if (!(err = get_text(m, "role", false, &msg.role, &role_null)).empty()) return at + err;
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant" && msg.role != "tool")
      return at + "role \"" + msg.role + "\" is not system, user, assistant or tool";
    if (msg.role == "assistant") {
      auto calls = m.find("tool_calls");
      if (calls != m.end() && !(err = parse_tool_calls(*calls, &msg.tool_calls)).empty()) return at + err;
      auto r = m.find("reasoning_content");
      if (r != m.end() && !r->is_null()) {
        if (!r->is_string()) return at + "\"reasoning_content\" is " + r->type_name() + ", expected a string or null";
        msg.reasoning = r->get<std::string>();
        msg.has_reasoning = true;
      }
    }
    // Content may be null (or absent) only where the message says something else: tool calls.
    const bool null_ok = !msg.tool_calls.empty();
    if (null_ok && !m.contains("content")) {
      msg.content_is_null = true;
    } else if (!(err = get_text(m, "content", null_ok, &msg.content, &msg.content_is_null)).empty()) {
      return at + err;
    }
    has_assistant |= msg.role == "assistant";
    messages->push_back(std::move(msg));
  }
  if (need_assistant && !has_assistant) return "no assistant message (nothing to train on)";
  auto t = j.find("tools");
  if (t != j.end() && !t->is_null()) {
    if (!t->is_array()) return std::string("field \"tools\" is ") + t->type_name() + ", expected an array";
    for (size_t k = 0; k < t->size(); ++k) {
      if (!(*t)[k].is_object()) return "tools[" + std::to_string(k) + "]: expected an object, got " + (*t)[k].type_name();
      tools->push_back(python_json_dumps((*t)[k]));
    }
  }
  return "";
}

nlohmann::ordered_json chat_message_json(const ChatMessage& message) {
  nlohmann::ordered_json j = {{"role", message.role}};
  j["content"] = message.content_is_null ? nlohmann::ordered_json() : nlohmann::ordered_json(message.content);
  if (message.has_reasoning) j["reasoning_content"] = message.reasoning;
  if (!message.tool_calls.empty()) {
    j["tool_calls"] = nlohmann::ordered_json::array();
    for (const ChatToolCall& c : message.tool_calls) {
      const nlohmann::ordered_json args =
          c.arguments_is_string ? nlohmann::ordered_json(c.arguments) : nlohmann::ordered_json::parse(c.arguments);
      j["tool_calls"].push_back({{"type", "function"}, {"function", {{"name", c.name}, {"arguments", args}}}});
    }
  }
  return j;
}

}  // namespace qwenq
