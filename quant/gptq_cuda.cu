// GPTQ on the GPU (design and contract: quant/gptq_cuda.h; the math: quant/gptq.h). Layouts on the device:
//   H, M      [K, K] column-major (Eigen's), M only in its upper triangle until the swap makes it U
//   U         [K, K] row-major, upper triangular: U(i, j) at i·K + j (row i of U is what column i feeds back)
//   Wp        [N, K] row-major, columns in processing order, dead inputs zeroed; cuBLAS sees it as Wpᵀ [K, N]
//   E         [N, kMaxBlock] row-major: E[n, i] = (w − ŵ)/U[p, p] of the block's column i; cuBLAS: Eᵀ, ld 128
//   codes_p   [K, N] in processing order (row p = column order[p]); un-permuted on the host by K row copies
//   grid      scale [groups, N] fp32, zero [groups, N] uint8, as GroupGrid
// No Eigen here: nvcc compiles this file's host code without the -march=native of the C++ files, and Eigen's
// heap alignment follows the instruction set (64 bytes with AVX-512, 16 without), so an Eigen matrix allocated
// in one kind of file and freed in the other corrupts the heap. The Eigen half is gptq_cuda.cpp.

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cusolverDn.h>

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cmath>
#include <cstring>
#include <mutex>
#include <numeric>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "core/env_switch.h"
#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "quant/gptq_cuda_device.h"

namespace qwenq {

namespace {

constexpr int kMaxBlock = 128;        // columns per block kernel: 4 per lane of a warp
constexpr int kRowsPerCta = 16;       // warps (= rows of W) per thread block
constexpr unsigned kFull = 0xffffffffu;
constexpr int64_t kHessianBf16PieceElems = int64_t{64} << 20;  // bf16 scratch of a BF16 Hessian update: 128 MB

// ---- cuBLAS and cuSOLVER, opened on first use ---------------------------------------------------------------
// Both are loaded with dlopen when GPTQ first runs on the GPU instead of being linked: linking them made every
// qwen-quant process of a CUDA build map and relocate ~1 GB of libraries (about 200 MB resident, 204 MiB peak
// for a CPU-only run against 22 MiB without CUDA), the cost kernels/blas_lt.cu avoids for cuBLASLt the same way.
// The entry points used in this file, typed from the headers (the _v2 names are what the cublas_v2.h macros
// expand to, and what the library exports).
#define QWENQ_STR_(x) #x
#define QWENQ_STR(x) QWENQ_STR_(x)

// cublasGemmEx has a C++ overload in cublas_api.h (a cudaDataType compute type), so its type is spelled out.
using GemmExFn = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                                    const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                                    cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);

struct SolverLibs {
  decltype(&cublasCreate_v2) blas_create = nullptr;
  decltype(&cublasSetMathMode) blas_set_math_mode = nullptr;
  decltype(&cublasSetStream_v2) blas_set_stream = nullptr;
  decltype(&cublasSgemm_v2) sgemm = nullptr;
  decltype(&cublasSsyrk_v2) ssyrk = nullptr;
  GemmExFn gemm_ex = nullptr;
  decltype(&cublasGetStatusName) blas_status_name = nullptr;
  decltype(&cublasGetStatusString) blas_status_string = nullptr;
  decltype(&cusolverDnCreate) solver_create = nullptr;
  decltype(&cusolverDnCreateParams) solver_create_params = nullptr;
  decltype(&cusolverDnSetStream) solver_set_stream = nullptr;
  decltype(&cusolverDnXpotrf_bufferSize) potrf_buffer_size = nullptr;
  decltype(&cusolverDnXpotrf) potrf = nullptr;
  decltype(&cusolverDnXtrtri_bufferSize) trtri_buffer_size = nullptr;
  decltype(&cusolverDnXtrtri) trtri = nullptr;
};

// Throws naming the library and the reason when either cannot be loaded or lacks a symbol.
const SolverLibs& libs() {
  static SolverLibs api;
  static std::once_flag once;
  static std::string error;
  std::call_once(once, [] {
    const auto open = [](const char* versioned, const char* plain) -> void* {
      void* lib = ::dlopen(versioned, RTLD_NOW | RTLD_LOCAL);
      if (!lib) lib = ::dlopen(plain, RTLD_NOW | RTLD_LOCAL);
      if (!lib && error.empty()) {
        const char* why = ::dlerror();
        error = std::string("GPTQ on the GPU: cannot load ") + versioned + ": " + (why ? why : "not found");
      }
      return lib;
    };
    void* blas = open("libcublas.so." QWENQ_STR(CUBLAS_VER_MAJOR), "libcublas.so");
    void* solver = open("libcusolver.so." QWENQ_STR(CUSOLVER_VER_MAJOR), "libcusolver.so");
    if (!blas || !solver) return;
    const auto load = [](void* lib, auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(::dlsym(lib, name));
      if (!fn && error.empty()) error = std::string("GPTQ on the GPU: the CUDA math libraries lack ") + name;
    };
    load(blas, api.blas_create, "cublasCreate_v2");
    load(blas, api.blas_set_math_mode, "cublasSetMathMode");
    load(blas, api.blas_set_stream, "cublasSetStream_v2");
    load(blas, api.sgemm, "cublasSgemm_v2");
    load(blas, api.ssyrk, "cublasSsyrk_v2");
    load(blas, api.gemm_ex, "cublasGemmEx");
    load(blas, api.blas_status_name, "cublasGetStatusName");
    load(blas, api.blas_status_string, "cublasGetStatusString");
    load(solver, api.solver_create, "cusolverDnCreate");
    load(solver, api.solver_create_params, "cusolverDnCreateParams");
    load(solver, api.solver_set_stream, "cusolverDnSetStream");
    load(solver, api.potrf_buffer_size, "cusolverDnXpotrf_bufferSize");
    load(solver, api.potrf, "cusolverDnXpotrf");
    load(solver, api.trtri_buffer_size, "cusolverDnXtrtri_bufferSize");
    load(solver, api.trtri, "cusolverDnXtrtri");
  });
  QWENQ_CHECK(error.empty(), error);
  return api;
}

// ---- error checks for the libraries ----------------------------------------------------------------------------

const char* cusolver_status_name(cusolverStatus_t s) {
  switch (s) {
    case CUSOLVER_STATUS_SUCCESS: return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE: return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    default: return "cusolverStatus_t (other)";
  }
}

#define QWENQ_CUBLAS_CHECK(call)                                                                         \
  do {                                                                                                   \
    const cublasStatus_t qwenq_blas_st_ = (call);                                                        \
    QWENQ_CHECK(qwenq_blas_st_ == CUBLAS_STATUS_SUCCESS,                                                 \
                "cuBLAS error " << libs().blas_status_name(qwenq_blas_st_) << " (" << libs().blas_status_string(qwenq_blas_st_) \
                                << ") from `" << #call << "`");                                          \
  } while (0)

#define QWENQ_CUSOLVER_CHECK(call)                                                               \
  do {                                                                                           \
    const cusolverStatus_t qwenq_solver_st_ = (call);                                            \
    QWENQ_CHECK(qwenq_solver_st_ == CUSOLVER_STATUS_SUCCESS,                                     \
                "cuSOLVER error " << cusolver_status_name(qwenq_solver_st_) << " (" << static_cast<int>(qwenq_solver_st_) \
                                  << ") from `" << #call << "`");                                \
  } while (0)

// ---- per-device context: a stream, a cuBLAS and a cuSOLVER handle -------------------------------------------

struct Context {
  std::mutex mu;  // one GPTQ / accumulation at a time per device: the handles are bound to a stream per call
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  cusolverDnHandle_t solver = nullptr;
  cusolverDnParams_t params = nullptr;
  bool block_kernel_configured = false;
};

// Created on first use and never destroyed (the CUDA runtime may be gone when static destructors run).
Context& context() {
  static std::mutex mu;
  static std::vector<Context*> per_device;
  int device = 0;
  QWENQ_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mu);
  if (per_device.size() <= static_cast<size_t>(device)) per_device.resize(device + 1, nullptr);
  if (per_device[device] == nullptr) {
    auto* c = new Context();
    QWENQ_CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    QWENQ_CUBLAS_CHECK(libs().blas_create(&c->blas));
    QWENQ_CUBLAS_CHECK(libs().blas_set_math_mode(c->blas, CUBLAS_DEFAULT_MATH));  // true fp32: no TF32 tensor ops
    QWENQ_CUSOLVER_CHECK(libs().solver_create(&c->solver));
    QWENQ_CUSOLVER_CHECK(libs().solver_create_params(&c->params));
    per_device[device] = c;
  }
  return *per_device[device];
}

// ---- small kernels -------------------------------------------------------------------------------------------

unsigned blocks_for(int64_t n, unsigned threads, int64_t cap = 65535) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, cap)));
}

