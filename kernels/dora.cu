// The CUDA twins of kernels/dora_ref.cpp (formulas, roundings and summation orders in dora.h). Every float operation
// of an elementwise output is an _rn intrinsic (nvcc never contracts them into an FMA), so those outputs are the
// ref's bits; the row norms' e[j, k] are too, and only their double sums (and dm's) are ordered differently.
//
// dora_row_norms_cuda: a grid of (⌈N / 32⌉ row tiles) x (S K slices), 256 threads (8 warps) per block.
//   Block (x, y) owns output rows j0 = 32x .. j0 + 31 (warp w rows j0 + 4w .. j0 + 4w + 3) and the 64-column chunks
//   y·P .. y·P + P − 1 of the layout rows (P chunks per slice; Q4: layout row kk stands for input column perm[kk]).
//   Per chunk it stages in shared memory
//     ŵ [32 rows][64 columns]: dense: each row's 64 consecutive elements read by 64 consecutive threads (256 B of
//       F32, 128 B of BF16/F16 per row); Q4: the chunk is 8 word-rows, thread t reads word (kk0 / 8 + t / 32,
//       j0 + t % 32), so a warp reads 32 adjacent words of one word-row (128 B) and their 32 meta words, and decodes
//       its 8 codes as q4_dequant (only rows kk < K and columns j < N are read; pad nibbles are never decoded);
//     A [64 ranks][64 columns] (gathered through perm), and B [64 ranks][32 rows] (once per block when r ≤ 64;
//       larger ranks run in 64-rank steps, B restaged per step).
//   Lane l of warp w accumulates (B A)[j, kk] for its 4 rows x 2 columns (l, l + 32) over i ascending in fp32
//   (a float4 broadcast of B, two conflict-free reads of A per rank), then e = ŵ + s·(B A) and e² into one double
//   per row. After the slice: a fixed butterfly over the 32 lanes (cuda::warp_sum) gives the slice's Σ for each
//   row; with one slice it is finished in place (n = (float) sqrt Σ), else written to partial[y, j] and a second
//   launch adds the S partials per row in slice order.
//   S = min(⌈1024 / tiles⌉, ⌈chunks / 4⌉, kDoraNormMaxSlices): about 1024 blocks for any Qwen shape (N = 896,
//   K = 4864: 28 tiles x 19 slices; N = 18944, K = 3584: 592 x 2), each slice at least 4 chunks (256 columns).
//   It depends on the shapes only: the same bits on every device and run. Work: N·K·r multiply-adds (fp32 units,
//   no FMA: they must round like the ref), e.g. 4.3 G for N = 18944, K = 3584, r = 64; the weight is read once.
// dora_split_grad_cuda: column_abs_sum's scheme (kernels/sum_reduce.cu): 32-column tiles x ≤ 64 row slices, 8 rows
//   in flight per column, dz/dv written on the way, the 8 lanes added in order, then the slices per column.
// dora_gain_cuda, dora_scale_rows_cuda, dora_combine_cuda: elementwise; scale rows and combine run a 2-D grid
//   (256-column tiles x up to 1024 row strides) so each thread reads its column's g (or m, n) once.
// Scratch (the partial sums) is stream-ordered DeviceMemory (cudaMallocAsync; on out of memory the caching
// allocator's idle blocks are released and it retries); nothing waits for the host.
#include <algorithm>
#include <climits>
#include <cstdint>

#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "kernels/dora.h"

