// Supervised fine-tuning (SFT) data for the LoRA trainer: records read from a file, rendered with a prompt
// template, tokenized with a loss mask, split into train/eval, and cut into batches for the packed-varlen model.
//
// Files: `.jsonl` (one JSON object per line, blank lines ignored) or `.json` (one array of objects). Other
// extensions: JSONL when the first non-blank byte is '{', an array when it is '['.
//
// Record formats (auto-detected from the first record's keys: "messages" or "conversations" -> chat, "instruction" -> Alpaca,
// "prompt" and "completion" -> prompt-completion, "text" -> text; or forced with SftDataOptions::format). Extra keys
// are ignored.
//
//  * text    {"text": T}. Tokens: encode(T) (BOS first when the tokenizer adds one), then EOS.
//            Loss on every token (BOS excluded: it can never be a target).
//  * Alpaca  {"instruction": I, "input": X (optional, "" or null = none), "output": O}. The prompt is Stanford
//            Alpaca's (tatsu-lab/stanford_alpaca, PROMPT_DICT), exactly these C++ literals with {I}/{X} substituted:
//            with input:
//              "Below is an instruction that describes a task, paired with an input that provides further "
//              "context. Write a response that appropriately completes the request.\n\n"
//              "### Instruction:\n{I}\n\n### Input:\n{X}\n\n### Response:\n"
//            without input:
//              "Below is an instruction that describes a task. Write a response that appropriately completes "
//              "the request.\n\n### Instruction:\n{I}\n\n### Response:\n"
//            Tokens: encode(prompt) ++ encode(O) ++ [EOS]; loss on the tokens of O and on EOS only. EOS is the
//            tokenizer's eos_token (<|im_end|> for the Qwen2 instruct tokenizer in ../shared, </s> for Llama).
//  * chat    {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": C, ...}, ...], "tools": [...]}
//            with at least one assistant message (trainer/chat_record.h: reasoning_content, tool_calls, null
//            content beside tool calls). Rendered with the tokenizer's chat template as transformers'
//            apply_chat_template renders it (Tokenizer::render_chat; Qwen1.5/2/2.5 ChatML, Qwen3), e.g. Qwen2.5:
//              "<|im_start|>system\n{system or the template's default}<|im_end|>\n"
//              "<|im_start|>user\n{C}<|im_end|>\n<|im_start|>assistant\n{C}<|im_end|>\n" ...
//            Loss on what the model produces for each assistant message: everything after the generation prompt
//            ("<|im_start|>assistant\n"; with Qwen3 and enable_thinking false, also its empty think block)
//            through the closing <|im_end|> (its reasoning block, content and tool calls; not the "\n" after
//            it). Tool responses, user and system turns are prompt. Tokenizers without a chat template
//            (llama2.c's stories260K) refuse chat data.
//  * prompt-completion (TRL's dataset types) {"prompt": P, "completion": C}: tokens encode(P) ++ encode(C) ++
//            [EOS], loss on C and EOS; or conversational, {"prompt": [messages], "completion": [messages], "tools"}:
//            the concatenation rendered as a chat record, loss on the completion's assistant messages only.
// With SftTemplateOptions::train_on_prompt, Alpaca and chat examples count every token but the first, as text;
// with mask_history, a conversation's assistant messages before the last one are prompt.
// With SftTemplateOptions::alpaca_chat, an Alpaca record is the conversation LLaMA-Factory makes of it (system:
// "system"; each "history" pair as a user and an assistant message; user: instruction, plus "\n" + input when
// there is one; assistant: output), rendered and masked as a chat record. The Stanford prompt ignores "system" and
// "history".
//
// Tokenization: the rendered text is cut into alternating prompt / response pieces at the span boundaries
// and each piece is encoded on its own (specials parsed, as Hugging Face tokenizes a rendered chat), so a
// token never straddles a prompt/response boundary and the mask is exact by construction. For Qwen's
// byte-level BPE this equals encoding the whole string, except where a response starts with a line break
// (the "\n" that ends the prompt would have merged with it). SentencePiece tokenizers (stories260K) add
// their "▁" prefix to every piece, so a response starts with a word-initial token.
//
// Mask convention: SftExample::loss_mask[t] refers to TARGET positions: 1 means "token t is predicted from
// tokens[0..t) and that prediction counts in the loss". loss_mask[0] is always 0 (nothing predicts the
// first token). In a batch, targets[p] = tokens[p+1] when p+1 is in the same segment and loss_mask of that
// token is 1, else kIgnoreIndex (-100): the input-position view the cross-entropy kernel takes.
//
// Malformed records (not JSON, missing fields, wrong types, unknown roles, no assistant turn) are errors
// naming "file:line" (JSONL) or "file: record N" (JSON array; N is 1-based). With skip_bad they are
// skipped and counted instead. An empty dataset is an error naming the file.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/qwen_model.h"
#include "trainer/tokenizer.h"

