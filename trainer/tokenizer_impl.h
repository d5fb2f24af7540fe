// The state behind a Tokenizer (private to trainer/tokenizer*.cpp): vocabulary, merges, added tokens, the
// options of the Hugging Face pipeline we reproduce, and what save_hf needs to write it back.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/json_file.h"  // read_json_file, read_ordered_json_file (the loaders' files)

#include "trainer/tokenizer.h"
#include "trainer/tokenizer_bpe.h"

namespace qwenq {

enum class TokenizerKind { kByteLevel, kSentencePiece };

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = true, lstrip = false, rstrip = false, single_word = false, normalized = false;
};

// The added tokens one matching pass looks for (trainer/tokenizer_added.cpp): the raw pass the contents of the
// normalized=false tokens, the normalized pass the contents of the normalized=true ones passed through the
// normalizer.
struct AddedMatcher {
  struct Pattern {
    std::string text;
    int32_t token;  // index into Impl::added
  };
  std::vector<Pattern> patterns;
  std::array<std::vector<int32_t>, 256> by_first_byte;  // indices into patterns, longest first
  std::array<bool, 256> first_byte{};                   // some pattern starts with this byte
  bool empty() const { return patterns.empty(); }
};

// Metaspace prepend scheme (SentencePiece-style models loaded from a Metaspace pre-tokenizer).
enum class PrependScheme { kNever, kFirst, kAlways };

struct Tokenizer::Impl {
  TokenizerKind kind = TokenizerKind::kByteLevel;
  std::string source;  // the directory or file it came from (for messages)

  // Vocabulary (regular tokens and added tokens share the id space).
  std::vector<std::string> pieces;  // id -> spelling in the vocabulary ("" for unused ids)
  std::vector<std::string> bytes;   // id -> raw bytes it decodes to
  std::vector<uint8_t> flags;       // id -> kFlag* bits
  std::unordered_map<std::string, int32_t> piece_to_id;  // regular vocabulary spellings
  std::unordered_map<std::string, int32_t> added_to_id;  // added-token contents
  std::vector<std::array<int32_t, 3>> merges;            // rank -> {left, right, merged}
  tokenizer_detail::PairTable pairs;
  std::array<int32_t, 256> byte_ids{};  // byte-level: symbol of each byte; SentencePiece: <0xNN> (-1: none)
  std::array<int32_t, 128> ascii_ids{};  // SentencePiece: id of each ASCII character piece (-1: none)
  int32_t space_id = -1;                 // SentencePiece: id of "▁"

  std::vector<AddedToken> added;  // sorted by id
  AddedMatcher added_raw, added_normalized;

  int32_t bos = -1, eos = -1, pad = -1, unk = -1;
  bool add_bos = false, add_eos = false;
  bool llama_class = false;  // add_bos / add_eos come from add_bos_token / add_eos_token (a pair gets them twice)

  // Byte-level options.
  bool nfc = true;
  bool ignore_merges = false;
  std::unordered_map<std::string, int32_t> raw_to_id;  // raw bytes -> id, only when ignore_merges

  // SentencePiece-style options.
  bool sp_prepend = true;        // Prepend("▁") normalizer (on every non-empty segment)
  bool sp_replace_space = true;  // Replace(" ", "▁") normalizer
  bool metaspace = false;        // Metaspace pre-tokenizer (replaces spaces itself)
  PrependScheme metaspace_prepend = PrependScheme::kAlways;
  bool metaspace_split = false;
  bool byte_fallback = true;
  bool fuse_unk = false;
  bool strip_leading_space = true;  // decoder Strip(" ", 1, 0): one leading space of the text
  // Metaspace decoder (prepend_scheme not never): the first decoded token loses every "▁" it holds (not only a
  // leading one: Hugging Face drops the replacement character throughout token 0 of what it decodes).
  bool metaspace_decoder = false;

  // Chat template.
  std::string chat_template, chat_template_file;