namespace qwenq {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / cuda::kWarp;
constexpr int kTileRows = static_cast<int>(kDoraNormTileRows);  // row norms: output rows per block
constexpr int kRowsPerWarp = kTileRows / kWarps;      // 4
constexpr int kChunk = static_cast<int>(kDoraNormChunk);  // row norms: layout columns per chunk (2 per lane)
constexpr int kWordRowsPerChunk = kChunk / kQ4CodesPerWord;
constexpr int kRankChunk = 64;                        // row norms: ranks staged at once
static_assert(kRowsPerWarp == 4, "a warp's rows are one float4 of B");
static_assert(kTileRows * kWordRowsPerChunk == kThreads, "one Q4 word per thread and chunk");
static_assert(kChunk == 2 * cuda::kWarp, "two columns per lane");

constexpr int kColTile = 32;  // split grad: columns per block (one warp wide)
constexpr int kRowLanes = 8;  // split grad: rows in flight per column
constexpr int64_t kMaxRowStrides = 1024;  // scale rows / combine: grid rows

// Where ŵ comes from: dense F32/BF16/F16, or the Q4 layout of one kind.
enum class Src { F32, BF16, F16, Q4Int, Q4Nf4, Q4Fp4 };

__constant__ float c_dora_books[2][16] = {
    {kNf4Code[0], kNf4Code[1], kNf4Code[2], kNf4Code[3], kNf4Code[4], kNf4Code[5], kNf4Code[6], kNf4Code[7],
     kNf4Code[8], kNf4Code[9], kNf4Code[10], kNf4Code[11], kNf4Code[12], kNf4Code[13], kNf4Code[14], kNf4Code[15]},
    {kFp4Code[0], kFp4Code[1], kFp4Code[2], kFp4Code[3], kFp4Code[4], kFp4Code[5], kFp4Code[6], kFp4Code[7],
     kFp4Code[8], kFp4Code[9], kFp4Code[10], kFp4Code[11], kFp4Code[12], kFp4Code[13], kFp4Code[14], kFp4Code[15]}};

struct NormParams {
  const void* dense;         // Src F32/BF16/F16: [N, K]
  const uint32_t* qweight;   // Q4: [Kp / 8, Np]
  const uint32_t* meta;      // Q4: [groups, Np]
  const int32_t* perm;       // Q4: [K] or null
  int64_t Np, group;
  const float* A;            // [r, K]
  const float* B;            // [N, r]
  int64_t N, K, r;
  float s;
  int64_t chunks, chunks_per_slice;
  double* partial;           // [slices, N], or null with one slice
  float* n;                  // [N]
};

template <Src SRC>
__device__ __forceinline__ float dense_at(const void* w, int64_t i) {
  if constexpr (SRC == Src::F32) {
    return __ldg(static_cast<const float*>(w) + i);
  } else if constexpr (SRC == Src::BF16) {
    return cuda::bf16_bits_to_f32(__ldg(static_cast<const unsigned short*>(w) + i));
  } else {
    return cuda::f16_bits_to_f32(__ldg(static_cast<const unsigned short*>(w) + i));
  }
}

// ŵ of layout rows kk0 .. kk0 + 63 and output rows j0 .. j0 + 31 into ws (0 outside [N] x [K]).
template <Src SRC>
__device__ __forceinline__ void load_weight_tile(const NormParams& p, int64_t j0, int64_t kk0,
                                                 float (*ws)[kChunk + 1], const float* book) {
  const int tid = static_cast<int>(threadIdx.x);
  if constexpr (SRC == Src::F32 || SRC == Src::BF16 || SRC == Src::F16) {
    for (int e = tid; e < kTileRows * kChunk; e += kThreads) {
      const int jr = e / kChunk, c = e % kChunk;
      const int64_t j = j0 + jr, k = kk0 + c;
      ws[jr][c] = j < p.N && k < p.K ? dense_at<SRC>(p.dense, j * p.K + k) : 0.f;
    }
  } else {
    const int wr = tid / kTileRows, jr = tid % kTileRows;
    const int64_t j = j0 + jr;
    const int64_t kw = kk0 + static_cast<int64_t>(wr) * kQ4CodesPerWord;  // the word's first layout row
    float* dst = &ws[jr][wr * kQ4CodesPerWord];
    if (j < p.N && kw < p.K) {
      const uint32_t word = __ldg(p.qweight + (kw / kQ4CodesPerWord) * p.Np + j);
      const uint32_t meta = __ldg(p.meta + (kw / p.group) * p.Np + j);
#pragma unroll
      for (int q = 0; q < kQ4CodesPerWord; ++q) {
        const uint32_t code = (word >> (kQ4Bits * q)) & 15u;
        float v = 0.f;
        if (kw + q < p.K) {  // q4_dequant, one rounding per operation
          if constexpr (SRC == Src::Q4Int) {
            const float zero = __uint2float_rn((meta >> 16) & 0xFFu);
            const float scale = cuda::f16_bits_to_f32(static_cast<uint16_t>(meta & 0xFFFFu));
            v = __fmul_rn(__fsub_rn(__uint2float_rn(code), zero), scale);
          } else {
            v = __fmul_rn(book[code], __uint_as_float(meta));
          }
        }
        dst[q] = v;
      }
    } else {
#pragma unroll
      for (int q = 0; q < kQ4CodesPerWord; ++q) dst[q] = 0.f;
    }
  }
}

// B[j0 + jr, i0 + i] for rc ranks into bs[i][jr]: lanes over rows (conflict-free stores; the reads hit L1/L2).
__device__ __forceinline__ void stage_b(const NormParams& p, int64_t j0, int64_t i0, int rc, float (*bs)[kTileRows]) {
  for (int e = static_cast<int>(threadIdx.x); e < rc * kTileRows; e += kThreads) {
    const int i = e / kTileRows, jr = e % kTileRows;
    const int64_t j = j0 + jr;
    bs[i][jr] = j < p.N ? __ldg(p.B + j * p.r + i0 + i) : 0.f;
  }
}

template <Src SRC>
__global__ void __launch_bounds__(kThreads) dora_row_norms_kernel(NormParams p) {
  __shared__ float a_s[kRankChunk][kChunk];                     // A[i0 + i, input column of layout row kk0 + c]
  __shared__ __align__(16) float b_s[kRankChunk][kTileRows];   // B[j0 + jr, i0 + i]
  __shared__ float w_s[kTileRows][kChunk + 1];                  // +1: the Q4 decode's per-row writes spread over banks
  __shared__ float book[16];
  const int tid = static_cast<int>(threadIdx.x), lane = tid % cuda::kWarp, warp = tid / cuda::kWarp;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int64_t c_begin = static_cast<int64_t>(blockIdx.y) * p.chunks_per_slice;
  const int64_t c_end = min(p.chunks, c_begin + p.chunks_per_slice);
  if constexpr (SRC == Src::Q4Nf4 || SRC == Src::Q4Fp4) {
    if (tid < 16) book[tid] = c_dora_books[SRC == Src::Q4Fp4 ? 1 : 0][tid];
  }
  const bool b_resident = p.r <= kRankChunk;
  if (b_resident) stage_b(p, j0, 0, static_cast<int>(p.r), b_s);  // visible after the first chunk's second barrier

  double ss[kRowsPerWarp] = {0.0, 0.0, 0.0, 0.0};
  for (int64_t c = c_begin; c < c_end; ++c) {
    const int64_t kk0 = c * kChunk;
    float ba[kRowsPerWarp][2];
#pragma unroll
    for (int q = 0; q < kRowsPerWarp; ++q) ba[q][0] = ba[q][1] = 0.f;
    for (int64_t i0 = 0; i0 < p.r; i0 += kRankChunk) {
      const int rc = static_cast<int>(min(static_cast<int64_t>(kRankChunk), p.r - i0));
      __syncthreads();  // every read of the previous step's tiles is done
      if (i0 == 0) load_weight_tile<SRC>(p, j0, kk0, w_s, book);
      for (int e = tid; e < rc * kChunk; e += kThreads) {
        const int i = e / kChunk, cc = e % kChunk;
        const int64_t kk = kk0 + cc;
        float a = 0.f;
        if (kk < p.K) a = __ldg(p.A + (i0 + i) * p.K + (p.perm ? __ldg(p.perm + kk) : kk));
        a_s[i][cc] = a;
      }
      if (!b_resident) stage_b(p, j0, i0, rc, b_s);
      __syncthreads();
      for (int i = 0; i < rc; ++i) {
        const float a0 = a_s[i][lane], a1 = a_s[i][lane + cuda::kWarp];
        const float4 b = *reinterpret_cast<const float4*>(&b_s[i][warp * kRowsPerWarp]);
        ba[0][0] = __fadd_rn(ba[0][0], __fmul_rn(b.x, a0));
        ba[0][1] = __fadd_rn(ba[0][1], __fmul_rn(b.x, a1));
        ba[1][0] = __fadd_rn(ba[1][0], __fmul_rn(b.y, a0));
        ba[1][1] = __fadd_rn(ba[1][1], __fmul_rn(b.y, a1));
        ba[2][0] = __fadd_rn(ba[2][0], __fmul_rn(b.z, a0));
        ba[2][1] = __fadd_rn(ba[2][1], __fmul_rn(b.z, a1));
        ba[3][0] = __fadd_rn(ba[3][0], __fmul_rn(b.w, a0));
        ba[3][1] = __fadd_rn(ba[3][1], __fmul_rn(b.w, a1));
      }
    }
    // w_s stays until the next chunk's first barrier.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int cc = lane + h * cuda::kWarp;
      if (kk0 + cc >= p.K) continue;
#pragma unroll
      for (int q = 0; q < kRowsPerWarp; ++q) {
        const float e = __fadd_rn(w_s[warp * kRowsPerWarp + q][cc], __fmul_rn(p.s, ba[q][h]));
        const double d = static_cast<double>(e);
        ss[q] = __dadd_rn(ss[q], __dmul_rn(d, d));  // e² exact in double
      }
    }
  }
#pragma unroll
  for (int q = 0; q < kRowsPerWarp; ++q) {
    const double total = cuda::warp_sum(ss[q]);  // every lane of every warp takes part: no early exit above
    const int64_t j = j0 + warp * kRowsPerWarp + q;
    if (lane != 0 || j >= p.N) continue;
    if (p.partial != nullptr) {
      p.partial[static_cast<int64_t>(blockIdx.y) * p.N + j] = total;
    } else {
      p.n[j] = __double2float_rn(__dsqrt_rn(total));
    }
  }
}

