// Casts, embedding gather and the two adds of the forward on the GPU, the twins of convert_ref.cpp (formulas in
// convert.h). Every kernel is elementwise (grid-stride loops) and every output element is exact or one fp32
// rounding of the same operands as the ref, so the results are bit-identical to the CPU twins:
// - fp32 -> bf16 is core/dtype.h's integer rounding (add 0x7fff plus the lowest kept bit, keep the top half; NaN
//   -> quiet NaN with its payload), written with integer ops rather than __float2bfloat16_rn, whose NaN result is
//   a canonical NaN rather than the ref's;
// - bf16 -> fp32 shifts the bits up; fp16 -> fp32 is the hardware conversion (exact, subnormals included), as the
//   ref's f16_to_f32;
// - the adds are single fp32 additions.
// The casts and add_inplace move 4 elements per access where the pointers are aligned (the trainer's buffers are):
// scalar 2-byte stores reach a smaller share of HBM, and the trainer converts ~1.6 GB per 7B layer and step.
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "kernels/convert.h"
#include "kernels/cuda_check.cuh"

namespace qwenq {

namespace {

constexpr int kThreads = 256;
// Enough blocks to fill an H200 (132 SMs x 8 resident blocks of 256 threads) with grid-stride loops beyond.
constexpr int64_t kMaxBlocks = 4096;

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks)));
}

bool is_float_dtype(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
  const uint32_t bits = __float_as_uint(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);  // quiet NaN
  const uint32_t rounding_bias = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding_bias) >> 16);
}

// One element of a table or bias in F32/BF16/F16, widened exactly.
struct LoadF32 {
  __device__ static float at(const void* p, int64_t i) { return static_cast<const float*>(p)[i]; }
};
struct LoadBF16 {
  __device__ static float at(const void* p, int64_t i) { return cuda::bf16_bits_to_f32(static_cast<const uint16_t*>(p)[i]); }
};
struct LoadF16 {
  __device__ static float at(const void* p, int64_t i) {
    return cuda::f16_bits_to_f32(static_cast<const uint16_t*>(p)[i]);
  }
};

// The casts and the add come in two forms: `vec` (every pointer aligned to its 4-element vector: 16 bytes for
// fp32, 8 for bf16) moves 4 elements per load and store, the n % 4 last ones by the first threads; otherwise one
// element per step. The same operation per element either way.
__device__ __forceinline__ int64_t thread_index() { return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; }
__device__ __forceinline__ int64_t grid_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

__device__ __forceinline__ uint32_t bf16_pair(float lo, float hi) {
  return static_cast<uint32_t>(f32_to_bf16_bits(lo)) | (static_cast<uint32_t>(f32_to_bf16_bits(hi)) << 16);
}

__global__ void f32_to_bf16_kernel(const float* x, int64_t n, bool vec, uint16_t* y) {
  int64_t from = 0;
  if (vec) {
    const int64_t n4 = n / 4;
    for (int64_t j = thread_index(); j < n4; j += grid_stride()) {
      const float4 v = reinterpret_cast<const float4*>(x)[j];
      reinterpret_cast<uint2*>(y)[j] = make_uint2(bf16_pair(v.x, v.y), bf16_pair(v.z, v.w));
    }
    from = 4 * n4;
  }
  for (int64_t i = from + thread_index(); i < n; i += grid_stride()) y[i] = f32_to_bf16_bits(x[i]);
}

// scale·v, except a NaN stays itself: the GPU's multiply returns the canonical NaN 0x7fffffff whatever the input's
// payload, the host's keeps it, and the twins must agree bit for bit (f32_to_bf16_bits then quiets it).
__device__ __forceinline__ float scaled(float scale, float v) { return v != v ? v : scale * v; }

