// The grouped decode attention kernel (QWENQ_DECODE_GROUPED=1, opt-in until it has run on a GPU;
// kernels/attention_decode.h has the math, the cache layout and the contract): the result of the per-head kernel
// (kernels/attention_decode.cu) up to the order of the sums, organised for the memory system.
//
// Why: the per-head kernel gives each query head a block, so a kv head's keys and values are read H/Hkv times (7
// or 8 for Qwen2.5), one key per warp with a butterfly sum per score and one dependent load chain per thread for
// Σ p·v. The first H200 run measured it at 1-4 % of HBM (bench_attention_decode_cuda, 2026-12-04): at 7B and 32K
// cached tokens 870 us per layer, more than the layer's 4-bit weights take.
//
// Layout of the work: grid (splits, Hkv·qchunks, B), 128 threads (4 warps). Block (s, g·qchunks + c, b) takes keys
// [s·per, min(len, (s+1)·per)) of sequence b (its own length cut into n <= splits splits, one per 128 keys begun,
// kernels/attention_decode_split.h), kv head g, and query heads h0 .. h0 + gq − 1 of g's group (h0 =
// g·(H/Hkv) + c·GQ, gq <= GQ, GQ = 4 or 8): each key and value row is read once for all of them. Warp w takes keys
// base + lane, base = k0 + 32w + 128i (i = 0, 1, ...), one key per lane:
//   scores   s[hq] = Σ_d qs[hq][d]·k[d] over the lane's own key row, in 16-byte pieces (independent loads; ptxas
//            keeps two in flight per lane, 1 KB per warp); qs, the block's scaled queries, in shared memory (every
//            lane reads the same address: a broadcast)
//   softmax  per query head, online over the warp's steps: m' = max(m, warp max of s), α = e^(m − m'),
//            p = e^(s − m'), l (per lane) = α·l + p, acc ·= α
//   values   acc[hq][c] += Σ_i p[hq][i]·v[i][lane·CPL + c] over the step's keys i in order: p through shared memory
//            (a 16-byte broadcast gives 4 keys' p), the warp reading each v row whole (lane: CPL adjacent columns,
//            one load), 8 rows in flight
// then the 4 warps' (m, l, acc) merge in warp order through shared memory: out = acc / l with one split, else
// (m, l, acc) into the scratch [B, H, splits, D + 2] that the per-head kernel's merge kernel reads. Every sum has a
// fixed order: deterministic. Keys at or past lens[b] are never read.
//
// Taken for D = 64, 128, 256 (D = 32·CPL) with 16-byte aligned caches; other shapes keep the per-head kernel.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "core/env_switch.h"
#include "core/error.h"
#include "kernels/attention_decode.h"
#include "kernels/attention_decode_common.cuh"
#include "kernels/attention_decode_grouped.h"
#include "kernels/cuda_check.cuh"

