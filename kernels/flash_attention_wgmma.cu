// Flash attention forward on Hopper's warpgroup MMA (sm_90a): attention_forward_wgmma_cuda (kernels/flash_attention.h),
// the same math, tiles, arguments and outputs as attention_forward_cuda (kernels/flash_attention.cu, whose header
// has the formulas): causal GQA over packed sequences, bf16 q/k/v/out, fp32 softmax statistics in the exp2
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
// Built only into the sm_90a image; attention_forward_wgmma_cuda refuses elsewhere (flash_attention_wgmma_supported).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "kernels/flash_attention.h"
#include "kernels/flash_attention_common.cuh"
#include "kernels/qgemm.h"
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

template <int D>
__global__ void __launch_bounds__(kThreads) flash_forward_wgmma_kernel(const FlashParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw_addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t pad = (kWgmmaAtomBytes - (raw_addr & (kWgmmaAtomBytes - 1))) & (kWgmmaAtomBytes - 1);
  unsigned char* sQ = smem_raw + pad;
  unsigned char* sK = sQ + kTileBytes<D>;
  unsigned char* sV = sK + kTileBytes<D>;
  const uint32_t aQ = raw_addr + pad, aK = aQ + kTileBytes<D>, aV = aK + kTileBytes<D>;

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
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t off = (kk / 4) * kPanelBytes + (kk % 4) * 32;  // panel of head-dim columns 16kk.., then 32 B/step
      wgmma_ss_m64n64k16(s, wgmma_sw128_descriptor(aQ + off), wgmma_sw128_descriptor(aK + off));
    }
    wgmma_commit();
    wgmma_wait<0>();

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
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      pf[kk][0] = pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
      pf[kk][1] = pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
      pf[kk][2] = pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
      pf[kk][3] = pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
    }

    cp_async_wait_all();
    fence_proxy_async();
    __syncthreads();  // V of this tile landed; Q·Kᵀ was waited for in every warp, so K may be overwritten
    if (it + 1 < n_key_tiles) {
      load_tile_sw<D>(sK, kh, kv_stride, k0 + kTile, min(kTile, row1 - k0 - kTile));
      cp_async_commit();
    }
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const uint64_t dv = wgmma_sw128_mn_descriptor(aV + kk * 16 * kWgmmaRowBytes, kPanelBytes);
      if constexpr (D == 128) wgmma_rs_m64n128k16_tb(o, pf[kk], dv);
      else wgmma_rs_m64n64k16_tb(o, pf[kk], dv);
    }
    wgmma_commit();
    wgmma_wait<0>();
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
#endif
}

template <int D>
void launch_forward_wgmma(const FlashParams& p, int n_tiles, cudaStream_t stream) {
  QWENQ_CUDA_CHECK(cudaFuncSetAttribute(flash_forward_wgmma_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(kWgSmem<D>)));
  flash_forward_wgmma_kernel<D>
      <<<static_cast<unsigned>(n_tiles) * static_cast<unsigned>(p.H), kThreads, kWgSmem<D>, stream>>>(p);
}

}  // namespace

bool flash_attention_wgmma_supported() { return qgemm_wgmma_supported(); }

void attention_forward_wgmma_cuda(const void* q, const void* k, const void* v, const int32_t* cu_seqlens,
                                  int64_t n_seqs, int64_t H, int64_t Hkv, int64_t D, void* out, float* lse,
                                  DType dtype, CudaStream stream) {
  const char* name = "attention_forward_wgmma_cuda";
  const int64_t T = check_forward_args(name, q, k, v, cu_seqlens, n_seqs, H, Hkv, D, out, dtype);
  if (T == 0) return;
  QWENQ_CHECK(flash_attention_wgmma_supported(),
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
