#include "trainer/gsm8k.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <regex>

#include "core/error.h"
#include "core/files.h"
#include "core/jsonl.h"
#include "core/progress.h"
#include "trainer/generate.h"
#include "trainer/python_random.h"
#include "trainer/sample_stats.h"

namespace qwenq {

std::vector<Gsm8kItem> read_gsm8k(const std::string& path) {
  std::vector<Gsm8kItem> items;
  for_each_json_line(read_file(path), path, [&](const nlohmann::ordered_json& r, const std::string& where) {
    QWENQ_CHECK(r.is_object(), where << ": a GSM8K record is an object with \"question\" and \"answer\"");
    for (const char* key : {"question", "answer"}) {
      QWENQ_CHECK(r.contains(key) && r[key].is_string(), where << ": \"" << key << "\" missing or not a string "
                                                                << "(GSM8K's records: {\"question\", \"answer\"})");
    }
    items.push_back({r["question"].get<std::string>(), r["answer"].get<std::string>()});
  });
  QWENQ_CHECK(!items.empty(), path << ": no GSM8K records");
  return items;
}

std::string gsm8k_text(const Gsm8kItem& item) { return "Question: " + item.question + "\nAnswer:"; }

std::string gsm8k_prompt(const std::vector<const Gsm8kItem*>& shots, const Gsm8kItem& item) {
  std::string p;
  for (const Gsm8kItem* s : shots) p += gsm8k_text(*s) + " " + s->answer + "\n\n";
  return p + gsm8k_text(item);
}

std::string cut_at_stops(std::string s, const std::vector<std::string>& stops) {
  for (const std::string& stop : stops) {
    if (stop.empty()) continue;
    const size_t at = s.find(stop);
    if (at != std::string::npos) s.resize(at);
  }
  return s;
}

namespace {

const std::string kInvalid = "[invalid]";

// Python's str.strip(): ASCII whitespace at both ends (the extractions are digits, signs, '$', '.' and ',').
std::string strip(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

}  // namespace

std::string gsm8k_strict_match(const std::string& output) {
  static const std::regex re("#### (-?[0-9.,]+)");
  std::smatch m;
  return std::regex_search(output, m, re) ? strip(m[1].str()) : kInvalid;
}

std::string gsm8k_flexible_extract(const std::string& output) {
  static const std::regex re("(-?[$0-9.,]{2,})|(-?[0-9]+)");
  std::string last;
  bool any = false;
  for (auto it = std::sregex_iterator(output.begin(), output.end(), re); it != std::sregex_iterator(); ++it) {
    last = (*it)[1].matched && (*it)[1].length() > 0 ? (*it)[1].str() : (*it)[2].str();
    any = true;
  }
  return any && !last.empty() ? strip(last) : kInvalid;
}

std::string gsm8k_normalize(std::string s) {
  s.erase(std::remove(s.begin(), s.end(), ','), s.end());
  s.erase(std::remove(s.begin(), s.end(), '$'), s.end());
  const size_t marker = s.rfind("#### ");  // "(?s).*#### ": greedy, so up to the last marker
  if (marker != std::string::npos) s.erase(0, marker + 5);
  // "\.$": Python's $ matches at the end and before a final '\n'; re.sub removes every match (there is one at most).
  if (!s.empty() && s.back() == '.') s.pop_back();
  else if (s.size() >= 2 && s.back() == '\n' && s[s.size() - 2] == '.') s.erase(s.size() - 2, 1);
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

Gsm8kResult evaluate_gsm8k(const QwenModel& model, const Tokenizer& tok, const std::vector<Gsm8kItem>& items,
                           const std::vector<Gsm8kItem>& fewshot_items, const Gsm8kOptions& opt) {
  return evaluate_gsm8k(
      [&model](const std::vector<int32_t>& prompt, const SamplingOptions& so) { return generate(model, prompt, so); },
      model.config(), tok, items, fewshot_items, opt);
}

Gsm8kResult evaluate_gsm8k(const Gsm8kGenerateFn& gen, const QwenConfig& config, const Tokenizer& tok,
                           const std::vector<Gsm8kItem>& items, const std::vector<Gsm8kItem>& fewshot_items,
                           const Gsm8kOptions& opt) {
  QWENQ_CHECK(opt.fewshot >= 0 && opt.max_new_tokens >= 1 && opt.limit >= 0,
              "gsm8k: --fewshot and --limit must be >= 0, --max-new-tokens >= 1");
  QWENQ_CHECK(static_cast<int64_t>(fewshot_items.size()) >= opt.fewshot,
              "--fewshot " << opt.fewshot << " needs as many few-shot records; --fewshot-data has "
                           << fewshot_items.size());
  const int64_t n = opt.limit > 0 ? std::min<int64_t>(opt.limit, static_cast<int64_t>(items.size()))
                                  : static_cast<int64_t>(items.size());
  QWENQ_CHECK(n >= 1, "gsm8k: no items to score");
  const int64_t max_pos = config.max_position_embeddings;
  QWENQ_CHECK(opt.max_new_tokens < max_pos, "--max-new-tokens " << opt.max_new_tokens << " leaves no room for a "
                                                                << "prompt in the model's context of " << max_pos);
  SamplingOptions so;
  so.max_new_tokens = opt.max_new_tokens;
  so.repetition_penalty = opt.repetition_penalty;
  for (int32_t id : {tok.eos_id(), config.eos_token_id}) {
    if (id >= 0) so.stop_ids.push_back(id);
  }
  so.stop_ids.insert(so.stop_ids.end(), opt.stop_ids.begin(), opt.stop_ids.end());
  so.stop_when = [&](const std::vector<int32_t>& ids) {
    const std::string text = tok.decode(ids);
    for (const std::string& s : opt.stops)
      if (!s.empty() && text.find(s) != std::string::npos) return true;
    return false;
  };
  PythonRandom rng(opt.fewshot_seed);
  Gsm8kResult r;
  Progress bar("gsm8k", n, "items", opt.quiet);
  int64_t strict_ok = 0, flexible_ok = 0;
  for (int64_t i = 0; i < n; ++i) {
    std::vector<const Gsm8kItem*> shots;
    if (opt.fewshot > 0) {
      for (int64_t j : rng.sample(static_cast<int64_t>(fewshot_items.size()), opt.fewshot)) {
        shots.push_back(&fewshot_items[static_cast<size_t>(j)]);
      }
    }
    Gsm8kItemResult it;
    it.prompt = gsm8k_prompt(shots, items[i]);
    std::vector<int32_t> prompt = tok.encode(it.prompt, /*add_special_tokens=*/false);
    const int64_t keep = max_pos - opt.max_new_tokens;  // lm-eval: the last max_length − max_gen_toks tokens
    if (static_cast<int64_t>(prompt.size()) > keep) prompt.erase(prompt.begin(), prompt.end() - keep);
    it.prompt_tokens = static_cast<int64_t>(prompt.size());
    std::vector<int32_t> out = gen(prompt, so);
    it.new_tokens = static_cast<int64_t>(out.size());
    if (!out.empty() && std::find(so.stop_ids.begin(), so.stop_ids.end(), out.back()) != so.stop_ids.end()) {
      out.pop_back();
    }
    it.output = cut_at_stops(tok.decode(out, /*skip_special=*/true), opt.stops);
    it.strict = gsm8k_strict_match(it.output);
    it.flexible = gsm8k_flexible_extract(it.output);
    it.strict_ok = gsm8k_exact_match(it.strict, items[i].answer);
    it.flexible_ok = gsm8k_exact_match(it.flexible, items[i].answer);
    strict_ok += it.strict_ok;
    flexible_ok += it.flexible_ok;
    r.new_tokens += it.new_tokens;
    r.items.push_back(std::move(it));
    char extra[96];
    std::snprintf(extra, sizeof extra, "strict %.3f flexible %.3f", double(strict_ok) / (i + 1),
                  double(flexible_ok) / (i + 1));
    bar.update(i + 1, extra);
  }
  r.strict = static_cast<double>(strict_ok) / static_cast<double>(n);
  r.flexible = static_cast<double>(flexible_ok) / static_cast<double>(n);
  r.strict_stderr = binomial_stderr(r.strict, n);
  r.flexible_stderr = binomial_stderr(r.flexible, n);
  r.seconds = bar.elapsed_s();
  bar.finish();
  return r;
}

}  // namespace qwenq