namespace qwenq {
namespace {

constexpr int kGWarps = kDecodeThreads / cuda::kWarp;  // 4
constexpr int kStepKeys = kDecodeThreads;              // keys per block step: 32 per warp

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = cuda::kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// A cache row's elements widened to fp32: kPiece per 16 bytes (widen16 of a raw load, piece), or N adjacent ones in
// one load (cols).
template <typename T>
struct Row;
template <>
struct Row<float> {
  static constexpr int kPiece = 4;
  __device__ __forceinline__ static void widen16(const uint4& v, float (&x)[4]) {
    x[0] = __uint_as_float(v.x), x[1] = __uint_as_float(v.y), x[2] = __uint_as_float(v.z), x[3] = __uint_as_float(v.w);
  }
  __device__ __forceinline__ static void piece(const float* p, float (&x)[4]) {
    widen16(__ldg(reinterpret_cast<const uint4*>(p)), x);
  }
  template <int N>
  __device__ __forceinline__ static void cols(const float* p, float (&x)[N]) {
    static_assert(N == 2 || N == 4 || N == 8, "2, 4 or 8 columns per lane");
    if constexpr (N == 2) {
      const float2 v = __ldg(reinterpret_cast<const float2*>(p));
      x[0] = v.x, x[1] = v.y;
    } else {
#pragma unroll
      for (int i = 0; i < N / 4; ++i) piece(p + 4 * i, *reinterpret_cast<float(*)[4]>(x + 4 * i));
    }
  }
};
template <>
struct Row<uint16_t> {  // bf16 bits, little endian: element 2i in the low half of word i
  static constexpr int kPiece = 8;
  __device__ __forceinline__ static void widen(uint32_t w, float* x) {
    x[0] = __uint_as_float(w << 16);
    x[1] = __uint_as_float(w & 0xffff0000u);
  }
  __device__ __forceinline__ static void widen16(const uint4& v, float (&x)[8]) {
    widen(v.x, x), widen(v.y, x + 2), widen(v.z, x + 4), widen(v.w, x + 6);
  }
  __device__ __forceinline__ static void piece(const uint16_t* p, float (&x)[8]) {
    widen16(__ldg(reinterpret_cast<const uint4*>(p)), x);
  }
  template <int N>
  __device__ __forceinline__ static void cols(const uint16_t* p, float (&x)[N]) {
    static_assert(N == 2 || N == 4 || N == 8, "2, 4 or 8 columns per lane");
    if constexpr (N == 2) {
      widen(__ldg(reinterpret_cast<const uint32_t*>(p)), x);
    } else if constexpr (N == 4) {
      const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
      widen(v.x, x), widen(v.y, x + 2);
    } else {
      piece(p, *reinterpret_cast<float(*)[8]>(x));
    }
  }
};

template <typename T, int CPL, int GQ>
__global__ void __launch_bounds__(kDecodeThreads) attention_decode_grouped_kernel(DecodeParams p, int group,
                                                                                int qchunks) {
  constexpr int D = 32 * CPL;
  constexpr int kPiece = Row<T>::kPiece;
  // Shared memory: in the loop the queries qs [GQ][D] and each warp's p [GQ][32]; after it, the warps' acc
  // [warps][GQ][D] on the same storage.
  constexpr int kLoopFloats = GQ * D + kGWarps * GQ * 32, kMergeFloats = kGWarps * GQ * D;
  __shared__ __align__(16) float smem[kLoopFloats > kMergeFloats ? kLoopFloats : kMergeFloats];
  __shared__ float wm[kGWarps][GQ], wl[kGWarps][GQ];
  float* qs = smem;
  const int tid = threadIdx.x, lane = tid % cuda::kWarp, warp = tid / cuda::kWarp;
  float* pw = smem + GQ * D + warp * GQ * 32;
  const int64_t split = blockIdx.x, b = blockIdx.z;
  const int64_t g = blockIdx.y / qchunks, h0 = g * group + static_cast<int64_t>(blockIdx.y % qchunks) * GQ;
  const int gq = static_cast<int>(min(int64_t{GQ}, g * group + group - h0));
  const int64_t len = min(max(static_cast<int64_t>(p.lens[b]), int64_t{0}), p.max_len);
  const DecodeSplitKeys keys = decode_split_keys(len, p.splits, p.min_keys, split);
  const int64_t k0 = keys.k0, k1 = keys.k1;

  for (int i = tid; i < GQ * D; i += kDecodeThreads) {
    const int hq = i / D;
    qs[i] = hq < gq ? p.q[(b * p.H + h0 + hq) * D + i % D] * p.scale : 0.f;
  }
  __syncthreads();

  const int64_t row_stride = p.Hkv * D;  // elements between consecutive keys of one kv head
  const T* kb = static_cast<const T*>(p.k) + (b * p.capacity * p.Hkv + g) * D;
  const T* vb = static_cast<const T*>(p.v) + (b * p.capacity * p.Hkv + g) * D + lane * CPL;
  float m[GQ], l[GQ], acc[GQ][CPL];
#pragma unroll
  for (int hq = 0; hq < GQ; ++hq) {
    m[hq] = -INFINITY, l[hq] = 0.f;
#pragma unroll
    for (int c = 0; c < CPL; ++c) acc[hq][c] = 0.f;
  }
  for (int64_t base = k0 + warp * 32; base < k1; base += kStepKeys) {  // warp-uniform
    const int n = static_cast<int>(min(int64_t{32}, k1 - base));        // >= 1
    const bool valid = lane < n;
    float s[GQ];
#pragma unroll
    for (int hq = 0; hq < GQ; ++hq) s[hq] = 0.f;
    if (valid) {  // ptxas keeps two of the row's 16-byte loads in flight per lane (SASS, sm_90a)
      const T* kr = kb + (base + lane) * row_stride;
#pragma unroll
      for (int c = 0; c < D / kPiece; ++c) {
        float x[kPiece];
        Row<T>::piece(kr + c * kPiece, x);
#pragma unroll
        for (int hq = 0; hq < GQ; ++hq) {
#pragma unroll
          for (int e = 0; e < kPiece; ++e) s[hq] = fmaf(qs[hq * D + c * kPiece + e], x[e], s[hq]);
        }
      }
    }
#pragma unroll
    for (int hq = 0; hq < GQ; ++hq) {
      const float sv = valid ? s[hq] : -INFINITY;
      const float mn = fmaxf(m[hq], warp_max(sv));  // finite: lane 0 has a key
      const float alpha = expf(m[hq] - mn);         // 0 on the warp's first step (m = −inf)
      const float pv = valid ? expf(sv - mn) : 0.f;
      l[hq] = l[hq] * alpha + pv;
#pragma unroll
      for (int c = 0; c < CPL; ++c) acc[hq][c] *= alpha;
      m[hq] = mn;
      pw[hq * 32 + lane] = pv;
    }
    __syncwarp();
    const T* vr = vb + base * row_stride;
    for (int i0 = 0; i0 < n; i0 += 8) {  // 8 rows in flight; the keys past n have p = 0 and are not read (v = 0)
      float vx[8][CPL];
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        if (i0 + u < n) {
          Row<T>::template cols<CPL>(vr + (i0 + u) * row_stride, vx[u]);
        } else {
#pragma unroll
          for (int c = 0; c < CPL; ++c) vx[u][c] = 0.f;
        }
      }
#pragma unroll
      for (int hq = 0; hq < GQ; ++hq) {
#pragma unroll
        for (int h4 = 0; h4 < 2; ++h4) {
          const float4 pp = *reinterpret_cast<const float4*>(pw + hq * 32 + i0 + 4 * h4);
#pragma unroll
          for (int c = 0; c < CPL; ++c) {
            float a = acc[hq][c];
            a = fmaf(pp.x, vx[4 * h4][c], a);
            a = fmaf(pp.y, vx[4 * h4 + 1][c], a);
            a = fmaf(pp.z, vx[4 * h4 + 2][c], a);
            acc[hq][c] = fmaf(pp.w, vx[4 * h4 + 3][c], a);
          }
        }
      }
    }
    __syncwarp();  // pw is rewritten by the next step
  }

