// The prefill / training W4A16 products through a dense bf16 copy of Ŵ: dequantize once per call, then one
// cuBLASLt GEMM (bf16 x bf16, fp32 accumulation, fp32 output):
//
//   Wb[n, kk] = bf16(q4_dequant(code(kk, n), meta(group(kk), n)))       [N, Kp], layout rows (kernel below)
//   forward     y  = x[:, perm] · Wbᵀ       (x gathered through perm in a bf16 staging copy, as qgemm_tc.cu)
//   transposed  dx[:, perm] = dy · Wb       (into a [M, Kp] scratch, scattered through perm, when perm or Kp > K)
//   low-rank    y = [x | a]·[Wb | B]ᵀ,  dx (+)= [dy | g]·[Wb ; A]   (QWENQ_LORA_FOLD's adapter term: B's columns
//               after Wb's, or A's rows after Wb's rows, in the same copy; no act-order)
//
// Numerics are those of the fused tensor-core kernels (qgemm_tc.cu, qgemm_wgmma.cu): ŵ computed in fp32 exactly
// as the CPU twin's q4_dequant and rounded once to bf16, exact bf16 products, fp32 sums in cuBLASLt's order.
//
// Why: on the first H200 run (2026-12-04) the fused kernels reached 0.28-0.38x of cuBLASLt's bf16 GEMM at
// M >= 512, because each 128-row block dequantizes its whole W tile again (M / 128 times per weight). Writing Wb
// once costs N·K·(0.5 + 2) bytes of traffic, ~7 µs for a 7B q_proj at 4.8 TB/s, against a 78 µs GEMM at
// M = 2048: the product runs at cuBLASLt's speed less that, and the overlap below hides most of that too. The price
// is a transient bf16 copy of one weight (N·Kp·2 bytes from the stream's pool, 136 MB for a 7B gate_proj; with the
// overlap, QWENQ_QGEMM_OVERLAP=1, two pieces of it, 78 MB), what bitsandbytes' 4-bit training matmul allocates too. The fused kernels stay
// for callers that cannot afford it.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/blas_lt.h"
#include "kernels/convert.h"
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
constexpr int kDqCols = static_cast<int>(kQgemmDqCols);          // columns n per block
constexpr int kDqWordRows = static_cast<int>(kQgemmDqWordRows);  // word-rows (256 K) per block: one 16-byte Wb
                                                                 // chunk per lane of a warp
constexpr int kDqPitch = kDqWordRows + 1;  // uint4 per shared row: 8 lanes at a 528-byte stride hit 8 bank groups

// The region of Wb a launch writes: columns n in [n_first, n_end), word-rows r in [r_first, r_end) (layout rows
// 8r .. 8r + 7), stored at out[(n − n_first)·ld + 8(r − r_first)]: the whole Wb [N, Kp] (ld Kp), or one chunk of
// the overlapped products below.
struct DqRegion {
  int64_t n_first, n_end, r_first, r_end, ld;
};

// grid (ceil((n_end − n_first) / kDqCols), ceil((r_end − r_first) / kDqWordRows)). Load: thread (c = tid % 64,
// rr = tid / 64) dequantizes words (r0 + rr + 4i, n0 + c), i = 0..7, into tile[c][rr + 4i]. Store: warp w writes
// the tile's rows c = w, w + 8, ..., lane l the chunk tile[c][l] to Wb[n0 + c, 8(r0 + l) .. 8(r0 + l) + 8).
template <Q4Kind KIND>
__global__ void __launch_bounds__(kDqThreads) q4_dequant_bf16_kernel(const uint32_t* qweight, const uint32_t* meta,
                                                                     int64_t Np, int64_t group, DqRegion g,
                                                                     uint16_t* out) {
  __shared__ uint4 tile[kDqCols * kDqPitch];
  __shared__ float book[16];
  if constexpr (KIND != Q4Kind::Int) {
    if (threadIdx.x < 16) book[threadIdx.x] = c_tc_books[KIND == Q4Kind::Fp4 ? 1 : 0][threadIdx.x];
    __syncthreads();
  }
  const int64_t rows = g.r_end;
  const int64_t n0 = g.n_first + static_cast<int64_t>(blockIdx.x) * kDqCols;
  const int64_t r0 = g.r_first + static_cast<int64_t>(blockIdx.y) * kDqWordRows;
  {
    const int c = threadIdx.x % kDqCols, rr = threadIdx.x / kDqCols;
    const int64_t n = n0 + c;
    if (n < g.n_end) {  // Wb has N rows: the padding columns N..Np-1 are not read
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
    if (n >= g.n_end) break;
    *reinterpret_cast<uint4*>(out + (n - g.n_first) * g.ld + (r0 - g.r_first + lane) * 8) = tile[c * kDqPitch + lane];
  }
}

// The region g of Wb into out (16-byte aligned; g.ld a multiple of 8) on s.
void launch_dequant(const Q4View& w, const DqRegion& g, uint16_t* out, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>(ceil_div(g.n_end - g.n_first, kDqCols)),
                  static_cast<unsigned>(ceil_div(g.r_end - g.r_first, kDqWordRows)));
  QWENQ_CHECK(grid.y <= 65535, "the 4-bit dense path's dequantization: K=" << w.K << " is too large");
  switch (w.kind) {
    case Q4Kind::Int:
      q4_dequant_bf16_kernel<Q4Kind::Int><<<grid, kDqThreads, 0, s>>>(w.qweight, w.meta, w.Np, w.group, g, out);
      break;
    case Q4Kind::Nf4:
      q4_dequant_bf16_kernel<Q4Kind::Nf4><<<grid, kDqThreads, 0, s>>>(w.qweight, w.meta, w.Np, w.group, g, out);
      break;
    default:
      q4_dequant_bf16_kernel<Q4Kind::Fp4><<<grid, kDqThreads, 0, s>>>(w.qweight, w.meta, w.Np, w.group, g, out);
      break;
  }
  QWENQ_CUDA_CHECK_LAUNCH("q4_dequant_bf16_kernel (K=" << w.K << " N=" << w.N << ", columns " << g.n_first << ".."
                                                       << g.n_end << ", word-rows " << g.r_first << ".." << g.r_end
                                                       << ")");
}

