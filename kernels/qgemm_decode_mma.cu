// The decode-regime W4A16 product on tensor cores: y = x·Ŵᵀ for M = 1..64 bf16 rows against a Q4 weight
// (quant/format/qgemm_layout.h), one mma.sync m16n8k16 per 16 x 8 x 16 piece, with the group scale taken out of
// the sum:
//
//   Int (GPTQ, AWQ)   y[m, n] = Σ_g s[g, n] · C_g[m, n],   C_g[m, n] = Σ_{k in g} x[m, k] · (q[n, k] − z[g, n])
//   Nf4 / Fp4 (bnb)   y[m, n] = Σ_g a[g, n] · C_g[m, n],   C_g[m, n] = Σ_{k in g} x[m, k] · book[q[n, k]]
//
// q − z is an integer in [−16, 15], exact in bf16, and x is bf16, so every product x·(q − z) is exact in the
// MMA's fp32 accumulator. A code book value (24 significant bits) is split exactly into three bf16 pieces,
// book = h + m + l (h = bf16(book), m = bf16(book − h), l = book − h − m, each difference exact in fp32), and
// each piece is one MMA: three exact products per weight, summed in fp32. The scale (s, or the block absmax a)
// multiplies the fp32 partial sum once per group (and every kFlushIt iterations within a long group, so that no
// accumulator sums more than 128 products' worth of MMA steps before an IEEE rounding). Unlike the prefill
// kernels (qgemm_tc.cu, qgemm_wgmma.cu), ŵ is never rounded to bf16: against the CPU twin, which rounds each
// ŵ = (q − z)·s to fp32, the difference is fp32 summation order only (tests/gpu/test_qgemm_cuda.cpp's
// kQgemmGpuSumTol applies).
//
// Why tensor cores for a memory-bound product: the FMA decode kernel (qgemm.cu) spends ~5 instructions per
// weight (extract, bias, scale, FMA), and at H200's 4.8 TB/s a 4-bit weight arrives every 0.1 ns per SM, so
// it is instruction bound (2-19 % of HBM on the first H200 run, 2026-12-04) and gets worse with M. Here a pair
// of weights costs one LOP3 (nibbles j and j + 4 of a word OR'ed into the mantissas of two bf16 128.0s) and
// one bf16x2 subtraction of 128 + z, plus a quarter of a shift (a book kind: four integer ops for an 8-bit index
// and three shared-memory lookups of bf16x2 pieces per pair); the MMA does the multiply-adds for up to 16 rows at
// once, so the cost per weight does not grow with M.
//
// Work split. A block of 4 warps owns 128 output columns and a range of K (split-K across blockIdx.y, the
// fp32 partial sums reduced in split order by reduce_kernel: deterministic); warp w owns columns
// [32w, 32w + 32) of the block. One warp iteration covers 4 word-rows (32 K) x 32 columns: lane (g, t),
// g = lane / 4, t = lane % 4, loads the 4 words of word-row 4·it + t at columns 4g..4g+3 with one 128-bit
// streaming load (the warp reads 4 rows x 128 contiguous bytes), prefetched: the load for iteration it + P is
// issued when iteration it has consumed its slot, P − 1 iterations of loads in flight while a warp computes.
//
// The MMA's k and n are permutations of ours, chosen so that each lane's own word feeds its B fragment:
//   n: column j of n-tile i (i = 0..3) is our column 4j + i of the warp's 32, i.e. component i of the uint4
//      of lane (j, ·); C's columns 2t and 2t + 1 of n-tile i are our 8t + i and 8t + 4 + i.
//   k: for k-step s (s = 0, 1) the fragment's k = 2t, 2t+1, 2t+8, 2t+9 are nibbles 2s, 2s+4, 2s+1, 2s+5 of
//      word-row 4·it + t; so b0 = pair(2s), b1 = pair(2s + 1), where pair(j) holds nibbles j (low) and j + 4.
// The activations are staged once per block into shared memory in the A fragments' order: rows g and g + 8 of
// a 16-row tile share a "row pair" slot, and each 8-element run (x0..x7) of the two rows is stored as the 8
// bf16x2 words (x0,x4)_g (x0,x4)_g+8 (x1,x5)_g (x1,x5)_g+8 | (x2,x6)_g (x2,x6)_g+8 (x3,x7)_g (x3,x7)_g+8, so one
// 16-byte shared load is the whole A fragment {a0, a1, a2, a3} of a k-step, in the four consecutive registers
// the MMA reads (no register moves). The block's group metas (scale and zero) are staged beside them.
// Act-order, unaligned or K % 8 != 0 activations go through maybe_stage (a bf16 gather) first.
//
// F32 activations: split_x3_kernel first writes each row m as three bf16 rows m, M + m and 2M + m, h + m + l = x
// exactly (kernels/bf16_split.h; gathered through perm and zero-padded to a multiple of 8 on the way), the kernel
// multiplies those 3M rows, always into the workspace [splits, 3M, Np], and reduce_kernel adds 3·splits blocks of M
// rows: block 3s + p of M rows is split s's piece p (its rows start at (s·3M + p·M)·Np). Every product of a piece
// with q − z (or a book piece) is exact in fp32, so the result is the fp32 product up to summation order, like the
// FMA kernel's; for M <= 5 the 3M rows fit the one 16-row MMA tile that M rows use anyway.
//
// Instruction budget (why the loop is shaped as it is): a 4-bit weight arrives at H200's 4.8 TB/s every ~0.1 ns
// per SM, so with 16 warps per SM and 4 schedulers a warp iteration (512 bytes, 1024 weights) must issue in about
// 100 instructions to keep up. The first version issued ~225 (SASS of sm_90a, 2026-12-05): ~45 for a 64-bit
// address product and three bounds tests per load, ~35 register moves (A fragments assembled from two row
// loads, the prefetch buffer rotated), and two LOP3s per pair (one immediate per LOP3). Now: one predicated load
// from a pointer stepped by a constant, one bound, the A fragments loaded in place, the prefetch slot refilled
// after its words are consumed, and (q & 0x000F000F) | 0x43004300 as one LOP3 with both constants in registers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "kernels/bf16_split.h"
#include "kernels/cuda_check.cuh"
#include "kernels/qgemm.h"
#include "kernels/qgemm_decode_common.cuh"
#include "kernels/qgemm_decode_plan.h"
#include "kernels/qgemm_tc_common.cuh"