  // The warps' partial softmaxes, merged in warp order (a warp without keys has l = 0 and is skipped).
#pragma unroll
  for (int hq = 0; hq < GQ; ++hq) l[hq] = cuda::warp_sum(l[hq]);
  __syncthreads();  // every warp is done with qs and p: the accumulators take their storage
  float* wacc = smem + warp * GQ * D + lane * CPL;
#pragma unroll
  for (int hq = 0; hq < GQ; ++hq) {
    if (lane == 0) wm[warp][hq] = m[hq], wl[warp][hq] = l[hq];
#pragma unroll
    for (int c = 0; c < CPL; ++c) wacc[hq * D + c] = acc[hq][c];
  }
  __syncthreads();
  for (int i = tid; i < gq * D; i += kDecodeThreads) {
    const int hq = i / D, d = i % D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kGWarps; ++w)
      if (wl[w][hq] > 0.f) M = fmaxf(M, wm[w][hq]);
    float L = 0.f, A = 0.f;
#pragma unroll
    for (int w = 0; w < kGWarps; ++w) {
      if (wl[w][hq] > 0.f) {
        const float e = expf(wm[w][hq] - M);
        L += wl[w][hq] * e;
        A += smem[(w * GQ + hq) * D + d] * e;
      }
    }
    const int64_t h = h0 + hq;
    if (p.splits == 1) {  // L = 0 only for a sequence with no key (len clamped to 0)
      p.out[(b * p.H + h) * D + d] = L > 0.f ? A / L : 0.f;
    } else {
      float* ws = p.ws + ((b * p.H + h) * p.splits + split) * (D + 2);
      ws[d] = A;
      if (d == 0) {
        ws[D] = L > 0.f ? M : -INFINITY;
        ws[D + 1] = L;
      }
    }
  }
}

// Query heads per block: 4 for groups of up to 4, else 8 (larger groups in chunks of 8).
int heads_per_block(int64_t group) { return group <= 4 ? 4 : 8; }

// Resident blocks per SM of one instance (registers and shared memory decide it), asked once.
template <typename T, int CPL, int GQ>
int blocks_per_sm() {
  static const int n = [] {
    int b = 0;
    QWENQ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, attention_decode_grouped_kernel<T, CPL, GQ>,
                                                                   kDecodeThreads, 0));
    return std::max(b, 1);
  }();
  return n;
}

