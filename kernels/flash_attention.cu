// Flash attention, forward and backward, on the tensor cores: the CUDA twins of kernels/attention_ref.cpp
// (header: kernels/flash_attention.h).
//
// Math, for one sequence (rows [b, e)), query head h, kv head g = h / (H / Hkv), c = scale · log2(e):
//   forward   S = q_h·k_gᵀ, causal mask (key j visible to query i iff j <= i), and per query row the online
//             softmax over key tiles in the exp2 domain (exp(x) = 2^(x·log2 e), one FFMA + ex2 per score):
//               m' = max(m, max_j S_j·c),  α = 2^(m − m'),  l' = α·l + Σ_j 2^(S_j·c − m'),
//               O' = α·O + Σ_j bf16(2^(S_j·c − m'))·v_j
//             then out = O / l (rounded to bf16) and lse = (m + log2 l) · ln 2 (natural log, fp32).
//   backward  P = 2^(S·c − lse·log2 e) recomputed from the saved lse (no second softmax), δ_i = Σ_d dout·out,
//             dP = dout·vᵀ, dS = P ⊙ (dP − δ), and with bf16(P), bf16(dS) as tensor-core operands:
//               dq = scale · dS·k            (the dq pass: one block per query tile and head)
//               dv = Σ_group Pᵀ·dout, dk = scale · Σ_group dSᵀ·q   (the dk/dv pass: one block per key tile
//                                                                     and kv head, looping over the group)
// Every accumulation is fp32 (the mma accumulators, the running max and sum, δ).
//
// Tiling, and why:
// - Tiles of 64 rows, queries and keys alike, cut from each sequence's first row, so a query tile and the key
//   tile at the same rows coincide: of the key tiles a query tile visits, only that diagonal one needs the causal
//   mask, and key tiles entirely after the query tile's last row are never visited (the fully masked tiles are
//   skipped by the loop bounds, not tested). Sequences never share a tile, so the mask is only j <= i.
// - 4 warps per block, each owning 16 rows of the block's 64: exactly the M = 16 of mma.m16n8k16, so a warp's
//   softmax rows never leave its registers. The four lanes of a quad hold one row's 16 columns of a 64-wide
//   score tile; their row max is two shuffles.
// - mma.sync.aligned.m16n8k16 bf16 -> fp32 (sm_80 and sm_90a alike). The fp32 accumulator fragment of a 16x16
//   score block has the same (row, column) ownership as the bf16 A fragment of m16n8k16, so P (and dS) are
//   rounded to bf16 and fed back as the A operand of the next product without touching shared memory.
// - Operand tiles in shared memory with rows padded by 8 bf16 (16 bytes): row strides of 144 / 272 bytes put
//   the 8 rows of a fragment load (32-bit loads at g·stride + 4t, and the 8 row addresses of ldmatrix) in 8
//   different 4-bank groups: no bank conflicts. The padding keeps rows 16-byte aligned for cp.async.
// - Row-major smem tiles serve both products: A·Bᵀ (S = Q·Kᵀ, dP = dO·Vᵀ) reads both operands with 32-bit loads
//   (consecutive head-dim pairs); P·V (and dS·K, Pᵀ·dO, dSᵀ·Q) needs the tile's columns as the B fragment, which
//   ldmatrix.x4.trans delivers from the same row-major tile.
// - Global -> shared by cp.async (16 bytes per instruction, no register staging); rows past the tile's end are
//   zero-filled (src-size 0), so padding keys carry v = 0 rather than garbage that 0·NaN would spread.
//   Forward: K of the next tile is loaded while P·V runs, V of this tile while Q·Kᵀ and the softmax run: one
//   buffer each (52 KB at D = 128), the overlap FlashAttention-2 uses. The backward passes load and compute in
//   turn (70 KB) and rely on several blocks per SM to hide the loads.
// - Blocks take tiles longest-first (the host sorts a tile table by the work each tile has: keys visited for
//   query tiles, queries visited for key tiles), so the long causal rows do not trail at the end of the grid.
//   The heads of one tile are consecutive blocks: they share K/V (forward) or Q/dO (dk/dv pass) in L2.
// - The backward runs two passes instead of accumulating dq with atomics: the dq pass (queries in the block,
//   loop over keys; it also writes δ) and the dk/dv pass (keys in the block, loop over the group's query heads
//   and the queries; it owns its dk and dv rows, so the group sum needs no atomics either). S and dP are computed
//   twice, 7 products per score instead of 5, for a result that is the same bits on every run.
// Kernel instances: head dim D in {64, 128} as a template parameter (the fragment loops unroll over D), causal
// always: one forward and two backward kernels per head dim. The build compiles the dims of QWENQ_FLASH_HEAD_DIMS
// (CMake; both by default), defined here as QWENQ_FLASH_D64 / QWENQ_FLASH_D128; the others are refused.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "kernels/flash_attention.h"
#include "kernels/flash_attention_common.cuh"

