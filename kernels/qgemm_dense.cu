// The prefill / training W4A16 products through a dense bf16 copy of Ŵ: dequantize once per call, then one
// cuBLASLt GEMM (bf16 x bf16, fp32 accumulation, fp32 output):
//
//   Wb[n, kk] = bf16(q4_dequant(code(kk, n), meta(group(kk), n)))       [N, Kp], layout rows (kernel below)
//   forward     y  = x[:, perm] · Wbᵀ       (x gathered through perm in a bf16 staging copy, as qgemm_tc.cu)
//   transposed  dx[:, perm] = dy · Wb       (into a [M, Kp] scratch, scattered through perm, when perm or Kp > K)
//
// Numerics are those of the fused tensor-core kernels (qgemm_tc.cu, qgemm_wgmma.cu): ŵ computed in fp32 exactly
// as the CPU twin's q4_dequant and rounded once to bf16, exact bf16 products, fp32 sums in cuBLASLt's order.
//
// Why: on the first H200 run (2026-12-04) the fused kernels reached 0.28-0.38x of cuBLASLt's bf16 GEMM at
// M >= 512, because each 128-row block dequantizes its whole W tile again (M / 128 times per weight). Writing Wb
// once costs N·K·(0.5 + 2) bytes of traffic, ~7 µs for a 7B q_proj at 4.8 TB/s, against a 78 µs GEMM at
// M = 2048: the product runs at cuBLASLt's speed less that. The price is a transient bf16 copy of one weight
// (N·Kp·2 bytes, from the stream's pool; 136 MB for a 7B gate_proj), what bitsandbytes' 4-bit training matmul
// allocates too. The fused kernels stay for callers that cannot afford it.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "core/error.h"
#include "kernels/blas_lt.h"
#include "kernels/cuda_check.cuh"
#include "kernels/qgemm.h"
#include "kernels/qgemm_decode_common.cuh"
#include "kernels/qgemm_tc_common.cuh"

