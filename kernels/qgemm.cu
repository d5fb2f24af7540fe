// CUDA twins of kernels/qgemm_ref.cpp for the decode / small-batch regime (M = 1..64): y = x·Ŵᵀ and
// dx = dy·Ŵ straight from the Q4 words (quant/format/qgemm_layout.h), Ŵ never materialized.
//
// Each call is three launches on the caller's stream:
//   1. stage:  the activations (bf16 or fp32) widened to fp32 into a workspace padded to [round_up(M, MT), Kp]
//              (forward; gathered through perm for act-order) or [.., Np] (transposed), zeros in the padding.
//              x is at most 64 x 29568 x 4 B = 7.5 MB: it lives in L2 (50 MB) while the weights stream past,
//              and zero padding removes every bounds test from the inner loops.
//   2. main:   forward: a thread owns 4 adjacent output columns and one split of K; per word-row it does one
//              128-bit load of 4 packed words (32 weights), one 128-bit load of their 4 meta words, and
//              8·4·MT FMAs against x rows read as warp-uniform float4 loads (an L1 broadcast).
//              transposed: a warp owns one word-row (8 K) and one split of N; lane l reads columns 4l + 128i
//              (the same 512-byte coalesced rows), accumulates 8·MT partial sums and reduces them over the warp.
//   3. reduce: when K (forward) or N (transposed) is split across blocks, the fp32 partial sums in the
//              workspace are added in split order (deterministic, unlike atomicAdd) and written to y / dx,
//              scattering dx through perm. Without a split, step 2 writes y / dx itself.
// The workspace is DeviceMemory on the same stream (cudaMallocAsync: no device-wide sync; on out of memory the
// caching allocator's idle blocks are released and it retries, as for every kernel scratch).
#include "kernels/qgemm.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <type_traits>

#include "core/error.h"
#include "kernels/cuda_check.h"
#include "kernels/qgemm_decode_common.cuh"

namespace qwenq {
namespace {

// One error check for this file (kernels/cuda_check.h is another engineer's; until it lands this is local).
void cuda_ok(cudaError_t e, const char* what, const std::string& context) {
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so the next call starts clean
    QWENQ_FAIL(what << " failed: " << cudaGetErrorString(e) << " (" << context << ")");
  }
}

constexpr int kFwdThreads = 64;                      // 2 warps x 4 columns per thread = 256 columns per block
constexpr int kFwdColsPerBlock = kFwdThreads * 4;
constexpr int kTWarps = 4;                           // transposed: 4 word-rows per block
constexpr int kTColsPerWarpStep = 32 * 4;            // 128 columns per warp iteration
constexpr int kMinRowsPerSplit = 16;                 // forward: >= 128 K per block, so setup amortizes
constexpr int kMinStepsPerSplit = 4;                 // transposed: >= 512 columns per warp


// Dequantization of nibble j of a word, bit-identical to q4_dequant on the host.
// Int: (q - z)·s. 0x4B000000 | q is the float 2^23 + q (q < 2^23 sits in the mantissa), so
// (2^23 + q) - (2^23 + z) = q - z exactly with one LOP3 + one FADD instead of an I2F, which runs at a quarter
// of the FADD rate; the bias 2^23 + z is precomputed per meta word.
// Nf4/Fp4: book[q]·absmax with the 16-entry book in shared memory. Not __constant__: the constant cache
// serializes a warp's distinct addresses, and 32 lanes looking up different codes would replay up to 16
// times; 16 consecutive shared words sit in 16 distinct banks, so any mix of lookups is one wavefront.
template <Q4Kind KIND>
struct Dequant {
  float scale, bias;
  __device__ __forceinline__ void set(uint32_t meta) {
    if constexpr (KIND == Q4Kind::Int) {
      scale = __half2float(__ushort_as_half(static_cast<unsigned short>(meta & 0xFFFFu)));
      bias = 8388608.0f + static_cast<float>((meta >> 16) & 0xFFu);
    } else {
      scale = __uint_as_float(meta);
      bias = 0.0f;
    }
  }
  __device__ __forceinline__ float operator()(uint32_t word, int j, const float* book) const {
    const uint32_t q = (word >> (4 * j)) & 15u;
    if constexpr (KIND == Q4Kind::Int) {
      return (__uint_as_float(0x4B000000u | q) - bias) * scale;
    } else {
      return book[q] * scale;
    }
  }
};

// NF4 / FP4 code books, initialized from the one definition in quant/format/nf4_pack.h.
// Copied to shared memory at block start (see Dequant for why they are not read from constant memory in the
// loop); the copy by 16 lanes of distinct constant addresses replays once per block, which is negligible.
__constant__ float c_books[2][16] = {
    {kNf4Code[0], kNf4Code[1], kNf4Code[2], kNf4Code[3], kNf4Code[4], kNf4Code[5], kNf4Code[6], kNf4Code[7],
     kNf4Code[8], kNf4Code[9], kNf4Code[10], kNf4Code[11], kNf4Code[12], kNf4Code[13], kNf4Code[14], kNf4Code[15]},
    {kFp4Code[0], kFp4Code[1], kFp4Code[2], kFp4Code[3], kFp4Code[4], kFp4Code[5], kFp4Code[6], kFp4Code[7],
     kFp4Code[8], kFp4Code[9], kFp4Code[10], kFp4Code[11], kFp4Code[12], kFp4Code[13], kFp4Code[14], kFp4Code[15]}};

__device__ __forceinline__ void load_book(float* book, Q4Kind kind) {
  if (threadIdx.x < 16) book[threadIdx.x] = c_books[kind == Q4Kind::Fp4 ? 1 : 0][threadIdx.x];
}

// ---------------------------------------------------------------------------------------------------------
// 1. stage: dst[m, j] = m < M && j < valid ? float(src[m * valid + (perm ? perm[j] : j)]) : 0, dst [rows, ld].
template <typename T>
__global__ void stage_kernel(const T* src, const int32_t* perm, int64_t M, int64_t valid, int64_t rows, int64_t ld,
                             float* dst) {
  const int64_t total = rows * ld;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = i / ld, j = i % ld;
    float v = 0.0f;
    if (m < M && j < valid) {
      const T s = src[m * valid + (perm ? perm[j] : j)];
      if constexpr (sizeof(T) == 4) {
        v = s;
      } else {
        v = __uint_as_float(static_cast<uint32_t>(s) << 16);  // bf16 -> fp32 is exact: the top half of a float
      }
    }
    dst[i] = v;
  }
}