// A block per row (grid-stride over rows), the threads across its columns: 4 at a time (float4 in, 8 bytes out) when
// `vec` (cols and ld multiples of 4, x 16-byte and y 8-byte aligned), else one; then zeros in [cols, padded).
__global__ void f32_to_bf16_strided_kernel(const float* x, int64_t rows, int64_t cols, int64_t padded, float scale,
                                           uint16_t* y, int64_t ld, bool vec) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* xr = x + r * cols;
    uint16_t* yr = y + r * ld;
    if (vec) {
      for (int64_t c = 4 * static_cast<int64_t>(threadIdx.x); c < cols; c += 4 * static_cast<int64_t>(blockDim.x)) {
        const float4 v = *reinterpret_cast<const float4*>(xr + c);
        *reinterpret_cast<uint2*>(yr + c) = make_uint2(bf16_pair(scaled(scale, v.x), scaled(scale, v.y)),
                                                       bf16_pair(scaled(scale, v.z), scaled(scale, v.w)));
      }
    } else {
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = f32_to_bf16_bits(scaled(scale, xr[c]));
    }
    for (int64_t c = cols + threadIdx.x; c < padded; c += blockDim.x) yr[c] = 0;
  }
}

__global__ void bf16_to_f32_kernel(const uint16_t* x, int64_t n, bool vec, float* y) {
  int64_t from = 0;
  if (vec) {
    const int64_t n4 = n / 4;
    for (int64_t j = thread_index(); j < n4; j += grid_stride()) {
      const uint2 v = reinterpret_cast<const uint2*>(x)[j];
      reinterpret_cast<float4*>(y)[j] = make_float4(__uint_as_float(v.x << 16), __uint_as_float(v.x & 0xffff0000u),
                                                    __uint_as_float(v.y << 16), __uint_as_float(v.y & 0xffff0000u));
    }
    from = 4 * n4;
  }
  for (int64_t i = from + thread_index(); i < n; i += grid_stride()) y[i] = cuda::bf16_bits_to_f32(x[i]);
}

// One block per token (blockIdx.x = t): the row tokens[t] of the table, C columns across the threads. The ids
// were checked on the host; the guard only keeps a corrupted id from reading outside the table.
template <typename L>
__global__ void embedding_gather_kernel(const void* table, int64_t V, int64_t C, const int32_t* tokens, float* out) {
  const int64_t t = blockIdx.x;
  const int32_t id = tokens[t];
  if (id < 0 || id >= V) return;
  const int64_t row = static_cast<int64_t>(id) * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) out[t * C + c] = L::at(table, row + c);
}

__global__ void add_inplace_kernel(float* y, const float* x, int64_t n, bool vec) {
  int64_t from = 0;
  if (vec) {
    const int64_t n4 = n / 4;
    for (int64_t j = thread_index(); j < n4; j += grid_stride()) {
      float4 a = reinterpret_cast<float4*>(y)[j];
      const float4 b = reinterpret_cast<const float4*>(x)[j];
      a.x += b.x, a.y += b.y, a.z += b.z, a.w += b.w;
      reinterpret_cast<float4*>(y)[j] = a;
    }
    from = 4 * n4;
  }
  for (int64_t i = from + thread_index(); i < n; i += grid_stride()) y[i] += x[i];
}

// cache[row[0], :] = x (bf16: rounded); nothing for a row outside [0, rows).
template <bool BF16>
__global__ void store_row_kernel(const float* x, int64_t n, const int32_t* row, int64_t rows, void* cache) {
  const int64_t r = *row;
  if (r < 0 || r >= rows) return;
  for (int64_t i = thread_index(); i < n; i += grid_stride()) {
    if constexpr (BF16) {
      static_cast<uint16_t*>(cache)[r * n + i] = f32_to_bf16_bits(x[i]);
    } else {
      static_cast<float*>(cache)[r * n + i] = x[i];
    }
  }
}

template <typename L>
__global__ void add_bias_rows_kernel(float* y, int64_t total, int64_t N, const void* bias) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] += L::at(bias, i % N);
  }
}

}  // namespace

