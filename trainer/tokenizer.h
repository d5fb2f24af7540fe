// The toolkit's tokenizer: text <-> token ids for the two model families we load, bit-identical to Hugging
// Face `tokenizers` / transformers on the same files.
//
//  * Qwen2 byte-level BPE (Qwen1.5/2/2.5/3): NFC, then the Qwen2 pre-tokenizer regex (hand-written scanner),
//    then GPT-2 byte->unicode symbols merged by rank. No BOS. Files: tokenizer.json, or vocab.json +
//    merges.txt, with added/special tokens from tokenizer_config.json / added_tokens.json.
//  * SentencePiece-style BPE with byte fallback (Llama family; llama2.c's stories260K): spaces become "▁",
//    a "▁" is prepended, pieces merge by rank (derived from SentencePiece scores), characters outside the
//    vocabulary become <0xNN> byte tokens; BOS first. Files: tokenizer.json, or a llama2.c tokenizer .bin.
//
// Added tokens (e.g. <|im_start|>) are cut out of the raw text before anything else, as Hugging Face does, those
// marked normalized out of the normalized text (trainer/tokenizer_added.cpp); special ones only when
// parse_special is true. ChatML chat templates (Qwen) are applied natively; other
// Jinja templates are refused with an error naming the file.
//
// A Tokenizer is immutable and cheap to copy (shared state); encode/decode may be called from several threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace qwenq {

class GgufFile;
class GgufWriter;

// One function call an assistant message makes (OpenAI/Hugging Face `tool_calls`: {"function": {"name", "arguments"}}
// or {"name", "arguments"}).
struct ChatToolCall {
  std::string name;
  std::string arguments;            // JSON text as Python's json.dumps writes it (the template's `tojson`), or
  bool arguments_is_string = false;  // the string itself when the record gave the arguments as a string
};

// One chat message as Hugging Face's apply_chat_template takes it.
struct ChatMessage {
  ChatMessage() = default;
  ChatMessage(std::string r, std::string c) : role(std::move(r)), content(std::move(c)) {}
  std::string role, content;
  std::string reasoning;             // `reasoning_content` (Qwen3 templates); used when has_reasoning
  bool has_reasoning = false;
  bool content_is_null = false;      // "content": null (an assistant message that only calls tools)
  std::vector<ChatToolCall> tool_calls;
};

// apply_chat_template's keyword arguments.
struct ChatOptions {
  bool add_generation_prompt = false;
  // Qwen3's switch: false closes an empty "<think>\n\n</think>\n\n" in the generation prompt (in training,
  // that block is then prompt, not response). Templates without the switch ignore it.
  bool enable_thinking = true;
  std::vector<std::string> tools;    // each tool's JSON text (json.dumps style), for templates with a tools branch
};

// A rendered conversation: the text, and for each assistant message (in order) the span [begin, end) of what
// the model produces for it: everything after the generation prompt (rendered with the same options) through
// its "<|im_end|>".
struct ChatRender {
  std::string text;
  std::vector<std::pair<size_t, size_t>> assistant_spans;
};

// A generated assistant reply read back into the message the template renders it from (Tokenizer::parse_chat_reply).
// error: why its "<tool_call>" blocks were not read as tool calls (then the reply stays whole in content).
struct ChatReply {
  ChatMessage message;
  std::string error;
};

class Tokenizer {
 public:
  // A model directory: tokenizer.json if present, else vocab.json + merges.txt; specials/added tokens and
  // chat template from tokenizer_config.json (added_tokens_decoder) / added_tokens.json / tokenizer.json
  // "added_tokens" (and special_tokens_map.json, chat_template.jinja).
  static Tokenizer from_dir(const std::string& dir);
  // llama2.c tokenizer .bin (tok512.bin): int32 max_len, then per token float32 score, int32 len, bytes.
  static Tokenizer from_llama2c(const std::string& tok_bin_path);
  // A GGUF file's tokenizer.ggml.* metadata (trainer/tokenizer_gguf.cpp): "gpt2" with the qwen2 pre-tokenizer,
  // or "llama" (SentencePiece-style, merges from the scores).
  static Tokenizer from_gguf(const GgufFile& f);
  // from_dir, or from_gguf when `dir_or_gguf` is a GGUF file.
  static Tokenizer from_model(const std::string& dir_or_gguf);