// y[i] = bf16(x[i]), round to nearest even (hessian_accumulate_cuda's BF16 inputs; HessianAccumulator's rounding).
__global__ void round_bf16_kernel(const float* x, int64_t n, __nv_bfloat16* y) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    y[i] = __float2bfloat16_rn(x[i]);
}

// *first = the smallest index i < n with a[i] not finite (lower_of_K > 0: only lower-triangle entries of the
// column-major [K, K] matrix, i.e. (i mod K) >= (i div K)). *first must start at ULLONG_MAX.
__global__ void first_nonfinite_kernel(const float* a, int64_t n, int64_t lower_of_K, unsigned long long* first) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    if (isfinite(a[i])) continue;
    if (lower_of_K > 0 && i % lower_of_K < i / lower_of_K) continue;
    atomicMin(first, static_cast<unsigned long long>(i));
  }
}

// Index of the first non-finite entry, or -1. Waits for `stream`.
int64_t first_nonfinite(const float* a, int64_t n, int64_t lower_of_K, cudaStream_t stream) {
  DeviceMemory flag(sizeof(unsigned long long), stream);
  QWENQ_CUDA_CHECK(cudaMemsetAsync(flag.get(), 0xff, sizeof(unsigned long long), stream));
  first_nonfinite_kernel<<<blocks_for(n, 256, 8192), 256, 0, stream>>>(a, n, lower_of_K,
                                                                      flag.as<unsigned long long>());
  QWENQ_CUDA_CHECK_LAUNCH("first_nonfinite n=" << n);
  unsigned long long host = 0;
  QWENQ_CUDA_CHECK(cudaMemcpyAsync(&host, flag.get(), sizeof host, cudaMemcpyDeviceToHost, stream));
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host == ULLONG_MAX ? -1 : static_cast<int64_t>(host);
}

float read_element(const float* a, int64_t i, cudaStream_t stream) {
  float v = 0.f;
  QWENQ_CUDA_CHECK(cudaMemcpyAsync(&v, a + i, sizeof v, cudaMemcpyDeviceToHost, stream));
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(stream));
  return v;
}

