// CUDA twins of quant/quantize_step_ref.cpp (contract and the bit-identity argument: quant/quantize_step.h).
//
//   weight_to_f32     grid-stride over the padded [N, K]; each element's bits from the stored one by integer code
//                     (bf16 << 16; binary16 -> binary32 as core's f16_to_f32; F32 copied as bits), 0 in the padding.
//   rtn_quantize      three kernels on `stream`: a non-finite scan (atomicMin of the first flat index), one warp per
//                     (group, column) for the grid (lanes stride the group's contiguous row segment, fminf/fmaxf
//                     shuffles; lane 0 applies grid.cpp's formulas, quant/grid_device.cuh), then the codes in
//                     32x32 tiles of W (a warp reads 32 consecutive k of one row, coalesced) transposed through
//                     shared memory so that a warp writes 32 consecutive n of codes [K, N].
//   nf4_quantize_blocks  one warp per block of B (32..4096): the absmax and non-finite scan, a shuffle max, then
//                     each lane codes two elements into one byte (B is even, so no byte straddles two blocks;
//                     a partial last block of odd length pads its last low nibble with 0). The code books come in
//                     the kernel parameters, copied from quant/format/nf4_pack.h's constants.
// The scans read one flag back, so rtn_quantize_cuda and nf4_quantize_blocks_cuda wait for `stream`.
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <iterator>

#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "quant/format/nf4_pack.h"
#include "quant/grid_device.cuh"
#include "quant/nf4.h"
#include "quant/quantize_step.h"

namespace qwenq {

namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kThreads = 256;
constexpr int kTile = 32;       // codes kernel: 32 n x 32 k per tile
constexpr int kTileRows = 8;    // blockDim.y of the codes kernel: each thread handles 4 rows of a tile
constexpr int64_t kMaxBlocks = int64_t{1} << 20;

unsigned blocks_for(int64_t work_items, int64_t items_per_block) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>((work_items + items_per_block - 1) / items_per_block, kMaxBlocks)));
}

// ---- weight_to_f32 ----------------------------------------------------------------------------------------------

// core/dtype.cpp's f16_to_f32, on bits.
__device__ __forceinline__ uint32_t f16_bits_to_f32_bits(uint32_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return sign | 0x7f800000u | (mant << 13);
  if (exp != 0) return sign | ((exp + 112u) << 23) | (mant << 13);
  if (mant == 0) return sign;
  uint32_t e = 0;  // subnormal: shift the leading 1 up to bit 10 (at most 10 steps)
  while ((mant & 0x400u) == 0) {
    mant <<= 1;
    ++e;
  }
  return sign | ((113u - e) << 23) | ((mant & 0x3ffu) << 13);
}

// dtype: 0 F32, 1 BF16, 2 F16.
__global__ void weight_to_f32_kernel(int dtype, const void* src, int64_t N0, int64_t K0, int64_t N, int64_t K,
                                     uint32_t* W) {
  const int64_t total = N * K, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += stride) {
    const int64_t n = i / K, k = i % K;
    uint32_t bits = 0;
    if (n < N0 && k < K0) {
      const int64_t j = n * K0 + k;
      if (dtype == 0)
        bits = static_cast<const uint32_t*>(src)[j];
      else if (dtype == 1)
        bits = static_cast<uint32_t>(static_cast<const uint16_t*>(src)[j]) << 16;
      else
        bits = f16_bits_to_f32_bits(static_cast<const uint16_t*>(src)[j]);
    }
    W[i] = bits;
  }
}

// ---- shared: the first non-finite element -----------------------------------------------------------------------

// *first = min(*first, i) for every i < n with a[i] not finite. *first starts at ULLONG_MAX.
__global__ void first_nonfinite_kernel(const float* a, int64_t n, unsigned long long* first) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    if (!isfinite(a[i])) atomicMin(first, static_cast<unsigned long long>(i));
}

// A device flag at ULLONG_MAX, ordered on `stream`.
DeviceMemory new_flag(cudaStream_t stream) {
  DeviceMemory flag(sizeof(unsigned long long), stream);
  QWENQ_CUDA_CHECK(cudaMemsetAsync(flag.get(), 0xff, sizeof(unsigned long long), stream));
  return flag;
}

// Waits for `stream`; returns the flag's index, or -1 when nothing was flagged (*value: the element there).
int64_t read_flag(const DeviceMemory& flag, const float* a, float* value, cudaStream_t stream) {
  unsigned long long host = 0;
  QWENQ_CUDA_CHECK(cudaMemcpyAsync(&host, flag.get(), sizeof host, cudaMemcpyDeviceToHost, stream));
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (host == ULLONG_MAX) return -1;
  QWENQ_CUDA_CHECK(cudaMemcpyAsync(value, a + host, sizeof(float), cudaMemcpyDeviceToHost, stream));
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(stream));
  return static_cast<int64_t>(host);
}

