// SFT records -> tokens + loss mask (templates documented in sft_data.h), truncation, and the whole
// read -> format -> truncate -> split pipeline.
#include <algorithm>
#include <sstream>
#include <utility>

#include "core/error.h"
#include "trainer/sft_data.h"

namespace qwenq {

namespace {

// Rendered text as alternating pieces; `loss` pieces are responses.
struct Piece {
  std::string text;
  bool loss;
};

// Encodes each piece on its own and concatenates (BOS first if the tokenizer adds one); loss_mask is 1 on
// the tokens of loss pieces, then forced to 0 at position 0 (nothing predicts the first token).
SftExample encode_pieces(const std::vector<Piece>& pieces, const Tokenizer& tok) {
  SftExample ex;
  if (tok.adds_bos() && tok.bos_id() >= 0) {
    ex.tokens.push_back(tok.bos_id());
    ex.loss_mask.push_back(0);
  }
  for (const Piece& p : pieces) {
    if (p.text.empty()) continue;
    const std::vector<int32_t> ids = tok.encode(p.text, /*add_special_tokens=*/false, /*parse_special=*/true);
    ex.tokens.insert(ex.tokens.end(), ids.begin(), ids.end());
    ex.loss_mask.insert(ex.loss_mask.end(), ids.size(), p.loss ? 1 : 0);
  }
  if (!ex.loss_mask.empty()) ex.loss_mask[0] = 0;
  return ex;
}

void append_eos(SftExample* ex, const Tokenizer& tok, const std::string& where) {
  QWENQ_CHECK(tok.eos_id() >= 0, where << ": the tokenizer (" << tok.describe() << ") has no EOS token to end the example");
  ex->tokens.push_back(tok.eos_id());
  ex->loss_mask.push_back(ex->tokens.size() > 1 ? 1 : 0);
}

// An Alpaca record as a conversation (SftTemplateOptions::alpaca_chat).
std::vector<ChatMessage> alpaca_messages(const SftRecord& rec) {
  std::vector<ChatMessage> m;
  if (!rec.system.empty()) m.emplace_back("system", rec.system);
  for (const auto& h : rec.history) {
    m.emplace_back("user", h.first);
    m.emplace_back("assistant", h.second);
  }
  m.emplace_back("user", rec.input.empty() ? rec.instruction : rec.instruction + "\n" + rec.input);
  m.emplace_back("assistant", rec.output);
  return m;
}

// The chat example; assistant messages before messages[first_trained] are prompt (prompt-completion records).
SftExample format_chat(const SftRecord& rec, const std::vector<ChatMessage>& messages, const Tokenizer& tok,
                       const SftTemplateOptions& o, size_t first_trained = 0) {
  QWENQ_CHECK(tok.has_chat_template(),
              rec.where << ": chat records need a tokenizer with a chat template (so do Alpaca records with "
                           "--alpaca-prompt chat); " << tok.describe() << " has none (use text records, or Alpaca's "
                           "Stanford prompt)");
  ChatOptions opt;
  opt.enable_thinking = o.enable_thinking;
  opt.tools = rec.tools;
  ChatRender r;
  try {
    r = tok.render_chat(messages, opt);
  } catch (const Error& e) {
    QWENQ_FAIL(rec.where << ": " << e.what());
  }
  size_t untrained = 0;  // assistant messages (spans) before messages[first_trained]
  for (size_t i = 0; i < first_trained && i < messages.size(); ++i) untrained += messages[i].role == "assistant";
  std::vector<Piece> pieces;
  size_t done = 0;  // characters of r.text already in pieces
  for (size_t k = 0; k < r.assistant_spans.size(); ++k) {
    const auto& span = r.assistant_spans[k];
    const bool last = k + 1 == r.assistant_spans.size();
    const bool trained = k >= untrained && (last || !o.mask_history);
    pieces.push_back({r.text.substr(done, span.first - done), o.train_on_prompt});
    pieces.push_back({r.text.substr(span.first, span.second - span.first), trained || o.train_on_prompt});
    done = span.second;
  }
  pieces.push_back({r.text.substr(done), o.train_on_prompt});
  return encode_pieces(pieces, tok);
}

}  // namespace

std::string alpaca_prompt(const std::string& instruction, const std::string& input) {
  if (input.empty()) {
    return "Below is an instruction that describes a task. Write a response that appropriately completes the "
           "request.\n\n### Instruction:\n" +
           instruction + "\n\n### Response:\n";
  }
  return "Below is an instruction that describes a task, paired with an input that provides further context. "
         "Write a response that appropriately completes the request.\n\n### Instruction:\n" +
         instruction + "\n\n### Input:\n" + input + "\n\n### Response:\n";
}

SftExample format_sft_record(const SftRecord& rec, const Tokenizer& tok, const SftTemplateOptions& o) {
  SftExample ex;
  switch (rec.format) {
    case SftFormat::kText:
      ex = encode_pieces({{rec.text, true}}, tok);
      append_eos(&ex, tok, rec.where);
      break;
    case SftFormat::kAlpaca:
      if (o.alpaca_chat) {
        ex = format_chat(rec, alpaca_messages(rec), tok, o);
        break;
      }
      ex = encode_pieces({{alpaca_prompt(rec.instruction, rec.input), o.train_on_prompt}, {rec.output, true}}, tok);
      append_eos(&ex, tok, rec.where);
      break;
    case SftFormat::kChat:
      ex = format_chat(rec, rec.messages, tok, o);
      break;
    case SftFormat::kPromptCompletion:
      if (rec.messages.empty()) {
        ex = encode_pieces({{rec.prompt, o.train_on_prompt}, {rec.completion, true}}, tok);
        append_eos(&ex, tok, rec.where);
      } else {
        ex = format_chat(rec, rec.messages, tok, o, rec.completion_from);
      }
      break;
    case SftFormat::kPreference:  // read as two prompt-completion records (trainer/dpo.h)
    case SftFormat::kAuto:
      QWENQ_FAIL(rec.where << ": record format not set");
  }
  return ex;
}

int64_t truncate_sft_example(SftExample* ex, int64_t max_len) {
  QWENQ_CHECK(max_len >= 1, "max_len must be >= 1, got " << max_len);
  const int64_t n = static_cast<int64_t>(ex->tokens.size());
  if (n <= max_len) return 0;
  ex->tokens.resize(static_cast<size_t>(max_len));
  ex->loss_mask.resize(static_cast<size_t>(max_len));
  return n - max_len;
}

std::string SftDataStats::summary() const {
  std::ostringstream os;
  os << path << ": " << sft_format_name(format) << ", " << records << " records";
  if (skipped) {
    os << " (" << skipped << " malformed skipped; first: ";
    for (size_t i = 0; i < first_skipped.size(); ++i) os << (i ? "; " : "") << first_skipped[i];
    os << ")";
  }
  os << ", " << tokens << " tokens (" << loss_tokens << " in the loss), longest " << longest;
  if (prompts_cut) os << ", " << prompts_cut << " prompts cut to their end by " << prompt_cut_tokens << " tokens in all";
  if (truncated) os << ", " << truncated << " truncated by " << truncated_tokens << " tokens in all";
  if (dropped_no_loss) os << ", " << dropped_no_loss << " dropped (no response left after truncation)";
  if (dropped_empty) os << ", " << dropped_empty << " dropped (empty: no token to predict)";
  if (dropped_long_prompts) os << ", " << dropped_long_prompts << " dropped (the prompt leaves no room for the completion)";
  os << "; train " << train_examples << ", eval " << eval_examples;
  return os.str();
}

bool prepare_sft_example(const SftRecord& rec, const Tokenizer& tok, const SftTemplateOptions& options, int64_t max_len,
                         SftExample* ex, SftDataStats* st) {
  *ex = format_sft_record(rec, tok, options);
  st->longest = std::max<int64_t>(st->longest, static_cast<int64_t>(ex->tokens.size()));
  if (options.max_prompt_len > 0) {
    size_t f = 0;  // the prompt's length: up to the first counted target
    while (f < ex->loss_mask.size() && !ex->loss_mask[f]) ++f;
    const size_t bos = tok.bos_id() >= 0 && !ex->tokens.empty() && ex->tokens[0] == tok.bos_id() ? 1 : 0;
    const size_t keep = static_cast<size_t>(options.max_prompt_len);
    if (f < ex->tokens.size() && f > bos + keep) {
      const auto from = static_cast<std::ptrdiff_t>(bos), to = static_cast<std::ptrdiff_t>(f - keep);
      ex->tokens.erase(ex->tokens.begin() + from, ex->tokens.begin() + to);
      ex->loss_mask.erase(ex->loss_mask.begin() + from, ex->loss_mask.begin() + to);
      ex->loss_mask[0] = 0;
      ++st->prompts_cut;
      st->prompt_cut_tokens += to - from;
    }
  }
  int64_t cut = 0;
  if (max_len > 0) {
    cut = truncate_sft_example(ex, max_len);
    st->truncated += cut > 0;
    st->truncated_tokens += cut;
  }
  int64_t loss = 0;
  for (uint8_t m : ex->loss_mask) loss += m;
  if (loss == 0) {
    ++(cut > 0 ? st->dropped_no_loss : st->dropped_empty);  // an empty "text" is [EOS]: nothing predicts it
    return false;
  }
  ++st->records;
  st->tokens += static_cast<int64_t>(ex->tokens.size());
  st->loss_tokens += loss;
  return true;
}

SftDataset load_sft_dataset(const std::string& path, const Tokenizer& tok, const SftDataOptions& opt) {
  QWENQ_CHECK(opt.max_len >= 2, "max_len must be >= 2 (one input and one target), got " << opt.max_len);
  SftDataset ds;
  SftDataStats& st = ds.stats;
  const std::vector<SftRecord> records = read_sft_records(path, opt.format, opt.skip_bad, &st);
  std::vector<SftExample> all;
  all.reserve(records.size());
  for (const SftRecord& rec : records) {
    SftExample ex;
    if (prepare_sft_example(rec, tok, opt.templ, opt.max_len, &ex, &st)) all.push_back(std::move(ex));
  }
  // Only "text" records can be empty, and a non-empty one keeps a target in max_len >= 2 tokens.
  QWENQ_CHECK(!all.empty(), path << ": empty dataset ("
                                 << (st.dropped_empty > 0 ? "every record is empty: no token to predict"
                                                          : "every example lost its response to max_len " +
                                                                std::to_string(opt.max_len))
                                 << ")");

  std::vector<int64_t> train, eval;
  split_sft_indices(static_cast<int64_t>(all.size()), opt.seed, opt.eval_fraction, opt.eval_count, &train, &eval);
  for (int64_t i : train) ds.train.push_back(std::move(all[static_cast<size_t>(i)]));
  for (int64_t i : eval) ds.eval.push_back(std::move(all[static_cast<size_t>(i)]));
  st.train_examples = static_cast<int64_t>(ds.train.size());
  st.eval_examples = static_cast<int64_t>(ds.eval.size());
  return ds;
}

}  // namespace qwenq
