// Encoding and decoding (the Hugging Face pipeline, step by step) and the small accessors. Loading is in
// tokenizer_load*.cpp, the vocabulary tables in tokenizer_vocab.cpp, saving in tokenizer_save.cpp, ChatML
// in tokenizer_chat.cpp.
//
// encode: the added tokens marked normalized=false are cut out of the raw text first; every other piece goes
// through the model's normalizer, the normalized=true added tokens are cut out of the normalized piece
// (trainer/tokenizer_added.cpp: Hugging Face's AddedVocabulary), and what is left goes through the
// pre-tokenizer and BPE:
//   byte-level: NFC (skipped when the text cannot change) -> Qwen2 scanner -> per-word BPE over byte symbols,
//               with a per-thread word cache;
//   SentencePiece-style: prepend "▁", " " -> "▁" -> one word per part (or Metaspace words) -> BPE over
//               characters, unknown characters as <0xNN> byte tokens.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string_view>

#include "core/error.h"
#include "trainer/tokenizer_impl.h"
#include "trainer/tokenizer_pretokenize.h"
#include "trainer/tokenizer_word_cache.h"
#include "trainer/unicode_text.h"

namespace qwenq {

using namespace tokenizer_detail;

namespace {

void encode_byte_level_word(const Tokenizer::Impl& t, const char* p, size_t n, WordCache* cache,
                            std::vector<int32_t>* syms, std::vector<int32_t>* out) {
  if (n == 1) {
    out->push_back(t.byte_ids[static_cast<uint8_t>(p[0])]);
    return;
  }
  const uint64_t h = WordCache::hash(p, n);
  if (cache->lookup(p, n, h, out)) return;
  syms->clear();
  auto whole = t.ignore_merges ? t.raw_to_id.find(std::string(p, n)) : t.raw_to_id.end();
  if (whole != t.raw_to_id.end()) {
    syms->push_back(whole->second);
  } else {
    for (size_t i = 0; i < n; ++i) syms->push_back(t.byte_ids[static_cast<uint8_t>(p[i])]);
    bpe_merge(t.pairs, syms);
  }
  out->insert(out->end(), syms->begin(), syms->end());
  cache->insert(p, n, h, syms->data(), syms->size());
}

// Pre-tokenizer and BPE over normalized text.
void encode_byte_level_normalized(const Tokenizer::Impl& t, const char* s, size_t n, std::vector<int32_t>* out) {
  thread_local WordCache cache;
  thread_local std::vector<std::pair<uint32_t, uint32_t>> words;
  thread_local std::vector<int32_t> syms;
  cache.bind(t.serial);
  words.clear();
  pretokenize_qwen2(s, n, &words);
  for (const auto& [b, e] : words) encode_byte_level_word(t, s + b, e - b, &cache, &syms, out);
}

// Initial symbols of a SentencePiece-style word: one per character, unknown characters as byte tokens
// (byte_fallback) or <unk> (fused when fuse_unk).
void sp_initial_symbols(const Tokenizer::Impl& t, const std::string& w, std::vector<int32_t>* syms) {
  syms->clear();
  bool last_unk = false;
  for (size_t i = 0; i < w.size();) {
    const unsigned char c = static_cast<unsigned char>(w[i]);
    int len;
    int32_t id = -1;
    if (c < 0x80) {
      len = 1;
      id = t.ascii_ids[c];
    } else {
      unicode::decode_utf8(w.data(), w.size(), i, &len);
      if (len == 3 && w.compare(i, 3, kSpaceMarker) == 0) {
        id = t.space_id;
      } else {
        auto it = t.piece_to_id.find(w.substr(i, static_cast<size_t>(len)));
        if (it != t.piece_to_id.end()) id = it->second;
      }
    }
    if (id >= 0) {
      syms->push_back(id);
      last_unk = false;
    } else {
      bool all_bytes = t.byte_fallback;
      for (int k = 0; k < len && all_bytes; ++k) all_bytes = t.byte_ids[static_cast<uint8_t>(w[i + k])] >= 0;
      if (all_bytes) {
        for (int k = 0; k < len; ++k) syms->push_back(t.byte_ids[static_cast<uint8_t>(w[i + k])]);
        last_unk = false;
      } else {
        QWENQ_CHECK(t.unk >= 0, t.source << ": character '" << w.substr(i, len)
                                         << "' is not in the vocabulary and there is no unk token");
        if (!(t.fuse_unk && last_unk)) syms->push_back(t.unk);
        last_unk = true;
      }
    }
    i += static_cast<size_t>(len);
  }
}

// Pre-tokenizer (Metaspace, if any) and BPE over normalized text; at_text_start: it starts the input (Metaspace's
// prepend_scheme first).
void encode_sp_normalized(const Tokenizer::Impl& t, const char* s, size_t n, bool at_text_start,
                          std::vector<int32_t>* out) {
  std::string w;
  w.reserve(n + n / 4 + 3);
  for (size_t i = 0; i < n; ++i) {
    if (s[i] == ' ' && t.metaspace) {
      w += kSpaceMarker;
    } else {
      w.push_back(s[i]);
    }
  }
  if (t.metaspace && w.compare(0, 3, kSpaceMarker) != 0 &&
      (t.metaspace_prepend == PrependScheme::kAlways || (t.metaspace_prepend == PrependScheme::kFirst && at_text_start))) {
    w.insert(0, kSpaceMarker);
  }
  std::vector<std::string> words;
  if (t.metaspace && t.metaspace_split) {
    size_t start = 0;
    for (size_t i = 3; i + 3 <= w.size(); ++i) {
      if (w.compare(i, 3, kSpaceMarker) == 0) {
        words.push_back(w.substr(start, i - start));
        start = i;
        i += 2;
      }
    }
    words.push_back(w.substr(start));
  } else {
    words.push_back(std::move(w));
  }
  std::vector<int32_t> syms;
  for (const std::string& word : words) {
    if (word.empty()) continue;
    if (t.ignore_merges) {
      auto it = t.piece_to_id.find(word);
      if (it != t.piece_to_id.end()) {
        out->push_back(it->second);
        continue;
      }
    }
    sp_initial_symbols(t, word, &syms);
    bpe_merge(t.pairs, &syms);
    out->insert(out->end(), syms.begin(), syms.end());
  }
}

void encode_normalized(const Tokenizer::Impl& t, const char* s, size_t n, bool at_text_start,
                       std::vector<int32_t>* out) {
  if (t.kind == TokenizerKind::kByteLevel) {
    encode_byte_level_normalized(t, s, n, out);
  } else {
    encode_sp_normalized(t, s, n, at_text_start, out);
  }
}

// A piece of the raw text between the normalized=false added tokens: normalized, cut at the normalized=true added
// tokens, the parts left pre-tokenized and merged.
void encode_piece(const Tokenizer::Impl& t, std::string_view piece, bool at_text_start, bool parse_special,
                  std::vector<int32_t>* out) {
  std::string normalized;
  std::string_view s = piece;
  if (t.kind == TokenizerKind::kSentencePiece || (t.nfc && unicode::may_need_nfc(piece))) {
    normalized = normalize_text(t, piece);
    s = normalized;
  }
  if (t.added_normalized.empty()) {
    encode_normalized(t, s.data(), s.size(), at_text_start, out);
    return;
  }
  std::vector<AddedSegment> parts;
  split_added(t, t.added_normalized, s, parse_special, &parts);
  for (const AddedSegment& p : parts) {
    if (p.token >= 0) {
      out->push_back(p.token);
    } else {
      encode_normalized(t, s.data() + p.begin, p.end - p.begin, at_text_start && p.begin == 0, out);
    }
  }
}

}  // namespace

std::vector<int32_t> Tokenizer::encode(const std::string& text, bool add_special_tokens, bool parse_special) const {
  const Impl& t = *impl_;
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special_tokens && t.add_bos && t.bos >= 0) ids.push_back(t.bos);
  std::vector<AddedSegment> segs;
  split_added(t, t.added_raw, text, parse_special, &segs);
  for (const AddedSegment& sg : segs) {
    if (sg.token >= 0) {
      ids.push_back(sg.token);
    } else {
      encode_piece(t, std::string_view(text).substr(sg.begin, sg.end - sg.begin), sg.begin == 0, parse_special, &ids);
    }
  }
  if (add_special_tokens && t.add_eos && t.eos >= 0) ids.push_back(t.eos);
  return ids;
}

