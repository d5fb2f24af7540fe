// Added tokens in encode, as Hugging Face's AddedVocabulary finds them (tokenizers 0.21), in two passes:
//   1. the tokens marked normalized=false are cut out of the raw text;
//   2. every piece of text left between them goes through the tokenizer's normalizer (as a whole), and the
//      tokens marked normalized=true are cut out of that normalized text. Their patterns are their contents
//      passed through the same normalizer: with NFC, "cafe\u0301" is looked for as "café"; with Llama's
//      Prepend("▁") + Replace(" ", "▁"), "<x>" is looked for as "▁<x>" (so it only matches after a space or at
//      the start of the piece) and " zq" as "▁▁zq".
// The parts left over after pass 2 go on to the pre-tokenizer and the model unchanged (not normalized again).
// Each pass is one AddedVocabulary::find_matches over its text (the whole raw text, or one normalized piece):
// leftmost match, longest at that position; a single_word match touching a word character, or a special one
// under split_special_tokens, is dropped and its text stays ordinary text: the search goes on after it, so no
// shorter token is tried at that position and no token starting inside it ("a<|sw|>" with "<|sw|>" single_word
// and "<|s" added: no cut). lstrip/rstrip then swallow the whitespace (Unicode White_Space) next to a match,
// never past the end of the previous match nor of the text the pass looks at. In pass 2 the neighbours are those
// of the normalized piece: a token at the start of a piece counts as starting a word even right after a pass-1
// token, and "▁" is not whitespace.
// Word characters here: letters, numbers and "_" (Hugging Face: the regex \w, which also counts combining marks,
// connector punctuation, ZWJ/ZWNJ and Other_Alphabetic symbols such as "Ⓐ", but not numbers of category No such
// as "²"; not reproduced).
// Which tokens are normalized: tokenizer.json's "normalized" flag; tokenizer_config.json's added_tokens_decoder
// flag (by default: not special); added_tokens.json's tokens unless a special role names them (trainer/
// tokenizer_load.cpp).
#include <algorithm>
#include <cstring>

#include "trainer/tokenizer_impl.h"
#include "trainer/unicode_text.h"

namespace qwenq::tokenizer_detail {

namespace {

bool is_space_at(std::string_view s, size_t i, int* len) {
  const uint32_t cp = unicode::decode_utf8(s.data(), s.size(), i, len);
  return (unicode::classify(cp) & unicode::kSpace) != 0;
}

// Start of the code point that ends right before byte i (i > 0).
size_t prev_char_start(std::string_view s, size_t i) {
  size_t j = i - 1;
  while (j > 0 && i - j < 4 && (static_cast<unsigned char>(s[j]) & 0xC0) == 0x80) --j;
  return j;
}

bool is_word_char_at(std::string_view s, size_t i) {
  int len;
  const uint32_t cp = unicode::decode_utf8(s.data(), s.size(), i, &len);
  return cp == '_' || (unicode::classify(cp) & (unicode::kLetter | unicode::kNumber)) != 0;
}

void index_patterns(AddedMatcher* m) {
  for (auto& v : m->by_first_byte) v.clear();
  m->first_byte.fill(false);
  for (size_t i = 0; i < m->patterns.size(); ++i) {
    const uint8_t b = static_cast<uint8_t>(m->patterns[i].text[0]);
    m->by_first_byte[b].push_back(static_cast<int32_t>(i));
    m->first_byte[b] = true;
  }
  for (auto& v : m->by_first_byte) {
    std::stable_sort(v.begin(), v.end(), [&](int32_t a, int32_t b) {
      return m->patterns[a].text.size() > m->patterns[b].text.size();
    });
  }
}

}  // namespace

std::string normalize_text(const Tokenizer::Impl& t, std::string_view text) {
  if (t.kind == TokenizerKind::kByteLevel) {
    return t.nfc && unicode::may_need_nfc(text) ? unicode::to_nfc(text) : std::string(text);
  }
  std::string w;
  w.reserve(text.size() + text.size() / 4 + 3);
  if (t.sp_prepend && !text.empty()) w += kSpaceMarker;
  for (char c : text) {
    if (c == ' ' && t.sp_replace_space) {
      w += kSpaceMarker;
    } else {
      w.push_back(c);
    }
  }
  return w;
}

void build_added_matchers(Tokenizer::Impl* t) {
  t->added_raw.patterns.clear();
  t->added_normalized.patterns.clear();
  for (size_t i = 0; i < t->added.size(); ++i) {
    const AddedToken& a = t->added[i];
    if (a.normalized) {
      std::string p = normalize_text(*t, a.content);
      if (!p.empty()) t->added_normalized.patterns.push_back({std::move(p), static_cast<int32_t>(i)});
    } else {
      t->added_raw.patterns.push_back({a.content, static_cast<int32_t>(i)});
    }
  }
  index_patterns(&t->added_raw);
  index_patterns(&t->added_normalized);
}

void split_added(const Tokenizer::Impl& t, const AddedMatcher& m, std::string_view text, bool parse_special,
                 std::vector<AddedSegment>* out) {
  out->clear();
  const size_t n = text.size();
  size_t seg = 0, i = 0;
  while (i < n) {
    if (!m.first_byte[static_cast<uint8_t>(text[i])]) {
      ++i;
      continue;
    }
    const auto& cands = m.by_first_byte[static_cast<uint8_t>(text[i])];
    const AddedMatcher::Pattern* hit = nullptr;
    for (int32_t idx : cands) {
      const AddedMatcher::Pattern& p = m.patterns[idx];
      if (p.text.size() > n - i || std::memcmp(text.data() + i, p.text.data(), p.text.size()) != 0) continue;
      hit = &p;
      break;
    }
    if (!hit) {
      ++i;
      continue;
    }
    const AddedToken& a = t.added[hit->token];
    const size_t len = hit->text.size();
    bool dropped = a.special && !parse_special;
    if (a.single_word) {
      dropped |= i > 0 && is_word_char_at(text, prev_char_start(text, i));
      dropped |= i + len < n && is_word_char_at(text, i + len);
    }
    if (dropped) {
      i += len;
      continue;
    }
    size_t b = i, e = i + len;
    int clen;
    if (a.lstrip) {
      while (b > seg) {
        const size_t p = prev_char_start(text, b);
        if (!is_space_at(text, p, &clen)) break;
        b = p;
      }
    }
    if (a.rstrip) {
      while (e < n && is_space_at(text, e, &clen)) e += static_cast<size_t>(clen);
    }
    if (b > seg) out->push_back({seg, b, -1});
    out->push_back({b, e, a.id});
    seg = i = e;
  }
  if (seg < n) out->push_back({seg, n, -1});
}

}  // namespace qwenq::tokenizer_detail