__global__ void dora_row_norms_finish_kernel(const double* __restrict__ partial, int64_t slices, int64_t N,
                                             float* __restrict__ n) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= N) return;
  double sum = 0.0;
  for (int64_t y = 0; y < slices; ++y) sum = __dadd_rn(sum, partial[y * N + j]);
  n[j] = __double2float_rn(__dsqrt_rn(sum));
}

__global__ void dora_gain_kernel(const float* __restrict__ m, const float* __restrict__ n, int64_t N,
                                 float* __restrict__ g) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < N) g[j] = __fdiv_rn(m[j], n[j]);
}

// BIAS: 0 none, else the bias dtype's widening (1 F32, 2 BF16, 3 F16).
template <int BIAS>
__global__ void dora_scale_rows_kernel(float* __restrict__ y, int64_t rows, int64_t N, const float* __restrict__ g,
                                       const void* __restrict__ bias) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= N) return;
  const float gj = g[j];
  float b = 0.f, one_minus_g = 0.f;
  if constexpr (BIAS == 1) b = static_cast<const float*>(bias)[j];
  if constexpr (BIAS == 2) b = cuda::bf16_bits_to_f32(static_cast<const uint16_t*>(bias)[j]);
  if constexpr (BIAS == 3) b = cuda::f16_bits_to_f32(static_cast<const uint16_t*>(bias)[j]);
  if constexpr (BIAS != 0) one_minus_g = __fsub_rn(1.f, gj);
  for (int64_t t = blockIdx.y; t < rows; t += gridDim.y) {
    float* yt = y + t * N + j;
    if constexpr (BIAS == 0) {
      *yt = __fmul_rn(gj, *yt);
    } else {
      *yt = __fadd_rn(__fmul_rn(gj, *yt), __fmul_rn(one_minus_g, b));
    }
  }
}

