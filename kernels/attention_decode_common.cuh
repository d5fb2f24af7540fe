// Pieces the two decode attention kernels share (kernels/attention_decode.cu: one block per query head;
// kernels/attention_decode_grouped.cu: one block per kv head and its query heads): the launch parameters and the
// split merge. For .cu files only; everything is in an anonymous namespace (each file gets its own kernels).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/attention_decode_split.h"
#include "kernels/cuda_check.cuh"

namespace qwenq {
namespace {

constexpr int kDecodeThreads = 128;

struct DecodeParams {
  const float* q;
  const void *k, *v;  // [B, capacity, Hkv, D] of the partial kernel's T
  const int32_t* lens;
  int64_t H, Hkv, D, capacity, max_len;
  int64_t min_keys;  // the launcher's least keys per split (kernels/attention_decode_split.h)
  int splits;
  float scale;
  float* out;  // [B, H, D], written when splits == 1
  float* ws;   // [B, H, splits, D + 2]: acc[D], m, l; when splits > 1
};

// Every (b, h) merges its splits' (m, l, acc) in split order: every thread computes M = max m_s over the splits
// with l_s > 0 and L = Σ l_s·e^(m_s − M) (the same numbers in every thread), then its columns
// out = Σ_s acc_s·e^(m_s − M) / L. grid (H, B), kDecodeThreads threads.
__global__ void __launch_bounds__(kDecodeThreads) attention_decode_merge_kernel(DecodeParams p) {
  const int64_t h = blockIdx.x, b = blockIdx.y, D = p.D;
  const float* w = p.ws + (b * p.H + h) * p.splits * (D + 2);
  float M = -INFINITY;
  for (int s = 0; s < p.splits; ++s) {
    const float* ws = w + s * (D + 2);
    if (ws[D + 1] > 0.f) M = fmaxf(M, ws[D]);
  }
  float L = 0.f;
  for (int s = 0; s < p.splits; ++s) {
    const float* ws = w + s * (D + 2);
    if (ws[D + 1] > 0.f) L += ws[D + 1] * expf(ws[D] - M);
  }
  for (int64_t d = threadIdx.x; d < D; d += kDecodeThreads) {
    float o = 0.f;
    for (int s = 0; s < p.splits; ++s) {
      const float* ws = w + s * (D + 2);
      if (ws[D + 1] > 0.f) o += ws[d] * expf(ws[D] - M);
    }
    p.out[(b * p.H + h) * D + d] = L > 0.f ? o / L : 0.f;
  }
}

// The parameters of a launch over `splits` splits, one per `min_keys` keys begun at most (each sequence's own length
// cut as kernels/attention_decode_split.h says); with splits > 1 the scratch the merge reads, allocated on
// `stream` into *ws (freed on the stream after the merge: no wait).
inline DecodeParams decode_params(const float* q, const void* k, const void* v, const int32_t* lens, int64_t B,
                                  int64_t H, int64_t Hkv, int64_t D, int64_t capacity, int64_t max_len,
                                  int64_t splits, int64_t min_keys, float* out, DeviceMemory* ws,
                                  CudaStream stream) {
  DecodeParams p{};
  p.q = q;
  p.k = k;
  p.v = v;
  p.lens = lens;
  p.H = H;
  p.Hkv = Hkv;
  p.D = D;
  p.capacity = capacity;
  p.max_len = max_len;
  p.min_keys = min_keys;
  p.splits = static_cast<int>(splits);
  p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));  // the ref's rounding
  p.out = out;
  if (splits > 1) {
    *ws = DeviceMemory(static_cast<size_t>(B * H * splits * (D + 2)) * sizeof(float), stream);
    p.ws = ws->as<float>();
  }
  return p;
}

// The merge of p's splits into p.out (nothing with one split: the partial kernel wrote it).
inline void merge_decode_splits(const DecodeParams& p, int64_t B, const char* name, CudaStream stream) {
  if (p.splits <= 1) return;
  attention_decode_merge_kernel<<<dim3(static_cast<unsigned>(p.H), static_cast<unsigned>(B)), kDecodeThreads, 0,
                                  stream>>>(p);
  QWENQ_CUDA_CHECK_LAUNCH(name << " (merge) B=" << B << " H=" << p.H << " D=" << p.D << " splits=" << p.splits);
}

}  // namespace
}  // namespace qwenq