namespace qwenq {

namespace {

using namespace flash_detail;

constexpr int kPad = 8;  // bf16 elements of padding per smem row (bank-conflict-free loads)

template <int D>
constexpr int kStride = D + kPad;  // smem row stride in elements

// ---- device building blocks ----------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t lds32(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }

// c += a·b on the tensor cores: a 16x16 (row), b 16x8 (col), bf16, c 16x8 fp32. Fragment ownership, lane =
// 4·gid + tig: a = {A[gid][2tig..+1], A[gid+8][2tig..+1], A[gid][2tig+8..+9], A[gid+8][2tig+8..+9]},
// b = {B[2tig..+1][gid], B[2tig+8..+9][gid]}, c = {C[gid][2tig], C[gid][2tig+1], C[gid+8][2tig], C[gid+8][2tig+1]}.
__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four transposed 8x8 bf16 matrices from shared memory: lane l gives the address of row l % 8 of matrix l / 8 and
// receives, from matrix m, the elements [2(l%4)][l/4] and [2(l%4)+1][l/4] in r[m] (the B fragment layout).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const bf16* p) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
}

// Queues the copy of rows [row0, row0 + n_rows) (n_rows >= 1) of one head into a kTile-row smem tile; the rest of
// the tile is zero-filled. `g` points at row 0 of the head (base + head·D), `stride` is the row stride in elements.
template <int D>
__device__ __forceinline__ void load_tile(bf16* s, const bf16* g, int64_t stride, int row0, int n_rows) {
  constexpr int kChunks = D / 8;  // 16-byte pieces per row
  static_assert(kTile * kChunks % kThreads == 0, "whole rounds of cp.async");
#pragma unroll
  for (int it = 0; it < kTile * kChunks / kThreads; ++it) {
    const int c = it * kThreads + static_cast<int>(threadIdx.x);
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const bool valid = r < n_rows;
    const bf16* src = g + static_cast<int64_t>(valid ? row0 + r : row0) * stride + col;  // a valid address always
    cp_async_16(s + r * kStride<D> + col, src, valid);
  }
}

// acc[n] = A·Bᵀ for the warp's 16 rows of A (sA: their first row) against NT·8 rows of B (sB), both row-major
// [rows][D] tiles in shared memory: the 16 x NT·8 score block in accumulator layout.
template <int D, int NT>
__device__ __forceinline__ void gemm_abt(float (&acc)[NT][4], const bf16* sA, const bf16* sB, int lane) {
  const int gid = lane >> 2, tig = lane & 3;
#pragma unroll
  for (int n = 0; n < NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const bf16* pa = sA + gid * kStride<D> + kk * 16 + 2 * tig;
    const uint32_t a[4] = {lds32(pa), lds32(pa + 8 * kStride<D>), lds32(pa + 8), lds32(pa + 8 * kStride<D> + 8)};
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      const bf16* pb = sB + (n * 8 + gid) * kStride<D> + kk * 16 + 2 * tig;
      mma_bf16_16816(acc[n], a, lds32(pb), lds32(pb + 8));
    }
  }
}

