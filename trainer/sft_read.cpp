// Reading SFT records from .jsonl / .json files: format detection, validation, skip_bad bookkeeping.
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/json_file.h"
#include "core/jsonl.h"
#include "trainer/chat_record.h"
#include "trainer/sft_data.h"

namespace qwenq {

namespace {

using Json = nlohmann::ordered_json;

// An unpaired preference record (trainer/kto.h): a completion judged by a boolean "label" (or "kto_tag").
bool has_kto_label(const Json& j) {
  return (j.contains("label") && j["label"].is_boolean()) || (j.contains("kto_tag") && j["kto_tag"].is_boolean());
}

SftFormat detect_format(const Json& j) {
  if (!j.is_object()) return SftFormat::kAuto;
  if (has_kto_label(j)) return SftFormat::kPreference;
  if (is_chat_record(j)) return SftFormat::kChat;
  if (j.contains("instruction")) return SftFormat::kAlpaca;
  if (j.contains("prompt") && j.contains("completion")) return SftFormat::kPromptCompletion;
  if (j.contains("text")) return SftFormat::kText;
  if (j.contains("chosen") && j.contains("rejected")) return SftFormat::kPreference;
  return SftFormat::kAuto;
}

// "" when j[key] is a string (copied to *out), else why not.
std::string get_string(const Json& j, const char* key, std::string* out) {
  auto it = j.find(key);
  if (it == j.end()) return std::string("missing field \"") + key + "\"";
  if (!it->is_string()) return std::string("field \"") + key + "\" is " + it->type_name() + ", expected a string";
  *out = it->get<std::string>();
  return "";
}

// parse_chat_record's "messages[i]: why" about the joined prompt + completion list, as the record spells it:
// "prompt[i]: why" or "completion[i - prompt_size]: why" (the record has no "messages").
std::string in_prompt_or_completion(const std::string& err, size_t prompt_size) {
  static const std::string kAt = "messages[";
  const size_t close = err.find("]: ");
  if (err.compare(0, kAt.size(), kAt) != 0 || close == std::string::npos) return err;
  const size_t i = std::stoul(err.substr(kAt.size(), close - kAt.size()));
  const std::string at = i < prompt_size ? "prompt[" + std::to_string(i) : "completion[" + std::to_string(i - prompt_size);
  return at + err.substr(close);
}

// Fills `rec` from one parsed record; returns "" or the reason the record is malformed.
std::string convert_record(const Json& j, SftFormat format, SftRecord* rec) {
  if (!j.is_object()) return std::string("expected a JSON object, got ") + j.type_name();
  rec->format = format;
  std::string err;
  switch (format) {
    case SftFormat::kText:
      return get_string(j, "text", &rec->text);
    case SftFormat::kAlpaca: {
      if (!(err = get_string(j, "instruction", &rec->instruction)).empty()) return err;
      if (!(err = get_string(j, "output", &rec->output)).empty()) return err;
      auto it = j.find("input");
      if (it != j.end() && !it->is_null()) {
        if (!it->is_string()) return std::string("field \"input\" is ") + it->type_name() + ", expected a string";
        rec->input = it->get<std::string>();
      }
      it = j.find("system");
      if (it != j.end() && !it->is_null()) {
        if (!it->is_string()) return std::string("field \"system\" is ") + it->type_name() + ", expected a string";
        rec->system = it->get<std::string>();
      }
      it = j.find("history");
      if (it != j.end() && !it->is_null()) {
        if (!it->is_array()) return std::string("field \"history\" is ") + it->type_name() + ", expected an array";
        for (size_t h = 0; h < it->size(); ++h) {
          const Json& p = (*it)[h];
          if (!p.is_array() || p.size() != 2 || !p[0].is_string() || !p[1].is_string())
            return "history[" + std::to_string(h) + "]: expected a [query, response] pair of strings";
          rec->history.emplace_back(p[0].get<std::string>(), p[1].get<std::string>());
        }
      }
      return "";
    }
    case SftFormat::kChat:
      return parse_chat_record(j, /*need_assistant=*/true, &rec->messages, &rec->tools);
    case SftFormat::kPromptCompletion: {
      auto p = j.find("prompt"), c = j.find("completion");
      if (p == j.end() || c == j.end()) return "expected \"prompt\" and \"completion\" fields";
      if (p->is_string() && c->is_string()) {
        rec->prompt = p->get<std::string>();
        rec->completion = c->get<std::string>();
        return "";
      }
      if (!p->is_array() || !c->is_array())
        return "\"prompt\" and \"completion\" must both be strings or both be message lists";
      if (p->empty() && c->empty()) return "\"prompt\" and \"completion\" are both empty";
      Json conv = {{"messages", *p}};
      for (const Json& m : *c) conv["messages"].push_back(m);
      auto t = j.find("tools");
      if (t != j.end()) conv["tools"] = *t;
      rec->completion_from = p->size();
      err = parse_chat_record(conv, /*need_assistant=*/true, &rec->messages, &rec->tools);
      if (!err.empty()) return in_prompt_or_completion(err, p->size());
      for (size_t i = rec->completion_from; i < rec->messages.size(); ++i)
        if (rec->messages[i].role == "assistant") return "";
      return "no assistant message in \"completion\" (nothing to train on)";
    }
    case SftFormat::kPreference:
      if (has_kto_label(j) && !(j.contains("chosen") && j.contains("rejected")))
        return "an unpaired preference record (a completion judged by \"label\") is no SFT example: train on it with "
               "--objective kto";
      return "a preference record (\"chosen\" and \"rejected\") is no SFT example: train on it with --objective dpo";
    case SftFormat::kAuto:
      break;
  }
  return "record format not set";
}

}  // namespace

std::string sft_record_from_json(const nlohmann::ordered_json& j, SftFormat format, SftRecord* rec) {
  return convert_record(j, format, rec);
}

const char* sft_format_name(SftFormat f) {
  switch (f) {
    case SftFormat::kAuto: return "auto";
    case SftFormat::kText: return "text";
    case SftFormat::kAlpaca: return "alpaca";
    case SftFormat::kChat: return "chat";
    case SftFormat::kPromptCompletion: return "prompt-completion";
    case SftFormat::kPreference: return "preference";
  }
  return "?";
}

SftFormat parse_sft_format(const std::string& name) {
  for (SftFormat f : {SftFormat::kAuto, SftFormat::kText, SftFormat::kAlpaca, SftFormat::kChat,
                      SftFormat::kPromptCompletion, SftFormat::kPreference})
    if (name == sft_format_name(f)) return f;
  QWENQ_FAIL("unknown data format \"" << name << "\" (expected auto, text, alpaca, chat, prompt-completion or "
                                       << "preference)");
}

bool parse_alpaca_prompt(const std::string& name) {
  QWENQ_CHECK(name == "stanford" || name == "chat", "--alpaca-prompt must be stanford or chat, not \"" << name << "\"");
  return name == "chat";
}

void for_each_json_record(const std::string& path, bool skip_bad, SftDataStats* stats,
                          const std::function<std::string(const nlohmann::ordered_json&, const std::string&)>& take) {
  QWENQ_CHECK(stats != nullptr, "stats must not be null");
  const std::string text = read_file(path);
  const size_t bom = text.compare(0, 3, "\xEF\xBB\xBF") == 0 ? 3 : 0;  // the JSON parser skips it too
  const size_t first = text.find_first_not_of(" \t\r\n", bom);
  QWENQ_CHECK(first != std::string::npos, path << ": empty dataset (the file is empty)");
  // Told apart by the content, whatever the extension, as Hugging Face's "json" loader does (JSON lines first,
  // then the whole file as one value): a .json file of JSON lines is read, and so is a .jsonl file holding an array.
  // One object over several lines ({"data": [...]}) is no set of records there either.
  const bool jsonl = text[first] != '[';
  if (jsonl && text[first] == '{' && text.find('\n', first) < text.find_last_not_of(" \t\r\n") && Json::accept(text))
    QWENQ_FAIL(path << ": expected JSON lines or a JSON array of records, got one JSON object over several lines");

  const auto bad = [&](const std::string& where, const std::string& why) {
    QWENQ_CHECK(skip_bad, where << ": " << why << " (pass --skip-bad to skip such records)");
    if (stats->skipped++ < SftDataStats::kMaxReported) stats->first_skipped.push_back(where + ": " + why);
  };
  const auto add = [&](const Json& j, const std::string& where) {
    const std::string why = take(j, where);
    if (!why.empty()) bad(where, why);
  };
  if (jsonl) {
    for_each_nonblank_line(text, [&](const std::string& line, size_t line_no) {
      const std::string where = path + ":" + std::to_string(line_no);
      Json j;
      const std::string why = parse_json_line(line, &j);
      if (why.empty()) add(j, where);
      else bad(where, why);  // a line that is not JSON is a malformed record: --skip-bad skips it too
    });
  } else {
    const Json all = parse_ordered_json_text(text, path);
    for (size_t i = 0; i < all.size(); ++i) add(all[i], path + ": record " + std::to_string(i + 1));
  }
  stats->path = path;
}

std::vector<SftRecord> read_sft_records(const std::string& path, SftFormat format, bool skip_bad,
                                        SftDataStats* stats) {
  std::vector<SftRecord> records;
  for_each_json_record(path, skip_bad, stats, [&](const Json& j, const std::string& where) -> std::string {
    if (format == SftFormat::kAuto) {
      format = detect_format(j);
      if (format == SftFormat::kAuto) {
        return "cannot tell the record format: expected a \"messages\" (or \"conversations\"), \"instruction\", "
               "\"prompt\" and \"completion\", or \"text\" key";
      }
    }
    SftRecord rec;
    rec.where = where;
    std::string why = convert_record(j, format, &rec);
    if (!why.empty()) return why;
    records.push_back(std::move(rec));
    return "";
  });
  stats->format = format;
  QWENQ_CHECK(!records.empty(), path << ": empty dataset (no usable records; " << stats->skipped
                                     << " malformed skipped)");
  return records;
}

}  // namespace qwenq
