// Unicode classes and NFC over the generated tables. A 64K-entry flag table built once covers the BMP in
// O(1); other planes use binary search over the ranges. NFC follows UAX #15: full canonical decomposition
// (Hangul algorithmically), canonical ordering, then canonical composition of primary composites.
#include "trainer/unicode_text.h"

#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "trainer/unicode_tables.h"

namespace qwenq::unicode {

namespace tables = qwenq::unicode_tables;

namespace {

constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

bool in_ranges(const uint32_t (*ranges)[2], size_t count, uint32_t cp) {
  size_t lo = 0, hi = count;
  while (lo < hi) {
    const size_t mid = (lo + hi) / 2;
    if (ranges[mid][1] < cp) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo < count && ranges[lo][0] <= cp;
}

uint8_t classify_slow(uint32_t cp) {
  uint8_t f = 0;
  if (in_ranges(tables::kLetterRanges, tables::kLetterRanges_count, cp)) f |= kLetter;
  if (in_ranges(tables::kNumberRanges, tables::kNumberRanges_count, cp)) f |= kNumber;
  if (in_ranges(tables::kWhiteSpaceRanges, tables::kWhiteSpaceRanges_count, cp)) f |= kSpace;
  if (in_ranges(tables::kNfcUnsafeRanges, tables::kNfcUnsafeRanges_count, cp)) f |= kNfcUnsafe;
  return f;
}

struct BmpTable {
  uint8_t flags[0x10000];
  BmpTable() {
    auto mark = [&](const uint32_t (*ranges)[2], size_t count, uint8_t bit) {
      for (size_t i = 0; i < count && ranges[i][0] < 0x10000; ++i) {
        for (uint32_t cp = ranges[i][0]; cp <= ranges[i][1] && cp < 0x10000; ++cp) flags[cp] |= bit;
      }
    };
    std::fill(flags, flags + 0x10000, uint8_t{0});
    mark(tables::kLetterRanges, tables::kLetterRanges_count, kLetter);
    mark(tables::kNumberRanges, tables::kNumberRanges_count, kNumber);
    mark(tables::kWhiteSpaceRanges, tables::kWhiteSpaceRanges_count, kSpace);
    mark(tables::kNfcUnsafeRanges, tables::kNfcUnsafeRanges_count, kNfcUnsafe);
  }
};

const BmpTable& bmp_table() {
  static const BmpTable table;
  return table;
}

// Decomposition and composition maps, built once from the table.
struct NfcMaps {
  std::unordered_map<uint32_t, std::pair<uint32_t, uint32_t>> decompose;  // cp -> (first, second or 0)
  std::unordered_map<uint64_t, uint32_t> compose;                         // (first << 32 | second) -> cp
  NfcMaps() {
    decompose.reserve(tables::kDecompositions_count * 2);
    for (size_t i = 0; i < tables::kDecompositions_count; ++i) {
      const uint32_t cp = tables::kDecompositions[i][0] & 0x7FFFFFFFu;
      const uint32_t a = tables::kDecompositions[i][1], b = tables::kDecompositions[i][2];
      decompose.emplace(cp, std::make_pair(a, b));
      if (tables::kDecompositions[i][0] & 0x80000000u) compose.emplace((uint64_t{a} << 32) | b, cp);
    }
  }
};

const NfcMaps& nfc_maps() {
  static const NfcMaps maps;
  return maps;
}

void decompose_into(uint32_t cp, const NfcMaps& maps, std::vector<uint32_t>* out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const uint32_t s = cp - kSBase;
    out->push_back(kLBase + s / kNCount);
    out->push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out->push_back(kTBase + s % kTCount);
    return;
  }
  auto it = cp == kInvalid ? maps.decompose.end() : maps.decompose.find(cp);
  if (it == maps.decompose.end()) {
    out->push_back(cp);
    return;
  }
  decompose_into(it->second.first, maps, out);
  if (it->second.second) decompose_into(it->second.second, maps, out);
}

// Primary composite of (a, b), or 0.
uint32_t compose_pair(uint32_t a, uint32_t b, const NfcMaps& maps) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  }
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount) {
    return a + (b - kTBase);
  }
  auto it = maps.compose.find((uint64_t{a} << 32) | b);
  return it == maps.compose.end() ? 0 : it->second;
}

// NFC of one code point sequence (invalid bytes carried as kInvalid with their raw byte kept aside).
void nfc_codepoints(std::vector<uint32_t>* cps) {
  const NfcMaps& maps = nfc_maps();
  std::vector<uint32_t> d;
  d.reserve(cps->size() + 8);
  for (uint32_t cp : *cps) decompose_into(cp, maps, &d);
  // Canonical ordering: stable insertion sort of each run of non-starters by combining class.
  for (size_t i = 1; i < d.size(); ++i) {
    const uint8_t c = combining_class(d[i]);
    if (c == 0) continue;
    size_t j = i;
    while (j > 0 && combining_class(d[j - 1]) > c) {
      std::swap(d[j], d[j - 1]);
      --j;
    }
  }
  // Canonical composition.
  std::vector<uint32_t>& out = *cps;
  out.clear();
  long starter = -1;
  uint8_t last_cc = 0;
  for (uint32_t cp : d) {
    const uint8_t cc = combining_class(cp);
    if (starter >= 0) {
      const bool adjacent = static_cast<long>(out.size()) - 1 == starter;
      if (adjacent || (last_cc != 0 && last_cc < cc)) {
        const uint32_t p = compose_pair(out[starter], cp, maps);
        if (p) {
          out[starter] = p;
          continue;
        }
      }
    }
    if (cc == 0) starter = static_cast<long>(out.size());
    out.push_back(cp);
    last_cc = cc;
  }
}

}  // namespace

