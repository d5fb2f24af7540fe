// Hopper (sm_90a) W4A16 GEMMs on the Q4 layout with wgmma, declared in kernels/qgemm.h:
//
//   qgemm_int4_wgmma_cuda     y[M, N]  = x[M, K] · Ŵᵀ    y[m, n]  = Σ_k x[m, k] · bf16(ŵ[n, k])    (fp32 sums)
//   qgemm_int4_t_wgmma_cuda   dx[M, K] = dy[M, N] · Ŵ    dx[m, k] = Σ_n dy[m, n] · bf16(ŵ[n, k]), scattered
//                                                        to dx[:, perm[kk]] for act-order
//
// The same products, numerics and arguments as qgemm_int4_tc_cuda / qgemm_int4_t_tc_cuda (kernels/qgemm_tc.cu),
// one kernel template for both directions: bf16 activations, the
// weight dequantized in fp32 exactly as q4_dequant and rounded once to bf16, exact bf16 x bf16 products, fp32
// accumulation and an fp32 output written (not accumulated). It differs from the mma.sync kernels only by the
// order of the fp32 sums, and from the CPU twin by that order and the weight rounding (the bound of
// tests/gpu/test_qgemm_tc_cuda.cpp, which runs both kernels).
//
// Why wgmma: mma.sync issues one m16n8k16 per warp and instruction and feeds both operands from registers
// loaded by ldmatrix; on Hopper it reaches about two thirds of the dense bf16 peak (REFERENCE B3). wgmma
// (warpgroup MMA, 4 warps, asynchronous) reads both operands straight from shared memory through 64-bit
// descriptors and issues a 64 x 128 x 16 product per instruction, leaving the warps' issue slots to the
// dequantization.
//
// Tiling (written for the forward; the transposed product swaps the roles, see the kernel): a block of 256
// threads (2 warpgroups) owns a 128 x 128 output tile; warpgroup g computes rows
// 64g..64g+63 against all 128 columns with m64n128k16 (64 fp32 accumulators per thread). The reduction runs in
// 64-deep stages (one 128-byte row of bf16 per tile row, the 128-byte swizzle of kernels/wgmma_layout.h):
// - x: [128 rows][64 k] bf16 per stage, copied by cp.async (16 bytes, zero-fill past M and past the valid K)
//   straight into the swizzled layout; 4 stages in flight.
// - Ŵ: the packed words (8 word-rows x 128 columns = 1024 words) and their metas (one per word, so any group
//   multiple of 8 is one code path) staged by cp.async with x; each thread then dequantizes 4 words into the
//   bf16 tile Ws[n][k] (one 16-byte store per word, 8 consecutive k of column n = one swizzled chunk), double
//   buffered.
// - Iteration t: wait for stage t + 1, fence the generic-proxy writes (cp.async data, the dequantized tile)
//   for the tensor cores' async proxy, one barrier, queue the copy of stage t + 3, issue the 4 wgmmas of stage
//   t (asynchronous), dequantize stage t + 1 into the other Ws buffer while they run, then wait for them (the
//   next iteration overwrites what they read).
// Shared memory: 4 x 16 KB (x) + 4 x 8 KB (words, metas) + 2 x 16 KB (Ŵ) = 128 KB + 1 KB for the 1024-byte
// alignment the swizzle needs: one block per SM, 8 warps.
//
// The M, N, K tails cost no branch in the loop: zero-filled copies make x, words and metas 0 past the ends,
// and padding dequantizes to 0. Activations that the copies cannot read directly (act-order perm, K % 8 != 0,
// misaligned) are staged first, as in the mma.sync kernel (qgemm_tc_common.cuh).
//
// Built only into the sm_90a image (the body needs __CUDA_ARCH_FEAT_SM90_ALL); cuda_wgmma_supported()
// (kernels/wgmma_probe.cu) probes the running device's image, and the launcher refuses with a message elsewhere.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "kernels/qgemm.h"
#include "kernels/qgemm_tc_common.cuh"
#include "kernels/wgmma.cuh"
#include "kernels/wgmma_layout.h"

