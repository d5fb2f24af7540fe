// The grouped decode attention kernel (kernels/attention_decode_grouped.cu): one block per (split, kv head, sequence)
// for all the query heads of the kv head's group, so each key and value row is read once. attention_decode_cuda and
// attention_decode_bf16_cuda take it when QWENQ_DECODE_GROUPED=1 (opt-in until it has run on a GPU) and
// attention_decode_grouped_takes says it applies; the result is theirs up to the order of the sums.
#pragma once

#ifdef QWENQ_HAVE_CUDA
#include <cstdint>

#include "kernels/cuda_check.h"

namespace qwenq {

// QWENQ_DECODE_GROUPED=1.
bool attention_decode_grouped_enabled();
// D = 64, 128 or 256 and both caches 16-byte aligned (the kernel's row pieces).
bool attention_decode_grouped_takes(int64_t D, const void* k_cache, const void* v_cache);
// Its split count for a cache of bf16 (else fp32) rows of D: about one wave of the kernel instance's resident
// blocks per SM over B·Hkv·(query chunks of 4 or 8) blocks per split, at most one split per 128 keys of max_len
// (a split's ceil(len / n) keys may then be under 128, kernels/attention_decode_split.h), at most 65535.
int64_t attention_decode_grouped_splits(int64_t B, int64_t H, int64_t Hkv, int64_t D, bool bf16, int64_t max_len);
// The launch, after the caller's argument checks: k_cache and v_cache bf16 bits (bf16) or fp32; lens in device
// memory; a [B, H, splits, D + 2] scratch on `stream` when splits > 1. Queued on `stream`.
void attention_decode_grouped_cuda(const char* name, const float* q, const void* k_cache, const void* v_cache,
                                   bool bf16, const int32_t* lens, int64_t B, int64_t H, int64_t Hkv, int64_t D,
                                   int64_t capacity, int64_t max_len, float* out, CudaStream stream);

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
