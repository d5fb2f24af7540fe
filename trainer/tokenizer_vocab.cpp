// The vocabulary side of a tokenizer: GPT-2's byte <-> unicode map, <0xNN> byte tokens, and
// Impl::finalize, which turns what a loader read (pieces, merges, added tokens) into the tables encode and
// decode use: raw bytes per id, initial symbols per byte/character, the merge pair table, the added-token
// matcher.
#include <algorithm>
#include <atomic>
#include <cstdio>

#include "core/error.h"
#include "trainer/tokenizer_impl.h"
#include "trainer/unicode_text.h"

namespace qwenq {

namespace tokenizer_detail {

const char* const kSpaceMarker = "\xE2\x96\x81";
const char* const kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

uint32_t byte_to_unicode(uint8_t b) {
  auto printable = [](int x) { return (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255); };
  if (printable(b)) return b;
  uint32_t n = 0;
  for (int x = 0; x < b; ++x) {
    if (!printable(x)) ++n;
  }
  return 256 + n;
}

int unicode_to_byte(uint32_t cp) {
  static const std::vector<int> inverse = [] {
    std::vector<int> inv(512, -1);
    for (int b = 0; b < 256; ++b) inv[byte_to_unicode(static_cast<uint8_t>(b))] = b;
    return inv;
  }();
  return cp < inverse.size() ? inverse[cp] : -1;
}

int parse_byte_token(const std::string& piece) {
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = piece[i];
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else {
      return -1;
    }
    v = v * 16 + d;
  }
  return v;
}

uint64_t next_tokenizer_serial() {
  static std::atomic<uint64_t> counter{0};
  return ++counter;
}

}  // namespace tokenizer_detail

using namespace tokenizer_detail;

void Tokenizer::Impl::finalize(const std::string& what) {
  // Added tokens take their ids in the shared id space.
  std::sort(added.begin(), added.end(), [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
  int32_t max_id = static_cast<int32_t>(pieces.size()) - 1;
  for (const AddedToken& a : added) max_id = std::max(max_id, a.id);
  pieces.resize(static_cast<size_t>(max_id + 1));
  flags.assign(pieces.size(), 0);
  added_to_id.clear();
  for (const AddedToken& a : added) {
    QWENQ_CHECK(a.id >= 0, what << ": added token '" << a.content << "' has a negative id");
    QWENQ_CHECK(!a.content.empty(), what << ": added token " << a.id << " has empty content");
    std::string& p = pieces[a.id];
    QWENQ_CHECK(p.empty() || p == a.content, what << ": added token '" << a.content << "' has id " << a.id
                                                  << ", which the vocabulary gives to '" << p << "'");
    p = a.content;
    flags[a.id] |= kFlagAdded | (a.special ? kFlagSpecial : 0);
    added_to_id[a.content] = a.id;
  }

  // Raw bytes of every token.
  bytes.assign(pieces.size(), std::string());
  for (size_t id = 0; id < pieces.size(); ++id) {
    const std::string& p = pieces[id];
    if (flags[id] & kFlagAdded) {
      bytes[id] = p;
      continue;
    }
    if (kind == TokenizerKind::kByteLevel) {
      std::string& out = bytes[id];
      for (size_t i = 0; i < p.size();) {
        int len;
        const uint32_t cp = unicode::decode_utf8(p.data(), p.size(), i, &len);
        const int b = cp == unicode::kInvalid ? -1 : unicode_to_byte(cp);
        if (b >= 0) {
          out.push_back(static_cast<char>(b));
        } else {
          out.append(p, i, static_cast<size_t>(len));
        }
        i += static_cast<size_t>(len);
      }
    } else {
      const int b = parse_byte_token(p);
      if (b >= 0) {
        bytes[id] = std::string(1, static_cast<char>(b));
        flags[id] |= kFlagByte;
        continue;
      }
      std::string& out = bytes[id];
      for (size_t i = 0; i < p.size();) {
        if (p.compare(i, 3, kSpaceMarker) == 0) {
          out.push_back(' ');
          i += 3;
        } else {
          out.push_back(p[i++]);
        }
      }
    }
  }

  // Initial symbols.
  byte_ids.fill(-1);
  ascii_ids.fill(-1);
  space_id = -1;
  auto lookup = [&](const std::string& s) {
    auto it = piece_to_id.find(s);
    return it == piece_to_id.end() ? -1 : it->second;
  };
  if (kind == TokenizerKind::kByteLevel) {
    for (int b = 0; b < 256; ++b) {
      std::string sym;
      unicode::append_utf8(&sym, byte_to_unicode(static_cast<uint8_t>(b)));
      byte_ids[b] = lookup(sym);
      QWENQ_CHECK(byte_ids[b] >= 0, what << ": the vocabulary has no symbol '" << sym << "' for byte 0x" << std::hex
                                         << b << "; not a byte-level BPE vocabulary");
    }
    if (ignore_merges) {
      raw_to_id.clear();
      for (const auto& [piece, id] : piece_to_id) raw_to_id.emplace(bytes[id], id);
    }
  } else {
    char name[8];
    for (int b = 0; b < 256; ++b) {
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      byte_ids[b] = lookup(name);
    }
    for (int c = 0; c < 128; ++c) ascii_ids[c] = lookup(std::string(1, static_cast<char>(c)));
    space_id = lookup(kSpaceMarker);
  }

  pairs.build(merges);

  build_added_matchers(this);
  serial = next_tokenizer_serial();
}

}  // namespace qwenq
