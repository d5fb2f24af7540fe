#include "trainer/python_random.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "core/error.h"

namespace qwenq {

PythonRandom::PythonRandom(uint64_t seed) {
  std::vector<uint32_t> key;
  for (uint64_t s = seed; s != 0; s >>= 32) key.push_back(static_cast<uint32_t>(s));
  if (key.empty()) key.push_back(0);
  // init_genrand(19650218), then the key mixed in (init_by_array).
  mt_[0] = 19650218u;
  for (int i = 1; i < kN; ++i) mt_[i] = 1812433253u * (mt_[i - 1] ^ (mt_[i - 1] >> 30)) + static_cast<uint32_t>(i);
  int i = 1;
  size_t j = 0;
  for (size_t k = std::max<size_t>(kN, key.size()); k > 0; --k) {
    mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1664525u)) + key[j] + static_cast<uint32_t>(j);
    if (++i >= kN) mt_[0] = mt_[kN - 1], i = 1;
    if (++j >= key.size()) j = 0;
  }
  for (int k = kN - 1; k > 0; --k) {
    mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1566083941u)) - static_cast<uint32_t>(i);
    if (++i >= kN) mt_[0] = mt_[kN - 1], i = 1;
  }
  mt_[0] = 0x80000000u;
  mti_ = kN;
}

uint32_t PythonRandom::genrand_uint32() {
  constexpr uint32_t kUpper = 0x80000000u, kLower = 0x7fffffffu, kMatrixA = 0x9908b0dfu;
  constexpr int kM = 397;
  if (mti_ >= kN) {  // the next 624 words at once
    for (int k = 0; k < kN; ++k) {
      const uint32_t y = (mt_[k] & kUpper) | (mt_[(k + 1) % kN] & kLower);
      mt_[k] = mt_[(k + kM) % kN] ^ (y >> 1) ^ ((y & 1u) ? kMatrixA : 0u);
    }
    mti_ = 0;
  }
  uint32_t y = mt_[mti_++];
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= y >> 18;
  return y;
}

uint32_t PythonRandom::getrandbits(int k) {
  QWENQ_CHECK(k >= 1 && k <= 32, "getrandbits: k " << k << " outside 1..32");
  return genrand_uint32() >> (32 - k);
}

uint32_t PythonRandom::randbelow(uint64_t n) {
  QWENQ_CHECK(n >= 1 && n < (uint64_t{1} << 32), "randbelow: n " << n << " outside 1..2^32 - 1");
  int bits = 0;
  for (uint64_t v = n; v != 0; v >>= 1) ++bits;  // n.bit_length()
  uint64_t r = getrandbits(bits);
  while (r >= n) r = getrandbits(bits);
  return static_cast<uint32_t>(r);
}

std::vector<int64_t> PythonRandom::sample(int64_t n, int64_t k) {
  QWENQ_CHECK(k >= 0 && k <= n && n < (int64_t{1} << 32), "sample: k " << k << " of n " << n);
  std::vector<int64_t> out(static_cast<size_t>(k));
  int64_t setsize = 21;
  if (k > 5) setsize += static_cast<int64_t>(std::pow(4.0, std::ceil(std::log(3.0 * k) / std::log(4.0))));
  if (n <= setsize) {
    std::vector<int64_t> pool(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) pool[i] = i;
    for (int64_t i = 0; i < k; ++i) {
      const int64_t j = randbelow(static_cast<uint64_t>(n - i));
      out[i] = pool[j];
      pool[j] = pool[n - i - 1];
    }
  } else {
    std::unordered_set<int64_t> taken;
    for (int64_t i = 0; i < k; ++i) {
      int64_t j = randbelow(static_cast<uint64_t>(n));
      while (taken.count(j)) j = randbelow(static_cast<uint64_t>(n));
      taken.insert(j);
      out[i] = j;
    }
  }
  return out;
}

}  // namespace qwenq