// ---- the overlapped products ---------------------------------------------------------------------------------
// With one Wb the dequantization (16-186 µs on the 7B/72B weights) runs before the GEMM, 12-20 % of the product at
// M = 2048 (H200, 2026-12-04). Cut along the GEMM's reduction dimension (K for the forward, N for the transposed
// product) into C chunks, it overlaps: chunk i + 1 is dequantized on a side stream while chunk i's GEMM runs on the
// caller's stream, the GEMMs accumulating into the output (beta = 1 after the first), into two chunk buffers used
// in turn. The GEMMs keep the full output tiles (a cut along the output would leave partial waves), and only the
// first chunk's dequantization is exposed; the scratch is two chunks instead of the whole Wb. The sums gain C − 1
// fp32 roundings per output (chunk partials added in order), within the path's tolerance.
//   stream s (caller)                    side stream d
//   record ready                         wait ready
//                                        dequant chunk 0 -> buf 0; record dq0
//   wait dq0; GEMM 0; record g0          dequant chunk 1 -> buf 1; record dq1
//   wait dq1; GEMM 1; record g1          wait g0; dequant chunk 2 -> buf 0; record dq2
//   ...
// The buffers are allocated and freed on s (stream-ordered): d uses them only between "ready" and the last dq
// event, which s waits for before its last GEMM, so the free after it is ordered after d's work.

// The side stream of the current device (one per device, created on first use, never destroyed: the runtime may be
// gone when static destructors run), at the device's greatest priority: the block scheduler then gives a queued
// dequantization the SMs a GEMM frees before that GEMM's own next blocks, instead of only its last wave's tail
// (cuBLASLt's Hopper GEMMs run many full waves).
cudaStream_t side_stream() {
  static std::mutex mu;
  static std::vector<cudaStream_t> streams;
  int dev = 0;
  QWENQ_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  if (streams.size() <= static_cast<size_t>(dev)) streams.resize(static_cast<size_t>(dev) + 1, nullptr);
  if (streams[static_cast<size_t>(dev)] == nullptr) {
    int least = 0, greatest = 0;
    QWENQ_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    QWENQ_CUDA_CHECK(
        cudaStreamCreateWithPriority(&streams[static_cast<size_t>(dev)], cudaStreamNonBlocking, greatest));
  }
  return streams[static_cast<size_t>(dev)];
}

// Events of one overlapped call, destroyed at its end (a pending event's resources are released once it completes).
class CallEvents {
 public:
  cudaEvent_t make() {
    cudaEvent_t e = nullptr;
    QWENQ_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    events_.push_back(e);
    return e;
  }
  ~CallEvents() {
    for (cudaEvent_t e : events_)
      if (cudaEventDestroy(e) != cudaSuccess) cudaGetLastError();  // a destructor reports nothing
  }

 private:
  std::vector<cudaEvent_t> events_;
};