namespace qwenq {
namespace {

using qgemm_tc_detail::c_tc_books;
using qgemm_tc_detail::ceil_div;
using qgemm_tc_detail::mma_bf16;
using qgemm_tc_detail::round_up;

using decode_mma::x_pair_slots;

constexpr int kDmWarps = 4;
constexpr int kDmThreads = kDmWarps * 32;
constexpr int kDmWarpCols = 32;                         // output columns per warp: 4 n-tiles of 8
constexpr int kDmBlockCols = kDmWarps * kDmWarpCols;    // 128
constexpr int kDmRowsPerIt = decode_mma::kRowsPerIt;    // word-rows (32 K) per warp iteration
constexpr int kDmFlushIt = 4;                           // iterations (128 K) between scale flushes at most
constexpr int kDmMaxSmem = decode_mma::kMaxSmem;        // dynamic shared memory per block, at most
static_assert(kDmBlockCols == decode_mma::kBlockCols, "kernels/qgemm_decode_plan.h lays out 128 columns per block");

struct DmParams {
  const uint16_t* x;  // bf16 [M, lda]; columns >= x_width read as zeros
  int64_t lda, x_width;
  const uint32_t* qweight;  // [Kp/8, Np]
  const uint32_t* meta;     // [num_groups, Np]
  float* out;               // y [M, N] unless to_ws, else the workspace [splits, M, Np]
                            // (M: the kernel's rows, 3 per activation row for F32 activations)
  int64_t M, N, Np, Kp, group, num_groups;
  int64_t rows_per_split;   // word-rows per blockIdx.y, a multiple of kDmRowsPerIt
  int x_pitch;              // 32-bit words per row-pair slot of x (≡ 4 mod 8: conflict-free 16-byte loads)
  int64_t meta_offset;      // bytes from the start of shared memory to the metas (16-byte aligned)
  int x_rows;               // valid rows of x per block: min(M, 16·MT) (M as above); x_pair_slots(x_rows) slots
  int meta_rows;            // shared rows of metas: the most groups one split touches
  int splits;
  int to_ws;                // 1: the results go to the workspace (more than one split, or F32 activations' pieces)
};

// (a & b) | c in one LOP3. Written out because SASS's LOP3 takes one immediate: from C++ the compiler emits an AND
// and an OR for (a & 0x000F000F) | 0x43004300; here both constants come in registers, set once per thread.
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c));  // 0xEA = (0xF0 & 0xCC) | 0xAA
  return d;
}

