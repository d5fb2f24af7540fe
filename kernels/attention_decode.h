// Decode attention: one new query per sequence against that sequence's KV cache (grouped-query, causal by
// construction: the cache holds exactly the keys the new token may see, itself included).
//   For sequence b, query head h, kv head g = h / (H/Hkv), keys j in [0, lens[b]):
//     s_j  = (scale·q[b,h]) · k_cache[b,j,g],   scale = 1/sqrt(D) rounded to fp32 (the prefill's rounding)
//     m    = max_j s_j,   l = Σ_j exp(s_j − m)                (fp32, max subtracted)
//     out[b,h] = Σ_j exp(s_j − m) · v_cache[b,j,g] / l
// The same softmax as row i = lens[b] − 1 of attention_forward_ref over the sequence's keys (kernels/attention.h);
// only the order of the sums differs.
//
// Cache layout: k_cache and v_cache are [B, capacity, Hkv, D] fp32, row j of sequence b at ((b·capacity + j)·Hkv
// + g)·D. Per sequence this is the CPU KvCache's [capacity, Hkv, D] (trainer/qwen_model.h), so a prompt's k and v
// rows [T, Hkv, D] are written by the projections straight into the cache and the prefill attention reads them
// there. fp32 by default: a step then rounds nothing the CPU's forward_step does not (greedy tokens follow the
// CPU's), and at decode the cache is a small part of the bytes read per token next to the weights (Qwen2.5-7B at
// 1000 cached tokens: 115 MB of fp32 K/V against 3.8 GB of 4-bit weights).
//
// bf16 cache (attention_decode_bf16_ref / _cuda): the same layout with k_cache, v_cache as bf16 bits (uint16_t),
// each element widened exactly to fp32 when read; every other number and every sum is the fp32 variant's. So the
// bf16 twin on a cache c16 equals the fp32 twin on the widened cache fp32(c16) (the CPU twins bit for bit). Half
// the cache's bytes per key: the choice for long contexts (trainer/qwen_model.h, KvCacheDType). Requires D even
// (every key row then starts on a 4-byte boundary) and, on the GPU, 4-byte aligned cache pointers: the kernel
// reads a pair of bf16 columns per 32-bit load.
//
// GPU kernel (attention_decode_cuda, kernels/attention_decode.cu), flash-decoding: each sequence's keys
// [0, lens[b]) are cut into at most `splits` equal ranges, one per 64 keys begun (kernels/attention_decode_split.h;
// the grid has `splits` ranges, sized for max_len); block (split, h, b) runs an online softmax over its range in
// tiles of 128 keys (each warp one key at a time, lanes over D, a warp sum per score; then each thread owns up to 2
// output columns for Σ p·v: columns t and t + 128 in fp32, the adjacent pair 2t, 2t + 1 in bf16, one 32-bit load
// per key either way, so both variants read 128 contiguous bytes per warp and load), and writes (m, l,
// unnormalized acc[D]) to a scratch buffer; a second kernel merges the splits of each (b, h) in split order:
// M = max m_s, L = Σ l_s·e^(m_s−M), out = Σ acc_s·e^(m_s−M) / L. With one split the first kernel writes out
// directly. splits is chosen on the host from B·H, max_len and the device's SM count (about two blocks per SM, at
// most one split per 64 keys of max_len), so the result is deterministic for a given device, max_len and lens.
// Keys at or past lens[b] are never read (the test fills them with NaN).
// With QWENQ_DECODE_GROUPED=1 (opt-in until it has run on a GPU) both GPU twins take the grouped kernel for D = 64,
// 128, 256 (kernels/attention_decode_grouped.h): a block per kv head for all its query heads, the same contract.
#pragma once

#include <cstdint>

