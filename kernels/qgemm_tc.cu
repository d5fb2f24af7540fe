// Tensor-core W4A16 GEMM on the Q4 layout (quant/format/qgemm_layout.h) for the prefill / training regime
// (M = 65..16384, compute bound), declared in kernels/qgemm.h:
//
//   qgemm_int4_tc_cuda    y[M, N]  = x[M, K] · Ŵᵀ    reduction over k (layout rows), output columns n
//   qgemm_int4_t_tc_cuda  dx[M, K] = dy[M, N] · Ŵ    reduction over n, output columns kk (layout rows),
//                                                    scattered to dx[:, perm[kk]] for act-order
//
// Both are one kernel template, qgemm_tc_kernel<KIND, TRANS> (3 kinds x 2 directions = 6 instances):
//   C[m, c] = Σ_r A[m, r] · B[r, c],  A = x or dy (bf16, row-major, reduction contiguous), B = Ŵᵀ or Ŵ.
//
// Numerics. The activations are bf16 and the MMA is mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32: every
// product of two bf16 values is exact in fp32 and the sums are fp32. The weight is dequantized in fp32
// exactly as q4_dequant does ((q - z)·s, or book[q]·absmax) and then rounded once to bf16 (round to nearest
// even) to feed the tensor cores, which is what Marlin's bf16 path, Machete and bitsandbytes' QLoRA matmul
// (dequantize to the compute dtype) do. That rounding (relative 2^-9 per weight) is the one difference from
// the CPU twin beyond the summation order; tests/gpu/test_qgemm_tc_cuda.cpp bounds it term by term. The
// decode kernels (qgemm.cu) keep fp32 weights; qgemm_int4_cuda picks this kernel only for M > 64 and bf16
// activations (kernels/qgemm.h).
//
// Tiling (block 128 x 128 x 32, 8 warps as 2 (M) x 4 (N), warp tile 64 x 32, 4-stage cp.async pipeline):
// - 128 x 128 output per block: the A tile (8 KB per stage) is re-read from shared memory by 4 warps and the
//   dequantized W tile by 2; per 32-deep stage a block issues 256 MMAs for 8 KB of A + 4 KB of packed words
//   and meta, i.e. ~2.7 KFLOP per byte of L2 traffic, well above the H100/H200 L2 ratio (~990 TFLOP/s over
//   ~10 TB/s), so the tensor cores, not L2, bound it.
// - 32 deep: one stage of packed W is 4 word-rows (forward) or 16 word-rows x 32 columns (transposed), i.e.
//   512 words = one 16-byte cp.async per thread (threads 0-127 the words, 128-255 the metas). Group boundaries may
//   fall on any word-row (group % 8 == 0), so the meta is staged per word-row, which makes every group size
//   (32, 64, 128, the gcd groups of odd NF4 shapes, per-channel) one code path.
// - 64 x 32 warp tile: 4 x 4 m16n8 accumulators = 64 fp32 registers per thread; with fragments and dequant
//   temporaries it fits the 128 registers that let 2 blocks (16 warps) share an SM, so one block's barrier
//   or dequant phase hides behind the other's MMAs. 4 stages x 14 KB (10 KB padded A, 2 KB words, 2 KB metas)
//   + 2 x 10 KB of dequantized W = 76 KB of shared memory per block: 2 blocks fit the 227 KB of an H100/H200 SM.
// - Dequantization happens once per block (each weight of the tile by one thread), into a bf16 tile in
//   shared memory, double-buffered: in iteration t the threads dequantize tile t+1 and then run the MMAs of
//   tile t, so the integer/FP32 dequant work and the tensor-core work interleave in each warp's instruction
//   stream with one __syncthreads per stage. Per 32-deep stage a thread dequantizes 2 words (16 weights) and
//   issues 32 MMAs: the dequant ALU work is amortized over the 128 rows of the block.
// - The dequantized tile is stored [n][k] (k contiguous) in both directions, because a Q4 word holds 8
//   consecutive k of one column: one 16-byte store per word. The forward reads it with ldmatrix (it is the
//   "col" B operand as is); the transposed product reads it with ldmatrix.trans (reduction = n = rows).
// - Shared-memory rows are padded by 16 bytes (A: 80-byte rows, W forward: 80, W transposed: 272): the 8
//   row addresses of one ldmatrix phase then fall in 8 distinct 16-byte bank groups (80/16 = 5 and 272/16 =
//   17 are odd, so 8 consecutive rows cover all 8 groups of a 128-byte bank line), conflict-free; the
//   dequant's 16-byte stores by consecutive threads hit consecutive rows, conflict-free by the same argument.
// - cp.async.cg (L2 only, 16 bytes) with the zero-fill form (src-size 0) for rows >= M, reduction chunks
//   past the end and columns past Np: the M, N, K tails cost no branches in the MMA loop, and padding
//   dequantizes to 0 (zero words and metas give (0 - 0)·0 or book[0]·0).
// - Activations: cp.async needs 16-byte aligned rows, so x (forward) is staged once into a bf16 [M, Kp]
//   buffer when K % 8 != 0, x is misaligned, or the layout has an act-order perm (the gather x[:, perm]
//   happens there, as in the decode path); dy (transposed) is staged to [M, round_up(N, 8)] when N % 8 != 0
//   or misaligned. Otherwise the kernel reads the caller's buffer directly.
// - mma.sync (sm_80 and later, runs on sm_90a): Machete's authors measured Ampere-style mma at no more than
//   ~75% of Hopper's dense peak (REFERENCE B3); the wgmma versions are kernels/qgemm_wgmma.cu (the default on
//   sm_90 since the first H200 run), and from M = 512 the dense path (kernels/qgemm_dense.cu) runs instead of both.
#include "kernels/qgemm.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "kernels/qgemm_tc_common.cuh"