// pair(j) of a word minus (128 + z) in both halves: bf16x2 (q_j − z, q_{j+4} − z), exact. mask = 0x000F000F and
// magic = 0x43004300 (bf16 128.0 in each half) in registers.
__device__ __forceinline__ uint32_t dq_pair(uint32_t word, int j, uint32_t bias2, uint32_t mask, uint32_t magic) {
  const uint32_t v = and_or(word >> (4 * j), mask, magic);  // bf16 128 + q in each half
  const __nv_bfloat162 r =
      __hsub2(*reinterpret_cast<const __nv_bfloat162*>(&v), *reinterpret_cast<const __nv_bfloat162*>(&bias2));
  return *reinterpret_cast<const uint32_t*>(&r);
}

// The streaming load of ld_stream when `on`, else zeros, without a branch: one predicated load.
__device__ __forceinline__ uint4 ld_stream_if(const uint32_t* p, bool on) {
  uint4 v;
  asm volatile(
      "{\n"
      "  .reg .pred q;\n"
      "  setp.ne.b32 q, %5, 0;\n"
      "  mov.b32 %0, 0;\n"
      "  mov.b32 %1, 0;\n"
      "  mov.b32 %2, 0;\n"
      "  mov.b32 %3, 0;\n"
      "  @q ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
      "}\n"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p), "r"(static_cast<int>(on)));
  return v;
}

// The group's multiplier: Int, the fp16 scale in the low half; Nf4/Fp4, the fp32 absmax.
template <Q4Kind KIND>
__device__ __forceinline__ float meta_scale(uint32_t meta) {
  if constexpr (KIND == Q4Kind::Int) return __half2float(__ushort_as_half(static_cast<unsigned short>(meta & 0xFFFFu)));
  else return __uint_as_float(meta);
}

// The 8-bit index of pair(j) of a word for the book tables: nibble j in bits 0..3, nibble j + 4 in bits 4..7.
__device__ __forceinline__ uint32_t pair_index(uint32_t word, int j) {
  const uint32_t v = (word >> (4 * j)) & 0x000F000Fu;
  return (v | (v >> 12)) & 0xFFu;
}

// bf16x2 of 128 + z in both halves (z <= 127: 128 + z is exact in bf16, the unit in [128, 256) is 1; the layout's
// zero points are 0..16).
__device__ __forceinline__ uint32_t meta_bias2(uint32_t meta) {
  return (0x4300u + ((meta >> 16) & 0xFFu)) * 0x00010001u;
}

