// Flash attention on Hopper's warpgroup MMA (sm_90a): attention_forward_wgmma_cuda and attention_backward_wgmma_cuda
// (kernels/flash_attention.h), the same math, tiles, arguments and outputs as attention_forward_cuda /
// attention_backward_cuda (kernels/flash_attention.cu, whose header has the formulas; the backward's wgmma mapping
// is described above its kernels below). The forward: causal GQA over packed sequences, bf16 q/k/v/out, fp32 softmax statistics in the exp2
// domain, P rounded to bf16 before P·V, lse in natural log.
//
// What changes is the instruction. A block is one warpgroup (4 warps, 128 threads) on one 64-row query tile of
// one head, exactly the mma.sync kernel's block, so the tile table, the longest-first order and the softmax
// registers are the same (warp w owns rows 16w..16w+15; a thread holds rows gid and gid + 8, the accumulator
// layout of m16n8k16, which is also wgmma's m64nNk16 layout per warp):
//   S = Q·Kᵀ     wgmma m64n64k16, D/16 steps, A = the Q tile and B = the K tile from shared memory (both K-major:
//                the head dim is the reduction, contiguous in each row);
//   O += P·V     wgmma m64nDk16, 4 steps over the 64 keys, A = P from registers (the scores rounded to bf16 in
//                the A-fragment order the mma.sync kernel already builds) and B = the V tile read MN-major
//                (imm-trans-b: V's rows are keys = the reduction, its columns the head dim = N) — V is used as
//                loaded, with no transposition in shared memory.
// Shared memory holds Q, K and V tiles (64 rows each) in the 128-byte swizzle (kernels/wgmma_layout.h): 64-column
// panels of 64 rows x 128 bytes, panel p of a D = 128 tile at 8 KB; cp.async writes each 16-byte chunk straight
// into its swizzled place. The loads overlap as in the mma.sync kernel (K of the next tile during P·V, V of this
// tile during Q·Kᵀ and the softmax); every wgmma group is waited for before the barrier that lets a tile be
// overwritten. 3 x 16 KB at D = 128 (1024-byte aligned at run time): several blocks per SM hide the waits.
//
// Numerics differ from the mma.sync kernel only in the order of the fp32 sums inside the tensor cores; the test
// bound is the same (error within 2x a naive bf16 implementation's, tests/gpu/test_flash_attention_cuda.cpp).
// Built only into the sm_90a image; attention_forward_wgmma_cuda refuses elsewhere (cuda_wgmma_supported,
// kernels/cuda_check.h); attention_forward_cuda dispatches here when cuda_wgmma_enabled() (default; QWENQ_WGMMA=0: no).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "kernels/flash_attention.h"
#include "kernels/flash_attention_common.cuh"
#include "kernels/wgmma.cuh"
#include "kernels/wgmma_layout.h"