__global__ void dora_combine_kernel(const float* __restrict__ m, const float* __restrict__ n,
                                    const float* __restrict__ z, const float* __restrict__ v, int64_t rows, int64_t N,
                                    float* __restrict__ y) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= N) return;
  const float g = __fdiv_rn(m[j], n[j]);
  const float gm1 = __fsub_rn(g, 1.f);
  for (int64_t t = blockIdx.y; t < rows; t += gridDim.y) {
    const int64_t i = t * N + j;
    y[i] = __fadd_rn(y[i], __fadd_rn(__fmul_rn(gm1, z[i]), __fmul_rn(g, v[i])));
  }
}

// partial [gridDim.y, N]: block (x, y) covers columns [32x, 32x + 32) ∩ [0, N), rows [y·slice, (y + 1)·slice).
__global__ void dora_split_grad_kernel(const float* __restrict__ m, const float* __restrict__ n,
                                       const float* __restrict__ z, const float* __restrict__ v,
                                       const float* __restrict__ dy, int64_t rows, int64_t N, int64_t slice_rows,
                                       float* __restrict__ dz, float* __restrict__ dv, double* __restrict__ partial) {
  __shared__ double lanes[kRowLanes][kColTile + 1];
  const int tx = static_cast<int>(threadIdx.x), ty = static_cast<int>(threadIdx.y);
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kColTile + tx;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * slice_rows;
  const int64_t t1 = min(rows, t0 + slice_rows);
  double sum = 0.0;
  if (j < N) {
    const float g = __fdiv_rn(m[j], n[j]);
    const float gm1 = __fsub_rn(g, 1.f);
    for (int64_t t = t0 + ty; t < t1; t += kRowLanes) {
      const int64_t i = t * N + j;
      const float d = dy[i];
      sum = __dadd_rn(sum, __dmul_rn(static_cast<double>(d), static_cast<double>(__fadd_rn(z[i], v[i]))));
      dz[i] = __fmul_rn(gm1, d);
      dv[i] = __fmul_rn(g, d);
    }
  }
  lanes[ty][tx] = sum;
  __syncthreads();
  if (ty == 0 && j < N) {
    double total = 0.0;
    for (int l = 0; l < kRowLanes; ++l) total = __dadd_rn(total, lanes[l][tx]);
    partial[static_cast<int64_t>(blockIdx.y) * N + j] = total;
  }
}