// grid (ceil(Np / 128), splits, ceil(M / (16·MT))), block 128, dynamic shared memory (see the launcher). At
// most 128 registers for MT = 1, so that 4 blocks fit on an SM (16 warps, each with P − 1 loads of 512 bytes in
// flight while it computes: 40 KB per SM at P = 6).
template <Q4Kind KIND, int MT, int P>
__global__ void __launch_bounds__(kDmThreads, MT == 1 ? 4 : 2) qgemm_decode_mma_kernel(DmParams p) {
  extern __shared__ __align__(16) uint8_t smem[];
  // Book kinds: lut[piece][lo | hi << 4] = bf16x2 (piece of book[lo], piece of book[hi]), pieces h, m, l.
  __shared__ uint32_t lut[KIND == Q4Kind::Int ? 1 : 3 * 256];
  if constexpr (KIND != Q4Kind::Int) {
    const float* book = c_tc_books[KIND == Q4Kind::Fp4 ? 1 : 0];
    for (int e = threadIdx.x; e < 256; e += kDmThreads) {
      float lo = book[e & 15], hi = book[e >> 4];
#pragma unroll
      for (int piece = 0; piece < 3; ++piece) {
        const __nv_bfloat16 bl = __float2bfloat16_rn(lo), bh = __float2bfloat16_rn(hi);
        lut[piece * 256 + e] = static_cast<uint32_t>(__bfloat16_as_ushort(bl)) |
                               (static_cast<uint32_t>(__bfloat16_as_ushort(bh)) << 16);
        lo -= __bfloat162float(bl);  // exact: bl is lo rounded
        hi -= __bfloat162float(bh);
      }
    }
  }
  uint32_t* xs = reinterpret_cast<uint32_t*>(smem);
  uint32_t* ms = reinterpret_cast<uint32_t*>(smem + p.meta_offset);

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t rows = p.Kp / 8;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * p.rows_per_split;
  const int64_t r1 = min(r0 + p.rows_per_split, (rows + kDmRowsPerIt - 1) / kDmRowsPerIt * kDmRowsPerIt);
  const int n_it = static_cast<int>((r1 - r0) / kDmRowsPerIt);
  const int64_t m0 = static_cast<int64_t>(blockIdx.z) * 16 * MT;
  const int xr = static_cast<int>(min(p.M - m0, int64_t{16 * MT}));  // valid rows of this m-tile
  const int64_t nb = static_cast<int64_t>(blockIdx.x) * kDmBlockCols;
  const int64_t n0 = nb + warp * kDmWarpCols;
  const bool cols_ok = n0 + 4 * g < p.Np;  // Np % 4 == 0: the lane's 4 columns are all in or all out

  // The first P iterations' words, in flight while the block stages x and the metas. Iteration it reads
  // word-row r0 + 4·it + t, in range while it < n_load (4·it < rows - r0 - t, it < n_it, the lane's columns
  // in Np): one bound, and a pointer stepped by a constant, no 64-bit product in the loop.
  const int64_t rows_left = rows - r0 - t;
  const int n_load = cols_ok && rows_left > 0
                         ? static_cast<int>(min(int64_t{n_it}, (rows_left + kDmRowsPerIt - 1) / kDmRowsPerIt))
                         : 0;
  const int64_t w_step = int64_t{kDmRowsPerIt} * p.Np;
  const uint32_t* wnext = p.qweight + (r0 + t) * p.Np + n0 + 4 * g;  // dereferenced only below n_load
  uint4 wbuf[P];
#pragma unroll
  for (int i = 0; i < P; ++i) {
    wbuf[i] = ld_stream_if(wnext, i < n_load);
    wnext += w_step;
  }

  // x rows [m0, m0 + xr), word-rows [r0, r1) into shared memory in fragment order (see the top): slot
  // a·8 + g holds rows a·16 + g and a·16 + g + 8 (zeros for a row at or past xr), each run as 8 words.
  const int runs = static_cast<int>(r1 - r0);  // <= 4096: a row of x in shared memory fits kDmMaxSmem
  const int slots = x_pair_slots(xr);
  for (int c = threadIdx.x; c < slots * runs; c += kDmThreads) {
    const int j = c % runs, slot = c / runs;
    const int m = (slot / 8) * 16 + slot % 8;  // the slot's rows m and m + 8
    const int64_t k0 = (r0 + j) * 8;
    uint4 lo = make_uint4(0, 0, 0, 0), hi = make_uint4(0, 0, 0, 0);
    if (k0 < p.x_width) {
      const uint16_t* src = p.x + (m0 + m) * p.lda + k0;
      if (m < xr) lo = __ldg(reinterpret_cast<const uint4*>(src));
      if (m + 8 < xr) hi = __ldg(reinterpret_cast<const uint4*>(src + 8 * p.lda));
    }
    uint4* o = reinterpret_cast<uint4*>(xs + slot * p.x_pitch + j * 8);
    o[0] = make_uint4(__byte_perm(lo.x, lo.z, 0x5410), __byte_perm(hi.x, hi.z, 0x5410),   // (x0, x4) of m, m + 8
                      __byte_perm(lo.x, lo.z, 0x7632), __byte_perm(hi.x, hi.z, 0x7632));  // (x1, x5)
    o[1] = make_uint4(__byte_perm(lo.y, lo.w, 0x5410), __byte_perm(hi.y, hi.w, 0x5410),   // (x2, x6)
                      __byte_perm(lo.y, lo.w, 0x7632), __byte_perm(hi.y, hi.w, 0x7632));  // (x3, x7)
  }
  // The metas of the groups the split touches, 128 columns each (zeros past Np).
  const int64_t g_first = min(r0 * 8 / p.group, p.num_groups - 1);
  const int64_t g_last = min((min(r1, rows) * 8 - 1) / p.group, p.num_groups - 1);
  const int n_meta = static_cast<int>(g_last - g_first + 1) * (kDmBlockCols / 4);
  for (int c = threadIdx.x; c < n_meta; c += kDmThreads) {
    const int gl = c / (kDmBlockCols / 4), col = (c % (kDmBlockCols / 4)) * 4;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (nb + col < p.Np) v = __ldg(reinterpret_cast<const uint4*>(p.meta + (g_first + gl) * p.Np + nb + col));
    *reinterpret_cast<uint4*>(ms + gl * kDmBlockCols + col) = v;
  }
  __syncthreads();

  float acc[MT][4][4], cg[MT][4][4];
#pragma unroll
  for (int a = 0; a < MT; ++a)
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[a][i][e] = cg[a][i][e] = 0.0f;

  // acc += s · cg with the scales of shared meta row gl (C columns 8t + i and 8t + 4 + i), then cg = 0.
  const auto flush = [&](int gl) {
    const uint32_t* mrow = ms + gl * kDmBlockCols + warp * kDmWarpCols + 8 * t;
    const uint4 sa = *reinterpret_cast<const uint4*>(mrow), sb = *reinterpret_cast<const uint4*>(mrow + 4);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float s_even = meta_scale<KIND>(u4_get(sa, i)), s_odd = meta_scale<KIND>(u4_get(sb, i));
#pragma unroll
      for (int a = 0; a < MT; ++a) {
        acc[a][i][0] = fmaf(s_even, cg[a][i][0], acc[a][i][0]);
        acc[a][i][1] = fmaf(s_odd, cg[a][i][1], acc[a][i][1]);
        acc[a][i][2] = fmaf(s_even, cg[a][i][2], acc[a][i][2]);
        acc[a][i][3] = fmaf(s_odd, cg[a][i][3], acc[a][i][3]);
#pragma unroll
        for (int e = 0; e < 4; ++e) cg[a][i][e] = 0.0f;
      }
    }
  };

  // The lane's row-pair slot of tile a (rows a·16 + g and a·16 + g + 8) at its word-row t, as a word offset
  // into xs. A lane whose two rows are both past the valid ones reads slot 0 or 1 instead (g's parity, so that
  // it does not share a bank group with its valid neighbour of the load phase): an A row feeds only the same row
  // of C, and the epilogue drops those rows, so the loads need no predicate and no zeroing.
  int xoff[MT];