std::vector<int32_t> Tokenizer::encode_pair(const std::string& text, const std::string& text_pair, int64_t max_len,
                                            bool add_special_tokens) const {
  const Impl& t = *impl_;
  std::vector<int32_t> a = encode(text, false), b = encode(text_pair, false);
  // The joined layout, item by item: kSeqA, kSeqB or a special token's id.
  constexpr int32_t kSeqA = -1, kSeqB = -2;
  std::vector<int32_t> layout;
  if (!add_special_tokens) {
    layout = {kSeqA, kSeqB};
  } else if (t.llama_class || t.template_pair.empty()) {  // (without a template only a Llama-class tokenizer adds any)
    for (int32_t seq : {kSeqA, kSeqB}) {
      if (t.add_bos && t.bos >= 0) layout.push_back(t.bos);
      layout.push_back(seq);
      if (t.add_eos && t.eos >= 0) layout.push_back(t.eos);
    }
  } else {
    for (const std::string& item : t.template_pair) {
      if (item == "$A" || item == "$B") {
        layout.push_back(item == "$A" ? kSeqA : kSeqB);
        continue;
      }
      const int32_t id = token_id(item);
      QWENQ_CHECK(id >= 0, "the tokenizer's pair template names \"" << item << "\", which is not a token");
      layout.push_back(id);
    }
  }
  if (max_len > 0) {
    const int64_t specials = std::count_if(layout.begin(), layout.end(), [](int32_t v) { return v >= 0; });
    const int64_t room = max_len - specials;
    QWENQ_CHECK(room >= 2, "a sequence pair in " << max_len << " tokens: " << specials
                                                  << " special tokens leave no room for both texts");
    // tokenizers' LongestFirst: with n1 <= n2, keep n1 and cut the longer to what is left (at least n1); if that
    // is still too long, both to room / 2 (the longer gets the odd one).
    int64_t n1 = static_cast<int64_t>(a.size()), n2 = static_cast<int64_t>(b.size());
    if (n1 + n2 > room) {
      const bool swap = n1 > n2;
      if (swap) std::swap(n1, n2);
      n2 = n1 > room ? n1 : std::max(n1, room - n1);
      if (n1 + n2 > room) {
        n1 = room / 2;
        n2 = n1 + room % 2;
      }
      if (swap) std::swap(n1, n2);
      a.resize(static_cast<size_t>(std::min<int64_t>(n1, static_cast<int64_t>(a.size()))));
      b.resize(static_cast<size_t>(std::min<int64_t>(n2, static_cast<int64_t>(b.size()))));
    }
  }
  std::vector<int32_t> ids;
  ids.reserve(a.size() + b.size() + layout.size());
  for (int32_t item : layout) {
    if (item == kSeqA) ids.insert(ids.end(), a.begin(), a.end());
    else if (item == kSeqB) ids.insert(ids.end(), b.begin(), b.end());
    else ids.push_back(item);
  }
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  const Impl& t = *impl_;
  const int64_t V = static_cast<int64_t>(t.pieces.size());
  std::string out;
  std::string run;  // pending byte-fallback bytes
  size_t run_tokens = 0;
  auto flush_run = [&]() {
    if (run_tokens == 0) return;
    if (unicode::is_valid_utf8(run)) {
      out += run;
    } else {
      for (size_t k = 0; k < run_tokens; ++k) out += "\xEF\xBF\xBD";  // ByteFallback: one U+FFFD per token
    }
    run.clear();
    run_tokens = 0;
  };
  bool first = true;  // the first token that is decoded (after skipping)
  for (int32_t id : ids) {
    if (id < 0 || id >= V || (t.pieces[id].empty() && t.bytes[id].empty())) continue;
    if (skip_special && (t.flags[id] & kFlagSpecial)) continue;
    const bool is_first = first;
    first = false;
    if (t.flags[id] & kFlagByte) {
      run += t.bytes[id];
      ++run_tokens;
      continue;
    }
    flush_run();
    if (is_first && t.metaspace_decoder) {
      // Metaspace decoder: every "▁" of token 0 is dropped ("▁▁a" first decodes to "a", later to "  a").
      const std::string& p = t.pieces[id];
      for (size_t i = 0; i < p.size(); ++i) {
        if (p.compare(i, 3, kSpaceMarker) == 0) {
          i += 2;
        } else {
          out.push_back(p[i]);
        }
      }
      continue;
    }
    out += t.bytes[id];
  }
  flush_run();
  if (t.kind == TokenizerKind::kSentencePiece && t.strip_leading_space && !out.empty() && out[0] == ' ') {
    out.erase(0, 1);
  }
  return unicode::sanitize_utf8(out);
}