namespace qwenq {

// kPreference: {"prompt", "chosen", "rejected"} pairs (trainer/dpo.h), read by load_preference_dataset; the SFT
// reader names it and refuses it.
enum class SftFormat { kAuto, kText, kAlpaca, kChat, kPromptCompletion, kPreference };
const char* sft_format_name(SftFormat f);
SftFormat parse_sft_format(const std::string& name);  // "auto", "text", "alpaca", "chat", "prompt-completion"
bool parse_alpaca_prompt(const std::string& name);    // "stanford" -> false, "chat" -> true (alpaca_chat)

// One record as read from the file (only the fields of its format are set).
struct SftRecord {
  SftFormat format = SftFormat::kText;
  std::string where;  // "file:line" or "file: record N", for messages
  std::string text;                                // text
  std::string instruction, input, output;          // Alpaca
  std::string system;                              // Alpaca: optional "system" (used with alpaca_chat)
  std::vector<std::pair<std::string, std::string>> history;  // Alpaca: optional earlier [query, response] turns
  std::vector<ChatMessage> messages;               // chat
  std::vector<std::string> tools;                  // chat: the record's "tools" (JSON texts)
  std::string prompt, completion;                  // prompt-completion (standard)
  size_t completion_from = 0;                      // conversational prompt-completion: messages[this..] complete
};

struct SftExample {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> loss_mask;  // same length; 1 = token t is a counted target (see above)
};

// How records become examples.
struct SftTemplateOptions {
  bool enable_thinking = true;   // chat: Qwen3's switch; false makes an empty think block prompt, not response
  bool train_on_prompt = false;  // loss on every token (prompts, system and user turns, tool responses too)
  bool alpaca_chat = false;      // Alpaca records as a conversation in the tokenizer's chat template (below)
  bool mask_history = false;     // chat: only the last assistant message counts (LLaMA-Factory's mask_history)
  // > 0: a prompt (the tokens before the first counted target) longer than this keeps its last max_prompt_len tokens,
  // after a leading BOS, which stays (TRL's max_prompt_length of its preference trainers: `train --max-prompt-len`
  // with --objective dpo / kto); applied before the cut to max_len.
  int64_t max_prompt_len = 0;
};

struct SftDataOptions {
  SftFormat format = SftFormat::kAuto;
  bool skip_bad = false;      // skip malformed records (counted) instead of stopping at the first
  int64_t max_len = 2048;     // longer examples keep their first max_len tokens
  uint64_t seed = 0;          // train/eval split
  double eval_fraction = 0;   // in [0, 1): held-out share (rounded, at least 1 when > 0)
  int64_t eval_count = 0;     // or an exact number; set at most one of the two
  SftTemplateOptions templ;
};

struct SftDataStats {
  std::string path;
  SftFormat format = SftFormat::kAuto;  // the format used (after detection)
  int64_t records = 0;                  // records turned into examples
  int64_t skipped = 0;                  // malformed records skipped (skip_bad)
  std::vector<std::string> first_skipped;  // "where: why" for the first kMaxReported skipped records
  int64_t prompts_cut = 0;              // examples (pairs) whose prompt lost its start to max_prompt_len
  int64_t prompt_cut_tokens = 0;        // tokens cut from them (a pair's once)
  int64_t truncated = 0;                // examples longer than max_len
  int64_t truncated_tokens = 0;         // tokens cut from them
  int64_t dropped_no_loss = 0;          // examples left without any counted target by truncation (dropped)
  int64_t dropped_empty = 0;            // examples without a target before truncation (an empty "text": EOS alone)
  int64_t dropped_long_prompts = 0;     // GRPO prompts leaving no room for the completion in max_len (trainer/grpo.h)
  int64_t tokens = 0, loss_tokens = 0;  // over kept examples, after truncation
  int64_t longest = 0;                  // longest example before truncation
  int64_t train_examples = 0, eval_examples = 0;
  static constexpr int kMaxReported = 5;
  std::string summary() const;  // one line for logs
};

// A sequence classification example's target (trainer/classify.h): single-label its label's id (values empty);
// multi-label 1 or 0 per label; regression the target of each output.
struct ClassifyTarget {
  int32_t id = -1;
  std::vector<float> values;
};

struct SftDataset {
  std::vector<SftExample> train, eval;
  SftDataStats stats;
  std::vector<uint8_t> train_labels, eval_labels;  // unpaired preference data (trainer/kto.h): desirable, per unit
  std::vector<std::string> train_records, eval_records;  // GRPO prompts (trainer/grpo.h): each one's record, JSON text
  // Preference pairs (trainer/dpo.h): each pair's "margin" (reward modelling, trainer/reward.h; 0 without one).
  std::vector<double> train_margins, eval_margins;
  // Sequence classification (trainer/classify.h): each example's target (placeholders when `unlabelled`), its
  // record's number among the file's records read (0-based) and the record itself (JSON text, in train_records /
  // eval_records above).
  std::vector<ClassifyTarget> train_targets, eval_targets;
  std::vector<int64_t> train_index, eval_index;
  bool unlabelled = false;  // classify: no record held a label (texts to predict: ClassifyDataOptions::unlabelled_ok)
};

// ---- reading (sft_read.cpp) ----------------------------------------------------------------------------

// Walks the records of a .jsonl / .json file (told apart by content, as read_sft_records below): `take` gets each
// parsed record and where it is ("file:line" or "file: record N") and returns "" or why the record is malformed;
// a malformed record (or a line that is not JSON) throws, or with skip_bad is counted in stats->skipped.
void for_each_json_record(const std::string& path, bool skip_bad, SftDataStats* stats,
                          const std::function<std::string(const nlohmann::ordered_json&, const std::string&)>& take);
// One parsed record of a known format -> *rec ("" or why it is malformed).
std::string sft_record_from_json(const nlohmann::ordered_json& j, SftFormat format, SftRecord* rec);

// Reads and validates every record. Malformed ones throw, or with skip_bad are counted in stats->skipped.
// The format is detected from the first record unless `format` forces one. Throws when nothing is left.
std::vector<SftRecord> read_sft_records(const std::string& path, SftFormat format, bool skip_bad,
                                        SftDataStats* stats);

// ---- formatting (sft_format.cpp) -----------------------------------------------------------------------

// The Stanford Alpaca prompt (everything before the output), with or without the input section.
std::string alpaca_prompt(const std::string& instruction, const std::string& input);

// Record -> tokens + mask, untruncated. Throws (naming record.where) for chat data with a tokenizer that has
// no chat template, or one the record cannot be rendered with.
SftExample format_sft_record(const SftRecord& record, const Tokenizer& tok, const SftTemplateOptions& options = {});

// Keeps the first max_len tokens; returns how many were cut.
int64_t truncate_sft_example(SftExample* ex, int64_t max_len);

// format_sft_record, then truncate_sft_example to max_len (0: none), counted in *stats (longest, truncated, and
// records, tokens and loss tokens of a kept example, or dropped_no_loss / dropped_empty). Returns whether the example is kept: it
// has a counted target left.
bool prepare_sft_example(const SftRecord& record, const Tokenizer& tok, const SftTemplateOptions& options,
                         int64_t max_len, SftExample* ex, SftDataStats* stats);

// read -> format -> truncate -> split. Deterministic for (file, tokenizer, options).
SftDataset load_sft_dataset(const std::string& path, const Tokenizer& tok, const SftDataOptions& opt);

// ---- split and batches (sft_batch.cpp) ------------------------------------------------------------------

// Seeded shuffle of [0, n), then the first k indices are eval, the rest train (both in shuffled order).
// k = eval_count, or round(eval_fraction * n) clamped to [1, n-1] when eval_fraction > 0; 0 when neither is
// set. Asking for eval with n < 2 is an error.
void split_sft_indices(int64_t n, uint64_t seed, double eval_fraction, int64_t eval_count,
                       std::vector<int64_t>* train, std::vector<int64_t>* eval);

// Packing: examples, in epoch order, are laid back to back into rows of at most seq_len tokens (greedy: an
// example that does not fit the current row starts the next one); each example is its own sequence
// (positions restart at 0, attention never crosses it). A batch is batch_size rows.
// Padding: one example per row, batch_size rows per batch. The model runs packed varlen sequences, so the
// padded [batch_size, L] layout is represented exactly by one sequence per row without pad tokens (causal
// attention: right padding never changes the real tokens' outputs and pads carry no loss). `padded_len` is
// the L a dense padded implementation would use (longest in the batch, or seq_len with pad_to_seq_len).
// In both modes examples longer than seq_len are first truncated to seq_len (counted), so packing never
// splits an example across rows.
enum class SftBatchMode { kPacking, kPadding };

struct SftBatchOptions {
  SftBatchMode mode = SftBatchMode::kPacking;
  int64_t seq_len = 2048;       // row length (tokens)
  int64_t batch_size = 1;       // rows per batch
  bool shuffle = true;          // reshuffle every epoch from (seed, epoch); false = file order
  uint64_t seed = 0;
  int64_t epochs = 0;           // next() returns false after this many; 0 = endless
  bool pad_to_seq_len = false;  // padding mode: padded_len = seq_len instead of the batch's longest
  // Examples come in groups of this many consecutive ones (a preference pair: chosen, rejected) that are shuffled
  // as units and never split: the example count and (padding mode only) batch_size must be multiples of it.
  int64_t group = 1;
};

struct SftBatch {
  PackedBatch packed;            // tokens, positions (restart per example), cu_seqlens (one per example)
  std::vector<int32_t> targets;  // per token: next-token target or kIgnoreIndex
  std::vector<int32_t> cu_rows;  // rows + 1 offsets into tokens (row r = [cu_rows[r], cu_rows[r+1]))
  int64_t epoch = 0;             // the epoch its examples come from
  int64_t first_index = 0;       // position in that epoch's order of its first example
  int64_t num_examples = 0;
  int64_t num_targets = 0;       // targets != kIgnoreIndex
  int64_t padded_len = 0;        // padding mode only (see above); 0 in packing mode
  int64_t rows() const { return static_cast<int64_t>(cu_rows.size()) - 1; }
};

// Epoch-by-epoch batches with a resumable cursor: restoring a state() reproduces exactly the batches that
// followed it. A batch never mixes epochs (the last one of an epoch may have fewer rows).
class SftBatchIterator {
 public:
  struct State {
    int64_t epoch = 0;
    int64_t index = 0;         // next example position in the epoch's order
    int64_t num_examples = 0;  // guards against resuming over different data
  };

