// The BPE merge engine shared by both tokenizer kinds: a pair table (left id, right id) -> (rank, merged id)
// in one open-addressing array, and the merge loop that applies the lowest-ranked adjacent pair first
// (leftmost on ties), which is what Hugging Face tokenizers' BPE (word.rs merge_all) does.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace qwenq::tokenizer_detail {

class PairTable {
 public:
  // merges[r] = {left, right, merged}; r is the rank. Later duplicates of a pair are ignored (first wins,
  // as in tokenizers).
  void build(const std::vector<std::array<int32_t, 3>>& merges);
  // Rank and merged id of (left, right); false when the pair does not merge.
  bool find(int32_t left, int32_t right, int32_t* rank, int32_t* merged) const {
    if (slots_.empty()) return false;
    const uint64_t key = pack(left, right);
    size_t h = hash(key);
    while (true) {
      const Slot& s = slots_[h];
      if (s.key == key) {
        *rank = s.rank;
        *merged = s.merged;
        return true;
      }
      if (s.key == kEmpty) return false;
      h = (h + 1) & mask_;
    }
  }
  size_t size() const { return count_; }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  struct Slot {
    uint64_t key = kEmpty;
    int32_t rank = 0, merged = 0;
  };
  static uint64_t pack(int32_t l, int32_t r) {
    return (uint64_t{static_cast<uint32_t>(l)} << 32) | static_cast<uint32_t>(r);
  }
  size_t hash(uint64_t key) const { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> shift_) & mask_; }

  std::vector<Slot> slots_;
  size_t mask_ = 0, count_ = 0;
  int shift_ = 0;
};

// Merges `syms` (initial symbol ids) in place until no adjacent pair is in `pairs`.
void bpe_merge(const PairTable& pairs, std::vector<int32_t>* syms);

}  // namespace qwenq::tokenizer_detail