#pragma unroll
  for (int a = 0; a < MT; ++a) xoff[a] = (a * 16 + g < xr ? (a * 8 + g) : min(g & 1, xr - 1)) * p.x_pitch + t * 8;
  const uint32_t mask = 0x000F000Fu, magic = 0x43004300u;

  // The iterations' groups, counted instead of divided (a 64-bit division per iteration cost more instructions
  // than the iteration's MMAs): each iteration's 32 K lie in one group (group % 32 == 0, or one group for all of
  // K), ipg iterations per group, the split starting left_in_group iterations before its first group ends. The
  // MMA sums cg of a chunk of at most kDmFlushIt iterations within one group are scaled into acc at the chunk's
  // end (flush): chunks start at every group start and every kDmFlushIt iterations after it. The loop pays a
  // countdown per iteration; the group's bookkeeping runs once per chunk.
  const bool one_group = p.group >= p.Kp;
  const int ipg = one_group ? INT_MAX : static_cast<int>(p.group / (8 * kDmRowsPerIt));
  int left_in_group = one_group ? INT_MAX : ipg - static_cast<int>((r0 * 8 % p.group) / (8 * kDmRowsPerIt));
  int gl = 0;
  const int gl_max = static_cast<int>(g_last - g_first);
  uint32_t bias2[4] = {0, 0, 0, 0};  // per B column i: bf16x2 of 128 + z of group gl
  const auto load_bias = [&] {
    if constexpr (KIND == Q4Kind::Int) {
      const uint4 zm = *reinterpret_cast<const uint4*>(ms + gl * kDmBlockCols + warp * kDmWarpCols + 4 * g);
#pragma unroll
      for (int i = 0; i < 4; ++i) bias2[i] = meta_bias2(u4_get(zm, i));
    }
  };
  load_bias();
  int chunk = min(kDmFlushIt, left_in_group), until_flush = chunk;
  for (int it0 = 0; it0 < n_it; it0 += P) {
#pragma unroll
    for (int u = 0; u < P; ++u) {
      const int it = it0 + u;
      if (it >= n_it) break;
      const uint4 wq = wbuf[u];
      // A: the fragments of both k-steps at word-row 4·it + t of the split, one 16-byte load each: for k-step s,
      // pairs 2s (k = 2t, 2t+1) and 2s + 1 (k = 2t+8, 2t+9) of rows g and g + 8.
      const int off = kDmRowsPerIt * 8 * it;
      uint4 afr[MT][2];
#pragma unroll
      for (int a = 0; a < MT; ++a) {
#pragma unroll
        for (int s = 0; s < 2; ++s) afr[a][s] = *reinterpret_cast<const uint4*>(xs + xoff[a] + off + 4 * s);
      }
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        uint32_t af[MT][4];
#pragma unroll
        for (int a = 0; a < MT; ++a) {
          af[a][0] = afr[a][s].x, af[a][1] = afr[a][s].y, af[a][2] = afr[a][s].z, af[a][3] = afr[a][s].w;
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const uint32_t word = u4_get(wq, i);
          if constexpr (KIND == Q4Kind::Int) {
            const uint32_t b0 = dq_pair(word, 2 * s, bias2[i], mask, magic),
                           b1 = dq_pair(word, 2 * s + 1, bias2[i], mask, magic);
#pragma unroll
            for (int a = 0; a < MT; ++a) mma_bf16(cg[a][i], af[a], b0, b1);
          } else {
            const uint32_t i0 = pair_index(word, 2 * s), i1 = pair_index(word, 2 * s + 1);
#pragma unroll
            for (int piece = 0; piece < 3; ++piece) {
              const uint32_t b0 = lut[piece * 256 + i0], b1 = lut[piece * 256 + i1];
#pragma unroll
              for (int a = 0; a < MT; ++a) mma_bf16(cg[a][i], af[a], b0, b1);
            }
          }
        }
      }
      // The slot's words are consumed: refill it for iteration it + P (the load stays P - 1 iterations ahead
      // of its use, and the slot keeps its registers: no rotation).
      wbuf[u] = ld_stream_if(wnext, it + P < n_load);
      wnext += w_step;
      if (--until_flush == 0) {
        flush(gl);
        left_in_group -= chunk;
        if (left_in_group == 0) {
          gl = min(gl + 1, gl_max);
          left_in_group = ipg;
          load_bias();
        }
        chunk = until_flush = min(kDmFlushIt, left_in_group);
      }
    }
  }
  if (until_flush != chunk) flush(gl);

  // C element e of n-tile i: row g (e < 2) or g + 8, column 8t + i (e even) or 8t + 4 + i of the warp's 32.