// ---- rtn_quantize -----------------------------------------------------------------------------------------------

// One warp per item g·N + n: the grid of column n's group g (rows [g·G, min(K, g·G + G)) of W's row n).
__global__ void rtn_grid_kernel(const float* W, int64_t N, int64_t K, int64_t G, int64_t groups, int maxq, bool sym,
                                bool awq, float* scale, uint8_t* zero) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t item = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32; item < groups * N;
       item += warps) {  // item is the same on all 32 lanes: the shuffles below see a full warp
    const int64_t g = item / N, n = item % N, k0 = g * G, k1 = min(K, k0 + G);
    const float* row = W + n * K;
    float lo = INFINITY, hi = -INFINITY;
    for (int64_t k = k0 + lane; k < k1; k += 32) {
      const float v = row[k];
      lo = fminf(lo, v);
      hi = fmaxf(hi, v);
    }
    grid_warp_range(lo, hi);
    if (lane == 0) grid_from_range(lo, hi, maxq, sym, awq, &scale[item], &zero[item]);
  }
}

// codes[k, n] = quantize_value(W[n, k], grid of (k / G, n)), tile by tile (blockDim = (32, 8)).
__global__ void rtn_codes_kernel(const float* W, int64_t N, int64_t K, int64_t G, int maxq, const float* scale,
                                 const uint8_t* zero, uint8_t* codes) {
  __shared__ uint8_t tile[kTile][kTile + 1];  // [n_local][k_local]
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t tiles_k = (K + kTile - 1) / kTile, tiles = tiles_k * ((N + kTile - 1) / kTile);
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {  // uniform over the block: the barriers are safe
    const int64_t k0 = (t % tiles_k) * kTile, n0 = (t / tiles_k) * kTile;
    for (int r = ty; r < kTile; r += kTileRows) {
      const int64_t n = n0 + r, k = k0 + tx;
      if (n < N && k < K) {
        const int64_t gi = (k / G) * N + n;
        tile[r][tx] = grid_quantize_value(W[n * K + k], scale[gi], zero[gi], maxq);
      }
    }
    __syncthreads();
    for (int r = ty; r < kTile; r += kTileRows) {
      const int64_t k = k0 + r, n = n0 + tx;
      if (n < N && k < K) codes[k * N + n] = tile[tx][r];
    }
    __syncthreads();  // the next tile overwrites `tile`
  }
}

// ---- nf4_quantize_blocks ----------------------------------------------------------------------------------------

struct CodeBooks {
  float nf4_mid[15];
  float fp4_thr[7];
  uint32_t fp4_rank;  // kFp4RankCode[r] in nibble r: a shift instead of an indexed load from the parameters
};

CodeBooks code_books() {
  CodeBooks b;
  std::copy(std::begin(kNf4Midpoints), std::end(kNf4Midpoints), b.nf4_mid);
  std::copy(std::begin(kFp4Thresholds), std::end(kFp4Thresholds), b.fp4_thr);
  b.fp4_rank = 0;
  for (int r = 0; r < 8; ++r) b.fp4_rank |= static_cast<uint32_t>(kFp4RankCode[r]) << (4 * r);
  return b;
}

// nf4.cpp's BlockScale and nf4_pack.h's nf4_code_of / fp4_code_of for one element of a block with absmax > 0.
__device__ __forceinline__ uint8_t code_of(float w, float absmax, float inv, bool divide, bool fp4,
                                           const CodeBooks& cb) {
  float x = divide ? __fdiv_rn(w, absmax) : __fmul_rn(w, inv);
  x = grid_std_min(1.0f, grid_std_max(-1.0f, x));
  int c = 0;
  if (!fp4) {
#pragma unroll
    for (int j = 0; j < 15; ++j) c += x > cb.nf4_mid[j];
    return static_cast<uint8_t>(c);
  }
  const float a = x < 0 ? -x : x;
#pragma unroll
  for (int j = 0; j < 7; ++j) c += a > cb.fp4_thr[j];
  return static_cast<uint8_t>((x < 0 ? 8 : 0) | ((cb.fp4_rank >> (4 * c)) & 0xFu));
}

