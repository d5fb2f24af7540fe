// Added tokens marked normalized (trainer/tokenizer_added.cpp): the normalized=false ones are cut out of the raw
// text first, the normalized=true ones out of each remaining piece after the normalizer, their contents
// normalized too. The expected ids are Hugging Face's (tokenizers 0.21.1 / transformers 4.51.3 on these very
// files; tests/oracle/test_tokenizer_features_oracle.py compares many more texts).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_tokenizers.h"
#include "trainer/tokenizer.h"

namespace qwenq {
namespace {

using Ids = std::vector<int32_t>;

nlohmann::json added(const std::string& content, bool special, bool normalized) {
  return {{"content", content}, {"special", special}, {"normalized", normalized}};
}

// Byte-level (vocab.json + merges.txt: NFC, token id b = byte b), tokens from added_tokens_decoder.
TEST(NormalizedAddedTokens, ByteLevelNfc) {
  const std::string dir = test::write_byte_tokenizer_dir(test::scratch_dir() + "/tok", "");
  nlohmann::json dec;
  dec["256"] = added("<|endoftext|>", true, false);
  dec["257"] = added("<|im_start|>", true, false);
  dec["258"] = added("<|im_end|>", true, false);
  dec["259"] = {{"content", "caf\u00e9"}, {"special", false}};  // normalized by default (not special)
  dec["260"] = added("<\u00e9>", false, true);
  dec["260"]["lstrip"] = dec["260"]["rstrip"] = true;
  dec["261"] = added("\u00f1u", false, true);
  dec["261"]["single_word"] = true;
  dec["262"] = added("\u00e9y", false, false);
  dec["263"] = added("x\u00e9", false, true);
  dec["264"] = added("\u2126m", false, true);  // the Ohm sign: NFC makes it Omega (U+03A9)
  dec["265"] = added("zz", false, false);
  dec["266"] = added("<|\u00e9|>", false, true);  // eos_token below: special, still normalized
  dec["267"] = added("<|n|>", true, true);
  const nlohmann::json cfg = {
      {"tokenizer_class", "Qwen2Tokenizer"}, {"eos_token", "<|\u00e9|>"}, {"added_tokens_decoder", dec}};
  write_file_atomic(dir + "/tokenizer_config.json", cfg.dump());
  const Tokenizer t = Tokenizer::from_dir(dir);
  EXPECT_EQ(t.eos_id(), 266);
  EXPECT_TRUE(t.is_special(266));

  EXPECT_EQ(t.encode("caf\u00e9"), (Ids{259}));
  EXPECT_EQ(t.encode("cafe\u0301"), (Ids{259}));
  EXPECT_EQ(t.encode(" cafe\u0301s"), (Ids{' ', 259, 's'}));
  // The raw "éy" is cut first; decomposed, only the normalized "xé" matches.
  EXPECT_EQ(t.encode("x\u00e9y"), (Ids{'x', 262}));
  EXPECT_EQ(t.encode("xe\u0301y"), (Ids{263, 'y'}));
  // lstrip/rstrip on the normalized text.
  EXPECT_EQ(t.encode("a  <e\u0301>\t b"), (Ids{'a', 260, 'b'}));
  // single_word: judged within the piece, so right after the raw "zz" the piece starts a word.
  EXPECT_EQ(t.encode("zzn\u0303u"), (Ids{265, 261}));
  EXPECT_EQ(t.encode("an\u0303u"), (Ids{'a', 0xC3, 0xB1, 'u'}));
  EXPECT_EQ(t.encode("a n\u0303u"), (Ids{'a', ' ', 261}));
  EXPECT_EQ(t.encode("\u2126m"), (Ids{264}));
  EXPECT_EQ(t.encode("\u03a9m"), (Ids{264}));
  EXPECT_EQ(t.encode("<|e\u0301|>"), (Ids{266}));
  EXPECT_EQ(t.encode("<|n|>"), (Ids{267}));
  EXPECT_EQ(t.encode("<|n|>", true, /*parse_special=*/false), (Ids{'<', '|', 'n', '|', '>'}));
  EXPECT_EQ(t.encode("<|e\u0301|>", true, /*parse_special=*/false), (Ids{'<', '|', 0xC3, 0xA9, '|', '>'}));
}

// added_tokens.json (transformers' legacy path): normalized, except the tokens a special role names.
TEST(NormalizedAddedTokens, AddedTokensJsonRoles) {
  const std::string dir = test::write_byte_tokenizer_dir(test::scratch_dir() + "/tok", "");
  write_file_atomic(dir + "/tokenizer_config.json",
                    R"({"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|\u00e9|>"})");
  write_file_atomic(dir + "/added_tokens.json", R"({"caf\u00e9": 256, "<|\u00e9|>": 257})");
  const Tokenizer t = Tokenizer::from_dir(dir);
  EXPECT_EQ(t.encode("cafe\u0301"), (Ids{256}));
  EXPECT_EQ(t.encode("<|\u00e9|>"), (Ids{257}));
  EXPECT_EQ(t.encode("<|e\u0301|>"), (Ids{'<', '|', 0xC3, 0xA9, '|', '>'}));
}

// A SentencePiece-style tokenizer.json: "<unk>" 0, "▁" 1, "a".."z" 2..27, "<" 28, ">" 29, no merges; added "<x>" 30,
// " zq" 31, "<w>" 32 (single_word) normalized, "<r>" 33 not.
Tokenizer sp_tokenizer(const std::string& dir, const nlohmann::ordered_json& normalizer,
                       const nlohmann::ordered_json& pre_tokenizer) {
  nlohmann::ordered_json vocab = {{"<unk>", 0}, {"\u2581", 1}};
  for (char c = 'a'; c <= 'z'; ++c) vocab[std::string(1, c)] = c - 'a' + 2;
  vocab["<"] = 28;
  vocab[">"] = 29;
  auto tok = [](int id, const std::string& content, bool special, bool normalized, bool single_word = false) {
    return nlohmann::ordered_json{{"id", id}, {"content", content}, {"single_word", single_word}, {"lstrip", false},
                                  {"rstrip", false}, {"normalized", normalized}, {"special", special}};
  };
  const nlohmann::ordered_json tj = {
      {"version", "1.0"},
      {"added_tokens", {tok(0, "<unk>", true, false), tok(30, "<x>", false, true), tok(31, " zq", false, true),
                        tok(32, "<w>", false, true, true), tok(33, "<r>", false, false)}},
      {"normalizer", normalizer},
      {"pre_tokenizer", pre_tokenizer},
      {"post_processor", nullptr},
      {"decoder", nullptr},
      {"model", {{"type", "BPE"}, {"unk_token", "<unk>"}, {"byte_fallback", false}, {"fuse_unk", false},
                 {"vocab", vocab}, {"merges", nlohmann::ordered_json::array()}}}};
  make_dirs(dir);
  write_file_atomic(dir + "/tokenizer.json", tj.dump());
  return Tokenizer::from_dir(dir);
}

const nlohmann::ordered_json kReplaceSpace = {
    {"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}};

// Llama's normalizers Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer: a normalized content is matched as
// "▁<x>", " zq" as "▁▁zq".
TEST(NormalizedAddedTokens, SentencePiecePrependReplace) {
  const nlohmann::ordered_json prepend = {{"type", "Prepend"}, {"prepend", "\u2581"}};
  const nlohmann::ordered_json normalizer = {{"type", "Sequence"}, {"normalizers", {prepend, kReplaceSpace}}};
  const Tokenizer t = sp_tokenizer(test::scratch_dir(), normalizer, nullptr);
  auto enc = [&](const std::string& s) { return t.encode(s, /*add_special_tokens=*/false); };
  EXPECT_EQ(enc("<x>"), (Ids{30}));
  EXPECT_EQ(enc("a<x>"), (Ids{1, 2, 28, 25, 29}));
  EXPECT_EQ(enc("a <x>"), (Ids{1, 2, 30}));
  EXPECT_EQ(enc(" zq"), (Ids{31}));
  EXPECT_EQ(enc("a zq"), (Ids{1, 2, 1, 27, 18}));
  EXPECT_EQ(enc("a  zq"), (Ids{1, 2, 31}));
  // The raw "<r>" first; the piece after it gets its own "▁".
  EXPECT_EQ(enc("<r><x>"), (Ids{33, 30}));
  EXPECT_EQ(enc("b<r>a"), (Ids{1, 3, 33, 1, 2}));
  // single_word in the normalized text: "▁" is no word character, the "a" before " <w>" is.
  EXPECT_EQ(enc("<w> c"), (Ids{32, 1, 4}));
  EXPECT_EQ(enc("a <w>"), (Ids{1, 2, 1, 28, 24, 29}));
}

// Replace(" ", "▁") + Metaspace(prepend_scheme first): the part after a normalized token does not start the text
// (no "▁" prepended to it).
TEST(NormalizedAddedTokens, SentencePieceMetaspaceFirst) {
  const nlohmann::ordered_json meta = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "first"},
                                       {"split", true}};
  const Tokenizer t = sp_tokenizer(test::scratch_dir(), kReplaceSpace, meta);
  auto enc = [&](const std::string& s) { return t.encode(s, /*add_special_tokens=*/false); };
  EXPECT_EQ(enc("<x>ab"), (Ids{30, 2, 3}));
  EXPECT_EQ(enc("ab<x>"), (Ids{1, 2, 3, 30}));
  EXPECT_EQ(enc("<x> ab"), (Ids{30, 1, 2, 3}));
  EXPECT_EQ(enc("a zq"), (Ids{1, 2, 31}));
  EXPECT_EQ(enc("<r> zq"), (Ids{33, 31}));
  // " zq" is looked for as "▁zq", so a "▁" in the input matches too.
  EXPECT_EQ(enc("a\u2581zq"), (Ids{1, 2, 31}));
  EXPECT_EQ(enc("zq\u2581zqb"), (Ids{1, 27, 18, 31, 3}));
}

}  // namespace
}  // namespace qwenq