// The GPTQ grid of one group from the min and max of its values: quant/grid.cpp's grid_for_group, GridRule::Gptq,
// operation for operation (IEEE division, no contraction, fp16 rounding as core's f32_to_f16).
__device__ __forceinline__ void gptq_grid(float lo, float hi, int maxq, bool sym, float* scale, uint8_t* zero) {
  lo = fminf(lo, 0.f);
  hi = fmaxf(hi, 0.f);
  if (sym) {
    hi = fmaxf(fabsf(lo), hi);
    if (lo < 0) lo = -hi;
  }
  if (lo == 0.f && hi == 0.f) lo = -1.f, hi = 1.f;
  float s = __half2float(__float2half_rn(__fdiv_rn(__fsub_rn(hi, lo), static_cast<float>(maxq))));
  const float z = sym ? static_cast<float>((maxq + 1) / 2) : rintf(__fdiv_rn(-lo, s));
  if (s == 0.f) s = __half2float(__float2half_rn(1e-5f));
  *scale = s;
  *zero = static_cast<uint8_t>(fminf(fmaxf(z, 0.f), static_cast<float>(maxq)));
}

// quant/grid.h's quantize_value / dequantize_value.
__device__ __forceinline__ uint8_t quantize_value_dev(float w, float scale, uint8_t zero, int maxq) {
  float q = rintf(__fdiv_rn(w, scale)) + static_cast<float>(zero);
  q = q < 0.f ? 0.f : (q > static_cast<float>(maxq) ? static_cast<float>(maxq) : q);
  return static_cast<uint8_t>(q);
}

__device__ __forceinline__ float warp_min(float v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v = fminf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

// Static grids: one warp per (group, row n) over W's original columns, dead inputs read as 0.
__global__ void static_grid_kernel(const float* W, int64_t N, int64_t K, int64_t G, const uint8_t* dead, int maxq,
                                   bool sym, float* scale, uint8_t* zero) {
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const int64_t groups = (K + G - 1) / G;
  if (warp >= groups * N) return;
  const int64_t g = warp / N, n = warp % N, k0 = g * G, k1 = min(K, k0 + G);
  float lo = INFINITY, hi = -INFINITY;
  for (int64_t k = k0 + lane; k < k1; k += 32) {
    const float v = dead[k] ? 0.f : W[n * K + k];
    lo = fminf(lo, v);
    hi = fmaxf(hi, v);
  }
  lo = warp_min(lo);
  hi = warp_max(hi);
  if (lane == 0) gptq_grid(lo, hi, maxq, sym, &scale[g * N + n], &zero[g * N + n]);
}

// Wp[n, p] = W[n, order[p]], 0 for dead inputs.
__global__ void permute_weight_kernel(const float* W, int64_t N, int64_t K, const int64_t* order, const uint8_t* dead,
                                      float* Wp) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < N * K; i += stride) {
    const int64_t n = i / K, p = i % K, k = order[p];
    Wp[i] = dead[k] ? 0.f : W[n * K + k];
  }
}

// Upper triangle of M (column-major): M(i, j) = H(q[i], q[j]) read from H's lower triangle, and on the diagonal
// (dead ? 1 : H(k, k)) + λ, as gptq.cpp's `diag + lambda` in fp32. The strict lower triangle is not written.
__global__ void build_factor_input_kernel(const float* H, int64_t K, const int64_t* q, const uint8_t* dead,
                                          float lambda, float* M) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < K * K; idx += stride) {
    const int64_t i = idx % K, j = idx / K;
    if (i > j) continue;
    const int64_t a = q[i], c = q[j];
    float v = a >= c ? H[a + c * K] : H[c + a * K];
    if (i == j) v = __fadd_rn(dead[a] ? 1.f : v, lambda);
    M[idx] = v;
  }
}

// R⁻¹ (upper, column-major) -> U (upper, row-major) by reversing the storage: element idx <-> K²−1−idx. Zeroes
// the strict lower triangle (the factorization's untouched input) and flags a non-finite entry of U.
__global__ void reverse_to_u_kernel(float* A, int64_t K, int* nonfinite) {
  const int64_t total = K * K, half = (total + 1) / 2;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < half; idx += stride) {
    const int64_t o = total - 1 - idx;
    const float a = A[idx], b = A[o];
    // After the swap, idx holds b at row-major (idx / K, idx % K); o holds a at (o / K, o % K).
    const bool idx_lower = idx % K < idx / K, o_lower = o % K < o / K;
    const float at_idx = idx_lower ? 0.f : b, at_o = o_lower ? 0.f : a;
    if (!isfinite(at_idx) || !isfinite(at_o)) *nonfinite = 1;
    A[idx] = at_idx;
    A[o] = at_o;
  }
}

// ---- the error-feedback kernel -------------------------------------------------------------------------------

struct BlockParams {
  const float* Wp;            // [N, K] processing order; read only (the lazy GEMM writes it between launches)
  const float* U;             // [K, K] row-major
  float* E;                   // [N, kMaxBlock]
  float* scale;               // [groups, N]
  uint8_t* zero;              // [groups, N]
  const int32_t* group_of_pos;  // [K]
  uint8_t* codes_p;           // [K, N]
  double* row_loss;           // [N], Σ e² (accumulated over launches)
  int64_t N, K, G, p1;
  int b, maxq;
  bool sym, opens_groups;
};

