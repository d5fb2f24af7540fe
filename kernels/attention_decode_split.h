// Which keys a split of the decode attention takes (both GPU kernels, kernels/attention_decode.cu and
// attention_decode_grouped.cu; tests/test_attention_decode.cpp checks the rule here on the host).
//
// The launcher sizes its grid for max_len: `splits` ranges, at most one per `min_keys` keys begun, so
// splits <= ceil(max_len / min_keys). A sequence may hold fewer keys than max_len: a batch of mixed lengths, or a
// graph-captured decode step, whose grid is sized once for the whole cache while the length lives on the device.
// Cutting max_len into equal ranges would then leave the sequence's keys to the first few splits (500 keys in a
// 32768-key cache cut 9 ways: one block of the 9 works). So each sequence cuts its own length:
//   n   = min(splits, max(1, ceil(len / min_keys)))   splits that take keys
//   per = ceil(len / n)
//   split s takes [s·per, min(len, (s + 1)·per)), empty for s >= n
// For len == max_len this is ceil(max_len / splits) per split, the equal cut of the grid's length. With more than
// 64 splits a few below n may be empty too (per·(n − 1) >= len: len = 4354, min_keys = 64, 68 splits: n = 68,
// per = 65, split 67 starts at 4355).
// Which keys a block takes changes only the order of the sums, so any cut gives the same result up to rounding.
#pragma once

#include <cstdint>

#include "kernels/host_device.h"

namespace qwenq {

struct DecodeSplitKeys {
  int64_t k0, k1;  // [k0, k1), empty when k1 <= k0
};

// len >= 0 (the kernels clamp it to [0, max_len] first), splits >= 1, min_keys >= 1.
QWENQ_HOST_DEVICE inline DecodeSplitKeys decode_split_keys(int64_t len, int64_t splits, int64_t min_keys,
                                                           int64_t split) {
  int64_t n = (len + min_keys - 1) / min_keys;
  if (n < 1) n = 1;
  if (n > splits) n = splits;
  const int64_t per = (len + n - 1) / n;
  const int64_t k0 = split * per;
  const int64_t end = k0 + per;
  return DecodeSplitKeys{k0, end < len ? end : len};
}

}  // namespace qwenq
