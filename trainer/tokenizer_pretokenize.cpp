// Qwen2 pre-tokenizer scanner (see tokenizer_pretokenize.h for the regex it implements). The text is first
// decoded into one small record per code point (byte offset and class), then each alternative of the regex
// is tried in order at the current code point, exactly as the backtracking regex engine would settle.
#include "trainer/tokenizer_pretokenize.h"

#include "trainer/unicode_text.h"

namespace qwenq::tokenizer_detail {

namespace {

// Per-code-point classes.
enum : uint8_t {
  kL = 1,       // \p{L}
  kN = 2,       // \p{N}
  kS = 4,       // \s
  kCrLf = 8,    // \r or \n
  kOther = 16,  // [^\s\p{L}\p{N}]
};

struct Cp {
  uint32_t off;  // byte offset
  uint8_t cls;
  char fold;     // ASCII-lowercased letter for the contraction check ('s' also for U+017F), '\'' or 0
};

struct AsciiTable {
  uint8_t cls[128];
  AsciiTable() {
    for (int c = 0; c < 128; ++c) {
      const uint8_t f = unicode::classify(static_cast<uint32_t>(c));
      uint8_t k = 0;
      if (f & unicode::kLetter) k |= kL;
      if (f & unicode::kNumber) k |= kN;
      if (f & unicode::kSpace) k |= kS;
      if (c == '\r' || c == '\n') k |= kCrLf;
      if (!(k & (kL | kN | kS))) k |= kOther;
      cls[c] = k;
    }
  }
};

const AsciiTable& ascii_table() {
  static const AsciiTable t;
  return t;
}

// Returns the number of code points; (*cps)[count] is a sentinel holding the end offset. Never shrinks *cps.
size_t decode(const char* s, size_t n, std::vector<Cp>* cps) {
  const AsciiTable& at = ascii_table();
  if (cps->size() < n + 1) cps->resize(n + 1);
  Cp* out = cps->data();
  size_t m = 0, i = 0;
  while (i < n) {
    const unsigned char b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
      char fold = 0;
      if ((b >= 'a' && b <= 'z') || b == '\'') fold = static_cast<char>(b);
      if (b >= 'A' && b <= 'Z') fold = static_cast<char>(b + 32);
      out[m++] = Cp{static_cast<uint32_t>(i), at.cls[b], fold};
      ++i;
      continue;
    }
    int len;
    const uint32_t cp = unicode::decode_utf8(s, n, i, &len);
    const uint8_t f = unicode::classify(cp);
    uint8_t k = 0;
    if (f & unicode::kLetter) k |= kL;
    if (f & unicode::kNumber) k |= kN;
    if (f & unicode::kSpace) k |= kS;
    if (!(k & (kL | kN | kS))) k |= kOther;
    out[m++] = Cp{static_cast<uint32_t>(i), k, cp == 0x17F ? 's' : '\0'};
    i += static_cast<size_t>(len);
  }
  out[m] = Cp{static_cast<uint32_t>(n), 0, 0};  // sentinel: offset of the end
  return m;
}

// Length in code points of a contraction match at i, or 0.
size_t contraction(const std::vector<Cp>& c, size_t i, size_t m) {
  if (c[i].fold != '\'' || i + 1 >= m) return 0;
  const char a = c[i + 1].fold;
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 >= m) return 0;
  const char b = c[i + 2].fold;
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

}  // namespace

void pretokenize_qwen2(const char* s, size_t n, std::vector<std::pair<uint32_t, uint32_t>>* pieces) {
  thread_local std::vector<Cp> buf;
  std::vector<Cp>& c = buf;
  const size_t m = decode(s, n, &c);  // code points (c[m] is the sentinel)
  auto emit = [&](size_t from, size_t to) { pieces->emplace_back(c[from].off, c[to].off); };
  size_t i = 0;
  while (i < m) {
    const uint8_t k = c[i].cls;
    // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if (const size_t len = contraction(c, i, m)) {
      emit(i, i + len);
      i += len;
      continue;
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    size_t j = i;
    if (!(k & (kL | kN | kCrLf)) && i + 1 < m && (c[i + 1].cls & kL)) j = i + 1;
    if (c[j].cls & kL && j < m) {
      ++j;
      while (j < m && (c[j].cls & kL)) ++j;
      emit(i, j);
      i = j;
      continue;
    }
    // \p{N}
    if (k & kN) {
      emit(i, i + 1);
      ++i;
      continue;
    }
    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    j = i;
    if (s[c[i].off] == ' ' && i + 1 < m) j = i + 1;
    if (c[j].cls & kOther && j < m) {
      ++j;
      while (j < m && (c[j].cls & kOther)) ++j;
      while (j < m && (c[j].cls & kCrLf)) ++j;
      emit(i, j);
      i = j;
      continue;
    }
    // Only whitespace is left here. \s*[\r\n]+ : up to and including the last CR/LF of the whitespace run.
    size_t e = i;
    size_t last_crlf = m;
    while (e < m && (c[e].cls & kS)) {
      if (c[e].cls & kCrLf) last_crlf = e;
      ++e;
    }
    if (last_crlf != m) {
      emit(i, last_crlf + 1);
      i = last_crlf + 1;
      continue;
    }
    // \s+(?!\S) : the run, minus its last code point when a non-space follows; else \s+ : the run.
    if (e < m && e - i >= 2) --e;
    emit(i, e);
    i = e;
  }
}

}  // namespace qwenq::tokenizer_detail