namespace qwenq {
namespace {

using namespace qgemm_tc_detail;

constexpr int kThreads = 256;  // 2 warpgroups
constexpr int kBM = kTcBlockRows;
constexpr int kBN = 128;
constexpr int kBK = kWgmmaTileK;  // 64: one 128-byte swizzled row
constexpr int kStages = 4;
constexpr int kRawWords = kBK * kBN / 8;  // 1024 packed words (and metas) per stage, both directions
constexpr uint32_t kTileBytes = 128 * kWgmmaRowBytes;  // 16 KB: 128 rows of x, or 128 columns of Ŵ
static_assert(kBM == 128 && kBN == 128, "two m64 warpgroups x one n128 product");
static_assert(kRawWords == 4 * kThreads, "each thread dequantizes four words per stage");
static_assert(kRawWords / 4 == kThreads, "one 16-byte copy of words and one of metas per thread and stage");

constexpr uint32_t kAOff = 0;
constexpr uint32_t kWOff = kAOff + kStages * kTileBytes;
constexpr uint32_t kRawWOff = kWOff + 2 * kTileBytes;
constexpr uint32_t kRawMOff = kRawWOff + kStages * kRawWords * 4;
constexpr uint32_t kSmemUsed = kRawMOff + kStages * kRawWords * 4;  // 131072
constexpr size_t kSmemBytes = kSmemUsed + kWgmmaAtomBytes;            // slack for the 1024-byte alignment
static_assert(kWOff % kWgmmaAtomBytes == 0 && kTileBytes % kWgmmaAtomBytes == 0, "swizzle atoms stay aligned");



// C[m, c] = Σ_r A[m, r] · B[r, c]: forward A = x, r = k, c = n, B[k][n] = ŵ[n, k]; transposed A = dy, r = n,
// c = kk, B[n][kk] = ŵ[n, kk]. In both the B tile is stored "K-major" for wgmma: row c of the tile holds the 64
// reduction values of output column c, so one descriptor layout serves both directions. Forward: a packed word
// (8 consecutive k of column n) is one 16-byte chunk of row n. Transposed: a word holds 8 consecutive output
// columns kk of one reduction index n, so each thread dequantizes 4 words of adjacent n (one word-row) and
// writes, for each of its 8 kk, the 4 values as one 8-byte piece of row kk (a register transpose by byte
// permutes).
template <Q4Kind KIND, bool TRANS>
__global__ void __launch_bounds__(kThreads, 1) qgemm_wgmma_kernel(TcParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ float book[16];
  if constexpr (KIND != Q4Kind::Int) {
    if (threadIdx.x < 16) book[threadIdx.x] = c_tc_books[KIND == Q4Kind::Fp4 ? 1 : 0][threadIdx.x];
  }
  // The swizzle is a function of address bits 4..9: every tile starts on a 1024-byte boundary.
  uint32_t base;
  unsigned char* smem = wgmma_align_smem(smem_raw, &base);
  uint32_t* raw_w = reinterpret_cast<uint32_t*>(smem + kRawWOff);  // [kStages][8][128]
  uint32_t* raw_m = reinterpret_cast<uint32_t*>(smem + kRawMOff);  // [kStages][8][128]

  const int tid = threadIdx.x;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kBM;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kBN;  // output columns: n forward, kk transposed
  const int64_t word_rows = p.Kp / 8;
  constexpr int kRawCols = TRANS ? kBK : kBN;

  const auto load_tile = [&](int t, int s) {
    const int64_t r0 = static_cast<int64_t>(t) * kBK;  // reduction origin: k forward, n transposed
    unsigned char* A = smem + kAOff + s * kTileBytes;
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // 128 rows x 8 chunks of 8 bf16; 8 consecutive threads read one row
      const int ch = tid + i * kThreads;
      const int row = ch >> 3, c = ch & 7;
      const int64_t m = m0 + row, k = r0 + c * 8;
      const bool ok = m < p.M && k < p.a_width;
      cp_async16(A + wgmma_sw128_chunk_offset(row, c), ok ? p.a + m * p.lda + k : p.a, ok);
    }
    // Packed tile [kRawRows][kRawCols]: forward 8 word-rows (64 k) x 128 columns n; transposed 16 word-rows
    // (128 kk) x 64 columns n. Thread tid copies words rl, cc..cc+3 and their metas.
    const int rl = tid / (kRawCols / 4), cc = (tid % (kRawCols / 4)) * 4;
    const int64_t wr = TRANS ? c0 / 8 + rl : r0 / 8 + rl;
    const int64_t n = TRANS ? r0 + cc : c0 + cc;
    const bool ok = wr < word_rows && n < p.Np;
    cp_async16(raw_w + s * kRawWords + rl * kRawCols + cc, ok ? p.qweight + wr * p.Np + n : p.qweight, ok);
    const int64_t g = ok ? wr * 8 / p.group : 0;
    cp_async16(raw_m + s * kRawWords + rl * kRawCols + cc, ok ? p.meta + g * p.Np + n : p.meta, ok);
  };

