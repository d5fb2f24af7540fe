// CUDA kernels of quant/awq_search.h (contract, and why awq_candidate / awq_clip_inputs equal their twins bit for bit
// while awq_clip_search may differ at near ties: see the header). Twins: quant/awq_search_ref.cpp.
//   awq_candidate     one warp per (row n, group g), items in row-major order so that neighbouring warps read
//                     neighbouring memory: lanes stride the group's contiguous segment of row n, v = W·s by
//                     __fmul_rn, fminf/fmaxf shuffles give every lane the group's min/max, every lane applies
//                     quant/grid_device.cuh's AWQ rule (the same scale/zero on all lanes), then writes its elements
//                     dequantize(quantize(v)) / s (recomputing v: the second read hits L1/L2).
//   awq_clip_inputs   a grid-stride copy, __fdiv_rn by s, zeros in the padded columns.
//   awq_clip_search   one block of 256 threads per (group g, tile of kClipRows = 32 rows), all shrinks in turn:
//                     phase 0: one warp per row computes the group's min/max (fminf/fmaxf shuffles), m0 =
//                       max(|min|, |max|) (= max|w| for finite w);
//                     per shrink i: thread r < 32 forms r_i = 1 − i/n_grid and bound r_i·m0 as the CPU, and the grid
//                       of the clamped row from the clamped min/max (clamp is monotone, so the min/max of the clamped
//                       values are the clamped min/max, exactly); then, per chunk of kClipTokens = 128 tokens and
//                       kClipK = 32 columns of the group, the chunk of x (transposed, [k][t]) and of Δ = Q(clamp(w))
//                       − w ([k][row], recomputed from W: cheaper than storing all shrinks) are staged in shared
//                       memory; each thread owns a 4-token x 4-row tile of dot products (float4 reads: x's 4 tokens
//                       are broadcast to the 8 lanes that share them, Δ's 32 rows of a warp are 128 contiguous
//                       bytes: no bank conflicts), accumulated by __fmaf_rn in k order across the chunks; the
//                       squares of the finished dot products (exact in double) are summed per thread in double;
//                       the 32 token-lane partial sums of a row are added in a fixed order by thread r (no atomics:
//                       the same inputs give the same bounds on every run), err = sum / S, and r keeps the first
//                       smallest err below 1e9 (awq_search_clip's comparison).
//                     Tokens beyond S and columns beyond the group read as zero in both staged chunks (their products
//                     add 0 to a dot product; out-of-range tokens' squares are skipped); rows beyond N are never
//                     written. The block loop is uniform over the block, so every __syncthreads is reached by all.
#include <algorithm>
#include <cstdint>

#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "quant/awq_search.h"
#include "quant/grid_device.cuh"

namespace qwenq {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;
constexpr int kClipRows = 32;     // rows per block: 8 row lanes x 4 rows
constexpr int kClipTokens = 128;  // tokens per chunk: 32 token lanes x 4 tokens
constexpr int kClipK = 32;        // columns per chunk
static_assert(kClipRows * kClipTokens == 16 * kThreads, "each thread owns a 4 x 4 tile of dot products");

unsigned blocks_for(int64_t work_items, int64_t items_per_block) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>((work_items + items_per_block - 1) / items_per_block, kMaxBlocks)));
}

// ---- awq_candidate ----------------------------------------------------------------------------------------------

__global__ void awq_candidate_kernel(const float* W, int64_t N, int64_t K, const float* s, int64_t G, int64_t groups,
                                     int maxq, float* out) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t item = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32; item < N * groups;
       item += warps) {  // item is the same on all 32 lanes: the shuffles below see a full warp
    const int64_t n = item / groups, g = item % groups, k0 = g * G, k1 = min(K, k0 + G);
    const float* row = W + n * K;
    float lo = INFINITY, hi = -INFINITY;
    for (int64_t k = k0 + lane; k < k1; k += 32) {
      const float v = __fmul_rn(row[k], s[k]);
      lo = fminf(lo, v);
      hi = fmaxf(hi, v);
    }
    grid_warp_range(lo, hi);
    float scale;
    uint8_t zero;
    grid_from_range(lo, hi, maxq, /*sym=*/false, /*awq=*/true, &scale, &zero);
    for (int64_t k = k0 + lane; k < k1; k += 32) {
      const float v = __fmul_rn(row[k], s[k]);
      out[n * K + k] = __fdiv_rn(grid_dequantize_value(grid_quantize_value(v, scale, zero, maxq), scale, zero), s[k]);
    }
  }
}