// Columns [p1, p1 + b) of rows [blockIdx.x·kRowsPerCta, +kRowsPerCta), one warp per row. Lane l holds the row's
// block columns l, l+32, l+64, l+96 in w[0..3]; column i is broadcast from lane i%32's w[i/32] by a shuffle, and
// every lane computes the same q and e, then updates its own later columns. All branches on i, p and groups are
// warp-uniform, so the shuffles and reductions always have the full warp.
__global__ void __launch_bounds__(kRowsPerCta * 32) gptq_block_kernel(BlockParams P) {
  extern __shared__ float smem[];
  float* Ud = smem;                           // [b][kMaxBlock]: U[p1 + i, p1 + j]
  float* Es = smem + kMaxBlock * kMaxBlock;   // [kRowsPerCta][kMaxBlock]: this block's e of each warp's row
  const int b = P.b;
  for (int idx = threadIdx.x; idx < b * b; idx += blockDim.x) {
    const int i = idx / b, j = idx % b;
    Ud[i * kMaxBlock + j] = P.U[(P.p1 + i) * P.K + P.p1 + j];
  }
  __syncthreads();  // the only block-wide barrier: warps past the last row may leave after it

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerCta + warp;
  if (row >= P.N) return;
  float* es = Es + warp * kMaxBlock;
  const float* wrow = P.Wp + row * P.K;
  float w[4];
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    const int j = 32 * t + lane;
    w[t] = j < b ? wrow[P.p1 + j] : 0.f;
  }
  double loss = 0.0;
  int32_t cur_g = -1;
  float scale = 1.f;
  uint8_t zero = 0;

  for (int i = 0; i < b; ++i) {
    const int64_t p = P.p1 + i;
    if (P.opens_groups && p % P.G == 0) {
      // gptq.cpp's open_group: min/max of the group's values as they are now.
      const int64_t pend = min(p + P.G, P.K);
      const int in_end = static_cast<int>(min(pend - P.p1, static_cast<int64_t>(b)));
      float lo = INFINITY, hi = -INFINITY;
#pragma unroll
      for (int t2 = 0; t2 < 4; ++t2) {
        const int j = 32 * t2 + lane;
        if (j >= i && j < in_end) {
          lo = fminf(lo, w[t2]);
          hi = fmaxf(hi, w[t2]);
        }
      }
      if (pend > P.p1 + b) {  // the group reaches past the block: W[:, c] − E[:, :i]·U[p1:p, c]
        __syncwarp();         // es[0..i) were written by lane 0
        for (int64_t c = P.p1 + b + lane; c < pend; c += 32) {
          float v = wrow[c];
          for (int tt = 0; tt < i; ++tt) v = fmaf(-es[tt], P.U[(P.p1 + tt) * P.K + c], v);
          lo = fminf(lo, v);
          hi = fmaxf(hi, v);
        }
      }
      lo = warp_min(lo);
      hi = warp_max(hi);
      gptq_grid(lo, hi, P.maxq, P.sym, &scale, &zero);
      cur_g = P.group_of_pos[p];
      if (lane == 0) {
        P.scale[cur_g * P.N + row] = scale;
        P.zero[cur_g * P.N + row] = zero;
      }
    } else {
      const int32_t g = P.group_of_pos[p];
      if (g != cur_g) {
        scale = P.scale[g * P.N + row];
        zero = P.zero[g * P.N + row];
        cur_g = g;
      }
    }
    // Column i lives in lane i % 32's w[i / 32]; selects (not an indexed load) keep w in registers.
    const int t = i >> 5;
    const float mine = t == 0 ? w[0] : t == 1 ? w[1] : t == 2 ? w[2] : w[3];
    const float wi = __shfl_sync(kFull, mine, i & 31);
    const uint8_t q = quantize_value_dev(wi, scale, zero, P.maxq);
    const float deq = __fmul_rn(scale, static_cast<float>(static_cast<int>(q) - static_cast<int>(zero)));
    const float e = __fdiv_rn(__fsub_rn(wi, deq), Ud[i * kMaxBlock + i]);
    if (lane == 0) {
      loss += static_cast<double>(e) * e;
      es[i] = e;
      P.codes_p[p * P.N + row] = q;
    }
#pragma unroll
    for (int t2 = 0; t2 < 4; ++t2) {
      const int j = 32 * t2 + lane;
      if (j > i && j < b) w[t2] = fmaf(-e, Ud[i * kMaxBlock + j], w[t2]);
    }
  }
  __syncwarp();
  for (int i = lane; i < b; i += 32) P.E[row * kMaxBlock + i] = es[i];
  if (lane == 0) P.row_loss[row] += loss;
}

constexpr size_t kBlockSmemBytes = sizeof(float) * (kMaxBlock * kMaxBlock + kRowsPerCta * kMaxBlock);

// ---- host helpers ----------------------------------------------------------------------------------------------