// ---------------------------------------------------------------------------------------------------------
// 2a. forward. grid (ceil(Np / 256), splits, m-tiles), block 64.
struct FwdParams {
  const uint32_t* qweight;
  const uint32_t* meta;
  const float* xs;  // [Mpad, Kp] staged
  float* out;       // y [M, N] when splits == 1, else workspace [splits, Mpad, Np]
  int64_t M, Mpad, N, Np, Kp, group;
  int64_t rows_per_split;  // word-rows of K per blockIdx.y
  int splits;
};

template <Q4Kind KIND, int MT>
__global__ void __launch_bounds__(kFwdThreads) qgemm_fwd_kernel(FwdParams p) {
  __shared__ float book[16];
  if constexpr (KIND != Q4Kind::Int) {
    load_book(book, KIND);
    __syncthreads();
  }
  const int64_t n4 = (static_cast<int64_t>(blockIdx.x) * kFwdThreads + threadIdx.x) * 4;
  if (n4 >= p.Np) return;  // Np % 4 == 0: a thread's 4 columns are all in or all out
  const int64_t m0 = static_cast<int64_t>(blockIdx.z) * MT;
  const int64_t rows = p.Kp / 8;
  const int64_t r0 = blockIdx.y * p.rows_per_split;
  const int64_t r1 = min(rows, r0 + p.rows_per_split);
  const int64_t rows_per_group = p.group / 8;

  float acc[MT][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[m][c] = 0.0f;

  Dequant<KIND> dq[4];
  int64_t g_loaded = -1;
  // Unrolled by 4 word-rows so four independent 128-bit loads are in flight per thread before the first use:
  // HBM latency (~600-800 ns) times bandwidth needs tens of KB in flight per SM to saturate it.
  constexpr int U = 4;
  for (int64_t r = r0; r < r1; r += U) {
    uint4 wq[U];
#pragma unroll
    for (int u = 0; u < U; ++u) wq[u] = r + u < r1 ? ld_stream(p.qweight + (r + u) * p.Np + n4) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t rr = r + u;
      if (rr >= r1) break;
      const int64_t g = rr / rows_per_group;
      if (g != g_loaded) {  // one meta load per group (8 rows share a word, group/8 words share a meta)
        const uint4 mv = __ldg(reinterpret_cast<const uint4*>(p.meta + g * p.Np + n4));
#pragma unroll
        for (int c = 0; c < 4; ++c) dq[c].set(u4_get(mv, c));
        g_loaded = g;
      }
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        // x rows: the same address in every lane, one broadcast transaction per warp.
        const float4* xr = reinterpret_cast<const float4*>(p.xs + (m0 + m) * p.Kp + rr * 8);
        const float4 xa = __ldg(xr), xb = __ldg(xr + 1);
        const float xv[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const uint32_t word = u4_get(wq[u], c);
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[m][c] = fmaf(xv[j], dq[c](word, j, book), acc[m][c]);
        }
      }
    }
  }

  if (p.splits == 1) {
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m0 + m >= p.M) break;
#pragma unroll
      for (int c = 0; c < 4; ++c)
        if (n4 + c < p.N) p.out[(m0 + m) * p.N + n4 + c] = acc[m][c];
    }
  } else {
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      float4* dst = reinterpret_cast<float4*>(p.out + (blockIdx.y * p.Mpad + m0 + m) * p.Np + n4);
      *dst = make_float4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// 2b. transposed. grid (ceil(Kp/8 / 4), splits, m-tiles), block 128 = 4 warps, one word-row per warp.
struct TParams {
  const uint32_t* qweight;
  const uint32_t* meta;
  const float* dys;      // [Mpad, Np] staged
  const int32_t* perm;   // [K] or null
  float* out;            // dx [M, K] when splits == 1, else workspace [splits, Mpad, Kp]
  int64_t M, Mpad, K, Kp, Np, group;
  int64_t cols_per_split;  // a multiple of 128
  int splits;
};

template <Q4Kind KIND, int MT>
__global__ void __launch_bounds__(kTWarps * 32) qgemm_t_kernel(TParams p) {
  __shared__ float book[16];
  if constexpr (KIND != Q4Kind::Int) {
    load_book(book, KIND);
    __syncthreads();
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kTWarps + warp;
  if (r >= p.Kp / 8) return;  // whole warps leave together: the shuffles below see full warps
  const int64_t m0 = static_cast<int64_t>(blockIdx.z) * MT;
  const int64_t c0 = blockIdx.y * p.cols_per_split;
  const int64_t c1 = min(p.Np, c0 + p.cols_per_split);
  const int64_t g = r * 8 / p.group;  // one group for the whole word-row

  float acc[MT][8];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[m][j] = 0.0f;

  for (int64_t n4 = c0 + lane * 4; n4 < c1; n4 += kTColsPerWarpStep) {
    const uint4 wq = ld_stream(p.qweight + r * p.Np + n4);
    const uint4 mv = __ldg(reinterpret_cast<const uint4*>(p.meta + g * p.Np + n4));
    float w[8][4];
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      Dequant<KIND> dq;
      dq.set(u4_get(mv, c));
#pragma unroll
      for (int j = 0; j < 8; ++j) w[j][c] = dq(u4_get(wq, c), j, book);
    }
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const float4 d = __ldg(reinterpret_cast<const float4*>(p.dys + (m0 + m) * p.Np + n4));
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float s = acc[m][j];
        s = fmaf(d.x, w[j][0], s);
        s = fmaf(d.y, w[j][1], s);
        s = fmaf(d.z, w[j][2], s);
        s = fmaf(d.w, w[j][3], s);
        acc[m][j] = s;
      }
    }
  }
  // Butterfly sum over the 32 lanes: every lane ends with the totals (register shuffles, no shared memory).
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc[m][j] += __shfl_xor_sync(0xFFFFFFFFu, acc[m][j], off);

  // Lane l stores values l and l + 32 of the MT x 8 results (each lane has all of them).