namespace qwenq {
namespace {

using qgemm_tc_detail::c_tc_books;
using qgemm_tc_detail::ceil_div;
using qgemm_tc_detail::dequant_word;

// The dequantization is a transpose: the packed words are [Kp/8, Np] (n fastest) and Wb is [N, Kp] (k fastest).
// A block dequantizes a tile of kDqCols columns x kDqWordRows word-rows through shared memory, so that both
// sides are coalesced: its loads are rows of kDqCols words (256 contiguous bytes), its stores rows of
// kDqWordRows x 16 bytes (512 contiguous bytes of one Wb row per warp). (The first version stored each lane's
// 16 bytes to another Wb row, 32 rows per warp store; the H200 run of 2026-12-04 put the whole dense path's
// overhead at ~300 GB/s of Wb. This one, same day: 2.8-3.3 TB/s on the 7B/72B weights of 3584 x 18944 and up,
// 16.5 µs for a 7B q_proj.)
constexpr int kDqThreads = 256;
constexpr int kDqCols = 64;       // columns n per block
constexpr int kDqWordRows = 32;   // word-rows (256 K) per block: one 16-byte Wb chunk per lane of a warp
constexpr int kDqPitch = kDqWordRows + 1;  // uint4 per shared row: 8 lanes at a 528-byte stride hit 8 bank groups

// grid (ceil(N / kDqCols), ceil(Kp / 8 / kDqWordRows)). Load: thread (c = tid % 64, rr = tid / 64) dequantizes
// words (r0 + rr + 4i, n0 + c), i = 0..7, into tile[c][rr + 4i]. Store: warp w writes the tile's rows c = w,
// w + 8, ..., lane l the chunk tile[c][l] to Wb[n0 + c, 8(r0 + l) .. 8(r0 + l) + 8).
template <Q4Kind KIND>
__global__ void __launch_bounds__(kDqThreads) q4_dequant_bf16_kernel(const uint32_t* qweight, const uint32_t* meta,
                                                                     int64_t N, int64_t Np, int64_t Kp, int64_t group,
                                                                     uint16_t* out) {
  __shared__ uint4 tile[kDqCols * kDqPitch];
  __shared__ float book[16];
  if constexpr (KIND != Q4Kind::Int) {
    if (threadIdx.x < 16) book[threadIdx.x] = c_tc_books[KIND == Q4Kind::Fp4 ? 1 : 0][threadIdx.x];
    __syncthreads();
  }
  const int64_t rows = Kp / 8;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kDqCols;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kDqWordRows;
  {
    const int c = threadIdx.x % kDqCols, rr = threadIdx.x / kDqCols;
    const int64_t n = n0 + c;
    if (n < N) {  // Wb has N rows: the padding columns N..Np-1 are not read
#pragma unroll
      for (int i = 0; i < kDqWordRows / (kDqThreads / kDqCols); ++i) {
        const int r = rr + i * (kDqThreads / kDqCols);
        if (r0 + r >= rows) break;
        const uint32_t word = __ldg(qweight + (r0 + r) * Np + n);
        const uint32_t m = __ldg(meta + ((r0 + r) * 8 / group) * Np + n);
        tile[c * kDqPitch + r] = dequant_word<KIND>(word, m, book);
      }
    }
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (r0 + lane >= rows) return;
  for (int c = warp; c < kDqCols; c += kDqThreads / 32) {
    const int64_t n = n0 + c;
    if (n >= N) break;
    *reinterpret_cast<uint4*>(out + n * Kp + (r0 + lane) * 8) = tile[c * kDqPitch + lane];
  }
}

// Wb [N, Kp] bf16 of w into a fresh stream-ordered allocation.
DeviceMemory dequantized(const Q4View& w, cudaStream_t s) {
  DeviceMemory wb(static_cast<size_t>(w.N * w.Kp) * sizeof(uint16_t), s);
  q4_dequantize_bf16_cuda(w, wb.as<uint16_t>(), s);  // checks its launch
  return wb;
}

}  // namespace

void q4_dequantize_bf16_cuda(const Q4View& w, uint16_t* out, void* stream) {
  q4_check(w, "q4_dequantize_bf16_cuda");
  QWENQ_CHECK(out != nullptr && reinterpret_cast<uintptr_t>(out) % 16 == 0,
              "q4_dequantize_bf16_cuda: the output must be a 16-byte aligned device pointer (16-byte stores)");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(ceil_div(w.N, kDqCols)), static_cast<unsigned>(ceil_div(w.Kp / 8, kDqWordRows)));
  QWENQ_CHECK(grid.y <= 65535, "q4_dequantize_bf16_cuda: K=" << w.K << " is too large");
  switch (w.kind) {
    case Q4Kind::Int:
      q4_dequant_bf16_kernel<Q4Kind::Int><<<grid, kDqThreads, 0, s>>>(w.qweight, w.meta, w.N, w.Np, w.Kp, w.group, out);
      break;
    case Q4Kind::Nf4:
      q4_dequant_bf16_kernel<Q4Kind::Nf4><<<grid, kDqThreads, 0, s>>>(w.qweight, w.meta, w.N, w.Np, w.Kp, w.group, out);
      break;
    default:
      q4_dequant_bf16_kernel<Q4Kind::Fp4><<<grid, kDqThreads, 0, s>>>(w.qweight, w.meta, w.N, w.Np, w.Kp, w.group, out);
      break;
  }
  QWENQ_CUDA_CHECK_LAUNCH("q4_dequant_bf16_kernel (K=" << w.K << " N=" << w.N << ")");
}

void qgemm_int4_dense_cuda(const Q4View& w, const void* x, DType x_dtype, int64_t M, float* y, void* stream) {
  const char* fn = "qgemm_int4_dense_cuda";
  qgemm_tc_detail::check_tc_args(w, x, x_dtype, M, y, fn);
  const std::string ctx = qgemm_tc_detail::tc_context(fn, w, M, x_dtype);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const DeviceMemory wb = dequantized(w, s);
  DeviceMemory staged;
  int64_t lda = 0, width = 0;
  const uint16_t* xa = qgemm_tc_detail::maybe_stage(x, w.perm, M, w.K, &staged, &lda, &width, s, ctx);
  QWENQ_CHECK(width == w.Kp, fn << ": staged width " << width << " is not Kp=" << w.Kp << " (" << ctx << ")");
  // Column-major: yᵀ [N, M] = op_T(Wb as Kp x N) · xᵀ (Kp x M), as linear_forward_cuda.
  LtGemm g;
  g.m = w.N, g.n = M, g.k = w.Kp;
  g.trans_a = true, g.trans_b = false;
  g.a_type = DType::BF16, g.b_type = DType::BF16, g.d_type = DType::F32;
  g.lda = w.Kp, g.ldb = lda, g.ldd = w.N;
  BlasLt::current().matmul(g, wb.get(), xa, y, nullptr, 1.f, s);
}  // wb and the staging copy go back to the pool in stream order, after the matmul

void qgemm_int4_t_dense_cuda(const Q4View& w, const void* dy, DType dy_dtype, int64_t M, float* dx, void* stream) {
  const char* fn = "qgemm_int4_t_dense_cuda";
  qgemm_tc_detail::check_tc_args(w, dy, dy_dtype, M, dx, fn);
  const std::string ctx = qgemm_tc_detail::tc_context(fn, w, M, dy_dtype);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const DeviceMemory wb = dequantized(w, s);
  // Column-major: dxᵀ [Kp, M] = (Wb as Kp x N) · dyᵀ (N x M), as linear_backward_input_cuda; straight into dx
  // when its columns are the layout rows (no act-order, Kp == K), else into a scratch scattered afterwards.
  const bool direct = w.perm == nullptr && w.Kp == w.K;
  DeviceMemory tmp;
  if (!direct) tmp = DeviceMemory(static_cast<size_t>(M * w.Kp) * sizeof(float), s);
  LtGemm g;
  g.m = w.Kp, g.n = M, g.k = w.N;
  g.trans_a = false, g.trans_b = false;
  g.a_type = DType::BF16, g.b_type = DType::BF16, g.d_type = DType::F32;
  g.lda = w.Kp, g.ldb = w.N, g.ldd = w.Kp;
  BlasLt::current().matmul(g, wb.get(), dy, direct ? static_cast<void*>(dx) : tmp.get(), nullptr, 1.f, s);
  if (!direct) {
    // dx[m, perm ? perm[kk] : kk] = tmp[m, kk] for kk < K: the split-K reduction with one split.
    launch_reduce(tmp.as<float>(), 1, M, M, w.Kp, w.K, w.perm, dx, s);
    QWENQ_CUDA_CHECK_LAUNCH("reduce_kernel (dx scatter) for " << ctx);
  }
}

}  // namespace qwenq