// QWENQ_GPTQ_TRACE=1: one line per call on stderr with the wall milliseconds of each step (the stream waited for at
// every mark, so the steps do not overlap; a diagnostic, off by default):
//   gptq_cuda N=<N> K=<K>: upload W <ms>, upload H <ms>, prep <ms>, potrf <ms>, trtri <ms>, loop <ms>, download <ms>,
//   unpermute <ms>   (potrf and trtri again for each damping retry; potrf includes building its input)
class SolveTrace {
 public:
  SolveTrace(cudaStream_t s, int64_t N, int64_t K) : s_(s) {
    on_ = env_switch("QWENQ_GPTQ_TRACE") == 1;
    if (!on_) return;
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(s_));
    line_ = "gptq_cuda N=" + std::to_string(N) + " K=" + std::to_string(K) + ":";
    t_ = std::chrono::steady_clock::now();
  }
  ~SolveTrace() {
    if (on_ && !line_.empty()) std::fprintf(stderr, "%s\n", line_.c_str());
  }
  SolveTrace(const SolveTrace&) = delete;
  SolveTrace& operator=(const SolveTrace&) = delete;
  // The time since the previous mark, named.
  void mark(const char* step) {
    if (!on_) return;
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(s_));
    const auto now = std::chrono::steady_clock::now();
    char buf[96];
    std::snprintf(buf, sizeof buf, "%s %s %.1f", line_.back() == ':' ? "" : ",", step,
                  std::chrono::duration<double, std::milli>(now - t_).count());
    line_ += buf;
    t_ = now;
  }

 private:
  cudaStream_t s_;
  bool on_ = false;
  std::string line_;
  std::chrono::steady_clock::time_point t_;
};

template <typename T>
DeviceMemory upload(const T* host, size_t count, cudaStream_t stream) {
  DeviceMemory d(count * sizeof(T), stream);
  if (count > 0) QWENQ_CUDA_CHECK(cudaMemcpyAsync(d.get(), host, count * sizeof(T), cudaMemcpyHostToDevice, stream));
  return d;
}

template <typename T>
void download(std::vector<T>& host, const DeviceMemory& d, cudaStream_t stream) {
  if (!host.empty())
    QWENQ_CUDA_CHECK(cudaMemcpyAsync(host.data(), d.get(), host.size() * sizeof(T), cudaMemcpyDeviceToHost, stream));
}

// U (row-major, device) from M built from dH, with gptq.cpp's damping schedule. Returns U's buffer.
DeviceMemory inverse_factor(Context& ctx, const float* dH, int64_t K, const DeviceMemory& dq,
                            const DeviceMemory& ddead, const std::vector<int64_t>& q, double mean_diag,
                            const GptqOptions& o, GptqResult& r, SolveTrace& trace) {
  cudaStream_t s = ctx.stream;
  QWENQ_CUSOLVER_CHECK(libs().solver_set_stream(ctx.solver, s));
  DeviceMemory dM(static_cast<size_t>(K * K) * sizeof(float), s);
  DeviceMemory dinfo(sizeof(int) * 2, s);
  size_t potrf_dev = 0, potrf_host = 0, trtri_dev = 0, trtri_host = 0;
  QWENQ_CUSOLVER_CHECK(libs().potrf_buffer_size(ctx.solver, ctx.params, CUBLAS_FILL_MODE_UPPER, K, CUDA_R_32F,
                                                   dM.get(), K, CUDA_R_32F, &potrf_dev, &potrf_host));
  QWENQ_CUSOLVER_CHECK(libs().trtri_buffer_size(ctx.solver, CUBLAS_FILL_MODE_UPPER, CUBLAS_DIAG_NON_UNIT, K,
                                                   CUDA_R_32F, dM.get(), K, &trtri_dev, &trtri_host));
  DeviceMemory work(std::max(potrf_dev, trtri_dev), s);
  std::vector<char> host_work(std::max<size_t>({potrf_host, trtri_host, 1}));

  double damp = o.damp;
  std::string last;
  for (int attempt = 0; attempt <= o.max_damp_retries; ++attempt) {
    const double lambda = damp * mean_diag;
    build_factor_input_kernel<<<blocks_for(K * K, 256, 1 << 20), 256, 0, s>>>(
        dH, K, dq.as<int64_t>(), ddead.as<uint8_t>(), static_cast<float>(lambda), dM.as<float>());
    QWENQ_CUDA_CHECK_LAUNCH("gptq build_factor_input K=" << K);
    QWENQ_CUDA_CHECK(cudaMemsetAsync(dinfo.get(), 0, sizeof(int) * 2, s));
    QWENQ_CUSOLVER_CHECK(libs().potrf(ctx.solver, ctx.params, CUBLAS_FILL_MODE_UPPER, K, CUDA_R_32F, dM.get(), K,
                                          CUDA_R_32F, work.get(), potrf_dev, host_work.data(), potrf_host,
                                          dinfo.as<int>()));
    int info[2] = {0, 0};
    QWENQ_CUDA_CHECK(cudaMemcpyAsync(&info[0], dinfo.get(), sizeof(int), cudaMemcpyDeviceToHost, s));
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(s));
    trace.mark("potrf");
    std::ostringstream why;
    if (info[0] == 0) {
      QWENQ_CUSOLVER_CHECK(libs().trtri(ctx.solver, CUBLAS_FILL_MODE_UPPER, CUBLAS_DIAG_NON_UNIT, K, CUDA_R_32F,
                                            dM.get(), K, work.get(), trtri_dev, host_work.data(), trtri_host,
                                            dinfo.as<int>() + 1));
      QWENQ_CUDA_CHECK(cudaMemsetAsync(dinfo.get(), 0, sizeof(int), s));  // info[0] becomes the non-finite flag
      reverse_to_u_kernel<<<blocks_for((K * K + 1) / 2, 256, 1 << 20), 256, 0, s>>>(dM.as<float>(), K,
                                                                                   dinfo.as<int>());
      QWENQ_CUDA_CHECK_LAUNCH("gptq reverse_to_u K=" << K);
      QWENQ_CUDA_CHECK(cudaMemcpyAsync(info, dinfo.get(), sizeof info, cudaMemcpyDeviceToHost, s));
      QWENQ_CUDA_CHECK(cudaStreamSynchronize(s));
      trace.mark("trtri");
      if (info[0] == 0 && info[1] == 0) {
        r.damp_used = damp;
        r.damp_retries = attempt;
        return dM;
      }
      why << "the inverse factor overflowed fp32 with damp " << damp << " (lambda " << lambda << ")";
      if (info[1] != 0) why << " (trtri: zero pivot " << info[1] << ")";
    } else if (info[0] > 0) {
      why << "H + lambda*I is not positive definite with damp " << damp << " (lambda " << lambda
          << "): pivot of row " << info[0] - 1 << " (cuSOLVER potrf: leading minor of order " << info[0]
          << ") at input column " << q[info[0] - 1];
    } else {
      QWENQ_FAIL("cuSOLVER potrf reported invalid argument " << -info[0] << " (K = " << K << ")");
    }
    last = why.str();
    if (attempt < o.max_damp_retries) {
      damp = damp > 0 ? damp * 10 : 0.01;
      r.warnings.push_back(last + "; retrying with damp " + std::to_string(damp));
    }
  }
  QWENQ_FAIL("GPTQ could not factor the Hessian after " << o.max_damp_retries << " damp retries (damp " << o.damp
                                                        << " up to " << damp << "): " << last);
}

}  // namespace