// acc (16 x D, accumulator layout: acc[n] holds columns 8n..8n+7) += P·B, where P (16 x KT·16) is given as bf16 A
// fragments (p[kk] covers columns 16kk..16kk+15) and B is KT·16 rows of a row-major [rows][D] smem tile.
template <int D, int KT>
__device__ __forceinline__ void gemm_pb(float (&acc)[D / 8][4], const uint32_t (&p)[KT][4], const bf16* sB,
                                        int lane) {
  const int m = lane >> 3;                                  // which of the 4 matrices this lane addresses
  const int row = (m & 1) * 8 + (lane & 7), col = (m >> 1) * 8;  // keys 0-7 / 8-15, columns 0-7 / 8-15
#pragma unroll
  for (int kk = 0; kk < KT; ++kk) {
#pragma unroll
    for (int np = 0; np < D / 16; ++np) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, sB + (kk * 16 + row) * kStride<D> + np * 16 + col);
      mma_bf16_16816(acc[2 * np], p[kk], b[0], b[1]);
      mma_bf16_16816(acc[2 * np + 1], p[kk], b[2], b[3]);
    }
  }
}

// ---- forward -----------------------------------------------------------------------------------------------------

// One block: query rows [row0, row1) of head h (tile = p.tiles[blockIdx.x / H], h = blockIdx.x % H).
template <int D>
__global__ void __launch_bounds__(kThreads) flash_forward_kernel(const FlashParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sK = sQ + kTile * kStride<D>;
  bf16* sV = sK + kTile * kStride<D>;

  const int4 tile = p.tiles[blockIdx.x / p.H];
  const int h = static_cast<int>(blockIdx.x % p.H), row0 = tile.x, row1 = tile.y, b = tile.z;
  const int warp = static_cast<int>(threadIdx.x) / cuda::kWarp, lane = static_cast<int>(threadIdx.x) % cuda::kWarp;
  const int gid = lane >> 2, tig = lane & 3;
  const int64_t q_stride = static_cast<int64_t>(p.H) * D, kv_stride = static_cast<int64_t>(p.Hkv) * D;
  const bf16* kh = p.k + (h / p.group) * D;
  const bf16* vh = p.v + (h / p.group) * D;

  load_tile<D>(sQ, p.q + h * D, q_stride, row0, row1 - row0);
  load_tile<D>(sK, kh, kv_stride, b, min(kTile, row1 - b));
  cp_async_commit();

  // This thread's two query rows (accumulator rows gid and gid + 8 of the warp's 16).
  const int i_row[2] = {row0 + warp * 16 + gid, row0 + warp * 16 + gid + 8};
  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // l: this lane's part of the row sum

  const int n_key_tiles = (row1 - b + kTile - 1) / kTile;  // keys [b, row1): the last tile is the diagonal one
  for (int it = 0; it < n_key_tiles; ++it) {
    const int k0 = b + it * kTile;
    cp_async_wait_all();
    __syncthreads();  // K of this tile (and Q) in smem; every warp done with the previous V
    load_tile<D>(sV, vh, kv_stride, k0, min(kTile, row1 - k0));
    cp_async_commit();

    float s[8][4];
    gemm_abt<D, 8>(s, sQ + warp * 16 * kStride<D>, sK, lane);
    const bool diag = k0 == row0;
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = k0 + n * 8 + 2 * tig + (e & 1);
        s[n][e] = (diag && j > i_row[e >> 1]) ? -INFINITY : s[n][e] * p.scale_log2;
      }
    // Online softmax, per row r (accumulator elements 2r, 2r+1).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = m[r];
#pragma unroll
      for (int n = 0; n < 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
      mx = quad_max(mx);
      const float m_use = mx == -INFINITY ? 0.f : mx;  // a row with nothing visible yet stays at 0 (no inf − inf)
      const float alpha = exp2f(m[r] - m_use);        // 0 on the first tile (m = -inf)
      m[r] = mx;
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        s[n][2 * r] = exp2f(s[n][2 * r] - m_use);
        s[n][2 * r + 1] = exp2f(s[n][2 * r + 1] - m_use);
        sum += s[n][2 * r] + s[n][2 * r + 1];
      }
      l[r] = l[r] * alpha + sum;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        o[n][2 * r] *= alpha;
        o[n][2 * r + 1] *= alpha;
      }
    }
    uint32_t pf[4][4];
    to_a_fragments<8>(s, pf);

    cp_async_wait_all();
    __syncthreads();  // V of this tile in smem; every warp done with K
    if (it + 1 < n_key_tiles) {
      load_tile<D>(sK, kh, kv_stride, k0 + kTile, min(kTile, row1 - k0 - kTile));
      cp_async_commit();
    }
    gemm_pb<D, 4>(o, pf, sV, lane);
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
      *reinterpret_cast<__nv_bfloat162*>(dst + n * 8) = __floats2bfloat162_rn(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
    if (p.lse != nullptr && tig == 0) p.lse[static_cast<int64_t>(i) * p.H + h] = (m[r] + log2f(l_row)) * kLn2;
  }
}