namespace qwenq {
namespace {

using namespace qgemm_tc_detail;

constexpr int kThreads = 256;  // 8 warps
constexpr int kBM = kTcBlockRows;  // block rows (M)
constexpr int kBN = 128;       // block output columns (n forward, kk transposed)
constexpr int kBK = 32;        // reduction depth per stage (k forward, n transposed)
constexpr int kStages = 4;     // cp.async pipeline depth (3 tiles in flight while one is consumed)
constexpr int kWarpM = 64, kWarpN = 32;
constexpr int kMi = kWarpM / 16;  // m16 tiles per warp
constexpr int kNi = kWarpN / 8;   // n8 tiles per warp
static_assert((kBM / kWarpM) * (kBN / kWarpN) * 32 == kThreads, "warp grid covers the block tile");
static_assert(kBK % 16 == 0 && kBK % 8 == 0, "whole k16 MMA steps and whole Q4 words per stage");

constexpr int kAPitch = kBK + 8;   // bf16 per A row: 80 bytes (see the bank argument above)
constexpr int kWPitchF = kBK + 8;  // forward W tile [kBN][kBK], 80-byte rows
constexpr int kWPitchT = kBN + 8;  // transposed W tile [kBK][kBN], 272-byte rows
constexpr int kWElems = (kBN * kWPitchF > kBK * kWPitchT) ? kBN * kWPitchF : kBK * kWPitchT;
constexpr int kRawWords = kBN * kBK / 8;  // packed words (and metas) per stage: 512
static_assert(kRawWords == 2 * kThreads, "each thread dequantizes two words per stage");
static_assert(kRawWords / 4 == kThreads / 2, "one 16-byte cp.async per thread for words or metas");

constexpr size_t kABytes = size_t(kStages) * kBM * kAPitch * 2;
constexpr size_t kRawBytes = size_t(kStages) * kRawWords * 4;
constexpr size_t kWBytes = size_t(2) * kWElems * 2;
constexpr size_t kSmemBytes = kABytes + 2 * kRawBytes + kWBytes;  // 77824
static_assert(kABytes % 16 == 0 && kRawBytes % 16 == 0, "16-byte aligned shared sub-buffers");


template <Q4Kind KIND, bool TRANS>
__global__ void __launch_bounds__(kThreads, 2) qgemm_tc_kernel(TcParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  uint16_t* As = reinterpret_cast<uint16_t*>(smem);                         // [kStages][kBM][kAPitch]
  uint32_t* raw_w = reinterpret_cast<uint32_t*>(smem + kABytes);            // [kStages][512] packed words
  uint32_t* raw_m = reinterpret_cast<uint32_t*>(smem + kABytes + kRawBytes);  // [kStages][512] metas
  uint16_t* Ws = reinterpret_cast<uint16_t*>(smem + kABytes + 2 * kRawBytes);  // [2][kWElems] bf16 Ŵ tile
  __shared__ float book[16];  // NF4/FP4 code book: 16 words in 16 banks, any mix of lookups is one wavefront
  if constexpr (KIND != Q4Kind::Int) {
    if (threadIdx.x < 16) book[threadIdx.x] = c_tc_books[KIND == Q4Kind::Fp4 ? 1 : 0][threadIdx.x];
  }

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp & 1, wn = warp >> 1;  // warp tile origin (wm·64, wn·32) in the block tile
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kBM;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kBN;
  const int64_t word_rows = p.Kp / 8;
  // The packed tile of one stage is [kRawRows][kRawCols] words: forward 4 word-rows x 128 columns n,
  // transposed 16 word-rows (128 kk) x 32 columns n.
  constexpr int kRawCols = TRANS ? kBK : kBN;
  constexpr int kWPitch = TRANS ? kWPitchT : kWPitchF;

  const auto load_tile = [&](int t, int s) {
    const int64_t r0 = static_cast<int64_t>(t) * kBK;  // reduction origin of the tile
#pragma unroll
    for (int i = 0; i < 2; ++i) {  // A: kBM rows x 4 chunks of 8 bf16
      const int ch = tid + i * kThreads;
      const int row = ch >> 2, kc = ch & 3;
      const int64_t m = m0 + row, k = r0 + kc * 8;
      const bool ok = m < p.M && k < p.a_width;
      cp_async16(As + (s * kBM + row) * kAPitch + kc * 8, ok ? p.a + m * p.lda + k : p.a, ok);
    }
    // Words (threads 0..127) and metas (128..255): warp-uniform split, 4 columns per 16-byte chunk.
    const int ch = tid & 127;
    const int rl = ch / (kRawCols / 4), cc = (ch % (kRawCols / 4)) * 4;
    const int64_t wr = TRANS ? c0 / 8 + rl : r0 / 8 + rl;  // global word-row
    const int64_t n = TRANS ? r0 + cc : c0 + cc;           // global column
    const bool ok = wr < word_rows && n < p.Np;
    if (tid < 128) {
      cp_async16(raw_w + s * kRawWords + rl * kRawCols + cc, ok ? p.qweight + wr * p.Np + n : p.qweight, ok);
    } else {
      const int64_t g = wr * 8 / p.group;
      cp_async16(raw_m + s * kRawWords + rl * kRawCols + cc, ok ? p.meta + g * p.Np + n : p.meta, ok);
    }
  };

  // Word (rl, cc) of stage s -> 8 bf16 at W[cc][8·rl ..]: forward W[n][k], transposed W[n][kk].
  const auto dequant_tile = [&](int s, int b) {
    uint16_t* W = Ws + b * kWElems;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int idx = tid + i * kThreads;
      const int rl = idx / kRawCols, cc = idx % kRawCols;
      const uint4 v = dequant_word<KIND>(raw_w[s * kRawWords + idx], raw_m[s * kRawWords + idx], book);
      *reinterpret_cast<uint4*>(W + cc * kWPitch + rl * 8) = v;
    }
  };