// ---- awq_clip_inputs --------------------------------------------------------------------------------------------

__global__ void awq_clip_inputs_kernel(const float* x, int64_t S, int64_t K0, int64_t step, const float* s, int64_t K,
                                       float* out) {
  const int64_t total = S * K, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total; idx += stride) {
    const int64_t i = idx / K, k = idx % K;
    float v = 0.f;
    if (k < K0) {
      v = x[i * step * K0 + k];
      if (s) v = __fdiv_rn(v, s[k]);
    }
    out[idx] = v;
  }
}

// ---- awq_clip_search --------------------------------------------------------------------------------------------

__global__ void __launch_bounds__(kThreads) awq_clip_search_kernel(const float* W, int64_t N, int64_t K,
                                                                   const float* x, int64_t S, int64_t G,
                                                                   int64_t groups, int maxq, int n_grid, int shrinks,
                                                                   float* max_val) {
  __shared__ __align__(16) float xs[kClipK][kClipTokens + 4];  // +4: 16-byte rows, fewer conflicts on the stores
  __shared__ __align__(16) float ds[kClipK][kClipRows + 4];
  __shared__ double part[kClipTokens / 4][kClipRows + 1];
  __shared__ float lo_s[kClipRows], hi_s[kClipRows], m0_s[kClipRows], bound_s[kClipRows], scale_s[kClipRows];
  __shared__ uint8_t zero_s[kClipRows];

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int tr = tid % 8, tt = tid / 8;  // rows 4·tr .. 4·tr+3, tokens 4·tt .. 4·tt+3 of a chunk
  const int64_t tiles = (N + kClipRows - 1) / kClipRows;
  for (int64_t item = blockIdx.x; item < groups * tiles; item += gridDim.x) {  // uniform over the block
    const int64_t g = item / tiles, n0 = (item % tiles) * kClipRows;
    const int64_t k0 = g * G, k1 = min(K, k0 + G);

    // Phase 0: each row's min, max and m0 over the group.
    for (int r = warp; r < kClipRows; r += kThreads / 32) {
      const int64_t n = n0 + r;
      float lo = INFINITY, hi = -INFINITY;
      if (n < N) {
        for (int64_t k = k0 + lane; k < k1; k += 32) {
          const float w = W[n * K + k];
          lo = fminf(lo, w);
          hi = fmaxf(hi, w);
        }
      }
      grid_warp_range(lo, hi);
      if (lane == 0) {
        if (n >= N) lo = hi = 0.f;
        lo_s[r] = lo;
        hi_s[r] = hi;
        m0_s[r] = fmaxf(fabsf(lo), fabsf(hi));
      }
    }
    __syncthreads();
    float best = tid < kClipRows ? m0_s[tid] : 0.f;  // thread r < 32 owns row n0 + r's choice
    double min_err = 1e9;                            // awq_search_clip's 1e9f, exactly

    for (int i = 0; i < shrinks; ++i) {
      if (tid < kClipRows) {
        const float ratio = __fsub_rn(1.f, __fdiv_rn(static_cast<float>(i), static_cast<float>(n_grid)));
        const float bound = __fmul_rn(m0_s[tid], ratio);
        const float lo = grid_std_min(grid_std_max(lo_s[tid], -bound), bound);
        const float hi = grid_std_min(grid_std_max(hi_s[tid], -bound), bound);
        grid_from_range(lo, hi, maxq, /*sym=*/false, /*awq=*/true, &scale_s[tid], &zero_s[tid]);
        bound_s[tid] = bound;
      }
      __syncthreads();
      double sq[4] = {0.0, 0.0, 0.0, 0.0};
      for (int64_t t0 = 0; t0 < S; t0 += kClipTokens) {
        float acc[4][4];
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
          for (int b = 0; b < 4; ++b) acc[a][b] = 0.f;
        for (int64_t c0 = k0; c0 < k1; c0 += kClipK) {
          for (int e = tid; e < kClipK * kClipTokens; e += kThreads) {
            const int kk = e % kClipK, t = e / kClipK;  // a warp reads 32 consecutive columns of one token row
            const int64_t gt = t0 + t, gk = c0 + kk;
            xs[kk][t] = (gt < S && gk < k1) ? x[gt * K + gk] : 0.f;
          }
          for (int e = tid; e < kClipK * kClipRows; e += kThreads) {
            const int kk = e % kClipK, r = e / kClipK;
            const int64_t n = n0 + r, gk = c0 + kk;
            float d = 0.f;
            if (n < N && gk < k1) {
              const float w = W[n * K + gk], bound = bound_s[r];
              const float cw = grid_std_min(grid_std_max(w, -bound), bound);
              d = __fsub_rn(grid_dequantize_value(grid_quantize_value(cw, scale_s[r], zero_s[r], maxq), scale_s[r],
                                                  zero_s[r]),
                            w);
            }
            ds[kk][r] = d;
          }
          __syncthreads();
#pragma unroll 8
          for (int kk = 0; kk < kClipK; ++kk) {
            const float4 xv = *reinterpret_cast<const float4*>(&xs[kk][4 * tt]);
            const float4 dv = *reinterpret_cast<const float4*>(&ds[kk][4 * tr]);
            const float xa[4] = {xv.x, xv.y, xv.z, xv.w}, db[4] = {dv.x, dv.y, dv.z, dv.w};
#pragma unroll
            for (int a = 0; a < 4; ++a)
#pragma unroll
              for (int b = 0; b < 4; ++b) acc[a][b] = __fmaf_rn(xa[a], db[b], acc[a][b]);
          }
          __syncthreads();  // the next chunk overwrites xs and ds
        }
#pragma unroll
        for (int a = 0; a < 4; ++a) {
          if (t0 + 4 * tt + a < S) {
#pragma unroll
            for (int b = 0; b < 4; ++b) {
              const double v = static_cast<double>(acc[a][b]);
              sq[b] += v * v;
            }
          }
        }
      }
#pragma unroll
      for (int b = 0; b < 4; ++b) part[tt][4 * tr + b] = sq[b];
      __syncthreads();
      if (tid < kClipRows) {
        double sum = 0.0;
        for (int j = 0; j < kClipTokens / 4; ++j) sum += part[j][tid];
        const double err = sum / static_cast<double>(S);
        if (err < min_err) {
          min_err = err;
          best = bound_s[tid];
        }
      }
      __syncthreads();  // the next shrink overwrites bound_s, scale_s, zero_s and part
    }
    if (tid < kClipRows && n0 + tid < N) max_val[(n0 + tid) * groups + g] = best;
    __syncthreads();  // the next item overwrites lo_s, hi_s, m0_s
  }
}

}  // namespace

