// The naive fp32 attention forward on the GPU (kernels/attention_naive.h has the algorithm; the twin is
// attention_forward_ref). Grid (T, H): block (i, h) computes out[i, h, :] and lse[i, h].
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "kernels/attention_naive.h"
#include "kernels/cuda_check.cuh"

namespace qwenq {

namespace {

constexpr int kThreads = 128;
constexpr int kColsPerThread = 4;  // kThreads · kColsPerThread = kAttentionNaiveMaxHeadDim
static_assert(kThreads * kColsPerThread == kAttentionNaiveMaxHeadDim, "head dim limit matches the accumulators");

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = cuda::kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Max over the block; every thread gets it. Same barrier discipline as cuda::block_sum.
__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x % cuda::kWarp, warp = threadIdx.x / cuda::kWarp, warps = blockDim.x / cuda::kWarp;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  return warp_max(v);
}

// s = qs · k_j (qs already scaled), D terms in order.
__device__ __forceinline__ float score(const float* qs, const float* kj, int64_t D) {
  float dot = 0.f;
  for (int64_t d = 0; d < D; ++d) dot += qs[d] * kj[d];
  return dot;
}

// Dynamic shared memory: qs[D] (the scaled query row), then p[kThreads].
__global__ void attention_naive_kernel(const float* q, const float* k, const float* v, const int32_t* cu,
                                       int64_t n_seqs, int64_t H, int64_t Hkv, int64_t D, float scale, float* out,
                                       float* lse) {
  extern __shared__ float smem[];
  __shared__ float scratch[32];
  float* qs = smem;
  float* p = smem + D;
  const int64_t i = blockIdx.x, h = blockIdx.y, g = h / (H / Hkv);
  const int tid = threadIdx.x;

  // The sequence of row i: the last s with cu[s] <= i (empty sequences are passed over, since their end equals
  // the next start), so cu[s] <= i < cu[s + 1].
  int64_t lo = 0, hi = n_seqs;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (cu[mid] <= i) lo = mid;
    else hi = mid - 1;
  }
  const int64_t begin = cu[lo];

  for (int64_t d = tid; d < D; d += blockDim.x) qs[d] = q[(i * H + h) * D + d] * scale;
  __syncthreads();

  // Pass 1: online max and sum of exponentials over this thread's keys, then merged across the block.
  float m = -INFINITY, l = 0.f;
  for (int64_t j = begin + tid; j <= i; j += blockDim.x) {
    const float s = score(qs, k + (j * Hkv + g) * D, D);
    if (s > m) {
      l = l * expf(m - s) + 1.f;  // expf(-inf) = 0 for the first key
      m = s;
    } else if (s != -INFINITY) {  // a -inf score adds 0 (and -inf - -inf would be NaN); a NaN one makes l NaN
      l += expf(s - m);
    }
  }
  const float M = block_max(m, scratch);
  // A thread whose keys all scored NaN keeps m = -inf and l = NaN: its l is added as is (0 when it has no keys),
  // so that NaN reaches L and lse is NaN, as the ref's.
  const float L = cuda::block_sum(m == -INFINITY ? l : l * expf(m - M), scratch);

  // Pass 2: chunks of kThreads keys, their weights in shared memory, each thread owning columns tid + r·kThreads.
  float acc[kColsPerThread] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t c0 = begin; c0 <= i; c0 += blockDim.x) {
    const int64_t j = c0 + tid;
    p[tid] = j <= i ? expf(score(qs, k + (j * Hkv + g) * D, D) - M) : 0.f;
    __syncthreads();
    const int64_t n = min(static_cast<int64_t>(blockDim.x), i - c0 + 1);
    for (int64_t jj = 0; jj < n; ++jj) {
      const float pj = p[jj];
      const float* vj = v + ((c0 + jj) * Hkv + g) * D;
#pragma unroll
      for (int r = 0; r < kColsPerThread; ++r) {
        const int64_t d = tid + r * static_cast<int64_t>(blockDim.x);
        if (d < D) acc[r] += pj * vj[d];
      }
    }
    __syncthreads();  // p is rewritten by the next chunk
  }
#pragma unroll
  for (int r = 0; r < kColsPerThread; ++r) {
    const int64_t d = tid + r * static_cast<int64_t>(blockDim.x);
    if (d < D) out[(i * H + h) * D + d] = acc[r] / L;
  }
  // M = -inf: every score of the row is -inf (or NaN); the ref's exp(-inf - -inf) makes its lse NaN, so here too.
  if (lse != nullptr && tid == 0) lse[i * H + h] = M == -INFINITY ? NAN : M + logf(L);
}