  float acc[kMi][kNi][4];
#pragma unroll
  for (int i = 0; i < kMi; ++i)
#pragma unroll
    for (int j = 0; j < kNi; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  const auto mma_tile = [&](int s, int b) {
    const uint16_t* A = As + s * kBM * kAPitch;
    const uint16_t* W = Ws + b * kWElems;
#pragma unroll
    for (int k16 = 0; k16 < kBK / 16; ++k16) {
      uint32_t af[kMi][4];
#pragma unroll
      for (int i = 0; i < kMi; ++i)  // matrices: rows 0-7/8-15 x k 0-7, then x k 8-15 = a0..a3
        ldmatrix_x4(af[i], A + (wm * kWarpM + i * 16 + (lane & 15)) * kAPitch + k16 * 16 + (lane >> 4) * 8);
      uint32_t bf[kNi][2];
#pragma unroll
      for (int j = 0; j < kNi / 2; ++j) {  // one x4 = two n8 tiles x (k 0-7, k 8-15)
        uint32_t r[4];
        if constexpr (!TRANS) {
          // W[n][k]: 8x8 blocks (n, k) loaded as is give thread (g, t) B[k = 2t, 2t+1][n = g].
          ldmatrix_x4(r, W + (wn * kWarpN + j * 16 + (lane & 7) + ((lane >> 4) << 3)) * kWPitch + k16 * 16 +
                             ((lane >> 3) & 1) * 8);
        } else {
          // W[n][kk]: the reduction runs down the rows, so .trans gives thread (g, t) B[n = 2t, 2t+1][kk = g].
          ldmatrix_x4_trans(r, W + (k16 * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kWPitch + wn * kWarpN +
                                   j * 16 + (lane >> 4) * 8);
        }
        bf[2 * j][0] = r[0];
        bf[2 * j][1] = r[1];
        bf[2 * j + 1][0] = r[2];
        bf[2 * j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < kMi; ++i)
#pragma unroll
        for (int j = 0; j < kNi; ++j) mma_bf16(acc[i][j], af[i], bf[j][0], bf[j][1]);
    }
  };

  // Pipeline: tiles 0..kStages-2 in flight; iteration t waits for tile t+1, refills the stage tile t-1 used,
  // dequantizes tile t+1 into the other W buffer and multiplies tile t. One barrier per iteration: it orders
  // (a) the landing of tile t+1 for every thread, (b) the dequant of tile t (previous iteration) before its
  // MMAs, and (c) the previous iteration's reads of the A stage, raw stage and W buffer being overwritten now.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < p.k_tiles) load_tile(s, s);
    cp_async_commit();  // empty groups keep the group arithmetic uniform
  }
  cp_async_wait<kStages - 2>();
  __syncthreads();  // also publishes the code book
  dequant_tile(0, 0);
  for (int t = 0; t < p.k_tiles; ++t) {
    cp_async_wait<kStages - 3>();
    __syncthreads();
    const int tn = t + kStages - 1;
    if (tn < p.k_tiles) load_tile(tn, tn % kStages);
    cp_async_commit();
    if (t + 1 < p.k_tiles) dequant_tile((t + 1) % kStages, (t + 1) & 1);
    mma_tile(t % kStages, t & 1);
  }
  cp_async_wait<0>();  // nothing may be in flight into shared memory when the block exits

  // Epilogue: accumulator (i, j) holds rows g and g + 8, columns 2t, 2t + 1 of its m16n8 tile.
  const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
  for (int i = 0; i < kMi; ++i)
#pragma unroll
    for (int j = 0; j < kNi; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t m = m0 + wm * kWarpM + i * 16 + g + 8 * h;
        const int64_t c = c0 + wn * kWarpN + j * 8 + 2 * t4;
        if (m >= p.M) continue;
        const float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
        if constexpr (!TRANS) {
          float* dst = p.out + m * p.n_out + c;
          if (c + 1 < p.n_out && (p.n_out & 1) == 0) {
            *reinterpret_cast<float2*>(dst) = make_float2(v0, v1);  // 8-byte aligned: m·n_out and c even
          } else {
            if (c < p.n_out) dst[0] = v0;
            if (c + 1 < p.n_out) dst[1] = v1;
          }
        } else {
          float* row = p.out + m * p.n_out;
          if (c < p.n_out) row[p.perm ? p.perm[c] : c] = v0;
          if (c + 1 < p.n_out) row[p.perm ? p.perm[c + 1] : c + 1] = v1;
        }
      }
}

// dst[m, j] = j < valid ? src[m·valid + (perm ? perm[j] : j)] : 0 for j < width (bf16 bits moved as is).
__global__ void tc_stage_kernel(const uint16_t* src, const int32_t* perm, int64_t M, int64_t valid, int64_t width,
                                uint16_t* dst) {
  const int64_t total = M * width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = i / width, j = i % width;
    dst[i] = j < valid ? src[m * valid + (perm ? perm[j] : j)] : uint16_t{0};
  }
}

template <bool TRANS>
void launch_tc(Q4Kind kind, const TcParams& p, dim3 grid, cudaStream_t s) {
  const auto go = [&](auto kernel) {
    QWENQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(kSmemBytes)));
    kernel<<<grid, kThreads, kSmemBytes, s>>>(p);
  };
  if (kind == Q4Kind::Int) go(qgemm_tc_kernel<Q4Kind::Int, TRANS>);
  else if (kind == Q4Kind::Nf4) go(qgemm_tc_kernel<Q4Kind::Nf4, TRANS>);
  else go(qgemm_tc_kernel<Q4Kind::Fp4, TRANS>);
}

}  // namespace