// ---- backward: dq (and δ) ------------------------------------------------------------------------------------------

// One block: query rows [row0, row1) of head h, as the forward. Writes δ for its rows, then loops over the key
// tiles: S and P, dP, dS, dq += dS·K.
template <int D>
__global__ void __launch_bounds__(kThreads) flash_backward_dq_kernel(const FlashParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sdO = sQ + kTile * kStride<D>;
  bf16* sK = sdO + kTile * kStride<D>;
  bf16* sV = sK + kTile * kStride<D>;

  const int4 tile = p.tiles[blockIdx.x / p.H];
  const int h = static_cast<int>(blockIdx.x % p.H), row0 = tile.x, row1 = tile.y, b = tile.z;
  const int warp = static_cast<int>(threadIdx.x) / cuda::kWarp, lane = static_cast<int>(threadIdx.x) % cuda::kWarp;
  const int gid = lane >> 2, tig = lane & 3;
  const int64_t q_stride = static_cast<int64_t>(p.H) * D, kv_stride = static_cast<int64_t>(p.Hkv) * D;
  const bf16* kh = p.k + (h / p.group) * D;
  const bf16* vh = p.v + (h / p.group) * D;

  load_tile<D>(sQ, p.q + h * D, q_stride, row0, row1 - row0);
  load_tile<D>(sdO, p.dout + h * D, q_stride, row0, row1 - row0);
  cp_async_commit();

  const int i_row[2] = {row0 + warp * 16 + gid, row0 + warp * 16 + gid + 8};
  float delta[2], lse2[2];
  dq_pass_row_stats<D>(p, row0, row1, h, warp, lane, delta, lse2);

  float dq[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.f;

  const int n_key_tiles = (row1 - b + kTile - 1) / kTile;
  for (int it = 0; it < n_key_tiles; ++it) {
    const int k0 = b + it * kTile, nk = min(kTile, row1 - k0);
    load_tile<D>(sK, kh, kv_stride, k0, nk);
    load_tile<D>(sV, vh, kv_stride, k0, nk);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();  // Q, dO (first time), K and V in smem

    float s[8][4], dp[8][4];
    gemm_abt<D, 8>(s, sQ + warp * 16 * kStride<D>, sK, lane);
    gemm_abt<D, 8>(dp, sdO + warp * 16 * kStride<D>, sV, lane);
    const bool diag = k0 == row0;
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = k0 + n * 8 + 2 * tig + (e & 1), r = e >> 1;
        const float pr = (diag && j > i_row[r]) ? 0.f : exp2f(s[n][e] * p.scale_log2 - lse2[r]);
        s[n][e] = pr * (dp[n][e] - delta[r]);  // dS
      }
    uint32_t dsf[4][4];
    to_a_fragments<8>(s, dsf);
    gemm_pb<D, 4>(dq, dsf, sK, lane);
    __syncthreads();  // every warp done with K and V before the next tile overwrites them
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = i_row[r];
    if (i >= row1) continue;
    float* dst = p.dq + i * q_stride + h * D + 2 * tig;
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<float2*>(dst + n * 8) = make_float2(dq[n][2 * r] * p.scale, dq[n][2 * r + 1] * p.scale);
  }
}

// ---- backward: dk and dv -------------------------------------------------------------------------------------------