namespace qwenq {
namespace {

using namespace flash_detail;

static_assert(kThreads == 128, "one warpgroup per block");
constexpr uint32_t kPanelBytes = kTile * kWgmmaRowBytes;  // 64 rows x 128 bytes

template <int D>
constexpr uint32_t kTileBytes = (D / kWgmmaTileK) * kPanelBytes;
template <int D>
constexpr size_t kWgSmem = 3 * kTileBytes<D> + kWgmmaAtomBytes;  // Q, K, V + the alignment slack

// Queues the copy of rows [row0, row0 + n_rows) (n_rows >= 1) of one head into a swizzled 64-row tile at `s`;
// rows past n_rows are zero-filled (padding keys carry v = 0, never garbage that 0·NaN would spread).
template <int D>
__device__ __forceinline__ void load_tile_sw(unsigned char* s, const bf16* g, int64_t stride, int row0, int n_rows) {
  constexpr int kChunks = D / 8;
  static_assert(kTile * kChunks % kThreads == 0, "whole rounds of cp.async");
#pragma unroll
  for (int it = 0; it < kTile * kChunks / kThreads; ++it) {
    const int c = it * kThreads + static_cast<int>(threadIdx.x);
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const bool valid = r < n_rows;
    const bf16* src = g + static_cast<int64_t>(valid ? row0 + r : row0) * stride + col;
    cp_async_16(reinterpret_cast<bf16*>(s + wgmma_sw128_panel_offset(kTile, r, col)), src, valid);
  }
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// acc (64 x N) += A·Bᵀ over the head dim D: A the 64 rows of the swizzled tile at a_addr, B the N rows at b_addr
// (both K-major; D/16 k16 steps across the 64-column panels: panel kk / 4, then 32 bytes per step). N = 64 (S, dP)
// or 32 (the dk/dv pass's query halves). Issues the wgmmas only: the caller fences, commits and waits.
template <int D, int NACC>  // NACC = N / 2 accumulators per thread
__device__ __forceinline__ void issue_abt(float (&acc)[NACC], uint32_t a_addr, uint32_t b_addr) {
  constexpr int N = 2 * NACC;
  static_assert(N == 64 || N == 32, "the S-shaped products are 64 x 64 or 64 x 32");
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t off = (kk / 4) * kPanelBytes + (kk % 4) * 32;
    if constexpr (N == 64) wgmma_ss_m64n64k16(acc, wgmma_sw128_descriptor(a_addr + off), wgmma_sw128_descriptor(b_addr + off));
    else wgmma_ss_m64n32k16(acc, wgmma_sw128_descriptor(a_addr + off), wgmma_sw128_descriptor(b_addr + off));
  }
}

// acc (64 x D) += P·B over KT·16 rows: P as KT register A fragments (to_a_fragments_flat), B the rows from b_addr
// of a swizzled tile read MN-major (keys or queries = the reduction, 2048 bytes per k16 step; the head dim = N
// across the 64-column panels, kPanelBytes apart). Issues the wgmmas only.
template <int D, int KT>
__device__ __forceinline__ void issue_pb(float (&acc)[D / 2], const uint32_t (&p)[KT][4], uint32_t b_addr) {
#pragma unroll
  for (int kk = 0; kk < KT; ++kk) {
    const uint64_t desc = wgmma_sw128_mn_descriptor(b_addr + kk * 16 * kWgmmaRowBytes, kPanelBytes);
    if constexpr (D == 128) wgmma_rs_m64n128k16_tb(acc, p[kk], desc);
    else wgmma_rs_m64n64k16_tb(acc, p[kk], desc);
  }
}
#endif

// A 64 x KT·16 score block in the accumulator layout, flat (s[4n + e]: column 8n + 2·tig + (e & 1) of row e >> 1),
// rounded to bf16 as KT A fragments of 16 columns each: {row gid, row gid + 8} x {columns 2tig.., 8 + 2tig..}
// (to_a_fragments' order for the flat layout).
template <int KT>
__device__ __forceinline__ void to_a_fragments_flat(const float (&s)[KT * 8], uint32_t (&f)[KT][4]) {
#pragma unroll
  for (int kk = 0; kk < KT; ++kk)
#pragma unroll
    for (int q = 0; q < 4; ++q) f[kk][q] = pack_bf16(s[8 * kk + 2 * q], s[8 * kk + 2 * q + 1]);
}

template <int D>
__global__ void __launch_bounds__(kThreads) flash_forward_wgmma_kernel(const FlashParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint32_t aQ;
  unsigned char* sQ = wgmma_align_smem(smem_raw, &aQ);
  unsigned char* sK = sQ + kTileBytes<D>;
  unsigned char* sV = sK + kTileBytes<D>;
  const uint32_t aK = aQ + kTileBytes<D>, aV = aK + kTileBytes<D>;

  const int4 tile = p.tiles[blockIdx.x / p.H];
  const int h = static_cast<int>(blockIdx.x % p.H), row0 = tile.x, row1 = tile.y, b = tile.z;
  const int warp = static_cast<int>(threadIdx.x) / cuda::kWarp, lane = static_cast<int>(threadIdx.x) % cuda::kWarp;
  const int gid = lane >> 2, tig = lane & 3;
  const int64_t q_stride = static_cast<int64_t>(p.H) * D, kv_stride = static_cast<int64_t>(p.Hkv) * D;
  const bf16* kh = p.k + (h / p.group) * D;
  const bf16* vh = p.v + (h / p.group) * D;

  load_tile_sw<D>(sQ, p.q + h * D, q_stride, row0, row1 - row0);
  load_tile_sw<D>(sK, kh, kv_stride, b, min(kTile, row1 - b));
  cp_async_commit();

  const int i_row[2] = {row0 + warp * 16 + gid, row0 + warp * 16 + gid + 8};
  float o[D / 2];  // o[4n + e]: columns 8n + 2·tig + (e & 1) of row e >> 1 (the accumulator layout)
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  const int n_key_tiles = (row1 - b + kTile - 1) / kTile;
  for (int it = 0; it < n_key_tiles; ++it) {
    const int k0 = b + it * kTile;
    cp_async_wait_all();
    fence_proxy_async();  // this thread's landed copies, for the tensor cores
    __syncthreads();      // K of this tile (and Q) in shared memory; the previous P·V is complete in every warp
    load_tile_sw<D>(sV, vh, kv_stride, k0, min(kTile, row1 - k0));
    cp_async_commit();

    float s[32];  // s[4n + e]: key k0 + 8n + 2·tig + (e & 1) of row e >> 1
#pragma unroll
    for (int i = 0; i < 32; ++i) s[i] = 0.f;
    wgmma_fence_operand(s);
    wgmma_fence();
    issue_abt<D>(s, aQ, aK);
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_operand(s);

    const bool diag = k0 == row0;
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = k0 + n * 8 + 2 * tig + (e & 1);
        s[4 * n + e] = (diag && j > i_row[e >> 1]) ? -INFINITY : s[4 * n + e] * p.scale_log2;
      }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = m[r];
#pragma unroll
      for (int n = 0; n < 8; ++n) mx = fmaxf(mx, fmaxf(s[4 * n + 2 * r], s[4 * n + 2 * r + 1]));
      mx = quad_max(mx);
      const float m_use = mx == -INFINITY ? 0.f : mx;
      const float alpha = exp2f(m[r] - m_use);
      m[r] = mx;
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        s[4 * n + 2 * r] = exp2f(s[4 * n + 2 * r] - m_use);
        s[4 * n + 2 * r + 1] = exp2f(s[4 * n + 2 * r + 1] - m_use);
        sum += s[4 * n + 2 * r] + s[4 * n + 2 * r + 1];
      }
      l[r] = l[r] * alpha + sum;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        o[4 * n + 2 * r] *= alpha;
        o[4 * n + 2 * r + 1] *= alpha;
      }
    }
    // P as bf16 A fragments, 16 keys each: {row gid, row gid + 8} x {keys 2tig.., keys 8 + 2tig..}.
    uint32_t pf[4][4];
    to_a_fragments_flat(s, pf);

    cp_async_wait_all();
    fence_proxy_async();
    __syncthreads();  // V of this tile landed; Q·Kᵀ was waited for in every warp, so K may be overwritten
    if (it + 1 < n_key_tiles) {
      load_tile_sw<D>(sK, kh, kv_stride, k0 + kTile, min(kTile, row1 - k0 - kTile));
      cp_async_commit();
    }
    wgmma_fence_operand(pf);
    wgmma_fence_operand(o);
    wgmma_fence();
    issue_pb<D>(o, pf, aV);
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_operand(o);
    wgmma_fence_operand(pf);
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = i_row[r];
    const float l_row = quad_sum(l[r]);
    if (i >= row1) continue;
    const float inv = 1.0f / l_row;
    bf16* dst = p.o + i * q_stride + h * D + 2 * tig;
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<__nv_bfloat162*>(dst + n * 8) =
          __floats2bfloat162_rn(o[4 * n + 2 * r] * inv, o[4 * n + 2 * r + 1] * inv);
    if (p.lse != nullptr && tig == 0) p.lse[static_cast<int64_t>(i) * p.H + h] = (m[r] + log2f(l_row)) * kLn2;
  }