void awq_candidate_cuda(const float* W, int64_t N, int64_t K, const float* s, int bits, int64_t group_size, float* out,
                        CudaStream stream) {
  awq_candidate_check_args(N, K, bits, group_size);
  const int64_t G = group_size == -1 ? K : group_size, groups = (K + G - 1) / G;
  awq_candidate_kernel<<<blocks_for(N * groups, kThreads / 32), kThreads, 0, stream>>>(W, N, K, s, G, groups,
                                                                                       (1 << bits) - 1, out);
  QWENQ_CUDA_CHECK_LAUNCH("awq_candidate_cuda N=" << N << " K=" << K << " G=" << G << " bits=" << bits);
}

void awq_clip_inputs_cuda(const float* x, int64_t T, int64_t K0, int64_t step, const float* s, int64_t K, float* out,
                          CudaStream stream) {
  awq_clip_inputs_check_args(T, K0, step, K);
  const int64_t S = awq_clip_rows(T, step);
  awq_clip_inputs_kernel<<<blocks_for(S * K, kThreads), kThreads, 0, stream>>>(x, S, K0, step, s, K, out);
  QWENQ_CUDA_CHECK_LAUNCH("awq_clip_inputs_cuda T=" << T << " K0=" << K0 << " step=" << step << " K=" << K);
}

void awq_clip_search_cuda(const float* W, int64_t N, int64_t K, const float* x, int64_t S, const AwqSearchOptions& opt,
                          float* max_val, CudaStream stream) {
  const int shrinks = awq_clip_search_check_args(N, K, S, opt);
  const int64_t G = opt.group_size > 0 ? opt.group_size : K, groups = (K + G - 1) / G;
  const int64_t tiles = (N + kClipRows - 1) / kClipRows;
  awq_clip_search_kernel<<<blocks_for(groups * tiles, 1), kThreads, 0, stream>>>(
      W, N, K, x, S, G, groups, (1 << opt.bits) - 1, opt.n_grid, shrinks, max_val);
  QWENQ_CUDA_CHECK_LAUNCH("awq_clip_search_cuda N=" << N << " K=" << K << " S=" << S << " G=" << G
                                                    << " shrinks=" << shrinks);
}

}  // namespace qwenq