// One block: key rows [row0, row1) of kv head g (tile = p.tiles[blockIdx.x / Hkv], g = blockIdx.x % Hkv), for the
// query heads of group g and the query rows [row0, seq_end) that see these keys. The warp's 16 keys are the rows
// of Sᵀ = K·Qᵀ; a 64-query tile is taken in two halves of 32 so that dk, dv (2 · D/2 fp32 registers) and the
// two score blocks fit in the register file without spilling.
template <int D>
__global__ void __launch_bounds__(kThreads) flash_backward_dkdv_kernel(const FlashParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sK = reinterpret_cast<bf16*>(smem);
  bf16* sV = sK + kTile * kStride<D>;
  bf16* sQ = sV + kTile * kStride<D>;
  bf16* sdO = sQ + kTile * kStride<D>;
  float* s_lse2 = reinterpret_cast<float*>(sdO + kTile * kStride<D>);
  float* s_delta = s_lse2 + kTile;

  const int4 tile = p.tiles[blockIdx.x / p.Hkv];
  const int g = static_cast<int>(blockIdx.x % p.Hkv), row0 = tile.x, row1 = tile.y, e_seq = tile.w;
  const int warp = static_cast<int>(threadIdx.x) / cuda::kWarp, lane = static_cast<int>(threadIdx.x) % cuda::kWarp;
  const int gid = lane >> 2, tig = lane & 3;
  const int64_t q_stride = static_cast<int64_t>(p.H) * D, kv_stride = static_cast<int64_t>(p.Hkv) * D;

  load_tile<D>(sK, p.k + g * D, kv_stride, row0, row1 - row0);
  load_tile<D>(sV, p.v + g * D, kv_stride, row0, row1 - row0);
  cp_async_commit();

  const int j_row[2] = {row0 + warp * 16 + gid, row0 + warp * 16 + gid + 8};  // this thread's key rows
  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    dk[n][0] = dk[n][1] = dk[n][2] = dk[n][3] = 0.f;
    dv[n][0] = dv[n][1] = dv[n][2] = dv[n][3] = 0.f;
  }

  for (int hh = 0; hh < p.group; ++hh) {
    const int h = g * p.group + hh;
    for (int i0 = row0; i0 < e_seq; i0 += kTile) {
      const int ni = min(kTile, e_seq - i0);
      load_tile<D>(sQ, p.q + h * D, q_stride, i0, ni);
      load_tile<D>(sdO, p.dout + h * D, q_stride, i0, ni);
      cp_async_commit();
      if (threadIdx.x < kTile) {
        const int r = static_cast<int>(threadIdx.x);
        const int64_t at = static_cast<int64_t>(i0 + r) * p.H + h;
        s_lse2[r] = r < ni ? p.lse_in[at] * kLog2e : INFINITY;  // rows past the end: P = 0
        s_delta[r] = r < ni ? p.delta[at] : 0.f;
      }
      cp_async_wait_all();
      __syncthreads();  // K, V (first time), Q, dO, lse and δ in smem

      const bool diag = i0 == row0;
#pragma unroll 1
      for (int half = 0; half < 2; ++half) {
        const bf16* sQh = sQ + half * 32 * kStride<D>;
        const bf16* sdOh = sdO + half * 32 * kStride<D>;
        float st[4][4], dpt[4][4];  // Sᵀ and dPᵀ: rows = the warp's keys, columns = 32 queries
        gemm_abt<D, 4>(st, sK + warp * 16 * kStride<D>, sQh, lane);
        gemm_abt<D, 4>(dpt, sV + warp * 16 * kStride<D>, sdOh, lane);
#pragma unroll
        for (int n = 0; n < 4; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int col = half * 32 + n * 8 + 2 * tig + (e & 1);
            const float pr = (diag && j_row[e >> 1] > i0 + col) ? 0.f : exp2f(st[n][e] * p.scale_log2 - s_lse2[col]);
            st[n][e] = pr;
            dpt[n][e] = pr * (dpt[n][e] - s_delta[col]);  // dSᵀ
          }
        uint32_t pf[2][4], dsf[2][4];
        to_a_fragments<4>(st, pf);
        to_a_fragments<4>(dpt, dsf);
        gemm_pb<D, 2>(dv, pf, sdOh, lane);
        gemm_pb<D, 2>(dk, dsf, sQh, lane);
      }
      __syncthreads();  // every warp done with Q, dO, lse and δ before the next tile overwrites them
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
      *reinterpret_cast<float2*>(dk_dst + n * 8) = make_float2(dk[n][2 * r] * p.scale, dk[n][2 * r + 1] * p.scale);
      *reinterpret_cast<float2*>(dv_dst + n * 8) = make_float2(dv[n][2 * r], dv[n][2 * r + 1]);
    }
  }
}