#pragma unroll
  for (int i = 0; i < (MT * 8 + 31) / 32; ++i) {
    const int v = lane + 32 * i;
    if (v >= MT * 8) break;
    const int m = v / 8, j = v % 8;
    float val = 0.0f;
#pragma unroll
    for (int mm = 0; mm < MT; ++mm)
#pragma unroll
      for (int jj = 0; jj < 8; ++jj)
        if (mm * 8 + jj == v) val = acc[mm][jj];  // static register indexing (a dynamic index would spill)
    const int64_t kk = r * 8 + j;
    if (p.splits == 1) {
      if (m0 + m < p.M && kk < p.K) p.out[(m0 + m) * p.K + (p.perm ? p.perm[kk] : kk)] = val;
    } else {
      p.out[(blockIdx.y * p.Mpad + m0 + m) * p.Kp + kk] = val;
    }
  }
}

// 3. reduce: reduce_kernel (kernels/qgemm_decode_common.cuh).

// ---------------------------------------------------------------------------------------------------------
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int m_tile(int64_t M) { return M == 1 ? 1 : (M == 2 ? 2 : (M <= 4 ? 4 : 8)); }

std::string shape_context(const char* fn, const Q4View& w, int64_t M, DType dt) {
  return std::string(fn) + " M=" + std::to_string(M) + " K=" + std::to_string(w.K) + " N=" + std::to_string(w.N) +
         " group=" + std::to_string(w.group) + " kind=" + q4_kind_name(w.kind) + " act=" + dtype_name(dt);
}