  SftBatchIterator(std::vector<SftExample> examples, const SftBatchOptions& opt);
  bool next(SftBatch* out);
  State state() const;
  void restore(const State& s);
  // The example order of an epoch (a permutation of [0, n)).
  std::vector<int64_t> epoch_order(int64_t epoch) const;
  int64_t num_examples() const { return static_cast<int64_t>(examples_.size()); }
  int64_t truncated_to_seq_len() const { return truncated_; }

 private:
  void load_epoch(int64_t epoch);
  std::vector<SftExample> examples_;
  SftBatchOptions opt_;
  int64_t truncated_ = 0;
  int64_t epoch_ = 0, index_ = 0;
  std::vector<int64_t> order_;  // of epoch_
};

class ProcessGroup;

// Values of each example (`per_example` of them, row-major) that `values` computes per batch, on the batches `opt`
// makes of `examples` (in order: opt.shuffle false, one epoch), the first max_batches (0: all): the values of the
// examples those batches hold, a prefix of `examples`. With a group, rank r computes batches r, r + R, ... and the
// values are gathered (each slot written by one rank: exact, the same on every rank). The evaluations' gather: the
// preference sums (example_nll_sums), a classifier's logits (classify_eval_stats).
std::vector<double> gather_example_values(const std::vector<SftExample>& examples, const SftBatchOptions& opt,
                                          int64_t per_example, int64_t max_batches, ProcessGroup* group,
                                          const std::function<std::vector<double>(const SftBatch&)>& values);

// Next-token targets of one example as one sequence (out has ex.tokens.size() entries):
// out[t] = ex.tokens[t+1] if ex.loss_mask[t+1] else kIgnoreIndex; the last one is always kIgnoreIndex.
void sft_example_targets(const SftExample& ex, int32_t* out);

}  // namespace qwenq