#else
  __trap();  // never launched without sm_90a code (the launcher checks cuda_wgmma_supported)
#endif
}

// ---- backward ---------------------------------------------------------------------------------------------------
// The mma.sync backward's two deterministic passes (kernels/flash_attention.cu has the math), on wgmma:
//   dq pass    per query tile and head: S = Q·Kᵀ and dP = dO·Vᵀ by m64n64k16 (ss), dS = P ⊙ (dP − δ) in registers,
//              dq += dS·K by m64nDk16 with dS from registers and K read MN-major (the same swizzled K tile that
//              Q·Kᵀ reads K-major); it also writes δ.
//   dk/dv pass per key tile and kv head, over the group's query heads and the query tiles that see the keys, in
//              halves of 32 queries: Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ by m64n32k16 (ss), then dv += Pᵀ·dO and
//              dk += dSᵀ·Q by m64nDk16 with Pᵀ, dSᵀ from registers and dO, Q read MN-major.

template <int D>
__global__ void __launch_bounds__(kThreads) flash_backward_dq_wgmma_kernel(const FlashParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint32_t aQ;
  unsigned char* sQ = wgmma_align_smem(smem_raw, &aQ);
  unsigned char* sdO = sQ + kTileBytes<D>;
  unsigned char* sK = sdO + kTileBytes<D>;
  unsigned char* sV = sK + kTileBytes<D>;
  const uint32_t adO = aQ + kTileBytes<D>, aK = adO + kTileBytes<D>, aV = aK + kTileBytes<D>;

  const int4 tile = p.tiles[blockIdx.x / p.H];
  const int h = static_cast<int>(blockIdx.x % p.H), row0 = tile.x, row1 = tile.y, b = tile.z;
  const int warp = static_cast<int>(threadIdx.x) / cuda::kWarp, lane = static_cast<int>(threadIdx.x) % cuda::kWarp;
  const int gid = lane >> 2, tig = lane & 3;
  const int64_t q_stride = static_cast<int64_t>(p.H) * D, kv_stride = static_cast<int64_t>(p.Hkv) * D;
  const bf16* kh = p.k + (h / p.group) * D;
  const bf16* vh = p.v + (h / p.group) * D;

  load_tile_sw<D>(sQ, p.q + h * D, q_stride, row0, row1 - row0);
  load_tile_sw<D>(sdO, p.dout + h * D, q_stride, row0, row1 - row0);
  cp_async_commit();

  // δ (written for the dk/dv pass) and lse·log2(e) of this thread's rows, as the mma.sync dq pass.
  const int i_row[2] = {row0 + warp * 16 + gid, row0 + warp * 16 + gid + 8};
  float delta[2], lse2[2];
  dq_pass_row_stats<D>(p, row0, row1, h, warp, lane, delta, lse2);

  float dq[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dq[i] = 0.f;

  const int n_key_tiles = (row1 - b + kTile - 1) / kTile;
  for (int it = 0; it < n_key_tiles; ++it) {
    const int k0 = b + it * kTile, nk = min(kTile, row1 - k0);
    load_tile_sw<D>(sK, kh, kv_stride, k0, nk);
    load_tile_sw<D>(sV, vh, kv_stride, k0, nk);
    cp_async_commit();
    cp_async_wait_all();
    fence_proxy_async();
    __syncthreads();  // Q, dO (first time), K and V in shared memory

    float s[32], dp[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) s[i] = dp[i] = 0.f;
    wgmma_fence_operand(s);
    wgmma_fence_operand(dp);
    wgmma_fence();
    issue_abt<D>(s, aQ, aK);
    issue_abt<D>(dp, adO, aV);
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_operand(s);
    wgmma_fence_operand(dp);

    const bool diag = k0 == row0;
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = k0 + n * 8 + 2 * tig + (e & 1), r = e >> 1;
        const float pr = (diag && j > i_row[r]) ? 0.f : exp2f(s[4 * n + e] * p.scale_log2 - lse2[r]);
        s[4 * n + e] = pr * (dp[4 * n + e] - delta[r]);  // dS
      }
    uint32_t dsf[4][4];
    to_a_fragments_flat(s, dsf);
    wgmma_fence_operand(dsf);
    wgmma_fence_operand(dq);
    wgmma_fence();
    issue_pb<D>(dq, dsf, aK);
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_operand(dq);
    wgmma_fence_operand(dsf);
    __syncthreads();  // every warp's wgmmas on K and V are complete before the next tile overwrites them
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = i_row[r];
    if (i >= row1) continue;
    float* dst = p.dq + i * q_stride + h * D + 2 * tig;
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<float2*>(dst + n * 8) =
          make_float2(dq[4 * n + 2 * r] * p.scale, dq[4 * n + 2 * r + 1] * p.scale);
  }
#else
  __trap();
#endif
}