// Backward, pass 1 (grid (T, H), block (i, h)): δ[i, h] = Σ_d dout·out, then
//   dq[i, h, :] = scale · Σ_{j in [begin, i]} dS_j · k_j,   dS_j = P_j · (dout_i·v_j − δ),  P_j = exp(s_j − lse)
// over chunks of kThreads keys, as the forward's pass 2: each thread computes one key's dS into shared memory,
// then accumulates its output columns. Writes δ for pass 2. Dynamic shared memory: qs[D], do[D], ds[kThreads].
__global__ void attention_naive_bwd_dq_kernel(const float* dout, const float* q, const float* k, const float* v,
                                              const float* out, const float* lse, const int32_t* cu, int64_t n_seqs,
                                              int64_t H, int64_t Hkv, int64_t D, float scale, float* dq,
                                              float* delta) {
  extern __shared__ float smem[];
  __shared__ float scratch[32];
  float* qs = smem;
  float* dos = smem + D;
  float* ds = smem + 2 * D;
  const int64_t i = blockIdx.x, h = blockIdx.y, g = h / (H / Hkv);
  const int tid = threadIdx.x;
  int64_t lo = 0, hi = n_seqs;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (cu[mid] <= i) lo = mid;
    else hi = mid - 1;
  }
  const int64_t begin = cu[lo];
  float part = 0.f;
  for (int64_t d = tid; d < D; d += blockDim.x) {
    const int64_t at = (i * H + h) * D + d;
    qs[d] = q[at] * scale;
    dos[d] = dout[at];
    part += dout[at] * out[at];
  }
  const float dl = cuda::block_sum(part, scratch);  // its barriers also publish qs and dos
  const float L = lse[i * H + h];
  float acc[kColsPerThread] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t c0 = begin; c0 <= i; c0 += blockDim.x) {
    const int64_t j = c0 + tid;
    if (j <= i) {
      const float p = expf(score(qs, k + (j * Hkv + g) * D, D) - L);
      ds[tid] = p * (score(dos, v + (j * Hkv + g) * D, D) - dl);
    }
    __syncthreads();
    const int64_t n = min(static_cast<int64_t>(blockDim.x), i - c0 + 1);
    for (int64_t jj = 0; jj < n; ++jj) {
      const float dsj = ds[jj];
      const float* kj = k + ((c0 + jj) * Hkv + g) * D;
#pragma unroll
      for (int r = 0; r < kColsPerThread; ++r) {
        const int64_t d = tid + r * static_cast<int64_t>(blockDim.x);
        if (d < D) acc[r] += dsj * kj[d];
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < kColsPerThread; ++r) {
    const int64_t d = tid + r * static_cast<int64_t>(blockDim.x);
    if (d < D) dq[(i * H + h) * D + d] = acc[r] * scale;
  }
  if (tid == 0) delta[i * H + h] = dl;
}

// Backward, pass 2 (grid (T, Hkv), block (j, g)): for key row j of kv head g, over the query heads h of the group
// and the queries i in [j, end) of j's sequence,
//   dv[j, g, :] = Σ P_ij · dout_i,   dk[j, g, :] = Σ dS_ij · (scale · q_i)
// chunked as pass 1 (one query per thread into shared memory, then the columns). Every (j, g) is one block: no
// atomics. Dynamic shared memory: k_j[D], v_j[D], p[kThreads], ds[kThreads].
__global__ void attention_naive_bwd_dkv_kernel(const float* dout, const float* q, const float* k, const float* v,
                                               const float* lse, const float* delta, const int32_t* cu,
                                               int64_t n_seqs, int64_t H, int64_t Hkv, int64_t D, float scale,
                                               float* dk, float* dv) {
  extern __shared__ float smem[];
  float* ks = smem;
  float* vs = smem + D;
  float* ps = smem + 2 * D;
  float* ds = ps + blockDim.x;
  const int64_t j = blockIdx.x, g = blockIdx.y, group = H / Hkv;
  const int tid = threadIdx.x;
  int64_t lo = 0, hi = n_seqs;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (cu[mid] <= j) lo = mid;
    else hi = mid - 1;
  }
  const int64_t end = cu[lo + 1];
  for (int64_t d = tid; d < D; d += blockDim.x) {
    ks[d] = k[(j * Hkv + g) * D + d];
    vs[d] = v[(j * Hkv + g) * D + d];
  }
  __syncthreads();
  float acc_k[kColsPerThread] = {0.f, 0.f, 0.f, 0.f};
  float acc_v[kColsPerThread] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t h = g * group; h < (g + 1) * group; ++h) {
    for (int64_t c0 = j; c0 < end; c0 += blockDim.x) {
      const int64_t i = c0 + tid;
      if (i < end) {
        const float* qi = q + (i * H + h) * D;
        float s = 0.f;
        for (int64_t d = 0; d < D; ++d) s += (qi[d] * scale) * ks[d];  // the forward's (scale·q)·k
        const float p = expf(s - lse[i * H + h]);
        ps[tid] = p;
        ds[tid] = p * (score(dout + (i * H + h) * D, vs, D) - delta[i * H + h]);
      }
      __syncthreads();
      const int64_t n = min(static_cast<int64_t>(blockDim.x), end - c0);
      for (int64_t ii = 0; ii < n; ++ii) {
        const float p = ps[ii], dsi = ds[ii];
        const float* qi = q + ((c0 + ii) * H + h) * D;
        const float* doi = dout + ((c0 + ii) * H + h) * D;
#pragma unroll
        for (int r = 0; r < kColsPerThread; ++r) {
          const int64_t d = tid + r * static_cast<int64_t>(blockDim.x);
          if (d < D) {
            acc_v[r] += p * doi[d];
            acc_k[r] += dsi * (qi[d] * scale);
          }
        }
      }
      __syncthreads();
    }
  }
