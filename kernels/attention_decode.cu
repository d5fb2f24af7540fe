// attention_decode_cuda (kernels/attention_decode.h has the math and the cache layout): flash-decoding in two
// kernels on one stream.
//   partial  grid (splits, H, B), 128 threads. Block (s, h, b) takes split s of sequence b's own len keys
//            (kernels/attention_decode_split.h: [s·per, min(len, (s+1)·per)), per = ceil(len / n) over the
//            n <= splits splits, one per 64 keys begun) and runs an online softmax over them in tiles of kTile keys:
//              scores: warp w takes keys w, w+4, ... of the tile; lane i sums qs[d]·k[d] for d = i, i+32, ...
//                      (coalesced 128-byte rows), then a butterfly warp sum; lane 0 stores the score in smem
//              softmax: block max of the tile -> m' = max(m, tile max), α = e^(m − m'), p = e^(s − m') in place,
//                      l = α·l + block sum of p
//              values: thread t owns columns t and t + 128 (D <= 256), acc = α·acc + Σ_j p_j·v_j[col], reading
//                      each v row once per block, coalesced across the threads
//            then writes out = acc / l (one split), or (m, l, acc) to the scratch [B, H, splits, D + 2].
//   merge    grid (H, B), 128 threads (splits > 1): every thread computes M = max m_s over the splits with l_s > 0
//            and L = Σ l_s·e^(m_s − M) in split order (the same numbers in every thread), then its columns
//            out = Σ_s acc_s·e^(m_s − M) / L.
// Every sum has a fixed order: the result is deterministic. An empty split (its first key at or past len) writes
// m = −inf, l = 0, acc = 0 and is skipped by the merge.
// The partial kernel is a template on the cache's element type T (CacheLoad): every key/value access is one 32-bit
// load of V = 4 / sizeof(T) adjacent columns widened to fp32 (fp32: V = 1, the columns above; bf16: V = 2, lane i
// takes the pairs d = 2i, 2i + 64, ... for the scores and thread t owns the pair 2t, 2t + 1 for Σ p·v). Rows start
// at ((b·capacity + j)·Hkv + g)·D elements; with D even and a 4-byte aligned base (the launcher checks both for
// bf16) every pair load is aligned. The fp32 instance performs exactly the loads and operations of the kernel
// before the template.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "kernels/attention_decode.h"
#include "kernels/attention_decode_common.cuh"
#include "kernels/attention_decode_grouped.h"
#include "kernels/cuda_check.cuh"