  // What save_hf writes back.
  std::string tokenizer_json_text;        // verbatim tokenizer.json when loaded from one
  nlohmann::ordered_json tokenizer_config;  // tokenizer_config.json as loaded (null if none)
  std::string special_tokens_map_text;    // verbatim special_tokens_map.json when loaded from one
  std::string tokenizer_class;

  // From tokenizer.json, used to settle BOS/EOS/unk after the config files are read.
  bool has_template_processing = false;
  std::string template_first_special, template_last_special;  // TemplateProcessing "single" ends
  // TemplateProcessing "pair", item by item: "$A", "$B" (the two sequences) or a special token's content; empty when
  // the post-processor has none (or is not a TemplateProcessing).
  std::vector<std::string> template_pair;
  std::string model_unk_token;

  uint64_t serial = 0;  // distinguishes instances for the per-thread word cache

  // Fills flags, bytes, byte_ids, ascii_ids, the pair table and the added-token matcher from pieces,
  // merges and added. `what` names the source in errors.
  void finalize(const std::string& what);
};

enum : uint8_t { kFlagSpecial = 1, kFlagAdded = 2, kFlagByte = 4 };

namespace tokenizer_detail {

// GPT-2's bytes_to_unicode: the printable code point standing for each byte in byte-level vocabularies.
uint32_t byte_to_unicode(uint8_t b);
// Inverse map (-1 for code points that stand for no byte).
int unicode_to_byte(uint32_t cp);
// Code points in UTF-8 text (bytes that do not continue a sequence).
size_t codepoint_count(const std::string& s);
// "<0xNN>" -> NN, else -1.
int parse_byte_token(const std::string& piece);
// The SentencePiece word marker "▁" (U+2581) in UTF-8.
extern const char* const kSpaceMarker;
// The Qwen2 pre-tokenizer pattern as Hugging Face spells it.
extern const char* const kQwen2Pattern;
// The tokenizer's normalizer (trainer/tokenizer_added.cpp): byte-level NFC (when set); SentencePiece-style "▁"
// prepended to non-empty text, then spaces -> "▁" (each when set).
std::string normalize_text(const Tokenizer::Impl& t, std::string_view text);
// Builds t->added_raw and t->added_normalized from t->added (after the pipeline options are set).
void build_added_matchers(Tokenizer::Impl* t);
// A piece of text cut by split_added: [begin, end) is an added token (token >= 0: its id) or text (token -1).
struct AddedSegment {
  size_t begin, end;
  int32_t token;
};
// Cuts the tokens of one matcher out of `text` (Hugging Face's AddedVocabulary::find_matches); special tokens
// only when parse_special.
void split_added(const Tokenizer::Impl& t, const AddedMatcher& m, std::string_view text, bool parse_special,
                 std::vector<AddedSegment>* out);
// New serial for Impl::serial.
uint64_t next_tokenizer_serial();


// Loaders for the model part (vocabulary, merges, pipeline options); tokenizer_load*.cpp.
void load_tokenizer_json(const std::string& path, Tokenizer::Impl* t);
void load_vocab_merges(const std::string& vocab_path, const std::string& merges_path, Tokenizer::Impl* t);

// The pipeline options of a Llama SentencePiece tokenizer read from scores (llama2.c's .bin, GGUF's "llama" model):
// "▁" prepended and for spaces, byte fallback, unknowns fused, the leading space stripped on decode.
void set_llama_sentencepiece_options(Tokenizer::Impl* t);

// Merges of a SentencePiece BPE vocabulary derived from piece scores exactly as transformers'
// convert_slow_tokenizer.generate_merges does: every split of a piece into two vocabulary pieces, ordered
// by (score, left length, right length) descending (lengths in code points), ties kept in vocabulary order
// (then by left id, right id). Pieces with eligible[id] == false take no part (control and byte tokens).
std::vector<std::array<int32_t, 3>> merges_from_scores(const std::vector<std::string>& pieces,
                                                       const std::vector<float>& scores,
                                                       const std::vector<bool>& eligible);

}  // namespace tokenizer_detail

}  // namespace qwenq