#pragma unroll
  for (int r = 0; r < kColsPerThread; ++r) {
    const int64_t d = tid + r * static_cast<int64_t>(blockDim.x);
    if (d < D) {
      dk[(j * Hkv + g) * D + d] = acc_k[r];
      dv[(j * Hkv + g) * D + d] = acc_v[r];
    }
  }
}

}  // namespace

void attention_naive_forward_cuda(const float* q, const float* k, const float* v, const int32_t* cu_seqlens,
                                  int64_t n_seqs, int64_t H, int64_t Hkv, int64_t D, float* out, float* lse,
                                  CudaStream stream) {
  const char* name = "attention_naive_forward_cuda";
  // The ref's checks and messages (attention_ref.cpp), then this kernel's limits.
  QWENQ_CHECK(n_seqs >= 0 && H > 0 && Hkv > 0 && D > 0,
              name << ": bad shape n_seqs=" << n_seqs << " H=" << H << " Hkv=" << Hkv << " D=" << D);
  QWENQ_CHECK(H % Hkv == 0, name << ": query heads H=" << H << " must be a multiple of kv heads Hkv=" << Hkv);
  QWENQ_CHECK(D <= kAttentionNaiveMaxHeadDim,
              name << ": head dim D=" << D << " exceeds the naive kernel's limit " << kAttentionNaiveMaxHeadDim);
  QWENQ_CHECK(H <= 65535, name << ": H=" << H << " exceeds the grid's y limit 65535");
  if (n_seqs == 0) return;
  QWENQ_CHECK(cu_seqlens != nullptr, name << ": null cu_seqlens");
  QWENQ_CHECK(cu_seqlens[0] == 0, name << ": cu_seqlens[0] must be 0, got " << cu_seqlens[0]);
  for (int64_t s = 0; s < n_seqs; ++s)
    QWENQ_CHECK(cu_seqlens[s + 1] >= cu_seqlens[s], name << ": cu_seqlens must be non-decreasing, got "
                                                         << cu_seqlens[s] << " then " << cu_seqlens[s + 1]
                                                         << " at sequence " << s);
  const int64_t T = cu_seqlens[n_seqs];
  if (T == 0) return;
  QWENQ_CHECK(q != nullptr && k != nullptr && v != nullptr && out != nullptr, name << ": null pointer");
  QWENQ_CHECK(T <= INT_MAX, name << ": T=" << T << " exceeds the grid limit " << INT_MAX);

  // The caller's array may go once this returns (the decoder passes a local one), while a pageable copy need not
  // be staged by then: the copy reads a vector of our own that lives until it has run (upload_owned_async).
  DeviceMemory cu(static_cast<size_t>(n_seqs + 1) * sizeof(int32_t), stream);
  upload_owned_async(cu.get(), std::vector<int32_t>(cu_seqlens, cu_seqlens + n_seqs + 1), stream);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));  // the ref's rounding
  const size_t smem = static_cast<size_t>(D + kThreads) * sizeof(float);
  const dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>(H));
  attention_naive_kernel<<<grid, kThreads, smem, stream>>>(q, k, v, cu.as<int32_t>(), n_seqs, H, Hkv, D, scale, out,
                                                           lse);
  QWENQ_CUDA_CHECK_LAUNCH(name << " T=" << T << " n_seqs=" << n_seqs << " H=" << H << " Hkv=" << Hkv << " D=" << D);
}