template <int D>
__global__ void __launch_bounds__(kThreads) flash_backward_dkdv_wgmma_kernel(const FlashParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ float s_lse2[kTile], s_delta[kTile];
  uint32_t aK;
  unsigned char* sK = wgmma_align_smem(smem_raw, &aK);
  unsigned char* sV = sK + kTileBytes<D>;
  unsigned char* sQ = sV + kTileBytes<D>;
  unsigned char* sdO = sQ + kTileBytes<D>;
  const uint32_t aV = aK + kTileBytes<D>, aQ = aV + kTileBytes<D>, adO = aQ + kTileBytes<D>;

  const int4 tile = p.tiles[blockIdx.x / p.Hkv];
  const int g = static_cast<int>(blockIdx.x % p.Hkv), row0 = tile.x, row1 = tile.y, e_seq = tile.w;
  const int warp = static_cast<int>(threadIdx.x) / cuda::kWarp, lane = static_cast<int>(threadIdx.x) % cuda::kWarp;
  const int gid = lane >> 2, tig = lane & 3;
  const int64_t q_stride = static_cast<int64_t>(p.H) * D, kv_stride = static_cast<int64_t>(p.Hkv) * D;

  load_tile_sw<D>(sK, p.k + g * D, kv_stride, row0, row1 - row0);
  load_tile_sw<D>(sV, p.v + g * D, kv_stride, row0, row1 - row0);
  cp_async_commit();

  const int j_row[2] = {row0 + warp * 16 + gid, row0 + warp * 16 + gid + 8};  // this thread's key rows
  float dk[D / 2], dv[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.f;

  for (int hh = 0; hh < p.group; ++hh) {
    const int h = g * p.group + hh;
    for (int i0 = row0; i0 < e_seq; i0 += kTile) {
      const int ni = min(kTile, e_seq - i0);
      load_tile_sw<D>(sQ, p.q + h * D, q_stride, i0, ni);
      load_tile_sw<D>(sdO, p.dout + h * D, q_stride, i0, ni);
      cp_async_commit();
      if (threadIdx.x < kTile) {
        const int r = static_cast<int>(threadIdx.x);
        const int64_t at = static_cast<int64_t>(i0 + r) * p.H + h;
        s_lse2[r] = r < ni ? p.lse_in[at] * kLog2e : INFINITY;  // rows past the end: P = 0
        s_delta[r] = r < ni ? p.delta[at] : 0.f;
      }
      cp_async_wait_all();
      fence_proxy_async();
      __syncthreads();  // K, V (first time), Q, dO, lse and δ in shared memory

      const bool diag = i0 == row0;
#pragma unroll 1
      for (int half = 0; half < 2; ++half) {
        const uint32_t q_rows = half * 32 * kWgmmaRowBytes;  // this half's first query row (a whole atom)
        float st[16], dpt[16];  // Sᵀ and dPᵀ: rows = the keys, columns = 32 queries; st[4n + e] as the forward's s
#pragma unroll
        for (int i = 0; i < 16; ++i) st[i] = dpt[i] = 0.f;
        wgmma_fence_operand(st);
        wgmma_fence_operand(dpt);
        wgmma_fence();
        issue_abt<D>(st, aK, aQ + q_rows);
        issue_abt<D>(dpt, aV, adO + q_rows);
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_fence_operand(st);
        wgmma_fence_operand(dpt);
#pragma unroll
        for (int n = 0; n < 4; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int col = half * 32 + n * 8 + 2 * tig + (e & 1);
            const float pr =
                (diag && j_row[e >> 1] > i0 + col) ? 0.f : exp2f(st[4 * n + e] * p.scale_log2 - s_lse2[col]);
            st[4 * n + e] = pr;
            dpt[4 * n + e] = pr * (dpt[4 * n + e] - s_delta[col]);  // dSᵀ
          }
        uint32_t pf[2][4], dsf[2][4];
        to_a_fragments_flat(st, pf);
        to_a_fragments_flat(dpt, dsf);
        wgmma_fence_operand(pf);
        wgmma_fence_operand(dsf);
        wgmma_fence_operand(dv);
        wgmma_fence_operand(dk);
        wgmma_fence();
        issue_pb<D>(dv, pf, adO + q_rows);  // the half's 32 queries are the reduction
        issue_pb<D>(dk, dsf, aQ + q_rows);
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_fence_operand(dv);
        wgmma_fence_operand(dk);
        wgmma_fence_operand(pf);
        wgmma_fence_operand(dsf);
      }
      __syncthreads();  // every warp's wgmmas on Q and dO, and its reads of lse and δ, are complete
    }
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int j = j_row[r];
    if (j >= row1) continue;
    float* dk_dst = p.dk + j * kv_stride + g * D + 2 * tig;
    float* dv_dst = p.dv + j * kv_stride + g * D + 2 * tig;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<float2*>(dk_dst + n * 8) =
          make_float2(dk[4 * n + 2 * r] * p.scale, dk[4 * n + 2 * r + 1] * p.scale);
      *reinterpret_cast<float2*>(dv_dst + n * 8) = make_float2(dv[4 * n + 2 * r], dv[4 * n + 2 * r + 1]);
    }
  }
#else
  __trap();
#endif
}