__global__ void dora_split_grad_finish_kernel(const double* __restrict__ partial, int64_t slices, int64_t N,
                                              const float* __restrict__ n, float* __restrict__ dm) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= N) return;
  double sum = 0.0;
  for (int64_t y = 0; y < slices; ++y) sum = __dadd_rn(sum, partial[y * N + j]);
  dm[j] = __fadd_rn(dm[j], __double2float_rn(__ddiv_rn(sum, static_cast<double>(n[j]))));
}

unsigned blocks_of(int64_t n, int64_t per, const char* name, int64_t N) {
  const int64_t b = (n + per - 1) / per;
  QWENQ_CHECK(b <= INT_MAX, name << ": N=" << N << " exceeds the grid limit");
  return static_cast<unsigned>(b);
}

// The 2-D grid of scale rows / combine: 256-column tiles x up to kMaxRowStrides rows (each thread strides over t).
dim3 column_grid(int64_t rows, int64_t N, const char* name) {
  return dim3(blocks_of(N, kThreads, name, N), static_cast<unsigned>(std::min(rows, kMaxRowStrides)));
}

}  // namespace

void dora_row_norms_cuda(const DoraBaseWeight& W, int64_t N, int64_t K, const float* A, const float* B, int64_t r,
                         float s, float* n, CudaStream stream) {
  const char* name = "dora_row_norms_cuda";
  dora_row_norms_check(name, W, N, K, A, B, r, n);
  const int64_t tiles = (N + kTileRows - 1) / kTileRows;
  QWENQ_CHECK(tiles <= INT_MAX, name << ": N=" << N << " exceeds the grid limit");
  const int64_t chunks = (K + kChunk - 1) / kChunk;
  const int64_t slices = dora_row_norm_slices(N, K);
  const int64_t per = (chunks + slices - 1) / slices;
  DeviceMemory partial(dora_row_norms_scratch_bytes(N, K), stream);

  NormParams p{};
  p.dense = W.dense;
  p.A = A;
  p.B = B;
  p.N = N;
  p.K = K;
  p.r = r;
  p.s = s;
  p.chunks = chunks;
  p.chunks_per_slice = per;
  p.partial = slices > 1 ? partial.as<double>() : nullptr;
  p.n = n;
  Src src = W.dtype == DType::F32 ? Src::F32 : W.dtype == DType::BF16 ? Src::BF16 : Src::F16;
  if (W.q4 != nullptr) {
    const Q4View& q = *W.q4;
    p.dense = nullptr;
    p.qweight = q.qweight;
    p.meta = q.meta;
    p.perm = q.perm;
    p.Np = q.Np;
    p.group = q.group;
    src = q.kind == Q4Kind::Int ? Src::Q4Int : q.kind == Q4Kind::Nf4 ? Src::Q4Nf4 : Src::Q4Fp4;
  }
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(slices));
  switch (src) {
    case Src::F32: dora_row_norms_kernel<Src::F32><<<grid, kThreads, 0, stream>>>(p); break;
    case Src::BF16: dora_row_norms_kernel<Src::BF16><<<grid, kThreads, 0, stream>>>(p); break;
    case Src::F16: dora_row_norms_kernel<Src::F16><<<grid, kThreads, 0, stream>>>(p); break;
    case Src::Q4Int: dora_row_norms_kernel<Src::Q4Int><<<grid, kThreads, 0, stream>>>(p); break;
    case Src::Q4Nf4: dora_row_norms_kernel<Src::Q4Nf4><<<grid, kThreads, 0, stream>>>(p); break;
    case Src::Q4Fp4: dora_row_norms_kernel<Src::Q4Fp4><<<grid, kThreads, 0, stream>>>(p); break;
  }
  QWENQ_CUDA_CHECK_LAUNCH(name << " N=" << N << " K=" << K << " r=" << r << " weight "
                               << (W.q4 ? q4_kind_name(W.q4->kind) : dtype_name(W.dtype))
                               << (W.q4 && W.q4->perm ? " act-order" : "") << " (" << slices << " slices)");
  if (slices > 1) {
    dora_row_norms_finish_kernel<<<blocks_of(N, kThreads, name, N), kThreads, 0, stream>>>(partial.as<double>(),
                                                                                          slices, N, n);
    QWENQ_CUDA_CHECK_LAUNCH(name << " total: N=" << N << ", " << slices << " slices");
  }
}