namespace qgemm_tc_detail {

std::string tc_context(const char* fn, const Q4View& w, int64_t M, DType dt) {
  return std::string(fn) + " M=" + std::to_string(M) + " K=" + std::to_string(w.K) + " N=" + std::to_string(w.N) +
         " group=" + std::to_string(w.group) + " kind=" + q4_kind_name(w.kind) + " act=" + dtype_name(dt);
}

void check_tc_args(const Q4View& w, const void* a, DType dtype, int64_t M, const float* out, const char* fn) {
  q4_check(w, fn);
  QWENQ_CHECK(M >= 1 && ceil_div(M, kTcBlockRows) <= 65535,
              fn << ": M=" << M << " must be in [1, " << int64_t{kTcBlockRows} * 65535 << "] (K=" << w.K << " N=" << w.N << ")");
  QWENQ_CHECK(a != nullptr && out != nullptr, fn << ": null activation or output pointer");
  QWENQ_CHECK(dtype == DType::BF16, fn << ": the tensor-core kernel takes BF16 activations, not " << dtype_name(dtype)
                                       << " (M=" << M << " K=" << w.K << " N=" << w.N
                                       << "; qgemm_int4_cuda routes F32 to the decode kernel)");
  const auto aligned16 = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  QWENQ_CHECK(aligned16(w.qweight) && aligned16(w.meta),
              fn << ": qweight and meta must be 16-byte aligned device pointers (16-byte cp.async)");
  QWENQ_CHECK(reinterpret_cast<uintptr_t>(out) % 8 == 0, fn << ": the output must be 8-byte aligned (float2 stores)");
  cudaPointerAttributes attr{};
  const cudaError_t e = cudaPointerGetAttributes(&attr, w.qweight);
  cudaGetLastError();
  QWENQ_CHECK(e == cudaSuccess && (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged),
              fn << ": the Q4View's arrays must be device memory (use Q4DeviceWeight)");
}


const uint16_t* maybe_stage(const void* src, const int32_t* perm, int64_t M, int64_t valid, DeviceMemory* buf,
                            int64_t* lda, int64_t* width, cudaStream_t s, const std::string& ctx) {
  const bool aligned = reinterpret_cast<uintptr_t>(src) % 16 == 0;
  if (perm == nullptr && valid % 8 == 0 && aligned) {
    *lda = valid;
    *width = valid;
    return static_cast<const uint16_t*>(src);
  }
  *width = round_up(valid, 8);
  *lda = *width;
  *buf = DeviceMemory(static_cast<size_t>(M * *width) * sizeof(uint16_t), s);
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(M * *width, 256), 8 * int64_t{cuda_sm_count()}));
  tc_stage_kernel<<<blocks, 256, 0, s>>>(static_cast<const uint16_t*>(src), perm, M, valid, *width,
                                         buf->as<uint16_t>());
  QWENQ_CUDA_CHECK_LAUNCH("tc_stage_kernel for " << ctx);
  return buf->as<const uint16_t>();
}