  std::vector<int32_t> encode(const std::string& text, bool add_special_tokens = true,
                              bool parse_special = true) const;
  // A sequence pair as transformers' tokenizer(text, text_pair, truncation=True, max_length=max_len) encodes it (a
  // classifier's sentence pair): each text encoded alone without special tokens, the pair cut to max_len by the
  // tokenizers library's "longest_first" rule when it is longer (special tokens included; max_len 0: never), then
  // joined with the special tokens: a Llama-class tokenizer's [bos] A [eos] [bos] B [eos] (as add_bos_token /
  // add_eos_token say), else tokenizer.json's TemplateProcessing "pair" template, else A B (Qwen's: none).
  // Throws when max_len leaves no room beside the special tokens.
  std::vector<int32_t> encode_pair(const std::string& text, const std::string& text_pair, int64_t max_len = 0,
                                   bool add_special_tokens = true) const;
  // Hugging Face decode: special tokens kept unless skip_special; ids without a token (padding rows of the
  // embedding) are skipped; invalid UTF-8 becomes U+FFFD.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;
  // Raw bytes of one token (for streaming generation; may be part of a UTF-8 character). For
  // SentencePiece models a word-initial token starts with a space ("▁" decoded), including the first one.
  std::string decode_token(int32_t id) const;

  int64_t vocab_size() const;  // including added tokens (max id + 1)
  int32_t bos_id() const;      // -1 when absent
  int32_t eos_id() const;
  int32_t pad_id() const;
  int32_t unk_id() const;
  bool adds_bos() const;       // encode(..., add_special_tokens=true) prepends BOS
  bool is_special(int32_t id) const;
  // Id of an exact vocabulary spelling ("Ġthe", "▁the") or added-token content; -1 if absent.
  int32_t token_id(const std::string& token_text) const;
  // Vocabulary spelling of an id ("" if none).
  std::string token_text(int32_t id) const;
  bool is_byte_level() const;  // Qwen-style byte-level BPE (else SentencePiece-style)
  // One line for logs: kind, size, where it came from.
  std::string describe() const;

  bool has_chat_template() const;
  // The tokenizer's chat template applied natively, as transformers' apply_chat_template renders it
  // (trainer/tokenizer_chat.cpp: Qwen1.5/Qwen2/Qwen2.5 ChatML with default system turns and tools, Qwen3 with
  // its reasoning blocks and tools). Other templates are refused, naming the file.
  ChatRender render_chat(const std::vector<ChatMessage>& messages, const ChatOptions& options) const;
  std::string apply_chat_template(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;
  // Whether the template has Qwen3's enable_thinking switch (so ChatOptions::enable_thinking matters).
  bool chat_template_has_thinking_switch() const;
  // The inverse of one assistant turn: `generated`, the text decoded after render_chat's generation prompt, as the
  // assistant message the template renders back to that text (tests/test_chat_reply.cpp: render, then parse, gives
  // the message again, whatever the generation prompt). Qwen3 templates: the reasoning block split off by the
  // template's own rule (reasoning_content when not empty);
  // templates with Qwen2.5/Qwen3's tools branch: each "<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>"
  // into a tool call, the text before the first as content (null when empty). A block that does not parse, is left
  // open, or is followed by other text sets `error` and keeps the whole reply as content.
  ChatReply parse_chat_reply(const std::string& generated) const;

  // Writes a Hugging Face tokenizer into `dir` (which must exist): tokenizer.json + tokenizer_config.json +
  // special_tokens_map.json, plus vocab.json + merges.txt for byte-level models.
  void save_hf(const std::string& dir) const;
  // Writes tokenizer.ggml.* for a model whose embedding has n_vocab rows (ids past the vocabulary become
  // "[PAD<i>]"); fallback_bos/eos (config.json's, -1 for none) stand in when the tokenizer names none.
  void write_gguf(GgufWriter& w, int64_t n_vocab, int32_t fallback_bos, int32_t fallback_eos) const;

  struct Impl;  // defined in trainer/tokenizer_impl.h

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

}  // namespace qwenq