// ---- host side -------------------------------------------------------------------------------------------------------

template <int D>
constexpr size_t kForwardSmem = 3 * kTile * kStride<D> * sizeof(bf16);
template <int D>
constexpr size_t kDqSmem = 4 * kTile * kStride<D> * sizeof(bf16);
template <int D>
constexpr size_t kDkDvSmem = 4 * kTile * kStride<D> * sizeof(bf16) + 2 * kTile * sizeof(float);

template <int D>
void launch_forward(const FlashParams& p, int n_tiles, cudaStream_t stream) {
  QWENQ_CUDA_CHECK(cudaFuncSetAttribute(flash_forward_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(kForwardSmem<D>)));
  flash_forward_kernel<D><<<static_cast<unsigned>(n_tiles) * static_cast<unsigned>(p.H), kThreads, kForwardSmem<D>,
                            stream>>>(p);
}

template <int D>
void launch_backward(FlashParams p, const TilePlan& plan, cudaStream_t stream) {
  QWENQ_CUDA_CHECK(cudaFuncSetAttribute(flash_backward_dq_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(kDqSmem<D>)));
  QWENQ_CUDA_CHECK(cudaFuncSetAttribute(flash_backward_dkdv_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(kDkDvSmem<D>)));
  p.tiles = plan.by_queries;
  flash_backward_dq_kernel<D>
      <<<static_cast<unsigned>(plan.n_tiles) * static_cast<unsigned>(p.H), kThreads, kDqSmem<D>, stream>>>(p);
  p.tiles = plan.by_keys;  // after the dq pass on the same stream: δ is complete
  flash_backward_dkdv_kernel<D>
      <<<static_cast<unsigned>(plan.n_tiles) * static_cast<unsigned>(p.Hkv), kThreads, kDkDvSmem<D>, stream>>>(p);
}

}  // namespace