namespace qwenq {

namespace {

constexpr int kThreads = kDecodeThreads;
constexpr int kWarps = kThreads / cuda::kWarp;
constexpr int kTile = 128;             // keys per tile (scores in shared memory)
constexpr int kColsPerThread = 2;      // kThreads · kColsPerThread = kAttentionDecodeMaxHeadDim
constexpr int64_t kMinKeysPerSplit = 64;  // below this a split's fixed cost (q load, merge) outweighs its keys
static_assert(kThreads * kColsPerThread == kAttentionDecodeMaxHeadDim, "head dim limit matches the accumulators");

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = cuda::kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Max over the block; every thread gets it. Barriers as cuda::block_sum (starts with one, so `scratch` may be
// reused by consecutive calls).
__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x % cuda::kWarp, warp = threadIdx.x / cuda::kWarp;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < kWarps ? scratch[lane] : -INFINITY;
  return warp_max(v);
}

// One 32-bit load of kVec adjacent cache columns at p, widened to fp32.
template <typename T>
struct CacheLoad;
template <>
struct CacheLoad<float> {
  static constexpr int kVec = 1;
  __device__ __forceinline__ static void load(const float* p, float (&x)[1]) { x[0] = *p; }
};
template <>
struct CacheLoad<uint16_t> {  // bf16 bits; little endian: column d in the low half of the word
  static constexpr int kVec = 2;
  __device__ __forceinline__ static void load(const uint16_t* p, float (&x)[2]) {
    const uint32_t w = *reinterpret_cast<const uint32_t*>(p);
    x[0] = __uint_as_float(w << 16);
    x[1] = __uint_as_float(w & 0xffff0000u);
  }
};

// Output column of accumulator r (< kColsPerThread) of thread tid: fp32 tid, tid + 128; bf16 2·tid, 2·tid + 1.
template <int V>
__device__ __forceinline__ int64_t acc_column(int tid, int r) {
  return static_cast<int64_t>(tid + (r / V) * kThreads) * V + r % V;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) attention_decode_partial_kernel(DecodeParams p) {
  using Load = CacheLoad<T>;
  constexpr int V = Load::kVec;
  static_assert(kColsPerThread % V == 0, "a thread's columns are whole loads");
  __shared__ float qs[kAttentionDecodeMaxHeadDim];
  __shared__ float sc[kTile];
  __shared__ float red_max[kWarps], red_sum[cuda::kWarp];
  const int split = blockIdx.x, tid = threadIdx.x, lane = tid % cuda::kWarp, warp = tid / cuda::kWarp;
  const int64_t h = blockIdx.y, b = blockIdx.z, D = p.D, g = h / (p.H / p.Hkv);
  const int64_t len = min(max(static_cast<int64_t>(p.lens[b]), int64_t{0}), p.max_len);
  const DecodeSplitKeys keys = decode_split_keys(len, p.splits, p.min_keys, split);
  const int64_t k0 = keys.k0, k1 = keys.k1;

  for (int64_t d = tid; d < D; d += kThreads) qs[d] = p.q[(b * p.H + h) * D + d] * p.scale;
  __syncthreads();

  const int64_t row_stride = p.Hkv * D;  // elements between consecutive keys of one kv head
  const T* kb = static_cast<const T*>(p.k) + (b * p.capacity * p.Hkv + g) * D;
  const T* vb = static_cast<const T*>(p.v) + (b * p.capacity * p.Hkv + g) * D;
  float m = -INFINITY, l = 0.f;
  float acc[kColsPerThread] = {0.f, 0.f};
  for (int64_t t0 = k0; t0 < k1; t0 += kTile) {
    const int n = static_cast<int>(min(static_cast<int64_t>(kTile), k1 - t0));
    for (int i = warp; i < n; i += kWarps) {
      const T* kj = kb + (t0 + i) * row_stride;
      float dot = 0.f;
      for (int64_t d = static_cast<int64_t>(lane) * V; d < D; d += cuda::kWarp * V) {  // D % V == 0
        float kx[V];
        Load::load(kj + d, kx);
#pragma unroll
        for (int u = 0; u < V; ++u) dot += qs[d + u] * kx[u];
      }
      dot = cuda::warp_sum(dot);
      if (lane == 0) sc[i] = dot;
    }
    __syncthreads();
    float tile_max = -INFINITY;
    for (int i = tid; i < n; i += kThreads) tile_max = fmaxf(tile_max, sc[i]);
    const float m_new = fmaxf(m, block_max(tile_max, red_max));  // finite: the tile has at least one key
    const float alpha = expf(m - m_new);                           // 0 on the first tile (m = −inf)
    float part = 0.f;
    for (int i = tid; i < n; i += kThreads) {
      const float e = expf(sc[i] - m_new);
      sc[i] = e;
      part += e;
    }
    // block_sum's barriers also publish the p values written above to every thread.
    l = l * alpha + cuda::block_sum(part, red_sum);
    m = m_new;
#pragma unroll
    for (int c = 0; c < kColsPerThread / V; ++c) {  // one load of V columns per key
      const int64_t d0 = acc_column<V>(tid, c * V);
      if (d0 < D) {  // then d0 + V − 1 < D too (D % V == 0)
        float a[V];
#pragma unroll
        for (int u = 0; u < V; ++u) a[u] = acc[c * V + u] * alpha;
        const T* vcol = vb + t0 * row_stride + d0;
        for (int i = 0; i < n; ++i) {
          float vx[V];
          Load::load(vcol + i * row_stride, vx);
          const float pi = sc[i];
#pragma unroll
          for (int u = 0; u < V; ++u) a[u] += pi * vx[u];
        }
#pragma unroll
        for (int u = 0; u < V; ++u) acc[c * V + u] = a[u];
      }
    }
    __syncthreads();  // sc is rewritten by the next tile
  }

  if (p.splits == 1) {
#pragma unroll
    for (int r = 0; r < kColsPerThread; ++r) {  // l = 0 only for a sequence with no key (len clamped to 0)
      const int64_t d = acc_column<V>(tid, r);
      if (d < D) p.out[(b * p.H + h) * D + d] = l > 0.f ? acc[r] / l : 0.f;
    }
    return;
  }
  float* w = p.ws + ((b * p.H + h) * p.splits + split) * (D + 2);
#pragma unroll
  for (int r = 0; r < kColsPerThread; ++r) {
    const int64_t d = acc_column<V>(tid, r);
    if (d < D) w[d] = acc[r];
  }
  if (tid == 0) {
    w[D] = m;
    w[D + 1] = l;
  }
}

// Streaming multiprocessors of the current device (cached per device id).
int sm_count() {
  static int cached[64] = {0};
  int dev = 0;
  QWENQ_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev >= 0 && dev < 64 && cached[dev] > 0) return cached[dev];
  int n = 0;
  QWENQ_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  n = std::max(n, 1);
  if (dev >= 0 && dev < 64) cached[dev] = n;
  return n;
}

}  // namespace