// `total` cut into pieces of qgemm_dense_chunk's extent: `count` of them (the last may be shorter).
struct Cut {
  int64_t chunk = 0, count = 1;
  Cut(int64_t total, int64_t chunks, int64_t unit)
      : chunk(qgemm_dense_chunk(total, chunks, unit)), count(ceil_div(total, chunk)) {}
};

// Runs dequant(i, buf) on d and gemm(i, buf) on s for i < count, overlapped as drawn above, with two buffers of
// `buf_elems` bf16 each.
template <typename Dequant, typename Gemm>
void overlapped(int64_t count, int64_t buf_elems, cudaStream_t s, Dequant dequant, Gemm gemm) {
  cudaStream_t d = side_stream();
  DeviceMemory bufs[2] = {DeviceMemory(static_cast<size_t>(buf_elems) * sizeof(uint16_t), s),
                          DeviceMemory(count > 1 ? static_cast<size_t>(buf_elems) * sizeof(uint16_t) : 0, s)};
  CallEvents ev;
  const cudaEvent_t ready = ev.make();
  QWENQ_CUDA_CHECK(cudaEventRecord(ready, s));
  QWENQ_CUDA_CHECK(cudaStreamWaitEvent(d, ready, 0));
  std::vector<cudaEvent_t> gemm_done(static_cast<size_t>(count));
  try {
    for (int64_t i = 0; i < count; ++i) {
      uint16_t* buf = bufs[i % 2].as<uint16_t>();
      if (i >= 2) QWENQ_CUDA_CHECK(cudaStreamWaitEvent(d, gemm_done[static_cast<size_t>(i - 2)], 0));
      dequant(i, buf, d);
      const cudaEvent_t dq = ev.make();
      QWENQ_CUDA_CHECK(cudaEventRecord(dq, d));
      QWENQ_CUDA_CHECK(cudaStreamWaitEvent(s, dq, 0));
      gemm(i, buf);
      gemm_done[static_cast<size_t>(i)] = ev.make();
      QWENQ_CUDA_CHECK(cudaEventRecord(gemm_done[static_cast<size_t>(i)], s));
    }
  } catch (...) {
    // s may not have waited for d's last dequantization: let it finish before the buffers go back to the pool.
    if (cudaStreamSynchronize(d) != cudaSuccess) cudaGetLastError();
    throw;
  }
}  // the buffers go back to the pool on s, after the last GEMM

}  // namespace

void q4_dequantize_bf16_cuda(const Q4View& w, uint16_t* out, void* stream) {
  q4_check(w, "q4_dequantize_bf16_cuda");
  QWENQ_CHECK(out != nullptr && reinterpret_cast<uintptr_t>(out) % 16 == 0,
              "q4_dequantize_bf16_cuda: the output must be a 16-byte aligned device pointer (16-byte stores)");
  launch_dequant(w, DqRegion{0, w.N, 0, w.Kp / 8, w.Kp}, out, static_cast<cudaStream_t>(stream));
}