void f32_to_bf16_cuda(const float* x, int64_t n, uint16_t* y, CudaStream stream) {
  QWENQ_CHECK(n >= 0, "f32_to_bf16_cuda: negative size " << n);
  if (n == 0) return;
  QWENQ_CHECK(x != nullptr && y != nullptr, "f32_to_bf16_cuda: null pointer");
  const bool vec = is_aligned(x, 16) && is_aligned(y, 8);
  f32_to_bf16_kernel<<<blocks_for(vec ? (n + 3) / 4 : n), kThreads, 0, stream>>>(x, n, vec, y);
  QWENQ_CUDA_CHECK_LAUNCH("f32_to_bf16_cuda n=" << n);
}

void f32_to_bf16_strided_cuda(const float* x, int64_t rows, int64_t cols, int64_t padded, float scale, uint16_t* y,
                              int64_t ld, CudaStream stream) {
  QWENQ_CHECK(rows >= 0 && cols >= 0 && padded >= cols && ld >= padded,
              "f32_to_bf16_strided_cuda: bad shape rows=" << rows << " cols=" << cols << " padded=" << padded
                                                          << " ld=" << ld);
  if (rows == 0 || padded == 0) return;
  QWENQ_CHECK(x != nullptr && y != nullptr, "f32_to_bf16_strided_cuda: null pointer");
  const bool vec = cols % 4 == 0 && ld % 4 == 0 && is_aligned(x, 16) && is_aligned(y, 8);
  f32_to_bf16_strided_kernel<<<blocks_for(rows * kThreads), kThreads, 0, stream>>>(x, rows, cols, padded, scale, y,
                                                                                    ld, vec);
  QWENQ_CUDA_CHECK_LAUNCH("f32_to_bf16_strided_cuda rows=" << rows << " cols=" << cols << " padded=" << padded
                                                           << " ld=" << ld);
}

void bf16_to_f32_cuda(const uint16_t* x, int64_t n, float* y, CudaStream stream) {
  QWENQ_CHECK(n >= 0, "bf16_to_f32_cuda: negative size " << n);
  if (n == 0) return;
  QWENQ_CHECK(x != nullptr && y != nullptr, "bf16_to_f32_cuda: null pointer");
  const bool vec = is_aligned(x, 8) && is_aligned(y, 16);
  bf16_to_f32_kernel<<<blocks_for(vec ? (n + 3) / 4 : n), kThreads, 0, stream>>>(x, n, vec, y);
  QWENQ_CUDA_CHECK_LAUNCH("bf16_to_f32_cuda n=" << n);
}

void embedding_gather_cuda(const void* table, DType dtype, int64_t V, int64_t C, const int32_t* tokens, int64_t T,
                           float* out, CudaStream stream, const int32_t* host_tokens) {
  QWENQ_CHECK(V > 0 && C > 0 && T >= 0, "embedding_gather_cuda: bad shape V=" << V << " C=" << C << " T=" << T);
  QWENQ_CHECK(is_float_dtype(dtype),
              "embedding_gather_cuda: table dtype " << dtype_name(dtype) << " is not supported (F32, BF16 or F16)");
  if (T == 0) return;
  QWENQ_CHECK(table != nullptr && tokens != nullptr && out != nullptr, "embedding_gather_cuda: null pointer");
  QWENQ_CHECK(T <= INT_MAX, "embedding_gather_cuda: T=" << T << " exceeds the grid limit " << INT_MAX);
  // The ids are checked on a host copy (the caller's, or downloaded), with the ref's message, before anything reads
  // the table.
  const std::vector<int32_t> fetched = host_tokens ? std::vector<int32_t>{} : download_sync(tokens, T, stream);
  const int32_t* host = host_tokens ? host_tokens : fetched.data();
  check_token_ids(host, T, V);
  const unsigned threads = static_cast<unsigned>(std::min<int64_t>(kThreads, (C + 31) / 32 * 32));
  const dim3 grid(static_cast<unsigned>(T));
  switch (dtype) {
    case DType::F32:
      embedding_gather_kernel<LoadF32><<<grid, threads, 0, stream>>>(table, V, C, tokens, out);
      break;
    case DType::BF16:
      embedding_gather_kernel<LoadBF16><<<grid, threads, 0, stream>>>(table, V, C, tokens, out);
      break;
    default:
      embedding_gather_kernel<LoadF16><<<grid, threads, 0, stream>>>(table, V, C, tokens, out);
      break;
  }
  QWENQ_CUDA_CHECK_LAUNCH("embedding_gather_cuda V=" << V << " C=" << C << " T=" << T << " table "
                                                     << dtype_name(dtype));
}

