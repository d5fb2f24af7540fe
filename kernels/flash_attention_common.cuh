// What the two flash attention implementations share: kernels/flash_attention.cu (mma.sync, sm_80+) and
// kernels/flash_attention_wgmma.cu (wgmma, sm_90a): the 64-row tiles and their table, the kernel parameters, the
// argument checks, the softmax's register helpers and the backward's host path. For .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/dtype.h"
#include "kernels/cuda_check.cuh"

namespace qwenq {
namespace flash_detail {

using bf16 = __nv_bfloat16;

constexpr int kTile = 64;                 // rows of a query or key tile
constexpr int kWarps = 4;                 // each owns 16 rows of the block's tile
constexpr int kThreads = kWarps * cuda::kWarp;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// One tile of rows [row0, row1) of the sequence [seq_begin, seq_end): int4 so that a block reads it in one load.
//   x = row0, y = row1, z = seq_begin, w = seq_end

// Everything the kernels read: plain pointers and sizes, passed by value.
struct FlashParams {
  const bf16 *q, *k, *v;  // [T, H, D], [T, Hkv, D], [T, Hkv, D]
  const bf16 *out, *dout;  // backward inputs, [T, H, D]
  bf16* o;                 // forward output, [T, H, D]
  float* lse;              // forward output [T, H] (may be null)
  const float* lse_in;     // backward input [T, H]
  float* delta;            // backward scratch [T, H]: written by the dq pass, read by the dk/dv pass
  float *dq, *dk, *dv;     // backward outputs, fp32
  const int4* tiles;       // the tiles in the order the blocks take them
  int H, Hkv, group;
  float scale;       // 1/sqrt(D) rounded to fp32, as the ref
  float scale_log2;  // scale · log2(e)
};

// Two fp32 -> one register of two bf16 (round to nearest even); `lo` in the low half, the lower column.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t r;
  memcpy(&r, &v, sizeof r);
  return r;
}

// 16 bytes global -> shared without passing through registers; `valid` false writes 16 zero bytes instead.
__device__ __forceinline__ void cp_async_16(bf16* smem, const bf16* gmem, bool valid) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// The accumulators of a 16 x NT·8 block, rounded to bf16, as NT/2 A fragments of 16 columns each.
template <int NT>
__device__ __forceinline__ void to_a_fragments(const float (&acc)[NT][4], uint32_t (&f)[NT / 2][4]) {
#pragma unroll
  for (int kk = 0; kk < NT / 2; ++kk) {
    f[kk][0] = pack_bf16(acc[2 * kk][0], acc[2 * kk][1]);          // row gid,   columns 2tig, 2tig+1
    f[kk][1] = pack_bf16(acc[2 * kk][2], acc[2 * kk][3]);          // row gid+8
    f[kk][2] = pack_bf16(acc[2 * kk + 1][0], acc[2 * kk + 1][1]);  // row gid,   columns 8 + 2tig, 8 + 2tig+1
    f[kk][3] = pack_bf16(acc[2 * kk + 1][2], acc[2 * kk + 1][3]);  // row gid+8
  }
}

// Max and sum over the 4 lanes of a quad (the lanes that share a row).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// The dq pass's row statistics (both backward implementations): δ_i = Σ_d dout·out for the warp's 16 rows of the
// query tile [row0, row1) of head h (a warp-wide sum per row, straight from global memory), written to p.delta for
// the dk/dv pass, and for this thread's rows gid and gid + 8 its δ and lse·log2(e). Rows past the tile's end get
// δ = 0 and lse = +inf, so their P, and everything they feed, is 0.
template <int D>
__device__ __forceinline__ void dq_pass_row_stats(const FlashParams& p, int row0, int row1, int h, int warp, int lane,
                                                  float (&delta)[2], float (&lse2)[2]) {
  const int gid = lane >> 2;
  const int64_t q_stride = static_cast<int64_t>(p.H) * D;
  delta[0] = delta[1] = 0.f;
  lse2[0] = lse2[1] = INFINITY;
#pragma unroll 1
  for (int r = 0; r < 16; ++r) {
    const int i = row0 + warp * 16 + r;  // the same for the whole warp
    float sum = 0.f;
    if (i < row1) {
      const bf16* orow = p.out + i * q_stride + h * D;
      const bf16* drow = p.dout + i * q_stride + h * D;
#pragma unroll
      for (int c = 2 * lane; c < D; c += 2 * cuda::kWarp) {
        const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(orow + c));
        const float2 d = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(drow + c));
        sum += a.x * d.x + a.y * d.y;
      }
    }
    sum = cuda::warp_sum(sum);
    if (i < row1 && lane == 0) p.delta[static_cast<int64_t>(i) * p.H + h] = sum;
    if (r == gid) delta[0] = sum;
    if (r == gid + 8) delta[1] = sum;
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row0 + warp * 16 + gid + 8 * r;
    if (i < row1) lse2[r] = p.lse_in[static_cast<int64_t>(i) * p.H + h] * kLog2e;
  }
}

// ---- host side (defined in kernels/flash_attention.cu) ----

// The shape and cu_seqlens checks of attention_ref.cpp (same messages), then the kernels' own: D compiled, BF16,
// sizes within int32 (row indices are int in the kernels). Returns T.
int64_t check_args(const char* name, const int32_t* cu_seqlens, int64_t n_seqs, int64_t H, int64_t Hkv, int64_t D,
                   DType dtype);
// Non-null and 16-byte aligned (cp.async), else an error naming `what`.
void check_aligned(const char* name, const char* what, const void* p);

// The 64-row tiles of every sequence, uploaded to the device in the orders the kernels take them:
//   by_queries  longest key range first (row1 − seq_begin): the forward and the dq pass
//   by_keys     longest query range first (seq_end − row0): the dk/dv pass (only when `both`)
struct TilePlan {
  DeviceMemory mem;
  const int4* by_queries = nullptr;
  const int4* by_keys = nullptr;
  int n_tiles = 0;
};
TilePlan plan_tiles(const char* name, const int32_t* cu_seqlens, int64_t n_seqs, int64_t heads_per_tile, bool both,
                    cudaStream_t stream);

// H, Hkv, the group and the fp32 scales of head dim D.
FlashParams base_params(int64_t H, int64_t Hkv, int64_t D);

// The forwards' checks (check_args, then q, k, v, out non-null and 16-byte aligned); returns T (0: nothing to do).
int64_t check_forward_args(const char* name, const void* q, const void* k, const void* v, const int32_t* cu_seqlens,
                           int64_t n_seqs, int64_t H, int64_t Hkv, int64_t D, const void* out, DType dtype);
// base_params with the forward's pointers.
FlashParams forward_params(const void* q, const void* k, const void* v, void* out, float* lse, int64_t H, int64_t Hkv,
                           int64_t D);

// attention_backward_cuda and attention_backward_wgmma_cuda (the checks under `name`, δ, the tile plan), launching
// the mma.sync kernels or, with `wgmma`, launch_backward_wgmma's (refused without sm_90a support).
void attention_backward_impl(const char* name, const void* dout, const void* q, const void* k, const void* v,
                             const void* out, const float* lse, const int32_t* cu_seqlens, int64_t n_seqs, int64_t H,
                             int64_t Hkv, int64_t D, float* dq, float* dk, float* dv, DType dtype, cudaStream_t stream,
                             bool wgmma);
// The wgmma backward's two passes for head dim D (kernels/flash_attention_wgmma.cu).
void launch_backward_wgmma(const FlashParams& p, const TilePlan& plan, int64_t D, cudaStream_t stream);

}  // namespace flash_detail
}  // namespace qwenq
