// Unpaired preference records -> labelled SFT examples, each with its KL sequence (formats in trainer/kto.h).
#include <algorithm>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/loss.h"
#include "trainer/chat_record.h"
#include "trainer/dpo.h"
#include "trainer/kto.h"

namespace qwenq {

namespace {

using Json = nlohmann::ordered_json;

// One unpaired record (or a pair, as two) -> *out; "" or why it is malformed.
std::string kto_records_from_json(const Json& j, std::vector<KtoRecord>* out) {
  if (!j.is_object()) return std::string("expected a JSON object, got ") + j.type_name();
  if (j.contains("chosen") || j.contains("rejected")) {  // a pair: TRL's unpair_preference_dataset
    KtoRecord c, r;
    const std::string why = preference_record_from_json(j, &c.record, &r.record);
    if (!why.empty()) return why;
    c.desirable = true;
    out->push_back(std::move(c));
    out->push_back(std::move(r));
    return "";
  }
  const char* key = j.contains("label") ? "label" : j.contains("kto_tag") ? "kto_tag" : nullptr;
  if (!key) return "expected a \"label\" (true: desirable, false: undesirable), or \"chosen\" and \"rejected\"";
  if (!j[key].is_boolean()) return std::string("\"") + key + "\" must be true or false, got " + j[key].dump();
  KtoRecord k;
  k.desirable = j[key].get<bool>();
  Json rest = j;
  rest.erase(key);
  std::string why;
  if (rest.contains("prompt") || rest.contains("completion")) {
    if (!rest.contains("prompt") || !rest.contains("completion"))
      return "expected both \"prompt\" and \"completion\" (TRL's unpaired preference record)";
    Json pc = {{"prompt", rest["prompt"]}, {"completion", rest["completion"]}};
    if (rest.contains("tools")) pc["tools"] = rest["tools"];
    why = sft_record_from_json(pc, SftFormat::kPromptCompletion, &k.record);
  } else if (rest.contains("instruction")) {  // LLaMA-Factory's Alpaca layout: "output" is the completion
    why = sft_record_from_json(rest, SftFormat::kAlpaca, &k.record);
  } else if (is_chat_record(rest)) {  // LLaMA-Factory's: the last message is the completion
    Json m;
    if (!(why = chat_record_as_messages(rest, &m)).empty()) return why;
    const Json& msgs = m["messages"];
    if (!msgs.is_array() || msgs.size() < 2)
      return "a labelled conversation needs a prompt and a last assistant message";
    const Json& last = msgs.back();
    if (!last.is_object() || !last.contains("role") || last["role"] != "assistant")
      return "a labelled conversation's last message must be the assistant's (the judged completion)";
    Json prompt = Json::array();
    for (size_t i = 0; i + 1 < msgs.size(); ++i) prompt.push_back(msgs[i]);
    Json pc = {{"prompt", prompt}, {"completion", Json::array({last})}};
    if (m.contains("tools")) pc["tools"] = m["tools"];
    why = sft_record_from_json(pc, SftFormat::kPromptCompletion, &k.record);
  } else {
    return "expected {\"prompt\", \"completion\", \"label\"}, a labelled conversation or Alpaca record, or a "
           "preference pair";
  }
  if (!why.empty()) return why;
  out->push_back(std::move(k));
  return "";
}

// Position of an example's first scored token (its completion's start).
size_t first_scored(const SftExample& ex) {
  size_t t = 0;
  while (t < ex.loss_mask.size() && !ex.loss_mask[t]) ++t;
  return t;
}

// Units [example, KL sequence] of `examples` taken in `order`, the KL partners rotated within blocks of `block`.
void append_units(const std::vector<SftExample>& examples, const std::vector<uint8_t>& labels,
                  const std::vector<int64_t>& order, int64_t block, int64_t max_len, std::vector<SftExample>* out,
                  std::vector<uint8_t>* out_labels) {
  const int64_t n = static_cast<int64_t>(order.size());
  for (int64_t start = 0; start < n;) {
    int64_t end = std::min(n, start + block);
    if (n - end == 1) end = n;  // a last block of one joins this one
    for (int64_t p = start; p < end; ++p) {
      const int64_t partner = p == start ? end - 1 : p - 1;
      const SftExample& ex = examples[static_cast<size_t>(order[static_cast<size_t>(p)])];
      out->push_back(ex);
      out->push_back(kto_kl_example(ex, examples[static_cast<size_t>(order[static_cast<size_t>(partner)])], max_len));
      out_labels->push_back(labels[static_cast<size_t>(order[static_cast<size_t>(p)])]);
    }
    start = end;
  }
}

}  // namespace

std::vector<KtoRecord> read_kto_records(const std::string& path, bool skip_bad, SftDataStats* stats) {
  std::vector<KtoRecord> records;
  for_each_json_record(path, skip_bad, stats, [&](const Json& j, const std::string& where) {
    const size_t before = records.size();
    const std::string why = kto_records_from_json(j, &records);
    for (size_t i = before; i < records.size(); ++i) records[i].record.where = where;
    return why;
  });
  stats->format = SftFormat::kPreference;
  QWENQ_CHECK(!records.empty(), path << ": no labelled examples (" << stats->skipped << " malformed skipped)");
  return records;
}

SftExample kto_kl_example(const SftExample& prompt_from, const SftExample& completion_from, int64_t max_len) {
  const size_t p = first_scored(prompt_from), c = first_scored(completion_from);
  SftExample kl;
  kl.tokens.assign(prompt_from.tokens.begin(), prompt_from.tokens.begin() + static_cast<std::ptrdiff_t>(p));
  kl.loss_mask.assign(p, 0);
  kl.tokens.insert(kl.tokens.end(), completion_from.tokens.begin() + static_cast<std::ptrdiff_t>(c),
                   completion_from.tokens.end());
  kl.loss_mask.insert(kl.loss_mask.end(), completion_from.loss_mask.begin() + static_cast<std::ptrdiff_t>(c),
                      completion_from.loss_mask.end());
  if (!kl.loss_mask.empty()) kl.loss_mask[0] = 0;
  if (max_len > 0) truncate_sft_example(&kl, max_len);
  return kl;
}

SftDataset load_kto_dataset(const std::string& path, const Tokenizer& tok, const SftDataOptions& opt,
                            int64_t kl_block) {
  QWENQ_CHECK(opt.max_len >= 2, "max_len must be >= 2 (one input and one target), got " << opt.max_len);
  QWENQ_CHECK(kl_block >= 1, "load_kto_dataset: KL blocks of " << kl_block << " examples");
  QWENQ_CHECK(opt.format == SftFormat::kAuto || opt.format == SftFormat::kPreference,
              "unpaired preference training reads labelled records (--format preference or auto), not --format "
                  << sft_format_name(opt.format));
  QWENQ_CHECK(!opt.templ.train_on_prompt && !opt.templ.mask_history,
              "preference training scores the completions only: --train-on-prompt and --mask-history do not apply");
  SftDataset ds;
  SftDataStats& st = ds.stats;
  const std::vector<KtoRecord> records = read_kto_records(path, opt.skip_bad, &st);
  std::vector<SftExample> examples;
  std::vector<uint8_t> labels;
  for (const KtoRecord& rec : records) {
    SftExample ex;
    if (prepare_sft_example(rec.record, tok, opt.templ, opt.max_len, &ex, &st)) {
      examples.push_back(std::move(ex));
      labels.push_back(rec.desirable ? 1 : 0);
    }
  }
  QWENQ_CHECK(!examples.empty(), path << ": every example lost its completion to max_len " << opt.max_len);
  std::vector<int64_t> train, eval;
  split_sft_indices(static_cast<int64_t>(examples.size()), opt.seed, opt.eval_fraction, opt.eval_count, &train, &eval);
  append_units(examples, labels, train, kl_block, opt.max_len, &ds.train, &ds.train_labels);
  append_units(examples, labels, eval, kl_block, opt.max_len, &ds.eval, &ds.eval_labels);
  st.train_examples = static_cast<int64_t>(train.size());
  st.eval_examples = static_cast<int64_t>(eval.size());
  return ds;
}

SftBatch select_batch_sequences(const SftBatch& b, int64_t group, int64_t member) {
  QWENQ_CHECK(group >= 1 && member >= 0 && member < group && b.num_examples % group == 0 &&
                  b.packed.num_seqs() == b.num_examples && b.rows() == b.num_examples,
              "select_batch_sequences: member " << member << " of groups of " << group << " in a batch of "
                                                << b.num_examples << " examples, " << b.packed.num_seqs()
                                                << " sequences and " << b.rows() << " rows (padding mode: one each)");
  SftBatch out;
  out.epoch = b.epoch;
  out.first_index = b.first_index;
  out.packed.cu_seqlens.push_back(0);
  out.cu_rows.push_back(0);
  for (int64_t j = member; j < b.num_examples; j += group) {
    const int32_t from = b.packed.cu_seqlens[static_cast<size_t>(j)];
    const int32_t to = b.packed.cu_seqlens[static_cast<size_t>(j) + 1];
    out.packed.tokens.insert(out.packed.tokens.end(), b.packed.tokens.begin() + from, b.packed.tokens.begin() + to);
    out.packed.positions.insert(out.packed.positions.end(), b.packed.positions.begin() + from,
                                b.packed.positions.begin() + to);
    out.targets.insert(out.targets.end(), b.targets.begin() + from, b.targets.begin() + to);
    out.packed.cu_seqlens.push_back(static_cast<int32_t>(out.packed.tokens.size()));
    out.cu_rows.push_back(static_cast<int32_t>(out.packed.tokens.size()));
    for (int32_t t = from; t < to; ++t) out.num_targets += b.targets[static_cast<size_t>(t)] != kIgnoreIndex;
    out.padded_len = std::max<int64_t>(out.padded_len, to - from);
    ++out.num_examples;
  }
  return out;
}

}  // namespace qwenq
