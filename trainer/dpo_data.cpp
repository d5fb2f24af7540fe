// Preference records -> pairs of SFT examples (chosen, rejected), formats in trainer/dpo.h.
#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "trainer/chat_record.h"
#include "trainer/dpo.h"

namespace qwenq {

namespace {

using Json = nlohmann::ordered_json;

// The implicit prompt of two strings, as TRL's extract_prompt: the shared prefix, one character shorter when the
// character before the first difference is a space (so each completion starts with it). Cut at a UTF-8 character
// boundary (TRL compares Python characters).
size_t shared_string_prefix(const std::string& a, const std::string& b) {
  size_t k = 0;
  while (k < a.size() && k < b.size() && a[k] == b[k]) ++k;
  while (k > 0 && k < a.size() && (static_cast<unsigned char>(a[k]) & 0xC0) == 0x80) --k;
  if (k > 0 && a[k - 1] == ' ') --k;
  return k;
}

// LLaMA-Factory's preference records (its `ranking: true` datasets) -> two records in our formats; "" or why not.
//   Alpaca {"instruction", "input", "chosen", "rejected" (strings), "system", "history"}: two Alpaca records whose
//     outputs are the completions (rendered as SFT renders Alpaca: the Stanford prompt, or with --alpaca-prompt chat
//     the conversation LLaMA-Factory makes of it)
//   ShareGPT {"conversations" (or "messages"), "chosen", "rejected" (one message each: {"from", "value"} or {"role",
//     "content"}), "system", "tools"}: the conversation is the prompt, each message a completion
std::string llamafactory_records(const Json& j, SftRecord* chosen, SftRecord* rejected) {
  const Json& c = j["chosen"];
  const Json& r = j["rejected"];
  for (auto [out, completion, name] : {std::make_tuple(chosen, &c, "chosen"), std::make_tuple(rejected, &r, "rejected")}) {
    std::string why;
    if (j.contains("instruction")) {
      Json a = j;
      a.erase("chosen");
      a.erase("rejected");
      a["output"] = *completion;
      why = sft_record_from_json(a, SftFormat::kAlpaca, out);
    } else {
      Json prompt;
      if (!(why = chat_record_as_messages(j, &prompt)).empty()) return why;
      // The completion as a one-message conversation in the record's own spelling, converted the same way.
      Json one = completion->contains("from") ? Json{{"conversations", Json::array({*completion})}}
                                              : Json{{"messages", Json::array({*completion})}};
      Json msg;
      if (!(why = chat_record_as_messages(one, &msg)).empty()) return std::string(name) + ": " + why;
      Json pc = {{"prompt", prompt["messages"]}, {"completion", msg["messages"]}};
      if (prompt.contains("tools")) pc["tools"] = prompt["tools"];
      why = sft_record_from_json(pc, SftFormat::kPromptCompletion, out);
    }
    if (!why.empty()) return std::string(name) + ": " + why;
  }
  return "";
}

}  // namespace

std::string preference_record_from_json(const Json& j, SftRecord* chosen, SftRecord* rejected) {
  if (!j.is_object()) return std::string("expected a JSON object, got ") + j.type_name();
  const auto c = j.find("chosen"), r = j.find("rejected"), p = j.find("prompt");
  if (c == j.end() || r == j.end()) {
    if (j.contains("label") || j.contains("kto_tag"))
      return "an unpaired preference record (one completion and a \"label\"): train on it with --objective kto";
    return "expected \"chosen\" and \"rejected\" fields (a preference record)";
  }
  if (p == j.end() && (j.contains("instruction") || (c->is_object() && r->is_object() && is_chat_record(j)))) {
    if (*c == *r) return "\"chosen\" and \"rejected\" are the same (no preference to learn)";
    return llamafactory_records(j, chosen, rejected);
  }
  const bool strings = c->is_string() && r->is_string();
  if (!strings && !(c->is_array() && r->is_array()))
    return "\"chosen\" and \"rejected\" must both be strings or both be message lists";
  if (*c == *r) return "\"chosen\" and \"rejected\" are the same (no preference to learn)";
  Json prompt, cc = *c, rr = *r;
  if (p != j.end()) {
    prompt = *p;
  } else if (strings) {  // implicit prompt
    const std::string a = c->get<std::string>(), b = r->get<std::string>();
    const size_t k = shared_string_prefix(a, b);
    prompt = a.substr(0, k);
    cc = a.substr(k);
    rr = b.substr(k);
  } else {
    size_t k = 0;
    while (k < c->size() && k < r->size() && (*c)[k] == (*r)[k]) ++k;
    prompt = Json::array();
    for (size_t i = 0; i < k; ++i) prompt.push_back((*c)[i]);
    cc = Json::array();
    rr = Json::array();
    for (size_t i = k; i < c->size(); ++i) cc.push_back((*c)[i]);
    for (size_t i = k; i < r->size(); ++i) rr.push_back((*r)[i]);
  }
  for (auto [out, completion, name] : {std::make_tuple(chosen, &cc, "chosen"), std::make_tuple(rejected, &rr, "rejected")}) {
    Json pc = {{"prompt", prompt}, {"completion", *completion}};
    if (j.contains("tools")) pc["tools"] = j["tools"];
    const std::string why = sft_record_from_json(pc, SftFormat::kPromptCompletion, out);
    if (!why.empty()) return std::string(name) + ": " + why;
  }
  return "";
}

std::vector<std::pair<SftRecord, SftRecord>> read_preference_records(const std::string& path, bool skip_bad,
                                                                     SftDataStats* stats, std::vector<double>* margins) {
  std::vector<std::pair<SftRecord, SftRecord>> records;
  for_each_json_record(path, skip_bad, stats, [&](const Json& j, const std::string& where) {
    std::pair<SftRecord, SftRecord> rec;
    const std::string why = preference_record_from_json(j, &rec.first, &rec.second);
    if (!why.empty()) return why;
    double margin = 0;
    if (j.contains("margin") && !j["margin"].is_null()) {
      if (!j["margin"].is_number() || !std::isfinite(j["margin"].get<double>()))
        return "\"margin\" must be a finite number, got " + j["margin"].dump();
      margin = j["margin"].get<double>();
    }
    rec.first.where = rec.second.where = where;
    records.push_back(std::move(rec));
    if (margins) margins->push_back(margin);
    return why;
  });
  stats->format = SftFormat::kPreference;
  QWENQ_CHECK(!records.empty(), path << ": no preference pairs (" << stats->skipped << " malformed skipped)");
  return records;
}

bool prepare_preference_pair(const std::pair<SftRecord, SftRecord>& rec, const Tokenizer& tok,
                             const SftTemplateOptions& templ, int64_t max_len, std::pair<SftExample, SftExample>* ex,
                             SftDataStats* st) {
  QWENQ_CHECK(!templ.train_on_prompt && !templ.mask_history,
              "preference training scores the completions only: --train-on-prompt and --mask-history do not apply");
  SftDataStats one;  // both halves' bookkeeping; the pair counts once
  const bool kept_c = prepare_sft_example(rec.first, tok, templ, max_len, &ex->first, &one);
  const bool kept_r = prepare_sft_example(rec.second, tok, templ, max_len, &ex->second, &one);
  st->longest = std::max(st->longest, one.longest);
  st->prompts_cut += one.prompts_cut > 0;  // both examples share the prompt: the pair counts once
  st->prompt_cut_tokens += one.prompt_cut_tokens / 2;
  st->truncated += one.truncated;
  st->truncated_tokens += one.truncated_tokens;
  if (!kept_c || !kept_r) {
    ++st->dropped_no_loss;
    return false;
  }
  ++st->records;
  st->tokens += one.tokens;
  st->loss_tokens += one.loss_tokens;
  return true;
}

SftDataset load_preference_dataset(const std::string& path, const Tokenizer& tok, const SftDataOptions& opt) {
  QWENQ_CHECK(opt.max_len >= 2, "max_len must be >= 2 (one input and one target), got " << opt.max_len);
  QWENQ_CHECK(opt.format == SftFormat::kAuto || opt.format == SftFormat::kPreference,
              "preference training reads preference records (--format preference or auto), not --format "
                  << sft_format_name(opt.format));
  SftDataset ds;
  SftDataStats& st = ds.stats;
  std::vector<double> record_margins, margins;
  const std::vector<std::pair<SftRecord, SftRecord>> records =
      read_preference_records(path, opt.skip_bad, &st, &record_margins);
  std::vector<std::pair<SftExample, SftExample>> pairs;
  for (size_t k = 0; k < records.size(); ++k) {
    std::pair<SftExample, SftExample> ex;
    if (prepare_preference_pair(records[k], tok, opt.templ, opt.max_len, &ex, &st)) {
      pairs.push_back(std::move(ex));
      margins.push_back(record_margins[k]);
    }
  }
  QWENQ_CHECK(!pairs.empty(), path << ": every pair lost a completion to max_len " << opt.max_len);
  std::vector<int64_t> train, eval;
  split_sft_indices(static_cast<int64_t>(pairs.size()), opt.seed, opt.eval_fraction, opt.eval_count, &train, &eval);
  for (auto [idx, out] : {std::make_pair(&train, &ds.train), std::make_pair(&eval, &ds.eval)}) {
    for (int64_t i : *idx) {
      out->push_back(std::move(pairs[static_cast<size_t>(i)].first));
      out->push_back(std::move(pairs[static_cast<size_t>(i)].second));
    }
  }
  for (int64_t i : train) ds.train_margins.push_back(margins[static_cast<size_t>(i)]);
  for (int64_t i : eval) ds.eval_margins.push_back(margins[static_cast<size_t>(i)]);
  st.train_examples = static_cast<int64_t>(train.size());
  st.eval_examples = static_cast<int64_t>(eval.size());
  return ds;
}

}  // namespace qwenq