  const auto dequant_tile = [&](int s, int b) {
    unsigned char* W = smem + kWOff + b * kTileBytes;
    const uint32_t* rw = raw_w + s * kRawWords;
    const uint32_t* rm = raw_m + s * kRawWords;
    if constexpr (!TRANS) {
      // Word (rl, n) -> the 8 bf16 of Ŵ[n][8·rl .. 8·rl + 7] = chunk rl of row n.
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int idx = tid + i * kThreads;
        const int rl = idx / kBN, n = idx % kBN;
        *reinterpret_cast<uint4*>(W + wgmma_sw128_chunk_offset(n, rl)) = dequant_word<KIND>(rw[idx], rm[idx], book);
      }
    } else {
      // Words (rl, 4·q .. 4·q + 3): value j of word i is ŵ[n = 4q + i, kk = 8·rl + j] -> row 8·rl + j, bytes
      // 8q .. 8q + 7 of its 128 (chunk q / 2, half q % 2).
      const int rl = tid >> 4, q = tid & 15;
      const uint4 w4 = *reinterpret_cast<const uint4*>(rw + rl * 64 + 4 * q);  // one 16-byte load each: the
      const uint4 m4 = *reinterpret_cast<const uint4*>(rm + rl * 64 + 4 * q);  // quads of a warp, no conflicts
      const uint4 v[4] = {dequant_word<KIND>(w4.x, m4.x, book), dequant_word<KIND>(w4.y, m4.y, book),
                          dequant_word<KIND>(w4.z, m4.z, book), dequant_word<KIND>(w4.w, m4.w, book)};
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const auto pair = [&](const uint4& u) { return j < 2 ? u.x : j < 4 ? u.y : j < 6 ? u.z : u.w; };
        *reinterpret_cast<uint2*>(W + wgmma_sw128_quad_offset(8 * rl + j, q)) =
            make_uint2(wgmma_pick_halves(pair(v[0]), pair(v[1]), j & 1), wgmma_pick_halves(pair(v[2]), pair(v[3]), j & 1));
      }
    }
  };

  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
  const int wg = tid >> 7;  // warpgroup: output rows 64·wg .. 64·wg + 63 of the tile

  const auto issue_mma = [&](int s, int b) {
    const uint32_t a_addr = base + kAOff + s * kTileBytes + wg * 64 * kWgmmaRowBytes;
    const uint32_t w_addr = base + kWOff + b * kTileBytes;
    wgmma_fence_operand(acc);
    wgmma_fence();
#pragma unroll
    for (int k16 = 0; k16 < kBK / 16; ++k16)
      wgmma_ss_m64n128k16(acc, wgmma_sw128_descriptor(a_addr + k16 * 32), wgmma_sw128_descriptor(w_addr + k16 * 32));
    wgmma_commit();
  };

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < p.k_tiles) load_tile(s, s);
    cp_async_commit();
  }
  cp_async_wait<kStages - 2>();
  __syncthreads();  // stage 0 landed for every thread; the code book is published
  dequant_tile(0, 0);
  for (int t = 0; t < p.k_tiles; ++t) {
    cp_async_wait<kStages - 3>();  // stage t + 1 landed (this thread's copies)
    fence_proxy_async();           // this thread's dequant stores and landed copies, for the tensor cores
    __syncthreads();
    const int tn = t + kStages - 1;
    if (tn < p.k_tiles) load_tile(tn, tn % kStages);  // the stage tile t - 1 used; its wgmmas were waited for
    cp_async_commit();
    issue_mma(t % kStages, t & 1);
    if (t + 1 < p.k_tiles) dequant_tile((t + 1) % kStages, (t + 1) & 1);
    wgmma_wait<0>();
    wgmma_fence_operand(acc);
  }
  cp_async_wait<0>();

  // Epilogue: thread tw of the warpgroup holds rows wgmma_acc_row(tw, e) and columns wgmma_acc_col(tw, j, e).
  const int tw = tid & 127;
