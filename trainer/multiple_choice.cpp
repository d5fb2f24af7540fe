#include "trainer/multiple_choice.h"

#include <algorithm>
#include <cmath>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/jsonl.h"
#include "core/progress.h"
#include "kernels/loss.h"
#include "trainer/sample_stats.h"

namespace qwenq {

namespace {

using Json = nlohmann::ordered_json;

// Unicode code points of UTF-8 text (Python's len of the str): bytes that do not continue a sequence.
int64_t code_points(const std::string& s) {
  int64_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// The label as an index into `n` choices: an integer, or a string holding one.
int64_t label_index(const Json& v, size_t n, const std::string& where) {
  int64_t i = -1;
  if (v.is_number_integer()) {
    i = v.get<int64_t>();
  } else if (v.is_string()) {
    const std::string s = v.get<std::string>();
    QWENQ_CHECK(!s.empty() && s.find_first_not_of("0123456789") == std::string::npos,
                where << ": \"label\" \"" << s << "\" is not an index");
    i = std::stoll(s);
  } else {
    QWENQ_FAIL(where << ": \"label\" must be an integer index, got " << v.type_name());
  }
  QWENQ_CHECK(i >= 0 && i < static_cast<int64_t>(n), where << ": \"label\" " << i << " is not one of the " << n
                                                            << " choices");
  return i;
}

std::vector<std::string> string_list(const Json& v, const std::string& what, const std::string& where) {
  QWENQ_CHECK(v.is_array() && v.size() >= 2, where << ": \"" << what << "\" must be a list of at least two strings");
  std::vector<std::string> out;
  for (const Json& x : v) {
    QWENQ_CHECK(x.is_string(), where << ": \"" << what << "\" must hold strings, got " << x.type_name());
    out.push_back(x.get<std::string>());
  }
  return out;
}

ChoiceItem parse_item(const Json& j, const std::string& where) {
  QWENQ_CHECK(j.is_object(), where << ": expected a JSON object, got " << j.type_name());
  ChoiceItem it;
  it.where = where;
  if (j.contains("question") && j.contains("answerKey")) {  // ARC (Hugging Face's allenai/ai2_arc)
    QWENQ_CHECK(j["question"].is_string(), where << ": \"question\" must be a string");
    const Json& c = j.value("choices", Json());
    QWENQ_CHECK(c.is_object() && c.contains("text") && c.contains("label"),
                where << ": ARC's \"choices\" must be {\"text\": [...], \"label\": [...]}");
    const std::vector<std::string> text = string_list(c["text"], "choices.text", where);
    const std::vector<std::string> labels = string_list(c["label"], "choices.label", where);
    QWENQ_CHECK(text.size() == labels.size(), where << ": " << text.size() << " choice texts but " << labels.size()
                                                    << " labels");
    QWENQ_CHECK(j["answerKey"].is_string(), where << ": \"answerKey\" must be a string");
    const auto k = std::find(labels.begin(), labels.end(), j["answerKey"].get<std::string>());
    QWENQ_CHECK(k != labels.end(), where << ": answerKey \"" << j["answerKey"].get<std::string>()
                                         << "\" is not one of the choice labels");
    it.context = "Question: " + j["question"].get<std::string>() + "\nAnswer:";
    it.delimiter = " ";
    it.choices = text;
    it.label = k - labels.begin();
    return it;
  }
  QWENQ_CHECK(j.contains("context") && j["context"].is_string() && j.contains("choices") && j.contains("label"),
              where << ": expected {\"context\": string, \"choices\": [strings], \"label\": index} or an ARC record "
                       "(question, choices, answerKey)");
  it.context = j["context"].get<std::string>();
  it.choices = string_list(j["choices"], "choices", where);
  it.label = label_index(j["label"], it.choices.size(), where);
  return it;
}

// The choice with the highest score; the first one on ties (numpy's argmax, as lm-eval takes it).
int64_t argmax(const std::vector<double>& v) {
  return std::max_element(v.begin(), v.end()) - v.begin();
}

}  // namespace

std::vector<ChoiceItem> read_choice_items(const std::string& path) {
  std::vector<ChoiceItem> items;
  for_each_json_line(read_file(path), path,
                     [&](const Json& j, const std::string& where) { items.push_back(parse_item(j, where)); });
  QWENQ_CHECK(!items.empty(), path << ": no items");
  return items;
}

ChoiceTokens encode_choice(const Tokenizer& tok, const std::string& context, const std::string& choice) {
  const size_t keep = context.find_last_not_of(" \t\n\r\f\v");
  const std::string ctx = keep == std::string::npos ? std::string() : context.substr(0, keep + 1);
  const std::string cont = context.substr(ctx.size()) + choice;
  const std::vector<int32_t> whole = tok.encode(ctx + cont, /*add_special_tokens=*/false);
  ChoiceTokens r;
  r.context = tok.encode(ctx, /*add_special_tokens=*/false);
  QWENQ_CHECK(r.context.size() <= whole.size() && std::equal(r.context.begin(), r.context.end(), whole.begin()),
              "encode_choice: the context's tokens are not a prefix of the context and choice's");
  r.continuation.assign(whole.begin() + static_cast<std::ptrdiff_t>(r.context.size()), whole.end());
  if (r.context.empty()) r.context = {tok.eos_id()};
  return r;
}

ChoiceResult evaluate_choices(LogitsSource& model, const Tokenizer& tok, const std::vector<ChoiceItem>& items,
                              int64_t batch_tokens, bool quiet) {
  const int64_t max_len = model.max_positions;
  struct Seq {
    size_t item, choice;
    std::vector<int32_t> input;  // context + continuation without its last token (that token is only predicted)
    int32_t last = 0;            // the continuation's last token
    int64_t cont = 0;            // the last `cont` input positions predict the continuation's tokens
  };
  std::vector<Seq> seqs;
  for (size_t i = 0; i < items.size(); ++i) {
    for (size_t c = 0; c < items[i].choices.size(); ++c) {
      const ChoiceTokens t = encode_choice(tok, items[i].context, items[i].delimiter + items[i].choices[c]);
      QWENQ_CHECK(!t.continuation.empty(), items[i].where << ": choice " << c << " encodes to no tokens");
      QWENQ_CHECK(static_cast<int64_t>(t.continuation.size()) <= max_len,
                  items[i].where << ": choice " << c << " is " << t.continuation.size()
                                 << " tokens, longer than the model's context (" << max_len << ")");
      Seq s{i, c, t.context, t.continuation.back(), static_cast<int64_t>(t.continuation.size())};
      s.input.insert(s.input.end(), t.continuation.begin(), t.continuation.end() - 1);
      if (static_cast<int64_t>(s.input.size()) > max_len) {  // lm-eval: the last max_len inputs
        s.input.erase(s.input.begin(), s.input.end() - max_len);
      }
      seqs.push_back(std::move(s));
    }
  }
  ChoiceResult r;
  r.items.resize(items.size());
  for (size_t i = 0; i < items.size(); ++i) r.items[i].loglik.assign(items[i].choices.size(), 0.0);
  int64_t total = 0;
  for (const Seq& s : seqs) total += static_cast<int64_t>(s.input.size());
  Progress bar("choices", total, "tok", quiet);
  for (size_t s0 = 0; s0 < seqs.size();) {
    std::vector<std::vector<int32_t>> batch;
    size_t s1 = s0;
    int64_t n = 0;
    while (s1 < seqs.size() && (s1 == s0 || n + static_cast<int64_t>(seqs[s1].input.size()) <= batch_tokens)) {
      n += static_cast<int64_t>(seqs[s1].input.size());
      batch.push_back(seqs[s1++].input);
    }
    const PackedBatch b = PackedBatch::from_sequences(batch);
    // Targets only where a continuation token is predicted: position t predicts input[t + 1], the last one `last`.
    std::vector<int32_t> targets(static_cast<size_t>(n), kIgnoreIndex);
    for (size_t k = s0; k < s1; ++k) {
      const int64_t end = b.cu_seqlens[k - s0 + 1];
      for (int64_t t = end - seqs[k].cont; t < end; ++t) targets[t] = t + 1 < end ? b.tokens[t + 1] : seqs[k].last;
    }
    std::vector<float> nll(static_cast<size_t>(n), 0.f);
    model.forward(b);
    model.nll(targets.data(), nll.data());
    for (size_t k = s0; k < s1; ++k) {
      const int64_t end = b.cu_seqlens[k - s0 + 1];
      double ll = 0;
      for (int64_t t = end - seqs[k].cont; t < end; ++t) ll -= nll[t];
      r.items[seqs[k].item].loglik[seqs[k].choice] = ll;
    }
    r.tokens += n;
    bar.update(r.tokens);
    s0 = s1;
  }
  bar.finish();
  int64_t hit = 0, hit_norm = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    ChoiceItemResult& it = r.items[i];
    std::vector<double> norm(it.loglik.size());
    for (size_t c = 0; c < norm.size(); ++c)
      norm[c] = it.loglik[c] / static_cast<double>(std::max<int64_t>(1, code_points(items[i].choices[c])));
    it.pred = argmax(it.loglik);
    it.pred_norm = argmax(norm);
    hit += it.pred == items[i].label;
    hit_norm += it.pred_norm == items[i].label;
  }
  const int64_t n = static_cast<int64_t>(items.size());
  r.acc = static_cast<double>(hit) / static_cast<double>(n);
  r.acc_norm = static_cast<double>(hit_norm) / static_cast<double>(n);
  r.acc_stderr = binomial_stderr(r.acc, n);
  r.acc_norm_stderr = binomial_stderr(r.acc_norm, n);
  r.seconds = bar.elapsed_s();
  return r;
}

ChoiceResult evaluate_choices(const QwenModel& model, const Tokenizer& tok, const std::vector<ChoiceItem>& items,
                              int64_t batch_tokens, bool quiet) {
  LogitsSource src = cpu_logits_source(model);
  return evaluate_choices(src, tok, items, batch_tokens, quiet);
}

}  // namespace qwenq