void attention_naive_backward_cuda(const float* dout, const float* q, const float* k, const float* v,
                                   const float* out, const float* lse, const int32_t* cu_seqlens, int64_t n_seqs,
                                   int64_t H, int64_t Hkv, int64_t D, float* dq, float* dk, float* dv,
                                   CudaStream stream) {
  const char* name = "attention_naive_backward_cuda";
  QWENQ_CHECK(n_seqs >= 0 && H > 0 && Hkv > 0 && D > 0,
              name << ": bad shape n_seqs=" << n_seqs << " H=" << H << " Hkv=" << Hkv << " D=" << D);
  QWENQ_CHECK(H % Hkv == 0, name << ": query heads H=" << H << " must be a multiple of kv heads Hkv=" << Hkv);
  QWENQ_CHECK(D <= kAttentionNaiveMaxHeadDim,
              name << ": head dim D=" << D << " exceeds the naive kernel's limit " << kAttentionNaiveMaxHeadDim);
  QWENQ_CHECK(H <= 65535, name << ": H=" << H << " exceeds the grid's y limit 65535");
  if (n_seqs == 0) return;
  QWENQ_CHECK(cu_seqlens != nullptr, name << ": null cu_seqlens");
  QWENQ_CHECK(cu_seqlens[0] == 0, name << ": cu_seqlens[0] must be 0, got " << cu_seqlens[0]);
  for (int64_t s = 0; s < n_seqs; ++s)
    QWENQ_CHECK(cu_seqlens[s + 1] >= cu_seqlens[s], name << ": cu_seqlens must be non-decreasing, got "
                                                         << cu_seqlens[s] << " then " << cu_seqlens[s + 1]
                                                         << " at sequence " << s);
  const int64_t T = cu_seqlens[n_seqs];
  if (T == 0) return;
  QWENQ_CHECK(dout != nullptr && q != nullptr && k != nullptr && v != nullptr && out != nullptr && lse != nullptr &&
                  dq != nullptr && dk != nullptr && dv != nullptr,
              name << ": null pointer (lse from the forward is required)");
  QWENQ_CHECK(T <= INT_MAX, name << ": T=" << T << " exceeds the grid limit " << INT_MAX);
  DeviceMemory cu(static_cast<size_t>(n_seqs + 1) * sizeof(int32_t), stream);
  upload_owned_async(cu.get(), std::vector<int32_t>(cu_seqlens, cu_seqlens + n_seqs + 1), stream);  // as the forward
  DeviceMemory delta(static_cast<size_t>(T * H) * sizeof(float), stream);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  attention_naive_bwd_dq_kernel<<<dim3(static_cast<unsigned>(T), static_cast<unsigned>(H)), kThreads,
                                  static_cast<size_t>(2 * D + kThreads) * sizeof(float), stream>>>(
      dout, q, k, v, out, lse, cu.as<int32_t>(), n_seqs, H, Hkv, D, scale, dq, delta.as<float>());
  QWENQ_CUDA_CHECK_LAUNCH(name << " (dq) T=" << T << " n_seqs=" << n_seqs << " H=" << H << " Hkv=" << Hkv
                               << " D=" << D);
  attention_naive_bwd_dkv_kernel<<<dim3(static_cast<unsigned>(T), static_cast<unsigned>(Hkv)), kThreads,
                                   static_cast<size_t>(2 * D + 2 * kThreads) * sizeof(float), stream>>>(
      dout, q, k, v, lse, delta.as<float>(), cu.as<int32_t>(), n_seqs, H, Hkv, D, scale, dk, dv);
  QWENQ_CUDA_CHECK_LAUNCH(name << " (dk, dv) T=" << T << " n_seqs=" << n_seqs << " H=" << H << " Hkv=" << Hkv
                               << " D=" << D);
}

}  // namespace qwenq