#pragma unroll
  for (int a = 0; a < MT; ++a)
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t m = m0 + a * 16 + g + (e >= 2 ? 8 : 0);
        const int64_t n = n0 + 8 * t + i + (e & 1 ? 4 : 0);
        if (m >= p.M) continue;
        if (!p.to_ws) {
          if (n < p.N) p.out[m * p.N + n] = acc[a][i][e];
        } else if (n < p.Np) {
          p.out[(static_cast<int64_t>(blockIdx.y) * p.M + m) * p.Np + n] = acc[a][i][e];
        }
      }
}

// out [3M, width]: piece p of x[m, perm[kk]] at row p·M + m (kernels/qgemm.h, qgemm_split_x3_ref).
__global__ void split_x3_kernel(const float* x, int64_t M, int64_t K, const int32_t* perm, int64_t width,
                                uint16_t* out) {
  const int64_t plane = M * width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < plane;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = i / width, kk = i % width;
    uint16_t pieces[3] = {0, 0, 0};
    if (kk < K) split_bf16x3(x[m * K + (perm ? perm[kk] : kk)], pieces);
    out[i] = pieces[0];
    out[plane + i] = pieces[1];
    out[2 * plane + i] = pieces[2];
  }
}

void launch_split_x3(const float* x, int64_t M, int64_t K, const int32_t* perm, int64_t width, uint16_t* out,
                     cudaStream_t s) {
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(M * width, 256), 8 * int64_t{cuda_sm_count()}));
  split_x3_kernel<<<blocks, 256, 0, s>>>(x, M, K, perm, width, out);
}

// The instance, allowed kDmMaxSmem of dynamic shared memory (set once per process: one device).
template <Q4Kind KIND, int MT, int P>
auto* ready_kernel() {
  static const cudaError_t attr = cudaFuncSetAttribute(qgemm_decode_mma_kernel<KIND, MT, P>,
                                                       cudaFuncAttributeMaxDynamicSharedMemorySize, kDmMaxSmem);
  QWENQ_CUDA_CHECK(attr);
  return qgemm_decode_mma_kernel<KIND, MT, P>;
}

template <Q4Kind KIND, int MT, int P>
void launch(const DmParams& p, dim3 grid, size_t smem, cudaStream_t s) {
  ready_kernel<KIND, MT, P>()<<<grid, kDmThreads, smem, s>>>(p);
}

