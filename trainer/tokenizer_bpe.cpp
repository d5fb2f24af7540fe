// BPE merging. Short words (the common case after pre-tokenization) use a flat array of pair ranks that is
// rescanned after each merge: no allocation, two table lookups per merge. Long words (SentencePiece-style
// models see a whole text as one word) use a binary heap over a linked list, O(n log n). Both apply the
// lowest (rank, position) pair first, so they give the same result.
#include "trainer/tokenizer_bpe.h"

#include <array>
#include <queue>

namespace qwenq::tokenizer_detail {

void PairTable::build(const std::vector<std::array<int32_t, 3>>& merges) {
  size_t cap = 16;
  while (cap < merges.size() * 2 + 16) cap *= 2;
  slots_.assign(cap, Slot{});
  mask_ = cap - 1;
  shift_ = 64;
  for (size_t c = cap; c > 1; c >>= 1) --shift_;
  count_ = 0;
  for (size_t r = 0; r < merges.size(); ++r) {
    const uint64_t key = pack(merges[r][0], merges[r][1]);
    size_t h = hash(key);
    while (slots_[h].key != kEmpty && slots_[h].key != key) h = (h + 1) & mask_;
    if (slots_[h].key == key) continue;
    slots_[h].key = key;
    slots_[h].rank = static_cast<int32_t>(r);
    slots_[h].merged = merges[r][2];
    ++count_;
  }
}

namespace {

constexpr int32_t kNoMerge = INT32_MAX;
constexpr size_t kShortWord = 64;

void merge_short(const PairTable& pairs, std::vector<int32_t>* syms) {
  std::vector<int32_t>& s = *syms;
  size_t n = s.size();
  int32_t rank[kShortWord], merged[kShortWord];
  for (size_t i = 0; i + 1 < n; ++i) {
    if (!pairs.find(s[i], s[i + 1], &rank[i], &merged[i])) rank[i] = kNoMerge;
  }
  while (n > 1) {
    size_t best = 0;
    int32_t best_rank = rank[0];
    for (size_t i = 1; i + 1 < n; ++i) {
      if (rank[i] < best_rank) best_rank = rank[i], best = i;
    }
    if (best_rank == kNoMerge) break;
    s[best] = merged[best];
    for (size_t i = best + 1; i + 1 < n; ++i) {
      s[i] = s[i + 1];
      rank[i] = rank[i + 1];
      merged[i] = merged[i + 1];
    }
    --n;
    if (best > 0 && !pairs.find(s[best - 1], s[best], &rank[best - 1], &merged[best - 1])) rank[best - 1] = kNoMerge;
    if (best + 1 < n && !pairs.find(s[best], s[best + 1], &rank[best], &merged[best])) rank[best] = kNoMerge;
  }
  s.resize(n);
}

struct Candidate {
  int32_t rank, pos, merged;
  bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

void merge_long(const PairTable& pairs, std::vector<int32_t>* syms) {
  std::vector<int32_t>& s = *syms;
  const int32_t n = static_cast<int32_t>(s.size());
  std::vector<int32_t> prev(n), next(n);
  for (int32_t i = 0; i < n; ++i) prev[i] = i - 1, next[i] = i + 1 < n ? i + 1 : -1;
  std::vector<uint8_t> alive(n, 1);
  std::vector<Candidate> heap_storage;
  heap_storage.reserve(n);
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap(std::greater<Candidate>(),
                                                                                      std::move(heap_storage));
  auto push = [&](int32_t i) {
    const int32_t j = next[i];
    if (j < 0) return;
    int32_t r, m;
    if (pairs.find(s[i], s[j], &r, &m)) heap.push({r, i, m});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    const int32_t i = c.pos;
    if (!alive[i] || next[i] < 0) continue;
    const int32_t j = next[i];
    int32_t r, m;
    // Stale when the pair at i changed since it was pushed (the merged id identifies the pair, see header).
    if (!pairs.find(s[i], s[j], &r, &m) || m != c.merged) continue;
    s[i] = m;
    alive[j] = 0;
    next[i] = next[j];
    if (next[j] >= 0) prev[next[j]] = i;
    if (prev[i] >= 0) push(prev[i]);
    push(i);
  }
  int32_t w = 0;
  for (int32_t i = 0; i < n; ++i) {
    if (alive[i]) s[w++] = s[i];
  }
  s.resize(w);
}

}  // namespace

void bpe_merge(const PairTable& pairs, std::vector<int32_t>* syms) {
  if (syms->size() < 2) return;
  if (syms->size() <= kShortWord) {
    merge_short(pairs, syms);
  } else {
    merge_long(pairs, syms);
  }
}

}  // namespace qwenq::tokenizer_detail