namespace {

// The low-rank term's columns of a dense copy: bf16(B) [N, rb] at dst (row stride ld), zeros in columns rb..ra.
void put_lowrank(const Q4LowRank& lr, int64_t N, uint16_t* dst, int64_t ld, cudaStream_t s) {
  f32_to_bf16_strided_cuda(lr.B, N, lr.rb, lr.ra, 1.f, dst, ld, s);
}

// y = xa·Wbᵀ over Kp columns of xa (row stride lda), plus the low-rank term's ra columns after them when lr: the
// forward of the two entry points below. Column-major: yᵀ [N, M] = op_T(Wb as k x N) · xaᵀ (k x M), as
// linear_forward_cuda, k = Kp (+ ra); over chunks of K: yᵀ += op_T(Wb[:, k0:k1] as kc x N) · xaᵀ[k0:k1, :], the
// low-rank columns appended to the last chunk (its buffer rows hold them after the chunk's Ŵ columns).
void dense_forward(const Q4View& w, const uint16_t* xa, int64_t lda, int64_t M, float* y, const Q4LowRank* lr,
                   cudaStream_t s) {
  const int64_t ra = lr ? lr->ra : 0;
  LtGemm g;
  g.m = w.N, g.n = M, g.k = w.Kp + ra;
  g.trans_a = true, g.trans_b = false;
  g.a_type = DType::BF16, g.b_type = DType::BF16, g.d_type = DType::F32;
  g.lda = w.Kp + ra, g.ldb = lda, g.ldd = w.N;
  const int64_t chunks = qgemm_dense_chunks(w.N, w.Kp);
  if (chunks == 1) {
    DeviceMemory wb(static_cast<size_t>(w.N * (w.Kp + ra)) * sizeof(uint16_t), s);
    launch_dequant(w, DqRegion{0, w.N, 0, w.Kp / 8, w.Kp + ra}, wb.as<uint16_t>(), s);
    if (lr) put_lowrank(*lr, w.N, wb.as<uint16_t>() + w.Kp, w.Kp + ra, s);
    BlasLt::current().matmul(g, wb.get(), xa, y, nullptr, 1.f, s);
    return;  // wb goes back to the pool in stream order, after the matmul
  }
  const int64_t R = w.Kp / 8;  // word-rows
  const Cut cut(R, chunks, kDqWordRows);
  const int64_t ldp = 8 * cut.chunk + ra;  // a piece buffer's row: its Ŵ columns (+ the low-rank ones in the last)
  g.lda = ldp;
  overlapped(cut.count, w.N * ldp, s,
             [&](int64_t i, uint16_t* buf, cudaStream_t d) {
               const int64_t r0 = i * cut.chunk, r1 = std::min(R, r0 + cut.chunk);
               launch_dequant(w, DqRegion{0, w.N, r0, r1, ldp}, buf, d);
               if (lr && i == cut.count - 1) put_lowrank(*lr, w.N, buf + 8 * (r1 - r0), ldp, d);
             },
             [&](int64_t i, uint16_t* buf) {
               const int64_t r0 = i * cut.chunk, r1 = std::min(R, r0 + cut.chunk);
               LtGemm c = g;
               c.k = 8 * (r1 - r0) + (i == cut.count - 1 ? ra : 0);
               c.accumulate = i > 0;
               BlasLt::current().matmul(c, buf, xa + 8 * r0, y, nullptr, 1.f, s);
             });
}

// The low-rank term's rows of a transposed dense copy: bf16(A) [rb, Kp] at dst (rows of Kp), zero rows rb..ra.
void put_lowrank_rows(const Q4LowRankT& lr, int64_t Kp, uint16_t* dst, cudaStream_t s) {
  f32_to_bf16_strided_cuda(lr.A, lr.rb, Kp, Kp, 1.f, dst, Kp, s);
  if (lr.rb < lr.ra)
    QWENQ_CUDA_CHECK(cudaMemsetAsync(dst + lr.rb * Kp, 0, static_cast<size_t>((lr.ra - lr.rb) * Kp) * sizeof(uint16_t),
                                     s));
}

// out (+)= dyb·Wb over N rows of dyb (row stride ldb), plus the low-rank term's ra rows after them when lr: the
// transposed product of the two entry points below. Column-major: outᵀ [Kp, M] = (Wb as Kp x k) · dybᵀ (k x M), as
// linear_backward_input_cuda, k = N (+ ra); over chunks of N: outᵀ += (Wb[n0:n1, :] as Kp x nc) · dybᵀ[n0:n1, :], the
// low-rank rows appended to the last chunk (its buffer holds them after the chunk's Ŵ rows). accumulate: beta = 1
// from the first chunk on (out += the product), else out is written.
void dense_transposed(const Q4View& w, const uint16_t* dyb, int64_t ldb, int64_t M, float* out, const Q4LowRankT* lr,
                      bool accumulate, cudaStream_t s) {
  const int64_t ra = lr ? lr->ra : 0, Kp = w.Kp;
  LtGemm g;
  g.m = Kp, g.n = M, g.k = w.N + ra;
  g.trans_a = false, g.trans_b = false;
  g.a_type = DType::BF16, g.b_type = DType::BF16, g.d_type = DType::F32;
  g.lda = Kp, g.ldb = ldb, g.ldd = Kp;
  g.accumulate = accumulate;
  const int64_t chunks = qgemm_dense_chunks(w.N, Kp);
  if (chunks == 1) {
    DeviceMemory wb(static_cast<size_t>((w.N + ra) * Kp) * sizeof(uint16_t), s);
    launch_dequant(w, DqRegion{0, w.N, 0, Kp / 8, Kp}, wb.as<uint16_t>(), s);
    if (lr) put_lowrank_rows(*lr, Kp, wb.as<uint16_t>() + w.N * Kp, s);
    BlasLt::current().matmul(g, wb.get(), dyb, out, nullptr, 1.f, s);
    return;  // wb goes back to the pool in stream order, after the matmul
  }
  const Cut cut(w.N, chunks, kDqCols);
  overlapped(cut.count, (cut.chunk + ra) * Kp, s,
             [&](int64_t j, uint16_t* buf, cudaStream_t d) {
               const int64_t n0 = j * cut.chunk, n1 = std::min(w.N, n0 + cut.chunk);
               launch_dequant(w, DqRegion{n0, n1, 0, Kp / 8, Kp}, buf, d);
               if (lr && j == cut.count - 1) put_lowrank_rows(*lr, Kp, buf + (n1 - n0) * Kp, d);
             },
             [&](int64_t j, uint16_t* buf) {
               const int64_t n0 = j * cut.chunk, n1 = std::min(w.N, n0 + cut.chunk);
               LtGemm c = g;
               c.k = n1 - n0 + (j == cut.count - 1 ? ra : 0);
               c.accumulate = accumulate || j > 0;
               BlasLt::current().matmul(c, buf, dyb + n0, out, nullptr, 1.f, s);
             });
}

}  // namespace