namespace qwenq {

// Largest head dim of the decode kernel (2 output columns per thread of a 128-thread block).
constexpr int64_t kAttentionDecodeMaxHeadDim = 256;

// q, out: [B, H, D] fp32; k_cache, v_cache: [B, capacity, Hkv, D] fp32; lens: [B] keys per sequence, each in
// [1, max_len]; max_len <= capacity (a bound the GPU launcher sizes its grid with). H a multiple of Hkv,
// D <= kAttentionDecodeMaxHeadDim. out must not overlap the inputs.
void attention_decode_ref(const float* q, const float* k_cache, const float* v_cache, const int32_t* lens, int64_t B,
                          int64_t H, int64_t Hkv, int64_t D, int64_t capacity, int64_t max_len, float* out);

// The bf16-cache variant: k_cache, v_cache [B, capacity, Hkv, D] bf16 bits, read widened to fp32; the rest as
// attention_decode_ref, plus D even. Equals attention_decode_ref on the widened caches, bit for bit.
void attention_decode_bf16_ref(const float* q, const uint16_t* k_cache, const uint16_t* v_cache, const int32_t* lens,
                               int64_t B, int64_t H, int64_t Hkv, int64_t D, int64_t capacity, int64_t max_len,
                               float* out);

// The CPU model's decode attention (kernels/attention_decode_cpu.cpp): attention_decode_ref's contract, arguments
// and messages (with their own name), computed per (sequence, kv head, key split) for the whole query group at
// once with Eigen GEMMs over blocks of 256 keys, the splits merged in order; the result does not depend on the
// thread count. Unlike the twins, any head dim, odd ones with a bf16 cache too. Equals attention_decode_ref up to the order of the sums; the bf16 variant equals the fp32 one on
// the widened cache, bit for bit. qwen_model's forward_step takes them for a decode step (one token).
void attention_decode_cpu(const float* q, const float* k_cache, const float* v_cache, const int32_t* lens, int64_t B,
                          int64_t H, int64_t Hkv, int64_t D, int64_t capacity, int64_t max_len, float* out);
void attention_decode_bf16_cpu(const float* q, const uint16_t* k_cache, const uint16_t* v_cache, const int32_t* lens,
                               int64_t B, int64_t H, int64_t Hkv, int64_t D, int64_t capacity, int64_t max_len,
                               float* out);

// The argument checks the twins run, messages starting with `name`: the shapes (with cache_elem_bytes = 2, the
// bf16 variant's, also D even; with kernel_limits false, the CPU variants', neither that nor the head dim's bound),
// then (B > 0) the pointers. Returns false for B = 0 (nothing to do). lens are not read (they may be device memory).
bool attention_decode_check_args(const char* name, const float* q, const void* k_cache, const void* v_cache,
                                 const int32_t* lens, int64_t B, int64_t H, int64_t Hkv, int64_t D, int64_t capacity,
                                 int64_t max_len, const float* out, int cache_elem_bytes = 4,
                                 bool kernel_limits = true);

}  // namespace qwenq

#ifdef QWENQ_HAVE_CUDA
#include "kernels/cuda_check.h"

namespace qwenq {

// The CUDA twin: q, k_cache, v_cache, out in device memory and lens in DEVICE memory (a decode loop keeps them
// there). The launcher checks the shapes with the ref's messages; it cannot read lens, so the kernel clamps each
// to [0, max_len] and writes zeros for a sequence with no key. Uses a [B, H, splits, D + 2] fp32 scratch buffer
// allocated on `stream` when splits > 1. Queued on `stream`.
void attention_decode_cuda(const float* q, const float* k_cache, const float* v_cache, const int32_t* lens, int64_t B,
                           int64_t H, int64_t Hkv, int64_t D, int64_t capacity, int64_t max_len, float* out,
                           CudaStream stream = nullptr);

// The bf16-cache twin (attention_decode_bf16_ref): the same kernels instantiated for bf16 keys and values; also
// refuses cache pointers that are not 4-byte aligned.
void attention_decode_bf16_cuda(const float* q, const uint16_t* k_cache, const uint16_t* v_cache,
                                const int32_t* lens, int64_t B, int64_t H, int64_t Hkv, int64_t D, int64_t capacity,
                                int64_t max_len, float* out, CudaStream stream = nullptr);

// The number of key ranges attention_decode_cuda splits max_len into for B·H query heads (tests and benchmarks
// use it to reach both the one-split and the merged paths).
int64_t attention_decode_splits(int64_t B, int64_t H, int64_t max_len);

}  // namespace qwenq
#endif  // QWENQ_HAVE_CUDA
