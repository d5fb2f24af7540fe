// UTF-8 and the bits of Unicode the tokenizer needs: code point classes for the Qwen2 pre-tokenizer regex
// (\p{L}, \p{N}, \s = White_Space) and NFC normalization, all from the generated tables in
// trainer/unicode_tables.cpp (tools/gen_unicode_tables.py).
//
// Invalid UTF-8 is never an error here: a byte that does not start a valid sequence decodes as one
// "code point" 0xFFFFFFFF of length 1 (class: other, NFC leaves it alone), so arbitrary bytes still tokenize
// (as byte-level or byte-fallback tokens) and round-trip.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace qwenq::unicode {

constexpr uint32_t kInvalid = 0xFFFFFFFFu;

// Decodes the code point starting at s[i] (i < n); *len receives its byte length (1 for invalid bytes).
inline uint32_t decode_utf8(const char* s, size_t n, size_t i, int* len) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) {
    *len = 1;
    return c;
  }
  int need;
  uint32_t cp, min;
  if ((c & 0xE0) == 0xC0) {
    need = 1, cp = c & 0x1F, min = 0x80;
  } else if ((c & 0xF0) == 0xE0) {
    need = 2, cp = c & 0x0F, min = 0x800;
  } else if ((c & 0xF8) == 0xF0) {
    need = 3, cp = c & 0x07, min = 0x10000;
  } else {
    *len = 1;
    return kInvalid;
  }
  if (i + static_cast<size_t>(need) >= n) {
    *len = 1;
    return kInvalid;
  }
  for (int k = 1; k <= need; ++k) {
    const unsigned char cc = static_cast<unsigned char>(s[i + k]);
    if ((cc & 0xC0) != 0x80) {
      *len = 1;
      return kInvalid;
    }
    cp = (cp << 6) | (cc & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    *len = 1;
    return kInvalid;
  }
  *len = need + 1;
  return cp;
}

// Appends the UTF-8 encoding of cp (kInvalid is not accepted).
void append_utf8(std::string* out, uint32_t cp);

// Code point classes (bit flags).
enum : uint8_t { kLetter = 1, kNumber = 2, kSpace = 4, kNfcUnsafe = 8 };

// Flags of a code point; kInvalid has none.
uint8_t classify(uint32_t cp);

// Canonical combining class (0 for starters).
uint8_t combining_class(uint32_t cp);

// True when `text` may change under NFC (contains an NFC-unsafe code point). False guarantees it is NFC.
bool may_need_nfc(std::string_view text);

// NFC normalization; text that is already NFC comes back unchanged, invalid bytes are kept as they are.
std::string to_nfc(std::string_view text);

// Replaces invalid UTF-8 with U+FFFD, one per maximal invalid subpart (Python's errors="replace" and Rust's
// String::from_utf8_lossy agree on this).
std::string sanitize_utf8(std::string_view bytes);

// True when `bytes` is valid UTF-8.
bool is_valid_utf8(std::string_view bytes);

const char* unicode_version();

}  // namespace qwenq::unicode