template <int D>
constexpr size_t kWgBackwardSmem = 4 * kTileBytes<D> + kWgmmaAtomBytes;

template <int D>
void launch_backward_wgmma_d(FlashParams p, const TilePlan& plan, cudaStream_t stream) {
  QWENQ_CUDA_CHECK(cudaFuncSetAttribute(flash_backward_dq_wgmma_kernel<D>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(kWgBackwardSmem<D>)));
  QWENQ_CUDA_CHECK(cudaFuncSetAttribute(flash_backward_dkdv_wgmma_kernel<D>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(kWgBackwardSmem<D>)));
  p.tiles = plan.by_queries;
  flash_backward_dq_wgmma_kernel<D>
      <<<static_cast<unsigned>(plan.n_tiles) * static_cast<unsigned>(p.H), kThreads, kWgBackwardSmem<D>, stream>>>(p);
  p.tiles = plan.by_keys;  // after the dq pass on the same stream: δ is complete
  flash_backward_dkdv_wgmma_kernel<D>
      <<<static_cast<unsigned>(plan.n_tiles) * static_cast<unsigned>(p.Hkv), kThreads, kWgBackwardSmem<D>, stream>>>(p);
}

template <int D>
void launch_forward_wgmma(const FlashParams& p, int n_tiles, cudaStream_t stream) {
  QWENQ_CUDA_CHECK(cudaFuncSetAttribute(flash_forward_wgmma_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(kWgSmem<D>)));
  flash_forward_wgmma_kernel<D>
      <<<static_cast<unsigned>(n_tiles) * static_cast<unsigned>(p.H), kThreads, kWgSmem<D>, stream>>>(p);
}

}  // namespace