void dora_gain_cuda(const float* m, const float* n, int64_t N, float* g, CudaStream stream) {
  const char* name = "dora_gain_cuda";
  QWENQ_CHECK(N >= 1, name << ": bad size N=" << N);
  QWENQ_CHECK(m != nullptr && n != nullptr && g != nullptr,
              name << ": null pointer (" << (m == nullptr ? "m" : n == nullptr ? "n" : "g") << ")");
  dora_gain_kernel<<<blocks_of(N, kThreads, name, N), kThreads, 0, stream>>>(m, n, N, g);
  QWENQ_CUDA_CHECK_LAUNCH(name << " N=" << N);
}

void dora_scale_rows_cuda(float* y, int64_t rows, int64_t N, const float* g, const void* bias, DType bias_dtype,
                          CudaStream stream) {
  const char* name = "dora_scale_rows_cuda";
  dora_rows_check(name, rows, N, "y, g", {y, g});
  QWENQ_CHECK(bias_dtype == DType::F32 || bias_dtype == DType::BF16 || bias_dtype == DType::F16,
              name << ": bias dtype " << dtype_name(bias_dtype) << " is not supported (F32, BF16 or F16)");
  const dim3 grid = column_grid(rows, N, name);
  if (bias == nullptr) {
    dora_scale_rows_kernel<0><<<grid, kThreads, 0, stream>>>(y, rows, N, g, bias);
  } else if (bias_dtype == DType::F32) {
    dora_scale_rows_kernel<1><<<grid, kThreads, 0, stream>>>(y, rows, N, g, bias);
  } else if (bias_dtype == DType::BF16) {
    dora_scale_rows_kernel<2><<<grid, kThreads, 0, stream>>>(y, rows, N, g, bias);
  } else {
    dora_scale_rows_kernel<3><<<grid, kThreads, 0, stream>>>(y, rows, N, g, bias);
  }
  QWENQ_CUDA_CHECK_LAUNCH(name << " rows=" << rows << " N=" << N << " bias "
                               << (bias ? dtype_name(bias_dtype) : "none"));
}

void dora_combine_cuda(const float* m, const float* n, const float* z, const float* v, int64_t rows, int64_t N,
                       float* y, CudaStream stream) {
  const char* name = "dora_combine_cuda";
  dora_rows_check(name, rows, N, "m, n, z, v, y", {m, n, z, v, y});
  dora_combine_kernel<<<column_grid(rows, N, name), kThreads, 0, stream>>>(m, n, z, v, rows, N, y);
  QWENQ_CUDA_CHECK_LAUNCH(name << " rows=" << rows << " N=" << N);
}

void dora_split_grad_cuda(const float* m, const float* n, const float* z, const float* v, const float* dy,
                          int64_t rows, int64_t N, float* dm, float* dz, float* dv, CudaStream stream) {
  const char* name = "dora_split_grad_cuda";
  dora_rows_check(name, rows, N, "m, n, z, v, dy, dm, dz, dv", {m, n, z, v, dy, dm, dz, dv});
  const int64_t tiles = (N + kColTile - 1) / kColTile;
  QWENQ_CHECK(tiles <= INT_MAX, name << ": N=" << N << " exceeds the grid limit");
  const int64_t slices = dora_split_grad_slices(rows, N);
  const int64_t slice_rows = (rows + slices - 1) / slices;
  DeviceMemory partial(dora_split_grad_scratch_bytes(rows, N), stream);
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(slices));
  dora_split_grad_kernel<<<grid, dim3(kColTile, kRowLanes), 0, stream>>>(m, n, z, v, dy, rows, N, slice_rows, dz, dv,
                                                                        partial.as<double>());
  QWENQ_CUDA_CHECK_LAUNCH(name << " rows=" << rows << " N=" << N << " (" << slices << " slices)");
  dora_split_grad_finish_kernel<<<blocks_of(N, kThreads, name, N), kThreads, 0, stream>>>(partial.as<double>(),
                                                                                         slices, N, n, dm);
  QWENQ_CUDA_CHECK_LAUNCH(name << " total: N=" << N << ", " << slices << " slices");
}

}  // namespace qwenq