void check_launch_args(const Q4View& w, const void* a, DType dtype, int64_t M, const float* out, const char* fn) {
  q4_check(w, fn);
  QWENQ_CHECK(M >= 1 && ceil_div(M, 8) <= 65535, fn << ": M=" << M << " must be in [1, " << 8 * 65535 << "]");
  QWENQ_CHECK(a != nullptr && out != nullptr, fn << ": null activation or output pointer");
  QWENQ_CHECK(dtype == DType::F32 || dtype == DType::BF16,
              fn << ": activations must be F32 or BF16, not " << dtype_name(dtype));
  const auto aligned16 = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  QWENQ_CHECK(aligned16(w.qweight) && aligned16(w.meta),
              fn << ": qweight and meta must be 16-byte aligned device pointers (128-bit loads)");
  cudaPointerAttributes attr{};
  const cudaError_t e = cudaPointerGetAttributes(&attr, w.qweight);
  cudaGetLastError();
  QWENQ_CHECK(e == cudaSuccess && (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged),
              fn << ": the Q4View's arrays must be device memory (use Q4DeviceWeight)");
}

template <typename T>
void launch_stage(const void* src, const int32_t* perm, int64_t M, int64_t valid, int64_t rows, int64_t ld, float* dst,
                  cudaStream_t s) {
  const int64_t total = rows * ld;
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(total, 256), 8 * cuda_sm_count()));
  stage_kernel<T><<<blocks, 256, 0, s>>>(static_cast<const T*>(src), perm, M, valid, rows, ld, dst);
}

template <template <Q4Kind, int> class Launch, typename P>
void dispatch(Q4Kind kind, int mt, const P& p, dim3 grid, dim3 block, cudaStream_t s) {
  const auto go = [&](auto k) {
    constexpr Q4Kind K = decltype(k)::value;
    switch (mt) {
      case 1: Launch<K, 1>::run(p, grid, block, s); break;
      case 2: Launch<K, 2>::run(p, grid, block, s); break;
      case 4: Launch<K, 4>::run(p, grid, block, s); break;
      default: Launch<K, 8>::run(p, grid, block, s); break;
    }
  };
  if (kind == Q4Kind::Int) go(std::integral_constant<Q4Kind, Q4Kind::Int>{});
  else if (kind == Q4Kind::Nf4) go(std::integral_constant<Q4Kind, Q4Kind::Nf4>{});
  else go(std::integral_constant<Q4Kind, Q4Kind::Fp4>{});
}

template <Q4Kind KIND, int MT>
struct FwdLaunch {
  static void run(const FwdParams& p, dim3 g, dim3 b, cudaStream_t s) { qgemm_fwd_kernel<KIND, MT><<<g, b, 0, s>>>(p); }
};
template <Q4Kind KIND, int MT>
struct TLaunch {
  static void run(const TParams& p, dim3 g, dim3 b, cudaStream_t s) { qgemm_t_kernel<KIND, MT><<<g, b, 0, s>>>(p); }
};

// Workspace of `floats` fp32 values on `stream` (kernels/cuda_check.h), released on it when the scope ends.
DeviceMemory workspace(int64_t floats, cudaStream_t stream) {
  return DeviceMemory(static_cast<size_t>(floats) * sizeof(float), stream);
}

}  // namespace

