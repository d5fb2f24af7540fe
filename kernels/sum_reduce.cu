// The CUDA twins of kernels/sum_reduce_ref.cpp (contracts, order of summation and precision in sum_reduce.h).
//
// sum_sq_diff_cuda, two launches:
//   1. one block of kThreads per chunk of kChunk elements: each thread sums (double(a) − double(b))² over a
//      strided slice of the chunk (coalesced fp32 loads), then cuda::block_sum (fixed butterfly) -> partial[chunk];
//   2. one block adds the partials (thread j takes j, j + kThreads, ..., then block_sum) and adds the total to *sum
//      (a single thread writes it: no race with another launch, which is stream-ordered after this one).
// column_abs_sum_cuda, two launches:
//   1. a grid of (⌈K / 32⌉ column tiles) x (S row slices): block (32 x 8 threads) sums |x[t, k]| in double for its
//      32 columns (one warp reads 32 consecutive floats: 128 B per row) over rows t ≡ ty (mod 8) of its slice, then
//      the 8 row lanes are added in lane order through shared memory -> partial[slice, k];
//   2. one thread per column adds the S slice sums in slice order to sum[k].
// S = min(64, ⌈T / 256⌉) slices of ⌈T / S⌉ rows: enough blocks to fill the device for the widths of Qwen models
// (K = 896..29568: 28..924 column tiles), each thread still reading ≥ 32 rows.
// Scratch (the partial sums) is stream-ordered DeviceMemory; nothing waits for the host.
#include <algorithm>
#include <climits>
#include <cstdint>

#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "kernels/sum_reduce.h"

namespace qwenq {

namespace {

constexpr unsigned kThreads = 256;
constexpr int64_t kChunk = 1 << 16;  // elements per block of sum_sq_diff's first pass: 64K x 2 fp32 = 512 KB read
constexpr int kColTile = 32;         // columns per block of column_abs_sum (one warp wide)
constexpr int kRowLanes = 8;         // rows in flight per column
constexpr int64_t kMaxSlices = 64;
constexpr int64_t kMinSliceRows = 256;

__global__ void sum_sq_diff_chunks_kernel(const float* __restrict__ a, const float* __restrict__ b, int64_t n,
                                          double* __restrict__ partial) {
  __shared__ double scratch[32];
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kChunk;
  const int64_t end = begin + kChunk < n ? begin + kChunk : n;
  double s = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    s += d * d;
  }
  s = cuda::block_sum(s, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void sum_partials_kernel(const double* __restrict__ partial, int64_t m, double* __restrict__ sum) {
  __shared__ double scratch[32];
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < m; j += blockDim.x) s += partial[j];
  s = cuda::block_sum(s, scratch);
  if (threadIdx.x == 0) *sum += s;
}

// partial [gridDim.y, K]: block (x, y) covers columns [32·x, 32·x + 32) ∩ [0, K) and rows [y·rows, (y+1)·rows) ∩ [0, T).
__global__ void column_abs_slices_kernel(const float* __restrict__ x, int64_t T, int64_t K, int64_t rows,
                                         double* __restrict__ partial) {
  __shared__ double lanes[kRowLanes][kColTile + 1];  // +1: the final column-wise read has no bank conflicts
  const int tx = static_cast<int>(threadIdx.x), ty = static_cast<int>(threadIdx.y);
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kColTile + tx;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * rows;
  const int64_t t1 = t0 + rows < T ? t0 + rows : T;
  double s = 0.0;
  if (k < K) {
    for (int64_t t = t0 + ty; t < t1; t += kRowLanes) s += fabs(static_cast<double>(x[t * K + k]));
  }
  lanes[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && k < K) {
    double total = 0.0;
    for (int j = 0; j < kRowLanes; ++j) total += lanes[j][tx];
    partial[static_cast<int64_t>(blockIdx.y) * K + k] = total;
  }
}

__global__ void column_abs_finish_kernel(const double* __restrict__ partial, int64_t slices, int64_t K,
                                         double* __restrict__ sum) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= K) return;
  double s = 0.0;
  for (int64_t j = 0; j < slices; ++j) s += partial[j * K + k];
  sum[k] += s;
}

}  // namespace

void sum_sq_diff_cuda(const float* a, const float* b, int64_t n, double* sum, CudaStream stream) {
  QWENQ_CHECK(n >= 0, "sum_sq_diff_cuda: negative size " << n);
  QWENQ_CHECK(sum != nullptr, "sum_sq_diff_cuda: null sum");
  if (n == 0) return;
  QWENQ_CHECK(a != nullptr && b != nullptr, "sum_sq_diff_cuda: null input");
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  QWENQ_CHECK(chunks <= INT_MAX, "sum_sq_diff_cuda: " << n << " elements exceed the grid limit");
  DeviceMemory partial(static_cast<size_t>(chunks) * sizeof(double), stream);
  sum_sq_diff_chunks_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, stream>>>(a, b, n, partial.as<double>());
  QWENQ_CUDA_CHECK_LAUNCH("sum_sq_diff_cuda chunks: n=" << n << " (" << chunks << " chunks)");
  sum_partials_kernel<<<1, kThreads, 0, stream>>>(partial.as<double>(), chunks, sum);
  QWENQ_CUDA_CHECK_LAUNCH("sum_sq_diff_cuda total: " << chunks << " partial sums");
}

void column_abs_sum_cuda(const float* x, int64_t T, int64_t K, double* sum, CudaStream stream) {
  QWENQ_CHECK(T >= 0 && K >= 1, "column_abs_sum_cuda: bad shape [" << T << ", " << K << "]");
  QWENQ_CHECK(sum != nullptr, "column_abs_sum_cuda: null sum");
  if (T == 0) return;
  QWENQ_CHECK(x != nullptr, "column_abs_sum_cuda: null input");
  const int64_t tiles = (K + kColTile - 1) / kColTile;
  QWENQ_CHECK(tiles <= INT_MAX, "column_abs_sum_cuda: K=" << K << " exceeds the grid limit");
  const int64_t slices = std::max<int64_t>(1, std::min(kMaxSlices, (T + kMinSliceRows - 1) / kMinSliceRows));
  const int64_t rows = (T + slices - 1) / slices;
  DeviceMemory partial(static_cast<size_t>(slices * K) * sizeof(double), stream);
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(slices));
  const dim3 block(kColTile, kRowLanes);
  column_abs_slices_kernel<<<grid, block, 0, stream>>>(x, T, K, rows, partial.as<double>());
  QWENQ_CUDA_CHECK_LAUNCH("column_abs_sum_cuda slices: T=" << T << " K=" << K << " (" << slices << " slices)");
  const int64_t finish_blocks = (K + kThreads - 1) / kThreads;
  QWENQ_CHECK(finish_blocks <= INT_MAX, "column_abs_sum_cuda: K=" << K << " exceeds the grid limit");
  column_abs_finish_kernel<<<static_cast<unsigned>(finish_blocks), kThreads, 0, stream>>>(partial.as<double>(),
                                                                                         slices, K, sum);
  QWENQ_CUDA_CHECK_LAUNCH("column_abs_sum_cuda total: K=" << K << ", " << slices << " slices");
}

}  // namespace qwenq