// Blocks of the instance an SM holds with `smem` bytes of dynamic shared memory (the runtime's occupancy for its
// registers and that memory, rounded up to the KB), asked once per KB and process.
template <Q4Kind KIND, int MT, int P>
int resident(int64_t smem) {
  static std::atomic<int> known[kDmMaxSmem / 1024 + 1] = {};
  const int kb = static_cast<int>(std::clamp<int64_t>(ceil_div(smem, 1024), 0, kDmMaxSmem / 1024));
  int n = known[kb].load(std::memory_order_relaxed);
  if (n > 0) return n;
  QWENQ_CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, ready_kernel<KIND, MT, P>(), kDmThreads, size_t{1024} * kb));
  n = std::max(n, 1);
  known[kb].store(n, std::memory_order_relaxed);
  return n;
}

// The instances by row tiles per block (MT) and prefetch depth (P).
template <Q4Kind KIND>
void launch_mt(int mt, const DmParams& p, dim3 grid, size_t smem, cudaStream_t s) {
  switch (mt) {
    case 1: launch<KIND, 1, 6>(p, grid, smem, s); break;
    case 2: launch<KIND, 2, 6>(p, grid, smem, s); break;
    default: launch<KIND, 4, 4>(p, grid, smem, s); break;
  }
}
template <Q4Kind KIND>
int resident_mt(int mt, int64_t smem) {
  switch (mt) {
    case 1: return resident<KIND, 1, 6>(smem);
    case 2: return resident<KIND, 2, 6>(smem);
    default: return resident<KIND, 4, 4>(smem);
  }
}
int resident_of(Q4Kind kind, int mt, int64_t smem) {
  if (kind == Q4Kind::Int) return resident_mt<Q4Kind::Int>(mt, smem);
  if (kind == Q4Kind::Nf4) return resident_mt<Q4Kind::Nf4>(mt, smem);
  return resident_mt<Q4Kind::Fp4>(mt, smem);
}

// The launch geometry for M activation rows (3M kernel rows for F32 activations' pieces): row tiles of 16·MT,
// 128-column blocks, and the K splits for whole waves of the blocks an SM really holds (kernels/qgemm_decode_plan.h:
// a 7B q_proj at M = 1 has 28 column blocks for 132 SMs x 4 places: 18 splits of 7 iterations, which cover K in 16).
struct DecodeLaunch {
  int64_t Mk;  // the kernel's rows
  int mt;
  int64_t mtiles;
  int x_rows;
  int64_t col_blocks;
  decode_mma::Plan plan;
};
DecodeLaunch decode_launch(const Q4View& w, bool pieces, int64_t M) {
  DecodeLaunch l{};
  l.Mk = pieces ? 3 * M : M;
  l.mt = l.Mk <= 16 ? 1 : (l.Mk <= 32 ? 2 : 4);
  l.mtiles = ceil_div(l.Mk, 16 * l.mt);
  l.x_rows = static_cast<int>(std::min<int64_t>(l.Mk, 16 * l.mt));
  l.col_blocks = ceil_div(w.Np, kDmBlockCols);
  const int64_t quads = ceil_div(w.Kp / 8, kDmRowsPerIt);
  l.plan = decode_mma::plan(quads, l.col_blocks * l.mtiles, cuda_sm_count(), l.x_rows, w.group, w.num_groups(),
                            [&](int64_t bytes) { return resident_of(w.kind, l.mt, bytes); });
  return l;
}

}  // namespace

QgemmDecodeMmaPlan qgemm_decode_mma_plan(const Q4View& w, DType x_dtype, int64_t M) {
  QWENQ_CHECK(M >= 1 && qgemm_decode_mma_supports(w),
              "qgemm_decode_mma_plan: M=" << M << ", layout group " << w.group << " (M >= 1 and a group that is a "
                                          << "multiple of 32 or spans K)");
  const DecodeLaunch l = decode_launch(w, x_dtype == DType::F32, M);
  return {l.plan.splits, l.plan.rps, l.plan.smem, resident_of(w.kind, l.mt, l.plan.smem)};
}

bool qgemm_decode_mma_supports(const Q4View& w) { return w.group % 32 == 0 || w.group >= w.Kp; }