void qgemm_int4_decode_cuda(const Q4View& w, const void* x, DType x_dtype, int64_t M, float* y, void* stream) {
  check_launch_args(w, x, x_dtype, M, y, "qgemm_int4_decode_cuda");
  const std::string ctx = shape_context("qgemm_int4_decode_cuda", w, M, x_dtype);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int mt = m_tile(M);
  const int64_t mtiles = ceil_div(M, mt), Mpad = mtiles * mt;
  const int64_t rows = w.Kp / 8;
  const int64_t col_blocks = ceil_div(w.Np, kFwdColsPerBlock);
  // Split K until there are ~4 blocks per SM (small N, e.g. k/v_proj at M = 1, would otherwise leave most SMs
  // idle), keeping >= kMinRowsPerSplit word-rows per block.
  const int64_t want = ceil_div(4 * cuda_sm_count(), col_blocks * mtiles);
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>({want, rows / kMinRowsPerSplit, 65535}));
  const int64_t rows_per_split = ceil_div(rows, splits);
  splits = ceil_div(rows, rows_per_split);

  const DeviceMemory xs = workspace(Mpad * w.Kp, s);
  if (x_dtype == DType::BF16) launch_stage<uint16_t>(x, w.perm, M, w.K, Mpad, w.Kp, xs.as<float>(), s);
  else launch_stage<float>(x, w.perm, M, w.K, Mpad, w.Kp, xs.as<float>(), s);
  cuda_ok(cudaGetLastError(), "stage_kernel launch", ctx);

  FwdParams p{w.qweight, w.meta, xs.as<float>(), y, M, Mpad, w.N, w.Np, w.Kp, w.group, rows_per_split, static_cast<int>(splits)};
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(splits), static_cast<unsigned>(mtiles));
  if (splits == 1) {
    dispatch<FwdLaunch>(w.kind, mt, p, grid, dim3(kFwdThreads), s);
    cuda_ok(cudaGetLastError(), "qgemm_fwd_kernel launch", ctx);
    return;
  }
  const DeviceMemory ws = workspace(splits * Mpad * w.Np, s);
  p.out = ws.as<float>();
  dispatch<FwdLaunch>(w.kind, mt, p, grid, dim3(kFwdThreads), s);
  cuda_ok(cudaGetLastError(), "qgemm_fwd_kernel launch", ctx);
  launch_reduce(ws.as<float>(), static_cast<int>(splits), M, Mpad, w.Np, w.N, nullptr, y, s);
  cuda_ok(cudaGetLastError(), "reduce_kernel launch", ctx);
}

void qgemm_int4_t_decode_cuda(const Q4View& w, const void* dy, DType dy_dtype, int64_t M, float* dx, void* stream) {
  check_launch_args(w, dy, dy_dtype, M, dx, "qgemm_int4_t_decode_cuda");
  const std::string ctx = shape_context("qgemm_int4_t_decode_cuda", w, M, dy_dtype);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int mt = m_tile(M);
  const int64_t mtiles = ceil_div(M, mt), Mpad = mtiles * mt;
  const int64_t rows = w.Kp / 8;
  const int64_t row_blocks = ceil_div(rows, kTWarps);
  const int64_t steps = ceil_div(w.Np, kTColsPerWarpStep);  // 128-column steps of one warp over all of N
  const int64_t want = ceil_div(4 * cuda_sm_count(), row_blocks * mtiles);
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>({want, steps / kMinStepsPerSplit, 65535}));
  const int64_t cols_per_split = ceil_div(steps, splits) * kTColsPerWarpStep;
  splits = ceil_div(w.Np, cols_per_split);

  const DeviceMemory dys = workspace(Mpad * w.Np, s);
  if (dy_dtype == DType::BF16) launch_stage<uint16_t>(dy, nullptr, M, w.N, Mpad, w.Np, dys.as<float>(), s);
  else launch_stage<float>(dy, nullptr, M, w.N, Mpad, w.Np, dys.as<float>(), s);
  cuda_ok(cudaGetLastError(), "stage_kernel launch", ctx);

  TParams p{w.qweight, w.meta, dys.as<float>(), w.perm, dx, M, Mpad, w.K, w.Kp, w.Np, w.group, cols_per_split,
            static_cast<int>(splits)};
  const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>(splits), static_cast<unsigned>(mtiles));
  if (splits == 1) {
    dispatch<TLaunch>(w.kind, mt, p, grid, dim3(kTWarps * 32), s);
    cuda_ok(cudaGetLastError(), "qgemm_t_kernel launch", ctx);
    return;
  }
  const DeviceMemory ws = workspace(splits * Mpad * w.Kp, s);
  p.out = ws.as<float>();
  dispatch<TLaunch>(w.kind, mt, p, grid, dim3(kTWarps * 32), s);
  cuda_ok(cudaGetLastError(), "qgemm_t_kernel launch", ctx);
  launch_reduce(ws.as<float>(), static_cast<int>(splits), M, Mpad, w.Kp, w.K, w.perm, dx, s);
  cuda_ok(cudaGetLastError(), "reduce_kernel launch", ctx);
}