namespace flash_detail {

void launch_backward_wgmma(const FlashParams& p, const TilePlan& plan, int64_t D, cudaStream_t stream) {
#ifdef QWENQ_FLASH_D64
  if (D == 64) launch_backward_wgmma_d<64>(p, plan, stream);
#endif
#ifdef QWENQ_FLASH_D128
  if (D == 128) launch_backward_wgmma_d<128>(p, plan, stream);
#endif
}

}  // namespace flash_detail

void attention_backward_wgmma_cuda(const void* dout, const void* q, const void* k, const void* v, const void* out,
                                   const float* lse, const int32_t* cu_seqlens, int64_t n_seqs, int64_t H,
                                   int64_t Hkv, int64_t D, float* dq, float* dk, float* dv, DType dtype,
                                   CudaStream stream) {
  attention_backward_impl("attention_backward_wgmma_cuda", dout, q, k, v, out, lse, cu_seqlens, n_seqs, H, Hkv, D, dq,
                          dk, dv, dtype, stream, /*wgmma=*/true);
}

void attention_forward_wgmma_cuda(const void* q, const void* k, const void* v, const int32_t* cu_seqlens,
                                  int64_t n_seqs, int64_t H, int64_t Hkv, int64_t D, void* out, float* lse,
                                  DType dtype, CudaStream stream) {
  const char* name = "attention_forward_wgmma_cuda";
  const int64_t T = check_forward_args(name, q, k, v, cu_seqlens, n_seqs, H, Hkv, D, out, dtype);
  if (T == 0) return;
  QWENQ_CHECK(cuda_wgmma_supported(),
              name << ": needs an sm_90 GPU (H100/H200) and a build with the sm_90a target (QWENQ_CUDA_ARCHS "
                      "contains 90a); attention_forward_cuda runs elsewhere");
  FlashParams p = forward_params(q, k, v, out, lse, H, Hkv, D);
  const TilePlan plan = plan_tiles(name, cu_seqlens, n_seqs, H, false, stream);
  p.tiles = plan.by_queries;
#ifdef QWENQ_FLASH_D64
  if (D == 64) launch_forward_wgmma<64>(p, plan.n_tiles, stream);
#endif
#ifdef QWENQ_FLASH_D128
  if (D == 128) launch_forward_wgmma<128>(p, plan.n_tiles, stream);
#endif
  QWENQ_CUDA_CHECK_LAUNCH(name << " T=" << T << " n_seqs=" << n_seqs << " H=" << H << " Hkv=" << Hkv << " D=" << D
                               << " tiles=" << plan.n_tiles);
}

}  // namespace qwenq