void qgemm_int4_decode_mma_cuda(const Q4View& w, const void* x, DType x_dtype, int64_t M, float* y, void* stream) {
  const char* fn = "qgemm_int4_decode_mma_cuda";
  QWENQ_CHECK(x_dtype == DType::BF16 || x_dtype == DType::F32,
              fn << ": activations must be F32 or BF16, not " << dtype_name(x_dtype) << " (M=" << M << " K=" << w.K
                 << " N=" << w.N << ")");
  // F32: the kernel multiplies 3M bf16 rows (the pieces, see the top); the checks are the BF16 ones.
  const bool pieces = x_dtype == DType::F32;
  qgemm_tc_detail::check_tc_args(w, x, DType::BF16, M, y, fn);
  QWENQ_CHECK(qgemm_decode_mma_supports(w),
              fn << ": needs a layout group that is a multiple of 32 or spans K, not " << w.group << " (kind "
                 << q4_kind_name(w.kind) << " K=" << w.K << " N=" << w.N
                 << "; qgemm_int4_decode_cuda takes every weight)");
  const std::string ctx = qgemm_tc_detail::tc_context(fn, w, M, x_dtype);
  cudaStream_t s = static_cast<cudaStream_t>(stream);

  const DecodeLaunch geo = decode_launch(w, pieces, M);
  const int64_t Mk = geo.Mk, mtiles = geo.mtiles, col_blocks = geo.col_blocks;
  const int mt = geo.mt, x_rows = geo.x_rows;
  QWENQ_CHECK(mtiles <= 65535, fn << ": M=" << M << " needs more than 65535 row tiles");
  const int64_t splits = geo.plan.splits, rps = geo.plan.rps, smem = geo.plan.smem;
  const int meta_rows = geo.plan.meta_rows;
  QWENQ_CHECK(splits <= 65535, fn << ": " << splits << " K splits");
  QWENQ_CHECK(smem <= kDmMaxSmem, fn << ": " << smem << " bytes of shared memory for M=" << M);

  DeviceMemory staged;
  int64_t lda = 0, width = 0;
  const uint16_t* xa = nullptr;
  if (pieces) {
    width = lda = round_up(w.K, int64_t{8});
    staged = DeviceMemory(static_cast<size_t>(Mk * width) * sizeof(uint16_t), s);
    launch_split_x3(static_cast<const float*>(x), M, w.K, w.perm, width, staged.as<uint16_t>(), s);
    QWENQ_CUDA_CHECK_LAUNCH("split_x3_kernel for " << ctx);
    xa = staged.as<const uint16_t>();
  } else {
    xa = qgemm_tc_detail::maybe_stage(x, w.perm, M, w.K, &staged, &lda, &width, s, ctx);
  }

  DmParams p{xa, lda, width, w.qweight, w.meta, y, Mk, w.N, w.Np, w.Kp, w.group, w.num_groups(), rps,
             static_cast<int>(decode_mma::x_pitch_of(rps)), decode_mma::meta_offset_of(x_rows, rps), x_rows,
             meta_rows, static_cast<int>(splits), splits > 1 || pieces ? 1 : 0};
  DeviceMemory ws;
  if (p.to_ws) {
    ws = DeviceMemory(static_cast<size_t>(splits * Mk * w.Np) * sizeof(float), s);
    p.out = ws.as<float>();
  }
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(splits), static_cast<unsigned>(mtiles));
  if (w.kind == Q4Kind::Int) launch_mt<Q4Kind::Int>(mt, p, grid, static_cast<size_t>(smem), s);
  else if (w.kind == Q4Kind::Nf4) launch_mt<Q4Kind::Nf4>(mt, p, grid, static_cast<size_t>(smem), s);
  else launch_mt<Q4Kind::Fp4>(mt, p, grid, static_cast<size_t>(smem), s);
  QWENQ_CUDA_CHECK_LAUNCH("qgemm_decode_mma_kernel for " << ctx);
  if (p.to_ws) {
    // [splits, Mk, Np] read as (pieces ? 3 : 1)·splits blocks of M rows: the pieces of a row are added with its
    // splits, in the order split 0's h, m, l, split 1's h, ...
    launch_reduce(ws.as<float>(), static_cast<int>(splits * (pieces ? 3 : 1)), M, M, w.Np, w.N, nullptr, y, s);
    QWENQ_CUDA_CHECK_LAUNCH("reduce_kernel for " << ctx);
  }
}

void qgemm_split_x3_cuda(const float* x, int64_t M, int64_t K, const int32_t* perm, int64_t width, uint16_t* out,
                         void* stream) {
  QWENQ_CHECK(x != nullptr && out != nullptr, "qgemm_split_x3_cuda: null input or output");
  QWENQ_CHECK(M >= 1 && K >= 1 && width >= K,
              "qgemm_split_x3_cuda: M=" << M << " K=" << K << " width=" << width << " (need M, K >= 1, width >= K)");
  launch_split_x3(x, M, K, perm, width, out, static_cast<cudaStream_t>(stream));
  QWENQ_CUDA_CHECK_LAUNCH("split_x3_kernel M=" << M << " K=" << K << " width=" << width);
}

}  // namespace qwenq