TcParams tc_params(const Q4View& w, const void* a, int64_t M, float* out, bool trans, int stage_depth,
                   DeviceMemory* staged, cudaStream_t s, const std::string& ctx) {
  TcParams p{};
  // Forward: x gathered through perm when staged, y columns in order. Transposed: dy as is, dx[:, perm[kk]] =
  // column kk of the product.
  p.a = maybe_stage(a, trans ? nullptr : w.perm, M, trans ? w.N : w.K, staged, &p.lda, &p.a_width, s, ctx);
  p.qweight = w.qweight;
  p.meta = w.meta;
  p.perm = trans ? w.perm : nullptr;
  p.out = out;
  p.M = M;
  p.n_out = trans ? w.K : w.N;
  p.Kp = w.Kp;
  p.Np = w.Np;
  p.group = w.group;
  p.k_tiles = static_cast<int>(ceil_div(trans ? w.Np : w.Kp, stage_depth));
  return p;
}

}  // namespace qgemm_tc_detail

void qgemm_int4_tc_cuda(const Q4View& w, const void* x, DType x_dtype, int64_t M, float* y, void* stream) {
  check_tc_args(w, x, x_dtype, M, y, "qgemm_int4_tc_cuda");
  const std::string ctx = tc_context("qgemm_int4_tc_cuda", w, M, x_dtype);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  DeviceMemory staged;
  const TcParams p = tc_params(w, x, M, y, /*trans=*/false, kBK, &staged, s, ctx);
  const dim3 grid(static_cast<unsigned>(ceil_div(w.N, kBN)), static_cast<unsigned>(ceil_div(M, kBM)));
  launch_tc<false>(w.kind, p, grid, s);
  QWENQ_CUDA_CHECK_LAUNCH("qgemm_tc_kernel (forward) " << ctx);
}

void qgemm_int4_t_tc_cuda(const Q4View& w, const void* dy, DType dy_dtype, int64_t M, float* dx, void* stream) {
  check_tc_args(w, dy, dy_dtype, M, dx, "qgemm_int4_t_tc_cuda");
  const std::string ctx = tc_context("qgemm_int4_t_tc_cuda", w, M, dy_dtype);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  DeviceMemory staged;
  const TcParams p = tc_params(w, dy, M, dx, /*trans=*/true, kBK, &staged, s, ctx);
  // Output columns are layout rows kk < K; tiles of 128 kk = 16 word-rows.
  const dim3 grid(static_cast<unsigned>(ceil_div(w.K, kBN)), static_cast<unsigned>(ceil_div(M, kBM)));
  launch_tc<true>(w.kind, p, grid, s);
  QWENQ_CUDA_CHECK_LAUNCH("qgemm_tc_kernel (transposed) " << ctx);
}

}  // namespace qwenq
