// A bounded cache from pre-tokenized words (raw bytes) to their BPE ids: one open-addressing table with
// keys and ids stored in two flat arenas, so a hit costs one hash of the word, one probe and a memcmp, with
// no allocation. When it fills up it is simply cleared (words repeat locally; a cleared cache refills fast).
// Not thread-safe: the tokenizer keeps one per thread.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace qwenq::tokenizer_detail {

class WordCache {
 public:
  static constexpr size_t kSlots = size_t{1} << 17;  // at most kSlots / 2 words
  static constexpr size_t kMaxWordBytes = 64;

  // Binds the cache to a tokenizer instance; clears it when the instance changes.
  void bind(uint64_t owner) {
    if (owner_ != owner) {
      clear();
      owner_ = owner;
    }
  }

  // Appends the cached ids of word p[0, n) to *out and returns true, or returns false.
  bool lookup(const char* p, size_t n, uint64_t h, std::vector<int32_t>* out) const {
    if (slots_.empty()) return false;
    for (size_t i = h & (kSlots - 1);; i = (i + 1) & (kSlots - 1)) {
      const Slot& s = slots_[i];
      if (s.key_len == 0) return false;
      if (s.hash == h && s.key_len == n && std::memcmp(keys_.data() + s.key_off, p, n) == 0) {
        out->insert(out->end(), ids_.begin() + s.ids_off, ids_.begin() + s.ids_off + s.ids_len);
        return true;
      }
    }
  }

  void insert(const char* p, size_t n, uint64_t h, const int32_t* ids, size_t count) {
    if (n == 0 || n > kMaxWordBytes) return;
    if (slots_.empty()) slots_.assign(kSlots, Slot{});
    if (size_ >= kSlots / 2) clear_contents();
    size_t i = h & (kSlots - 1);
    while (slots_[i].key_len != 0) i = (i + 1) & (kSlots - 1);
    slots_[i] = Slot{h, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(n),
                     static_cast<uint32_t>(ids_.size()), static_cast<uint32_t>(count)};
    keys_.append(p, n);
    ids_.insert(ids_.end(), ids, ids + count);
    ++size_;
  }

  // 64-bit hash of a short byte string (FNV-1a over 8-byte blocks, then a final mix).
  static uint64_t hash(const char* p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull ^ n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      h = (h ^ w) * 0x100000001b3ull;
      h ^= h >> 29;
    }
    uint64_t tail = 0;
    std::memcpy(&tail, p + i, n - i);
    h = (h ^ tail) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 32;
    h *= 0xD6E8FEB86659FD93ull;
    h ^= h >> 32;
    return h;
  }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t key_off = 0, key_len = 0, ids_off = 0, ids_len = 0;
  };
  void clear_contents() {
    std::fill(slots_.begin(), slots_.end(), Slot{});
    keys_.clear();
    ids_.clear();
    size_ = 0;
  }
  void clear() {
    if (!slots_.empty()) clear_contents();
  }

  uint64_t owner_ = 0;
  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<int32_t> ids_;
  size_t size_ = 0;
};

}  // namespace qwenq::tokenizer_detail