namespace flash_detail {

// The shape and cu_seqlens checks of attention_ref.cpp (same messages), then this file's own: D compiled, BF16,
// sizes within int32 (row indices are int in the kernels). Returns T.
int64_t check_args(const char* name, const int32_t* cu_seqlens, int64_t n_seqs, int64_t H, int64_t Hkv, int64_t D,
                   DType dtype) {
  QWENQ_CHECK(n_seqs >= 0 && H > 0 && Hkv > 0 && D > 0,
              name << ": bad shape n_seqs=" << n_seqs << " H=" << H << " Hkv=" << Hkv << " D=" << D);
  QWENQ_CHECK(H % Hkv == 0, name << ": query heads H=" << H << " must be a multiple of kv heads Hkv=" << Hkv);
  QWENQ_CHECK(flash_attention_compiled(D), name << ": head dim D=" << D << " is not compiled (this build has "
                                                << flash_attention_compiled_dims() << "; CMake QWENQ_FLASH_HEAD_DIMS)");
  QWENQ_CHECK(dtype == DType::BF16, name << ": dtype " << dtype_name(dtype) << " is not supported (BF16 only)");
  if (n_seqs == 0) return 0;
  QWENQ_CHECK(cu_seqlens != nullptr, name << ": null cu_seqlens");
  QWENQ_CHECK(cu_seqlens[0] == 0, name << ": cu_seqlens[0] must be 0, got " << cu_seqlens[0]);
  for (int64_t s = 0; s < n_seqs; ++s)
    QWENQ_CHECK(cu_seqlens[s + 1] >= cu_seqlens[s], name << ": cu_seqlens must be non-decreasing, got "
                                                         << cu_seqlens[s] << " then " << cu_seqlens[s + 1]
                                                         << " at sequence " << s);
  return cu_seqlens[n_seqs];
}

void check_aligned(const char* name, const char* what, const void* p) {
  QWENQ_CHECK(p != nullptr, name << ": null " << what);
  QWENQ_CHECK(reinterpret_cast<uintptr_t>(p) % 16 == 0,
              name << ": " << what << " must be 16-byte aligned (cp.async), got address " << p);
}

TilePlan plan_tiles(const char* name, const int32_t* cu_seqlens, int64_t n_seqs, int64_t heads_per_tile,
                    bool both, cudaStream_t stream) {
  std::vector<int4> tiles;
  for (int64_t s = 0; s < n_seqs; ++s)
    for (int32_t r0 = cu_seqlens[s]; r0 < cu_seqlens[s + 1]; r0 += std::min<int32_t>(kTile, cu_seqlens[s + 1] - r0))
      tiles.push_back(make_int4(r0, std::min<int32_t>(r0 + kTile, cu_seqlens[s + 1]), cu_seqlens[s], cu_seqlens[s + 1]));
  TilePlan plan;
  plan.n_tiles = static_cast<int>(tiles.size());
  QWENQ_CHECK(static_cast<int64_t>(tiles.size()) * heads_per_tile <= INT_MAX,
              name << ": " << tiles.size() << " tiles x " << heads_per_tile << " heads exceed the grid limit");
  if (tiles.empty()) return plan;
  std::vector<int4> host = tiles;
  std::stable_sort(host.begin(), host.end(), [](const int4& a, const int4& b) { return a.y - a.z > b.y - b.z; });
  if (both) {
    std::vector<int4> by_keys = tiles;
    std::stable_sort(by_keys.begin(), by_keys.end(),
                     [](const int4& a, const int4& b) { return a.w - a.x > b.w - b.x; });
    host.insert(host.end(), by_keys.begin(), by_keys.end());
  }
  plan.mem = DeviceMemory(host.size() * sizeof(int4), stream);
  upload_owned_async(plan.mem.get(), std::move(host), stream);
  plan.by_queries = plan.mem.as<int4>();
  plan.by_keys = both ? plan.by_queries + plan.n_tiles : nullptr;
  return plan;
}

FlashParams base_params(int64_t H, int64_t Hkv, int64_t D) {
  FlashParams p{};
  p.H = static_cast<int>(H);
  p.Hkv = static_cast<int>(Hkv);
  p.group = static_cast<int>(H / Hkv);
  p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  p.scale_log2 = p.scale * kLog2e;
  return p;
}

int64_t check_forward_args(const char* name, const void* q, const void* k, const void* v, const int32_t* cu_seqlens,
                           int64_t n_seqs, int64_t H, int64_t Hkv, int64_t D, const void* out, DType dtype) {
  const int64_t T = check_args(name, cu_seqlens, n_seqs, H, Hkv, D, dtype);
  if (T == 0) return 0;
  check_aligned(name, "q", q);
  check_aligned(name, "k", k);
  check_aligned(name, "v", v);
  check_aligned(name, "out", out);
  return T;
}

FlashParams forward_params(const void* q, const void* k, const void* v, void* out, float* lse, int64_t H, int64_t Hkv,
                           int64_t D) {
  FlashParams p = base_params(H, Hkv, D);
  p.q = static_cast<const bf16*>(q);
  p.k = static_cast<const bf16*>(k);
  p.v = static_cast<const bf16*>(v);
  p.o = static_cast<bf16*>(out);
  p.lse = lse;
  return p;
}

void attention_backward_impl(const char* name, const void* dout, const void* q, const void* k, const void* v,
                             const void* out, const float* lse, const int32_t* cu_seqlens, int64_t n_seqs, int64_t H,
                             int64_t Hkv, int64_t D, float* dq, float* dk, float* dv, DType dtype, cudaStream_t stream,
                             bool wgmma) {
  const int64_t T = check_args(name, cu_seqlens, n_seqs, H, Hkv, D, dtype);
  if (T == 0) return;
  check_aligned(name, "dout", dout);
  check_aligned(name, "q", q);
  check_aligned(name, "k", k);
  check_aligned(name, "v", v);
  check_aligned(name, "out", out);
  QWENQ_CHECK(lse != nullptr, name << ": null lse (the forward's lse is required)");
  QWENQ_CHECK(dq != nullptr && dk != nullptr && dv != nullptr, name << ": null output pointer");
  QWENQ_CHECK(reinterpret_cast<uintptr_t>(dq) % 8 == 0 && reinterpret_cast<uintptr_t>(dk) % 8 == 0 &&
                  reinterpret_cast<uintptr_t>(dv) % 8 == 0,
              name << ": dq, dk and dv must be 8-byte aligned (float2 stores)");
  QWENQ_CHECK(!wgmma || cuda_wgmma_supported(),
              name << ": needs an sm_90 GPU (H100/H200) and a build with the sm_90a target (QWENQ_CUDA_ARCHS "
                      "contains 90a); attention_backward_cuda runs elsewhere");
  FlashParams p = base_params(H, Hkv, D);
  p.q = static_cast<const bf16*>(q);
  p.k = static_cast<const bf16*>(k);
  p.v = static_cast<const bf16*>(v);
  p.out = static_cast<const bf16*>(out);
  p.dout = static_cast<const bf16*>(dout);
  p.lse_in = lse;
  p.dq = dq;
  p.dk = dk;
  p.dv = dv;
  const TilePlan plan = plan_tiles(name, cu_seqlens, n_seqs, std::max(H, Hkv), true, stream);
  const DeviceMemory delta(static_cast<size_t>(T * H) * sizeof(float), stream);
  p.delta = delta.as<float>();
  if (wgmma) {
    launch_backward_wgmma(p, plan, D, stream);
  } else {
#ifdef QWENQ_FLASH_D64
    if (D == 64) launch_backward<64>(p, plan, stream);
#endif
#ifdef QWENQ_FLASH_D128
    if (D == 128) launch_backward<128>(p, plan, stream);
#endif
  }
  QWENQ_CUDA_CHECK_LAUNCH(name << " T=" << T << " n_seqs=" << n_seqs << " H=" << H << " Hkv=" << Hkv << " D=" << D
                               << " tiles=" << plan.n_tiles);
}

}  // namespace flash_detail