GptqResult gptq_quantize_cuda_device(const float* W, int64_t N, int64_t K, GptqHessian H, const GptqCudaHost& host,
                                     const GptqOptions& o) {
  QWENQ_CHECK((H.host == nullptr) != (H.device == nullptr), "gptq_quantize_cuda: give H on the host or the device");
  QWENQ_CHECK(K <= INT_MAX && N <= INT_MAX && (N + kRowsPerCta - 1) / kRowsPerCta <= INT_MAX,
              "gptq_quantize_cuda: N = " << N << ", K = " << K << " exceed the 32-bit limits of cuBLAS");
  Context& ctx = context();
  std::lock_guard<std::mutex> lock(ctx.mu);
  cudaStream_t s = ctx.stream;
  SolveTrace trace(s, N, K);

  // Checks in gptq.cpp's order: W finite, then H's lower triangle finite, then its diagonal.
  DeviceMemory dW = upload(W, static_cast<size_t>(N * K), s);
  if (const int64_t bad = first_nonfinite(dW.as<float>(), N * K, 0, s); bad >= 0)
    QWENQ_FAIL("weight [" << bad / K << ", " << bad % K << "] is " << W[bad]);
  trace.mark("upload W");
  DeviceMemory dH_owned;  // the upload of a host H
  const float* dH = H.device;
  if (H.host != nullptr) {
    dH_owned = upload(H.host, static_cast<size_t>(K * K), s);
    dH = dH_owned.as<float>();
  }
  if (const int64_t bad = first_nonfinite(dH, K * K, K, s); bad >= 0)
    QWENQ_FAIL("Hessian entry (" << bad % K << ", " << bad / K << ") is "
                                 << (H.host != nullptr ? H.host[bad] : read_element(dH, bad, s))
                                 << "; the calibration activations or their accumulation overflowed");
  trace.mark("upload H");

  GptqResult r;
  const int64_t G = o.group_size == -1 ? K : o.group_size;
  const int64_t groups = (K + G - 1) / G;
  std::vector<float> diag(K);
  if (H.host != nullptr) {
    for (int64_t k = 0; k < K; ++k) diag[k] = H.host[k * K + k];
  } else {  // the diagonal alone: K floats K + 1 apart, gathered on the device (a 2D copy of K rows of 4 bytes
            // into pageable host memory would move them one by one), then one download
    DeviceMemory ddiag(static_cast<size_t>(K) * sizeof(float), s);
    QWENQ_CUDA_CHECK(cudaMemcpy2DAsync(ddiag.get(), sizeof(float), dH, static_cast<size_t>(K + 1) * sizeof(float),
                                       sizeof(float), static_cast<size_t>(K), cudaMemcpyDeviceToDevice, s));
    QWENQ_CUDA_CHECK(cudaMemcpyAsync(diag.data(), ddiag.get(), static_cast<size_t>(K) * sizeof(float),
                                     cudaMemcpyDeviceToHost, s));
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(s));
  }
  std::vector<uint8_t> dead(K, 0);
  for (int64_t k = 0; k < K; ++k) {
    QWENQ_CHECK(diag[k] >= 0.f, "Hessian diagonal entry " << k << " is " << diag[k]
                                                         << " < 0: not a sum of squared activations");
    if (diag[k] == 0.f) dead[k] = 1, diag[k] = 1.f;
  }
  if (host.release_h) host.release_h();  // the device copy is all that is needed from here on

  std::vector<int64_t> order(K);
  std::iota(order.begin(), order.end(), int64_t{0});
  if (o.desc_act)
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return diag[a] > diag[b]; });
  std::vector<int64_t> pos(K);
  for (int64_t p = 0; p < K; ++p) pos[order[p]] = p;
  r.g_idx.resize(K);
  for (int64_t k = 0; k < K; ++k)
    r.g_idx[k] = static_cast<int32_t>((o.desc_act && !o.static_groups ? pos[k] : k) / G);
  std::vector<int32_t> group_of_pos(K);
  for (int64_t p = 0; p < K; ++p) group_of_pos[p] = r.g_idx[order[p]];
  std::vector<int64_t> q(K);  // row i of M = J·P·H·Pᵀ·J is original column order[K-1-i]
  for (int64_t i = 0; i < K; ++i) q[i] = order[K - 1 - i];
  std::vector<float> diag_m(K);  // M's diagonal, in M's order, so the mean is summed exactly as gptq.cpp sums it
  for (int64_t i = 0; i < K; ++i) diag_m[i] = diag[q[i]];
  const double mean_diag = host.mean(diag_m);

  DeviceMemory ddead = upload(dead.data(), dead.size(), s);
  DeviceMemory dorder = upload(order.data(), order.size(), s);
  DeviceMemory dq = upload(q.data(), q.size(), s);
  DeviceMemory dgroup = upload(group_of_pos.data(), group_of_pos.size(), s);

  // Grids: static ones up front from the dead-zeroed weights in original order; otherwise opened by the loop.
  r.grid.bits = o.bits;
  r.grid.group = G;
  r.grid.K = K;
  r.grid.N = N;
  const int maxq = (1 << o.bits) - 1;
  DeviceMemory dscale(static_cast<size_t>(groups * N) * sizeof(float), s);
  DeviceMemory dzero(static_cast<size_t>(groups * N), s);
  QWENQ_CUDA_CHECK(cudaMemsetAsync(dscale.get(), 0, dscale.bytes(), s));
  QWENQ_CUDA_CHECK(cudaMemsetAsync(dzero.get(), 0, dzero.bytes(), s));
  if (o.static_groups) {
    static_grid_kernel<<<blocks_for(groups * N * 32, 256, INT_MAX), 256, 0, s>>>(
        dW.as<float>(), N, K, G, ddead.as<uint8_t>(), maxq, o.sym, dscale.as<float>(), dzero.as<uint8_t>());
    QWENQ_CUDA_CHECK_LAUNCH("gptq static_grid N=" << N << " K=" << K << " G=" << G);
  }
  DeviceMemory dWp(static_cast<size_t>(N * K) * sizeof(float), s);
  permute_weight_kernel<<<blocks_for(N * K, 256, 1 << 20), 256, 0, s>>>(dW.as<float>(), N, K, dorder.as<int64_t>(),
                                                                        ddead.as<uint8_t>(), dWp.as<float>());
  QWENQ_CUDA_CHECK_LAUNCH("gptq permute_weight N=" << N << " K=" << K);
  dW = DeviceMemory();
  trace.mark("prep");

  DeviceMemory dU = inverse_factor(ctx, dH, K, dq, ddead, q, mean_diag, o, r, trace);
  dH_owned = DeviceMemory();
  dH = nullptr;

  // The blocked error-feedback loop.
  DeviceMemory dE(static_cast<size_t>(N) * kMaxBlock * sizeof(float), s);
  DeviceMemory dcodes(static_cast<size_t>(N * K), s);
  DeviceMemory dloss(static_cast<size_t>(N) * sizeof(double), s);
  QWENQ_CUDA_CHECK(cudaMemsetAsync(dloss.get(), 0, dloss.bytes(), s));
  if (!ctx.block_kernel_configured) {
    QWENQ_CUDA_CHECK(cudaFuncSetAttribute(gptq_block_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(kBlockSmemBytes)));
    ctx.block_kernel_configured = true;
  }
  QWENQ_CUBLAS_CHECK(libs().blas_set_stream(ctx.blas, s));
  BlockParams P;
  P.Wp = dWp.as<float>();
  P.U = dU.as<float>();
  P.E = dE.as<float>();
  P.scale = dscale.as<float>();
  P.zero = dzero.as<uint8_t>();
  P.group_of_pos = dgroup.as<int32_t>();
  P.codes_p = dcodes.as<uint8_t>();
  P.row_loss = dloss.as<double>();
  P.N = N, P.K = K, P.G = G;
  P.maxq = maxq;
  P.sym = o.sym;
  P.opens_groups = !o.static_groups;
  const int64_t B = std::min<int64_t>(o.block_size, kMaxBlock);
  const unsigned ctas = static_cast<unsigned>((N + kRowsPerCta - 1) / kRowsPerCta);
  for (int64_t p1 = 0; p1 < K; p1 += B) {
    const int64_t b = std::min(B, K - p1);
    P.p1 = p1;
    P.b = static_cast<int>(b);
    gptq_block_kernel<<<ctas, kRowsPerCta * 32, kBlockSmemBytes, s>>>(P);
    QWENQ_CUDA_CHECK_LAUNCH("gptq_block_kernel N=" << N << " K=" << K << " columns " << p1 << ".." << p1 + b);
    const int64_t rest = K - p1 - b;
    if (rest > 0) {
      // Wpᵀ[p1+b:, :] (rest × N, ld K) −= U[p1:p1+b, p1+b:]ᵀ (rest × b; U row-major is Uᵀ column-major, ld K)
      //                                    · Eᵀ (b × N, ld kMaxBlock)
      const float alpha = -1.f, beta = 1.f;
      QWENQ_CUBLAS_CHECK(libs().sgemm(ctx.blas, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(rest), static_cast<int>(N),
                                     static_cast<int>(b), &alpha, dU.as<float>() + (p1 + b) + p1 * K,
                                     static_cast<int>(K), dE.as<float>(), kMaxBlock, &beta,
                                     dWp.as<float>() + (p1 + b), static_cast<int>(K)));
    }
  }

  trace.mark("loop");
  std::vector<uint8_t> codes_p(static_cast<size_t>(N * K));
  std::vector<double> row_loss(static_cast<size_t>(N));
  r.grid.scale.resize(static_cast<size_t>(groups * N));
  r.grid.zero.resize(static_cast<size_t>(groups * N));
  download(codes_p, dcodes, s);
  download(row_loss, dloss, s);
  download(r.grid.scale, dscale, s);
  download(r.grid.zero, dzero, s);
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(s));

  trace.mark("download");
  r.codes.resize(static_cast<size_t>(K * N));
  for (int64_t p = 0; p < K; ++p)
    std::memcpy(r.codes.data() + order[p] * N, codes_p.data() + p * N, static_cast<size_t>(N));
  r.loss = 0.5 * std::accumulate(row_loss.begin(), row_loss.end(), 0.0);
  QWENQ_CHECK(std::isfinite(r.loss), "GPTQ loss is " << r.loss << " (damp " << r.damp_used
                                                     << "): the Hessian is too ill-conditioned for fp32");
  for (size_t i = 0; i < r.grid.scale.size(); ++i)
    QWENQ_CHECK(std::isfinite(r.grid.scale[i]) && r.grid.scale[i] > 0,
                "GPTQ produced scale " << r.grid.scale[i] << " for group " << i / N << ", column " << i % N
                                       << " (damp " << r.damp_used << "): the Hessian is too ill-conditioned for fp32");
  r.order = std::move(order);
  trace.mark("unpermute");
  return r;
}