void qgemm_int4_dense_cuda(const Q4View& w, const void* x, DType x_dtype, int64_t M, float* y, void* stream) {
  const char* fn = "qgemm_int4_dense_cuda";
  qgemm_tc_detail::check_tc_args(w, x, x_dtype, M, y, fn);
  const std::string ctx = qgemm_tc_detail::tc_context(fn, w, M, x_dtype);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  DeviceMemory staged;
  int64_t lda = 0, width = 0;
  const uint16_t* xa = qgemm_tc_detail::maybe_stage(x, w.perm, M, w.K, &staged, &lda, &width, s, ctx);
  QWENQ_CHECK(width == w.Kp, fn << ": staged width " << width << " is not Kp=" << w.Kp << " (" << ctx << ")");
  dense_forward(w, xa, lda, M, y, nullptr, s);
}  // the staging copy goes back to the pool in stream order, after the last matmul

void qgemm_int4_dense_lowrank_cuda(const Q4View& w, const uint16_t* xa, const Q4LowRank& lr, int64_t M, float* y,
                                   void* stream) {
  const char* fn = "qgemm_int4_dense_lowrank_cuda";
  qgemm_tc_detail::check_tc_args(w, xa, DType::BF16, M, y, fn);
  qgemm_lowrank_check(w, lr.ra, lr.rb, lr.B, /*transposed=*/false, fn);
  QWENQ_CHECK(is_aligned(xa, 16), fn << ": xa must be 16-byte aligned (its rows are Kp + ra bf16 values)");
  dense_forward(w, xa, w.Kp + lr.ra, M, y, &lr, static_cast<cudaStream_t>(stream));
}

void qgemm_int4_t_dense_cuda(const Q4View& w, const void* dy, DType dy_dtype, int64_t M, float* dx, void* stream) {
  const char* fn = "qgemm_int4_t_dense_cuda";
  qgemm_tc_detail::check_tc_args(w, dy, dy_dtype, M, dx, fn);
  const std::string ctx = qgemm_tc_detail::tc_context(fn, w, M, dy_dtype);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  // Straight into dx when its columns are the layout rows (no act-order, Kp == K), else into a scratch scattered
  // afterwards.
  const bool direct = w.perm == nullptr && w.Kp == w.K;
  DeviceMemory tmp;
  if (!direct) tmp = DeviceMemory(static_cast<size_t>(M * w.Kp) * sizeof(float), s);
  dense_transposed(w, static_cast<const uint16_t*>(dy), w.N, M, direct ? dx : tmp.as<float>(), nullptr, false, s);
  if (!direct) {
    // dx[m, perm ? perm[kk] : kk] = tmp[m, kk] for kk < K: the split-K reduction with one split.
    launch_reduce(tmp.as<float>(), 1, M, M, w.Kp, w.K, w.perm, dx, s);
    QWENQ_CUDA_CHECK_LAUNCH("reduce_kernel (dx scatter) for " << ctx);
  }
}

// dx (+)= [dy | g]·[Ŵ ; A]: the transposed product above over N + ra rows of the dense copy, A's rows after Ŵ's
// (in the last piece with the overlap), straight into dx (no act-order, Kp == K), beta = 1 when accumulating.
void qgemm_int4_t_dense_lowrank_cuda(const Q4View& w, const uint16_t* dya, const Q4LowRankT& lr, int64_t M, float* dx,
                                     bool accumulate, void* stream) {
  const char* fn = "qgemm_int4_t_dense_lowrank_cuda";
  qgemm_tc_detail::check_tc_args(w, dya, DType::BF16, M, dx, fn);
  qgemm_lowrank_check(w, lr.ra, lr.rb, lr.A, /*transposed=*/true, fn);
  QWENQ_CHECK(is_aligned(dya, 16), fn << ": dya must be 16-byte aligned (its rows are N + ra bf16 values)");
  dense_transposed(w, dya, w.N + lr.ra, M, dx, &lr, accumulate, static_cast<cudaStream_t>(stream));
}

}  // namespace qwenq