int64_t attention_decode_splits(int64_t B, int64_t H, int64_t max_len) {
  const int64_t heads = std::max<int64_t>(1, B * H);
  const int64_t want = (2 * static_cast<int64_t>(sm_count()) + heads - 1) / heads;  // ~2 blocks per SM
  const int64_t most = std::max<int64_t>(1, (max_len + kMinKeysPerSplit - 1) / kMinKeysPerSplit);
  return std::clamp<int64_t>(want, 1, std::min<int64_t>(most, 65535));
}

namespace {

template <typename T>
void launch_decode(const char* name, const float* q, const T* k_cache, const T* v_cache, const int32_t* lens,
                   int64_t B, int64_t H, int64_t Hkv, int64_t D, int64_t capacity, int64_t max_len, float* out,
                   CudaStream stream) {
  // The ref's checks and messages (attention_decode_ref.cpp), then the grid's limits and the loads' alignment.
  if (!attention_decode_check_args(name, q, k_cache, v_cache, lens, B, H, Hkv, D, capacity, max_len, out,
                                   static_cast<int>(sizeof(T))))
    return;
  QWENQ_CHECK(H <= 65535 && B <= 65535, name << ": H=" << H << " and B=" << B << " must be at most 65535 (grid)");
  QWENQ_CHECK(reinterpret_cast<uintptr_t>(k_cache) % 4 == 0 && reinterpret_cast<uintptr_t>(v_cache) % 4 == 0,
              name << ": the k and v caches must be 4-byte aligned (32-bit loads)");
  if (attention_decode_grouped_enabled() && attention_decode_grouped_takes(D, k_cache, v_cache)) {
    attention_decode_grouped_cuda(name, q, k_cache, v_cache, sizeof(T) == 2, lens, B, H, Hkv, D, capacity, max_len,
                                  out, stream);
    return;
  }

  const int64_t splits = attention_decode_splits(B, H, max_len);
  DeviceMemory ws;
  const DecodeParams p = decode_params(q, k_cache, v_cache, lens, B, H, Hkv, D, capacity, max_len, splits,
                                       kMinKeysPerSplit, out, &ws, stream);
  const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(H), static_cast<unsigned>(B));
  attention_decode_partial_kernel<T><<<grid, kThreads, 0, stream>>>(p);
  QWENQ_CUDA_CHECK_LAUNCH(name << " B=" << B << " H=" << H << " Hkv=" << Hkv << " D=" << D << " max_len=" << max_len
                               << " splits=" << splits);
  merge_decode_splits(p, B, name, stream);
  // ws is freed on `stream` after the merge (cudaFreeAsync): no wait here.
}

}  // namespace

void attention_decode_cuda(const float* q, const float* k_cache, const float* v_cache, const int32_t* lens, int64_t B,
                           int64_t H, int64_t Hkv, int64_t D, int64_t capacity, int64_t max_len, float* out,
                           CudaStream stream) {
  launch_decode("attention_decode_cuda", q, k_cache, v_cache, lens, B, H, Hkv, D, capacity, max_len, out, stream);
}

void attention_decode_bf16_cuda(const float* q, const uint16_t* k_cache, const uint16_t* v_cache,
                                const int32_t* lens, int64_t B, int64_t H, int64_t Hkv, int64_t D, int64_t capacity,
                                int64_t max_len, float* out, CudaStream stream) {
  launch_decode("attention_decode_bf16_cuda", q, k_cache, v_cache, lens, B, H, Hkv, D, capacity, max_len, out,
                stream);
}

}  // namespace qwenq