bool flash_attention_compiled(int64_t D) {
#ifdef QWENQ_FLASH_D64
  if (D == 64) return true;
#endif
#ifdef QWENQ_FLASH_D128
  if (D == 128) return true;
#endif
  return false;
}

const char* flash_attention_compiled_dims() {
#if defined(QWENQ_FLASH_D64) && defined(QWENQ_FLASH_D128)
  return "64, 128";
#elif defined(QWENQ_FLASH_D64)
  return "64";
#elif defined(QWENQ_FLASH_D128)
  return "128";
#else
  return "none";
#endif
}

void attention_forward_cuda(const void* q, const void* k, const void* v, const int32_t* cu_seqlens, int64_t n_seqs,
                            int64_t H, int64_t Hkv, int64_t D, void* out, float* lse, DType dtype,
                            CudaStream stream) {
  const char* name = "attention_forward_cuda";
  const int64_t T = check_forward_args(name, q, k, v, cu_seqlens, n_seqs, H, Hkv, D, out, dtype);
  if (T == 0) return;
  if (cuda_wgmma_enabled()) {  // an sm_90 device, unless QWENQ_WGMMA=0: the Hopper kernel (flash_attention_wgmma.cu)
    attention_forward_wgmma_cuda(q, k, v, cu_seqlens, n_seqs, H, Hkv, D, out, lse, dtype, stream);
    return;
  }
  FlashParams p = forward_params(q, k, v, out, lse, H, Hkv, D);
  const TilePlan plan = plan_tiles(name, cu_seqlens, n_seqs, H, false, stream);
  p.tiles = plan.by_queries;
#ifdef QWENQ_FLASH_D64
  if (D == 64) launch_forward<64>(p, plan.n_tiles, stream);
#endif
#ifdef QWENQ_FLASH_D128
  if (D == 128) launch_forward<128>(p, plan.n_tiles, stream);
#endif
  QWENQ_CUDA_CHECK_LAUNCH(name << " T=" << T << " n_seqs=" << n_seqs << " H=" << H << " Hkv=" << Hkv << " D=" << D
                               << " tiles=" << plan.n_tiles);
}

void attention_backward_cuda(const void* dout, const void* q, const void* k, const void* v, const void* out,
                             const float* lse, const int32_t* cu_seqlens, int64_t n_seqs, int64_t H, int64_t Hkv,
                             int64_t D, float* dq, float* dk, float* dv, DType dtype, CudaStream stream) {
  attention_backward_impl("attention_backward_cuda", dout, q, k, v, out, lse, cu_seqlens, n_seqs, H, Hkv, D, dq, dk,
                          dv, dtype, stream, cuda_wgmma_enabled());
}

}  // namespace qwenq