// Dispatch (kernels/qgemm.h): M <= 64 or F32 activations -> decode kernels above (the forward's on tensor cores,
// kernels/qgemm_decode_mma.cu, when it supports the weight and qgemm_decode_mma_enabled() for BF16,
// qgemm_decode_mma_f32_enabled() and M <= 64 for F32); M > 64 with BF16 ->
// the dense path (kernels/qgemm_dense.cu) when qgemm_dense_for(M), else the tensor-core kernels
// (kernels/qgemm_tc.cu, or kernels/qgemm_wgmma.cu when cuda_wgmma_enabled()).
namespace {
bool decode_on_tensor_cores(const Q4View& w, DType x_dtype, int64_t M) {
  const bool on = x_dtype == DType::BF16 ? qgemm_decode_mma_enabled()
                                         : x_dtype == DType::F32 && M <= kQgemmDecodeMaxM &&
                                               qgemm_decode_mma_f32_enabled();
  return on && qgemm_decode_mma_supports(w);
}
}  // namespace

void qgemm_int4_cuda(const Q4View& w, const void* x, DType x_dtype, int64_t M, float* y, void* stream) {
  if (qgemm_cuda_uses_tensor_cores(M, x_dtype)) {
    if (qgemm_dense_for(M)) qgemm_int4_dense_cuda(w, x, x_dtype, M, y, stream);
    else if (cuda_wgmma_enabled()) qgemm_int4_wgmma_cuda(w, x, x_dtype, M, y, stream);
    else qgemm_int4_tc_cuda(w, x, x_dtype, M, y, stream);
  } else if (decode_on_tensor_cores(w, x_dtype, M)) {
    qgemm_int4_decode_mma_cuda(w, x, x_dtype, M, y, stream);
  } else qgemm_int4_decode_cuda(w, x, x_dtype, M, y, stream);
}

void qgemm_int4_t_cuda(const Q4View& w, const void* dy, DType dy_dtype, int64_t M, float* dx, void* stream) {
  if (qgemm_cuda_uses_tensor_cores(M, dy_dtype)) {
    if (qgemm_dense_for(M)) qgemm_int4_t_dense_cuda(w, dy, dy_dtype, M, dx, stream);
    else if (cuda_wgmma_enabled()) qgemm_int4_t_wgmma_cuda(w, dy, dy_dtype, M, dx, stream);
    else qgemm_int4_t_tc_cuda(w, dy, dy_dtype, M, dx, stream);
  } else qgemm_int4_t_decode_cuda(w, dy, dy_dtype, M, dx, stream);
}

// ---------------------------------------------------------------------------------------------------------
namespace {
// A device copy of one array of the layout from the caching allocator (tag: weights), on `stream`. The copy
// from pageable host memory need not be staged when cudaMemcpyAsync returns: the constructor waits for it.
template <typename T>
DeviceAllocation upload(const std::vector<T>& host, const std::string& what, CudaStream stream) {
  DeviceAllocation d = cuda_device_allocator().allocate(std::max<size_t>(host.size(), 1) * sizeof(T), stream,
                                                        MemoryTag::Weights, what);
  if (!host.empty()) {
    cuda_ok(cudaMemcpyAsync(d.get(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, stream),
            "cudaMemcpyAsync", what);
  }
  return d;
}
}  // namespace

Q4DeviceWeight::Q4DeviceWeight(const Q4Layout& host, const std::string& name, CudaStream stream) {
  q4_check(host.view(), "Q4DeviceWeight");
  view_ = host.view();
  qweight_ = upload(host.qweight, "the Q4 qweight of " + name, stream);
  meta_ = upload(host.meta, "the Q4 metas of " + name, stream);
  if (!host.perm.empty()) perm_ = upload(host.perm, "the Q4 act-order permutation of " + name, stream);
  view_.qweight = qweight_.as<const uint32_t>();
  view_.meta = meta_.as<const uint32_t>();
  view_.perm = perm_.as<const int32_t>();  // null without act-order
  // The kernels may run on any stream; the weight is ready once this returns.
  cuda_ok(cudaStreamSynchronize(stream), "cudaStreamSynchronize", "the upload of " + name);
  bytes_ = static_cast<int64_t>((host.qweight.size() + host.meta.size()) * 4 + host.perm.size() * 4);
}

Q4DeviceWeight::~Q4DeviceWeight() = default;

}  // namespace qwenq