// One warp per block b of B elements: absmax[b], packed[b·B/2, ...), and the first non-finite index.
__global__ void nf4_blocks_kernel(const float* w, int64_t n, int64_t B, bool fp4, CodeBooks cb, uint8_t* packed,
                                  float* absmax, unsigned long long* first_bad) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32), nb = (n + B - 1) / B;
  const uint8_t zero_code = fp4 ? kFp4ZeroCode : kNf4ZeroCode;
  for (int64_t b = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32; b < nb; b += warps) {
    const int64_t begin = b * B, end = min(n, begin + B);
    float m = 0.0f;
    for (int64_t i = begin + lane; i < end; i += 32) {
      const float v = w[i];
      if (!isfinite(v)) atomicMin(first_bad, static_cast<unsigned long long>(i));
      m = fmaxf(m, fabsf(v));
    }
#pragma unroll
    for (int o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(kFull, m, o));
    if (lane == 0) absmax[b] = m;
    const float inv = __fdiv_rn(1.0f, m);
    const bool divide = !isfinite(inv);
    for (int64_t i = begin + 2 * lane; i < end; i += 64) {  // begin is even: byte i / 2 holds elements i, i + 1
      uint8_t c0 = zero_code, c1 = i + 1 < end ? zero_code : uint8_t{0};
      if (m != 0.0f) {
        c0 = code_of(w[i], m, inv, divide, fp4, cb);
        if (i + 1 < end) c1 = code_of(w[i + 1], m, inv, divide, fp4, cb);
      }
      packed[i / 2] = static_cast<uint8_t>(c0 << 4 | c1);
    }
  }
}

}  // namespace

void weight_to_f32_cuda(DType dtype, const void* src, int64_t N0, int64_t K0, int64_t N, int64_t K, float* W,
                        CudaStream stream) {
  weight_to_f32_check_args(dtype, N0, K0, N, K);
  const int code = dtype == DType::F32 ? 0 : dtype == DType::BF16 ? 1 : 2;
  weight_to_f32_kernel<<<blocks_for(N * K, kThreads), kThreads, 0, stream>>>(code, src, N0, K0, N, K,
                                                                             reinterpret_cast<uint32_t*>(W));
  QWENQ_CUDA_CHECK_LAUNCH("weight_to_f32_cuda " << dtype_name(dtype) << " [" << N0 << ", " << K0 << "] -> [" << N
                                                << ", " << K << "]");
}

void rtn_quantize_cuda(const float* W, int64_t N, int64_t K, int bits, int64_t group_size, bool sym, GridRule rule,
                       float* scale, uint8_t* zero, uint8_t* codes, CudaStream stream) {
  rtn_quantize_check_args(N, K, bits, group_size);
  const int64_t G = group_size == -1 ? K : group_size, groups = (K + G - 1) / G;
  const int maxq = (1 << bits) - 1;
  DeviceMemory flag = new_flag(stream);
  first_nonfinite_kernel<<<blocks_for(N * K, kThreads), kThreads, 0, stream>>>(W, N * K,
                                                                              flag.as<unsigned long long>());
  QWENQ_CUDA_CHECK_LAUNCH("rtn_quantize_cuda (finite check) N=" << N << " K=" << K);
  rtn_grid_kernel<<<blocks_for(groups * N, kThreads / 32), kThreads, 0, stream>>>(
      W, N, K, G, groups, maxq, sym, rule == GridRule::Awq, scale, zero);
  QWENQ_CUDA_CHECK_LAUNCH("rtn_quantize_cuda (grid) N=" << N << " K=" << K << " G=" << G << " bits=" << bits);
  const int64_t tiles = ((K + kTile - 1) / kTile) * ((N + kTile - 1) / kTile);
  rtn_codes_kernel<<<blocks_for(tiles, 1), dim3(kTile, kTileRows), 0, stream>>>(W, N, K, G, maxq, scale, zero,
                                                                                codes);
  QWENQ_CUDA_CHECK_LAUNCH("rtn_quantize_cuda (codes) N=" << N << " K=" << K << " G=" << G << " bits=" << bits);
  float value = 0.0f;
  const int64_t bad = read_flag(flag, W, &value, stream);
  if (bad >= 0) throw_rtn_nonfinite(bad, K, value);
}

void nf4_quantize_blocks_cuda(const float* w, int64_t n, int64_t blocksize, bool fp4, uint8_t* packed, float* absmax,
                              CudaStream stream) {
  nf4_quantize_blocks_check_args(n, blocksize);
  const int64_t nb = (n + blocksize - 1) / blocksize;
  DeviceMemory flag = new_flag(stream);
  nf4_blocks_kernel<<<blocks_for(nb, kThreads / 32), kThreads, 0, stream>>>(
      w, n, blocksize, fp4, code_books(), packed, absmax, flag.as<unsigned long long>());
  QWENQ_CUDA_CHECK_LAUNCH("nf4_quantize_blocks_cuda n=" << n << " blocksize=" << blocksize);
  float value = 0.0f;
  const int64_t bad = read_flag(flag, w, &value, stream);
  if (bad >= 0) throw_nf4_nonfinite(bad, value);
}

}  // namespace qwenq