void add_inplace_cuda(float* y, const float* x, int64_t n, CudaStream stream) {
  QWENQ_CHECK(n >= 0, "add_inplace_cuda: negative size " << n);
  if (n == 0) return;
  QWENQ_CHECK(x != nullptr && y != nullptr, "add_inplace_cuda: null pointer");
  const bool vec = is_aligned(x, 16) && is_aligned(y, 16);
  add_inplace_kernel<<<blocks_for(vec ? (n + 3) / 4 : n), kThreads, 0, stream>>>(y, x, n, vec);
  QWENQ_CUDA_CHECK_LAUNCH("add_inplace_cuda n=" << n);
}

void store_row_cuda(const float* x, int64_t n, const int32_t* row, int64_t rows, void* cache, DType cache_dtype,
                    CudaStream stream) {
  QWENQ_CHECK(n >= 0 && rows > 0, "store_row_cuda: bad shape n=" << n << " rows=" << rows);
  QWENQ_CHECK(cache_dtype == DType::F32 || cache_dtype == DType::BF16,
              "store_row_cuda: cache dtype " << dtype_name(cache_dtype) << " is not supported (F32 or BF16)");
  if (n == 0) return;
  QWENQ_CHECK(x != nullptr && row != nullptr && cache != nullptr, "store_row_cuda: null pointer");
  if (cache_dtype == DType::F32) {
    store_row_kernel<false><<<blocks_for(n), kThreads, 0, stream>>>(x, n, row, rows, cache);
  } else {
    store_row_kernel<true><<<blocks_for(n), kThreads, 0, stream>>>(x, n, row, rows, cache);
  }
  QWENQ_CUDA_CHECK_LAUNCH("store_row_cuda n=" << n << " rows=" << rows << " " << dtype_name(cache_dtype));
}

void add_bias_rows_cuda(float* y, int64_t rows, int64_t N, const void* bias, DType bias_dtype, CudaStream stream) {
  QWENQ_CHECK(rows >= 0 && N > 0, "add_bias_rows_cuda: bad shape rows=" << rows << " N=" << N);
  QWENQ_CHECK(is_float_dtype(bias_dtype),
              "add_bias_rows_cuda: bias dtype " << dtype_name(bias_dtype) << " is not supported (F32, BF16 or F16)");
  if (rows == 0) return;
  QWENQ_CHECK(y != nullptr && bias != nullptr, "add_bias_rows_cuda: null pointer");
  const int64_t total = rows * N;
  switch (bias_dtype) {
    case DType::F32:
      add_bias_rows_kernel<LoadF32><<<blocks_for(total), kThreads, 0, stream>>>(y, total, N, bias);
      break;
    case DType::BF16:
      add_bias_rows_kernel<LoadBF16><<<blocks_for(total), kThreads, 0, stream>>>(y, total, N, bias);
      break;
    default:
      add_bias_rows_kernel<LoadF16><<<blocks_for(total), kThreads, 0, stream>>>(y, total, N, bias);
      break;
  }
  QWENQ_CUDA_CHECK_LAUNCH("add_bias_rows_cuda rows=" << rows << " N=" << N << " bias " << dtype_name(bias_dtype));
}

}  // namespace qwenq