void append_utf8(std::string* out, uint32_t cp) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

uint8_t classify(uint32_t cp) {
  if (cp < 0x10000) return bmp_table().flags[cp];
  if (cp == kInvalid) return 0;
  return classify_slow(cp);
}

uint8_t combining_class(uint32_t cp) {
  if (cp < 0x300 || cp == kInvalid) return 0;
  size_t lo = 0, hi = tables::kCombiningClassRuns_count;
  while (lo < hi) {
    const size_t mid = (lo + hi) / 2;
    if (tables::kCombiningClassRuns[mid][1] < cp) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  if (lo < tables::kCombiningClassRuns_count && tables::kCombiningClassRuns[lo][0] <= cp) {
    return static_cast<uint8_t>(tables::kCombiningClassRuns[lo][2]);
  }
  return 0;
}

bool may_need_nfc(std::string_view text) {
  const char* s = text.data();
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    int len;
    const uint32_t cp = decode_utf8(s, n, i, &len);
    if (classify(cp) & kNfcUnsafe) return true;
    i += len;
  }
  return false;
}

// Copies safe text through and normalizes only the regions around NFC-unsafe code points: from the last
// safe code point before one (it may compose with what follows) up to the next safe code point. A safe code
// point is a starter that never changes and never composes with what precedes it, so regions are independent.
std::string to_nfc(std::string_view text) {
  if (!may_need_nfc(text)) return std::string(text);
  const char* s = text.data();
  const size_t n = text.size();
  std::string out;
  out.reserve(n + 16);
  size_t copied = 0;          // text[0, copied) is already in out
  size_t last_safe = 0;       // byte offset of the last safe code point seen (or 0)
  std::vector<uint32_t> cps;
  size_t i = 0;
  while (i < n) {
    int len;
    const uint32_t cp = decode_utf8(s, n, i, &len);
    if (!(classify(cp) & kNfcUnsafe)) {
      last_safe = i;
      i += len;
      continue;
    }
    // Region [start, end): from the last safe code point (if not yet copied) to the next safe one.
    const size_t start = std::max(last_safe, copied);
    size_t end = i;
    while (end < n) {
      int l;
      const uint32_t c = decode_utf8(s, n, end, &l);
      if (end > i && !(classify(c) & kNfcUnsafe)) break;
      end += l;
    }
    out.append(s + copied, start - copied);
    // Invalid bytes are region boundaries: normalize the valid runs between them, copy the bytes as they are.
    size_t p = start;
    while (p < end) {
      cps.clear();
      size_t q = p;
      while (q < end) {
        int l;
        const uint32_t c = decode_utf8(s, n, q, &l);
        if (c == kInvalid) break;
        cps.push_back(c);
        q += l;
      }
      nfc_codepoints(&cps);
      for (uint32_t c : cps) append_utf8(&out, c);
      if (q < end) out.push_back(s[q++]);
      p = q;
    }
    copied = end;
    i = end;
    last_safe = end;
  }
  out.append(s + copied, n - copied);
  return out;
}

bool is_valid_utf8(std::string_view bytes) {
  const char* s = bytes.data();
  const size_t n = bytes.size();
  for (size_t i = 0; i < n;) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    int len;
    if (decode_utf8(s, n, i, &len) == kInvalid) return false;
    i += len;
  }
  return true;
}

std::string sanitize_utf8(std::string_view bytes) {
  if (is_valid_utf8(bytes)) return std::string(bytes);
  static const char kReplacement[] = "\xEF\xBF\xBD";
  std::string out;
  out.reserve(bytes.size() + 8);
  const unsigned char* s = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
      ++i;
      continue;
    }
    // Expected length and the allowed range of the second byte (Unicode Table 3-7).
    int need = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      need = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      need = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    }
    if (need == 0) {
      out += kReplacement;
      ++i;
      continue;
    }
    size_t j = i + 1;
    int got = 0;
    while (got < need && j < n) {
      const unsigned char cc = s[j];
      const bool ok = got == 0 ? (cc >= lo && cc <= hi) : (cc >= 0x80 && cc <= 0xBF);
      if (!ok) break;
      ++j;
      ++got;
    }
    if (got == need) {
      out.append(reinterpret_cast<const char*>(s + i), j - i);
    } else {
      out += kReplacement;  // one replacement for the maximal subpart s[i, j)
    }
    i = j;
  }
  return out;
}

const char* unicode_version() { return tables::kUnicodeVersion; }

}  // namespace qwenq::unicode