#pragma unroll
  for (int j = 0; j < 16; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t m = m0 + wg * 64 + wgmma_acc_row(tw, 2 * h);
      const int64_t c = c0 + wgmma_acc_col(tw, j, 0);
      if (m >= p.M) continue;
      const float v0 = acc[4 * j + 2 * h], v1 = acc[4 * j + 2 * h + 1];
      float* row = p.out + m * p.n_out;
      if constexpr (!TRANS) {
        if (c + 1 < p.n_out && (p.n_out & 1) == 0) {
          *reinterpret_cast<float2*>(row + c) = make_float2(v0, v1);  // 8-byte aligned: m·N and c even
        } else {
          if (c < p.n_out) row[c] = v0;
          if (c + 1 < p.n_out) row[c + 1] = v1;
        }
      } else {
        if (c < p.n_out) row[p.perm ? p.perm[c] : c] = v0;
        if (c + 1 < p.n_out) row[p.perm ? p.perm[c + 1] : c + 1] = v1;
      }
    }
#else
  __trap();  // never launched without sm_90a code (the launchers check cuda_wgmma_supported)
#endif
}

}  // namespace

namespace {

template <bool TRANS>
void launch_wgmma(const Q4View& w, const void* a, DType dtype, int64_t M, float* out, void* stream,
                  const char* fn) {
  check_tc_args(w, a, dtype, M, out, fn);
  QWENQ_CHECK(cuda_wgmma_supported(), fn << ": needs an sm_90 GPU (H100/H200) and a build with the sm_90a target "
                                             "(QWENQ_CUDA_ARCHS contains 90a); use the mma.sync kernels elsewhere (M="
                                          << M << " K=" << w.K << " N=" << w.N << ")");
  const std::string ctx = tc_context(fn, w, M, dtype);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  DeviceMemory staged;
  const TcParams p = tc_params(w, a, M, out, TRANS, kBK, &staged, s, ctx);
  const dim3 grid(static_cast<unsigned>(ceil_div(p.n_out, kBN)), static_cast<unsigned>(ceil_div(M, kBM)));
  const auto go = [&](auto kernel) {
    QWENQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(kSmemBytes)));
    kernel<<<grid, kThreads, kSmemBytes, s>>>(p);
  };
  if (w.kind == Q4Kind::Int) go(qgemm_wgmma_kernel<Q4Kind::Int, TRANS>);
  else if (w.kind == Q4Kind::Nf4) go(qgemm_wgmma_kernel<Q4Kind::Nf4, TRANS>);
  else go(qgemm_wgmma_kernel<Q4Kind::Fp4, TRANS>);
  QWENQ_CUDA_CHECK_LAUNCH("qgemm_wgmma_kernel " << ctx);
}

}  // namespace

void qgemm_int4_wgmma_cuda(const Q4View& w, const void* x, DType x_dtype, int64_t M, float* y, void* stream) {
  launch_wgmma<false>(w, x, x_dtype, M, y, stream, "qgemm_int4_wgmma_cuda");
}

void qgemm_int4_t_wgmma_cuda(const Q4View& w, const void* dy, DType dy_dtype, int64_t M, float* dx, void* stream) {
  launch_wgmma<true>(w, dy, dy_dtype, M, dx, stream, "qgemm_int4_t_wgmma_cuda");
}

}  // namespace qwenq