// The instance for (T, D, heads per block): f(kernel, its blocks per SM).
template <typename T, typename F>
void with_instance(int64_t D, int gq, F&& f) {
  const auto pick = [&](auto cpl) {
    constexpr int CPL = decltype(cpl)::value;
    if (gq == 4) {
      f(attention_decode_grouped_kernel<T, CPL, 4>, blocks_per_sm<T, CPL, 4>());
    } else {
      f(attention_decode_grouped_kernel<T, CPL, 8>, blocks_per_sm<T, CPL, 8>());
    }
  };
  switch (D) {
    case 64: pick(std::integral_constant<int, 2>{}); break;
    case 128: pick(std::integral_constant<int, 4>{}); break;
    default: pick(std::integral_constant<int, 8>{}); break;  // 256 (attention_decode_grouped_takes)
  }
}

// Splits for about one wave: the instance's resident blocks per SM over B·Hkv·qchunks blocks per split, at most
// one split per 128 keys (a step of the 4 warps) and 65535.
int64_t splits_for(int64_t units, int blocks_per_sm, int64_t max_len) {
  const int64_t want = (int64_t{blocks_per_sm} * cuda_sm_count() + units - 1) / units;
  const int64_t most = std::max<int64_t>(1, (max_len + kStepKeys - 1) / kStepKeys);
  return std::clamp<int64_t>(want, 1, std::min<int64_t>(most, 65535));
}

template <typename T>
void launch_grouped(const char* name, const float* q, const T* k, const T* v, const int32_t* lens, int64_t B,
                    int64_t H, int64_t Hkv, int64_t D, int64_t capacity, int64_t max_len, float* out,
                    CudaStream stream) {
  const int64_t group = H / Hkv;
  const int gq = heads_per_block(group);
  const int64_t qchunks = (group + gq - 1) / gq;
  QWENQ_CHECK(Hkv * qchunks <= 65535, name << ": Hkv=" << Hkv << " x " << qchunks << " query chunks exceed the grid");
  const int64_t splits = attention_decode_grouped_splits(B, H, Hkv, D, sizeof(T) == 2, max_len);
  DeviceMemory ws;
  const DecodeParams p =
      decode_params(q, k, v, lens, B, H, Hkv, D, capacity, max_len, splits, kStepKeys, out, &ws, stream);
  const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(Hkv * qchunks), static_cast<unsigned>(B));
  const int g32 = static_cast<int>(group), qc = static_cast<int>(qchunks);
  with_instance<T>(D, gq, [&](auto kernel, int) { kernel<<<grid, kDecodeThreads, 0, stream>>>(p, g32, qc); });
  QWENQ_CUDA_CHECK_LAUNCH(name << " (grouped) B=" << B << " H=" << H << " Hkv=" << Hkv << " D=" << D
                               << " max_len=" << max_len << " splits=" << splits);
  merge_decode_splits(p, B, name, stream);
  // ws is freed on `stream` after the merge (cudaFreeAsync): no wait here.
}

}  // namespace

bool attention_decode_grouped_enabled() { return env_switch("QWENQ_DECODE_GROUPED") == 1; }

bool attention_decode_grouped_takes(int64_t D, const void* k_cache, const void* v_cache) {
  return (D == 64 || D == 128 || D == 256) && is_aligned(k_cache, 16) && is_aligned(v_cache, 16);
}

int64_t attention_decode_grouped_splits(int64_t B, int64_t H, int64_t Hkv, int64_t D, bool bf16, int64_t max_len) {
  const int64_t group = std::max<int64_t>(1, H / std::max<int64_t>(1, Hkv));
  const int gq = heads_per_block(group);
  const int64_t units = std::max<int64_t>(1, B * Hkv * ((group + gq - 1) / gq));
  int64_t splits = 1;
  const auto set = [&](auto, int per_sm) { splits = splits_for(units, per_sm, max_len); };
  if (bf16) {
    with_instance<uint16_t>(D, gq, set);
  } else {
    with_instance<float>(D, gq, set);
  }
  return splits;
}

void attention_decode_grouped_cuda(const char* name, const float* q, const void* k_cache, const void* v_cache,
                                   bool bf16, const int32_t* lens, int64_t B, int64_t H, int64_t Hkv, int64_t D,
                                   int64_t capacity, int64_t max_len, float* out, CudaStream stream) {
  if (bf16) {
    launch_grouped(name, q, static_cast<const uint16_t*>(k_cache), static_cast<const uint16_t*>(v_cache), lens, B, H,
                   Hkv, D, capacity, max_len, out, stream);
  } else {
    launch_grouped(name, q, static_cast<const float*>(k_cache), static_cast<const float*>(v_cache), lens, B, H, Hkv,
                   D, capacity, max_len, out, stream);
  }
}

}  // namespace qwenq