void hessian_accumulate_cuda(float* H, int64_t K, int64_t count, const float* x, int64_t rows, CudaStream stream,
                             DType input_dtype, int64_t piece_rows) {
  QWENQ_CHECK(K > 0, "Hessian size must be positive, got K = " << K);
  QWENQ_CHECK(rows >= 0, "row count must be non-negative, got " << rows);
  QWENQ_CHECK(count >= 0, "hessian_accumulate_cuda: count must be non-negative, got " << count);
  QWENQ_CHECK(input_dtype == DType::F32 || input_dtype == DType::BF16,
              "Hessian inputs are fp32 or rounded to bf16, not " << dtype_name(input_dtype));
  if (rows == 0) return;
  QWENQ_CHECK(H != nullptr && x != nullptr, "hessian_accumulate_cuda: null H or x");
  QWENQ_CHECK(K <= INT_MAX && rows <= INT_MAX,
              "hessian_accumulate_cuda: K = " << K << ", rows = " << rows << " exceed cuBLAS's 32-bit limits");
  Context& ctx = context();
  std::lock_guard<std::mutex> lock(ctx.mu);
  if (const int64_t bad = first_nonfinite(x, rows * K, 0, stream); bad >= 0)
    QWENQ_FAIL("activation row " << bad / K << ", input " << bad % K << " (of K = " << K << ") is "
                                 << read_element(x, bad, stream) << "; the Hessian needs finite inputs");
  const int64_t n_new = count + rows;
  const float beta = static_cast<float>(static_cast<double>(count) / n_new);
  const float alpha = static_cast<float>(2.0 / n_new);
  QWENQ_CUBLAS_CHECK(libs().blas_set_stream(ctx.blas, stream));
  if (input_dtype == DType::F32) {
    QWENQ_CUBLAS_CHECK(libs().ssyrk(ctx.blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, static_cast<int>(K),
                                   static_cast<int>(rows), &alpha, x, static_cast<int>(K), &beta, H,
                                   static_cast<int>(K)));
    return;
  }
  // BF16: pieces of rows rounded into a bf16 scratch, each added by one tensor-core GEMM H ← b·H + α·X̃ᵀX̃ (fp32
  // accumulation of exact products; b = beta for the first piece, 1 after). A GEMM writes both triangles: twice
  // SSYRK's products, on tensor cores. The strict upper triangle stays unread.
  int64_t piece = std::max<int64_t>(1, std::min<int64_t>(rows, kHessianBf16PieceElems / K));
  if (piece_rows > 0) piece = std::min(piece, piece_rows);
  DeviceMemory xb(static_cast<size_t>(piece * K) * sizeof(__nv_bfloat16), stream);
  for (int64_t r0 = 0; r0 < rows; r0 += piece) {
    const int64_t n = std::min(piece, rows - r0);
    round_bf16_kernel<<<blocks_for(n * K, 256, 1 << 16), 256, 0, stream>>>(x + r0 * K, n * K,
                                                                          xb.as<__nv_bfloat16>());
    QWENQ_CUDA_CHECK_LAUNCH("gptq round_bf16 K=" << K << " rows=" << n);
    const float b = r0 == 0 ? beta : 1.f;
    QWENQ_CUBLAS_CHECK(libs().gemm_ex(ctx.blas, CUBLAS_OP_N, CUBLAS_OP_T, static_cast<int>(K), static_cast<int>(K),
                                      static_cast<int>(n), &alpha, xb.get(), CUDA_R_16BF, static_cast<int>(K),
                                      xb.get(), CUDA_R_16BF, static_cast<int>(K), &b, H, CUDA_R_32F,
                                      static_cast<int>(K), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
}

}  // namespace qwenq
