// Python's random.Random, to the bit, for the draws lm-evaluation-harness makes with it (few-shot examples:
// random.Random(1234).sample(docs, n)): the Mersenne Twister MT19937 seeded as random.seed(int) seeds it
// (init_by_array over the integer's 32-bit words, least significant first), getrandbits(k) for k <= 32 (the top k bits
// of one output), _randbelow(n) (getrandbits(n.bit_length()) until below n) and sample(range(n), k)'s choice of
// indices (a shrinking pool when n <= setsize = 21 + 4^⌈log4(3k)⌉ for k > 5, else 21; otherwise redraws of indices
// already taken). Checked against CPython 3.11's random module (tests/test_gsm8k.cpp).
#pragma once

#include <cstdint>
#include <vector>

namespace qwenq {

class PythonRandom {
 public:
  explicit PythonRandom(uint64_t seed);
  uint32_t genrand_uint32();
  uint32_t getrandbits(int k);           // 1 <= k <= 32
  uint32_t randbelow(uint64_t n);        // 1 <= n < 2^32
  std::vector<int64_t> sample(int64_t n, int64_t k);  // random.sample(range(n), k); 0 <= k <= n < 2^32

 private:
  static constexpr int kN = 624;
  uint32_t mt_[kN];
  int mti_ = kN + 1;
};

}  // namespace qwenq