std::string Tokenizer::decode_token(int32_t id) const {
  const Impl& t = *impl_;
  if (id < 0 || id >= static_cast<int64_t>(t.bytes.size())) return std::string();
  return t.bytes[id];
}

int64_t Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->pieces.size()); }
int32_t Tokenizer::bos_id() const { return impl_->bos; }
int32_t Tokenizer::eos_id() const { return impl_->eos; }
int32_t Tokenizer::pad_id() const { return impl_->pad; }
int32_t Tokenizer::unk_id() const { return impl_->unk; }
bool Tokenizer::adds_bos() const { return impl_->add_bos && impl_->bos >= 0; }
bool Tokenizer::is_byte_level() const { return impl_->kind == TokenizerKind::kByteLevel; }

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < static_cast<int64_t>(impl_->flags.size()) && (impl_->flags[id] & kFlagSpecial);
}

int32_t Tokenizer::token_id(const std::string& token_text) const {
  auto a = impl_->added_to_id.find(token_text);
  if (a != impl_->added_to_id.end()) return a->second;
  auto it = impl_->piece_to_id.find(token_text);
  return it == impl_->piece_to_id.end() ? -1 : it->second;
}

std::string Tokenizer::token_text(int32_t id) const {
  if (id < 0 || id >= static_cast<int64_t>(impl_->pieces.size())) return std::string();
  return impl_->pieces[id];
}

std::string Tokenizer::describe() const {
  const Impl& t = *impl_;
  std::ostringstream os;
  os << (t.kind == TokenizerKind::kByteLevel ? "byte-level BPE" : "SentencePiece-style BPE") << ", "
     << t.pieces.size() << " tokens (" << t.merges.size() << " merges, " << t.added.size() << " added), from "
     << t.source;
  return os.str();
}

}  // namespace qwenq
