// Fused dequant-matmul (W4A16) on the Q4 layout (quant/format/qgemm_layout.h), without materializing Ŵ:
//
//   forward     y[M, N]  = x[M, K] · Ŵᵀ        y[m, n]  = Σ_k x[m, k] · ŵ[n, k]
//   transposed  dx[M, K] = dy[M, N] · Ŵ        dx[m, k] = Σ_n dy[m, n] · ŵ[n, k]   (backward w.r.t. the input)
//
// ŵ[n, k] is exactly q4_dequant(...) of the layout, i.e. exactly what the source format's reader computes
// (GPTQ v1/v2, AWQ GEMM, bitsandbytes NF4/FP4 with double quantization). Products and sums are fp32. The
// outputs y and dx are fp32 [M, N] and [M, K] row-major, written (not accumulated); the caller casts or adds.
//
// Activation dtype: both twins take `x_dtype` (or `dy_dtype`), F32 or BF16, for x/dy [M, K]/[M, N] row-major.
// The CUDA kernels are meant for bf16 activations (half the bytes of fp32, what the model runs in); the CPU
// twin is usually called with fp32. A bf16 value widens to fp32 exactly, so passing the same bf16 buffer to
// both twins (or its fp32 widening to the CPU twin) gives both the same inputs.
//
// The two twins have the same argument lists; the CUDA ones take device pointers (the Q4View's arrays
// included, see Q4DeviceWeight) and an optional cudaStream_t passed as void* (null: the default stream).
// They run asynchronously on that stream; errors in the arguments throw qwenq::Error naming the values.
//
// CUDA regimes. qgemm_int4_cuda / qgemm_int4_t_cuda dispatch on M and the activation dtype
// (qgemm_cuda_uses_tensor_cores): M <= kQgemmDecodeMaxM or F32 activations -> the decode kernels (the BF16
// forward, and with QWENQ_DECODE_MMA_F32=1 the F32 one up to M = 64, on tensor cores, qgemm_int4_decode_mma_cuda,
// where it supports the weight), otherwise (M > 64, BF16)
// -> the tensor-core kernels, or from kQgemmDenseMinM rows the dense path (see the switches below). Each
// regime also has its own launcher name, for tests and benchmarks that must reach one path explicitly:
// - qgemm_int4_decode_cuda / qgemm_int4_t_decode_cuda (kernels/qgemm.cu): decode / small batch (M = 1..64,
//   memory bound): streams the packed words once per tile of 8 rows of x with 128-bit loads, fp32 FMAs on
//   CUDA cores with the exact fp32 ŵ, split-K across blocks with a deterministic reduction. It accepts any
//   M, but beyond ~8 rows FP32 FMAs, not HBM, bound it (H200: 67 TFLOP/s FP32 vs 4.8 TB/s is 14 FLOP/byte,
//   and each packed byte feeds 4·M FLOPs).
// - qgemm_int4_tc_cuda / qgemm_int4_t_tc_cuda (kernels/qgemm_tc.cu): prefill / training (M = 65..16384,
//   compute bound): 128 x 128 x 32 block tiles, packed words and metas staged by cp.async, dequantized once
//   per block into a bf16 tile in shared memory, mma.sync m16n8k16 bf16 with fp32 accumulation. BF16
//   activations only. Numerics: ŵ is computed in fp32 exactly as q4_dequant and then rounded once to bf16
//   (nearest even) for the tensor cores, as Marlin/Machete/bitsandbytes do; products bf16 x bf16 are exact
//   in fp32, so the result differs from the CPU twin by that weight rounding (at most 2^-9·Σ|x|·|ŵ| per
//   output, usually far less) plus the summation order. Output fp32 (written), like the decode kernels.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "quant/format/qgemm_layout.h"
#ifdef QWENQ_HAVE_CUDA
#include <string>

#include "kernels/device_allocator.h"
#endif

namespace qwenq {

// CPU twins (kernels/qgemm_ref.cpp): plain loops, fp32 accumulation in increasing layout-row (forward) or
// column (transposed) order, parallel over output columns / input rows with parallel_for.
void qgemm_int4_ref(const Q4View& w, const void* x, DType x_dtype, int64_t M, float* y);
void qgemm_int4_t_ref(const Q4View& w, const void* dy, DType dy_dtype, int64_t M, float* dx);

// Ŵ as bf16 in layout order: out[n·Kp + kk] = bf16(q4_dequant(code of layout row kk, column n)) for n < N, kk < Kp
// (rounded to nearest even; the padding rows kk >= K dequantize to +0). out: [N, Kp], 16-byte aligned. The dense
// prefill path's first step (qgemm_int4_dense_cuda below); the CUDA twin gives the same bits.
void q4_dequantize_bf16_ref(const Q4View& w, uint16_t* out);

// F32 activations for the bf16 tensor cores (qgemm_int4_decode_mma_cuda): x [M, K] fp32 row-major into out [3M,
// width] bf16 bits, piece p (0: h, 1: m, 2: l of kernels/bf16_split.h) of x[m, perm ? perm[kk] : kk] at out[(p·M +
// m)·width + kk] for kk < K, zeros for K <= kk < width (width >= K). The three pieces of a finite value sum to it
// exactly, so the product of the 3M rows, its row blocks added, is the fp32 product. perm (may be null): a
// permutation of [0, K) (the act-order gather; the ref checks it, the CUDA twin trusts it).
void qgemm_split_x3_ref(const float* x, int64_t M, int64_t K, const int32_t* perm, int64_t width, uint16_t* out);

// The dispatch rule of qgemm_int4_cuda / qgemm_int4_t_cuda: M > 64 with BF16 activations is the prefill regime.
constexpr int64_t kQgemmDecodeMaxM = 64;
inline bool qgemm_cuda_uses_tensor_cores(int64_t M, DType act_dtype) {
  return M > kQgemmDecodeMaxM && act_dtype == DType::BF16;
}
// Within it, the dense path from this M by default. H200, 2026-12-04, with the dequantization at 2.8-3.3 TB/s on
// the large 7B/72B shapes: 0.57-0.63x cuBLASLt's bf16 GEMM at M = 512 (the fused wgmma kernels 0.11-0.34x),
// 0.80-0.88x at 2048, 0.92-1.09x at 8192. Below 512 it is not measured; the dequantization (16-186 µs) against
// the wgmma kernels' extra time per row puts the crossover near M = 150-200.
constexpr int64_t kQgemmDenseMinM = 512;

// The paths the dispatchers take, from the environment (kernels/qgemm_paths.cpp; every build, so that the memory
// plan can count the dense path's scratch and the device line can name them):
//   QWENQ_DECODE_MMA    unset or 1: the decode forward on tensor cores where it supports the weight; 0: the FMA
//                       decode kernels for every weight
//   QWENQ_QGEMM_DENSE   unset: the dense path for M >= kQgemmDenseMinM, the fused tensor-core kernels below it;
//                       1: the dense path for every M > 64; 0: never
//   QWENQ_DECODE_MMA_F32  1: F32 activations (the exact decode of qwen-quant generate) also take the tensor-core
//                       decode product, split into three bf16 pieces (opt-in until it has run on a GPU; it needs
//                       QWENQ_DECODE_MMA on); unset or 0: the FMA decode kernel for F32
// Values other than 0 and 1 are the default.
bool qgemm_decode_mma_enabled();
bool qgemm_decode_mma_f32_enabled();
int64_t qgemm_dense_min_m();     // the smallest M the dense path runs for (INT64_MAX: never)
bool qgemm_dense_for(int64_t M);  // the dense path for a prefill-regime product of M rows (M > 64)

// The dense path's overlap (kernels/qgemm_dense.cu), with QWENQ_QGEMM_OVERLAP=1 (opt-in: it has not run on a GPU
// yet): a weight of at least kQgemmOverlapMinElems values (N·Kp) is dequantized and multiplied in
// kQgemmOverlapChunks pieces along the GEMM's reduction dimension (K for the forward, N for the transposed product),
// each piece's dequantization on a side stream while the previous piece's GEMM runs, through two piece buffers
// (fewer pieces when a dimension has fewer whole tiles). Otherwise one piece: the whole Wb, then one GEMM. Pieces
// are whole tiles
// of the dequantization kernel: kQgemmDqWordRows word-rows (256 layout rows) along K, kQgemmDqCols columns along N.
constexpr int64_t kQgemmOverlapMinElems = int64_t{8} << 20;  // 8M values: 20 MB of traffic, ~7 µs at 3 TB/s
constexpr int64_t kQgemmOverlapChunks = 4;
constexpr int64_t kQgemmDqCols = 64, kQgemmDqWordRows = 32;
int64_t qgemm_dense_chunks(int64_t N, int64_t Kp);  // 1 or kQgemmOverlapChunks
// The extent of each piece when `total` (word-rows or columns) is cut into `chunks` pieces of whole `unit`s:
// ceil(ceil(total / chunks) / unit) · unit (the last piece holds the rest).
int64_t qgemm_dense_chunk(int64_t total, int64_t chunks, int64_t unit);
// The dense path's device scratch for one [N, Kp] weight, the larger of its two products: N·Kp bf16 (one piece), or
// its pieces' buffers (forward: N x 8·chunk(Kp/8); transposed: chunk(N) x Kp; two of them when the cut makes more
// than one piece). The memory plan's count.
// ra > 0: the products with a folded low-rank term (qgemm_int4_dense_lowrank_cuda and _t_ below), whose copy of Ŵ
// has ra more columns (forward, each piece) or ra more rows (transposed, each piece).
int64_t qgemm_dense_scratch_bytes(int64_t N, int64_t Kp, int64_t ra = 0);

// A low-rank term folded into the dense forward's reduction (the GPU QLoRA trainer's adapted 4-bit Linears with
// QWENQ_LORA_FOLD=1, opt-in until it has run on a GPU):
//
//   y[m, n] = Σ_{kk < Kp} xa[m, kk]·bf16(ŵ[n, kk]) + Σ_{j < rb} xa[m, Kp + j]·bf16(B[n, j])
//
// i.e. [x | a]·[Ŵ | B]ᵀ as one GEMM over Kp + ra columns, so the adapter's s·(x̃Aᵀ)Bᵀ (a = s·u) reaches y inside the
// base product instead of a second pass that reads and writes y. xa: bf16 [M, Kp + ra] row-major, x in layout order
// in columns [0, Kp) (zeros past K) and a in [Kp, Kp + ra) (zeros past rb); B: fp32 [N, rb] row-major (rb <= ra),
// rounded to bf16 into the dense copy of Ŵ. Numerics: the dense path's (bf16 x and ŵ, fp32 sums) with a and B in bf16
// too (as peft's bf16 autocast computes the adapter's branch). Needs a weight without act-order (perm null: xa is
// not gathered), ra a multiple of 8, xa 16-byte aligned. With QWENQ_QGEMM_OVERLAP's pieces the term joins the last.
bool qgemm_lora_fold_enabled();  // QWENQ_LORA_FOLD=1
struct Q4LowRank {
  int64_t ra = 0;            // columns of a in xa (a multiple of 8)
  const float* B = nullptr;  // [N, rb] fp32
  int64_t rb = 0;            // 1 <= rb <= ra
};
void qgemm_int4_dense_lowrank_ref(const Q4View& w, const uint16_t* xa, const Q4LowRank& lr, int64_t M, float* y);
// The backward's twin, the input gradient of the same Linear with the adapter's g = s·(dy B) [M, rb] folded in:
//
//   dx[m, k] (+)= Σ_{n < N} dya[m, n]·bf16(ŵ[n, k]) + Σ_{j < rb} dya[m, N + j]·bf16(A[j, k])
//
// i.e. [dy | g]·[Ŵ ; A] as one GEMM over N + ra rows of the dense copy (A's rows appended after Ŵ's), instead of
// dx += g·A reading and writing dx once more. dya: bf16 [M, N + ra] row-major, dy in [0, N), g in [N, N + ra) (zeros
// past rb); A: fp32 [rb, K] row-major. accumulate: dx += the sum (cuBLASLt's beta = 1, so an accumulating Linear
// needs no scratch and no add either), else dx is written. Needs no act-order and Kp == K (dx's columns are the
// layout's), ra a multiple of 8, dya 16-byte aligned. With QWENQ_QGEMM_OVERLAP's pieces (cut along N) A's rows join
// the last piece.
struct Q4LowRankT {
  int64_t ra = 0;            // columns of g in dya (a multiple of 8)
  const float* A = nullptr;  // [rb, K] fp32
  int64_t rb = 0;            // 1 <= rb <= ra
};
void qgemm_int4_t_dense_lowrank_ref(const Q4View& w, const uint16_t* dya, const Q4LowRankT& lr, int64_t M, float* dx,
                                    bool accumulate);
// The four low-rank entry points' common rule (both products, both twins): no act-order (and Kp == K for the
// transposed one, whose dx columns are the layout's), ra a positive multiple of 8, 1 <= rb <= ra, the factor (B or
// A) not null. Throws qwenq::Error naming fn otherwise.
void qgemm_lowrank_check(const Q4View& w, int64_t ra, int64_t rb, const float* factor, bool transposed, const char* fn);

#ifdef QWENQ_HAVE_CUDA
// Device twins (dispatchers, see above). y / dx must not overlap x / dy. Results are deterministic (no
// atomics): the split-K partial sums are reduced in a fixed order and the tensor-core path does not split.
void qgemm_int4_cuda(const Q4View& w, const void* x, DType x_dtype, int64_t M, float* y, void* stream = nullptr);
void qgemm_int4_t_cuda(const Q4View& w, const void* dy, DType dy_dtype, int64_t M, float* dx,
                       void* stream = nullptr);

// The decode kernels (kernels/qgemm.cu): any M, F32 or BF16 activations, exact fp32 ŵ.
void qgemm_int4_decode_cuda(const Q4View& w, const void* x, DType x_dtype, int64_t M, float* y,
                            void* stream = nullptr);
void qgemm_int4_t_decode_cuda(const Q4View& w, const void* dy, DType dy_dtype, int64_t M, float* dx,
                              void* stream = nullptr);
// The decode product on tensor cores (kernels/qgemm_decode_mma.cu): every kind whose layout group is a multiple
// of 32 or spans K (qgemm_decode_mma_supports: GPTQ/AWQ groups of 32/64/128 or none, bnb blocks of 64 when
// 64 | K), BF16 or F32 activations, any M >= 1 (meant for M <= 64): mma.sync with B the exact integers q − z (Int)
// or the code book value split exactly into three bf16 pieces (Nf4/Fp4, three MMAs), the group scale applied to the
// fp32 partial sums, so ŵ is never rounded (against the CPU twin only the summation order differs, as for the FMA
// kernels). F32 activations are split the same way (qgemm_split_x3_cuda): the kernel multiplies 3M bf16 rows and
// the split-K reduction adds each row's three results, so x is not rounded either; up to M = 5 the 3M rows fit the
// 16 rows one MMA computes anyway, so they cost no more than bf16 ones (plus the split's launch).
// qgemm_int4_cuda takes it instead of qgemm_int4_decode_cuda for M <= 64, a supported weight and BF16 activations
// when qgemm_decode_mma_enabled() (the default since the H200 run of 2026-12-04: every test passed, and it beat the
// FMA kernel on every 7B/72B shape but one, 1.1-1.5x at M = 1, up to 4.2x at M = 64), F32 ones when
// qgemm_decode_mma_f32_enabled(); the kernels' bits differ within the summation-order tolerance.
bool qgemm_decode_mma_supports(const Q4View& w);
void qgemm_int4_decode_mma_cuda(const Q4View& w, const void* x, DType x_dtype, int64_t M, float* y,
                                void* stream = nullptr);
// What qgemm_int4_decode_mma_cuda launches for w and M rows of x on the current device (kernels/qgemm_decode_plan.h:
// K splits, word-rows per split, dynamic shared memory per block, and the blocks an SM holds at that memory), for
// benchmarks and diagnostics.
struct QgemmDecodeMmaPlan {
  int64_t splits, rows_per_split, smem_bytes;
  int resident_per_sm;
};
QgemmDecodeMmaPlan qgemm_decode_mma_plan(const Q4View& w, DType x_dtype, int64_t M);
void qgemm_split_x3_cuda(const float* x, int64_t M, int64_t K, const int32_t* perm, int64_t width, uint16_t* out,
                         void* stream = nullptr);
// The prefill / training products through a dense copy (kernels/qgemm_dense.cu): Ŵ dequantized to bf16 once
// per call into a transient [N, Kp] buffer (q4_dequantize_bf16_cuda), then one cuBLASLt bf16 GEMM with fp32
// accumulation and output (a large weight in pieces overlapped with the GEMMs, see the overlap above). Same arguments
// and numerics as the tensor-core kernels below (bf16(ŵ), fp32 sums); any kind, BF16 activations. Costs
// qgemm_dense_scratch_bytes of device memory during the call (N·Kp·2, or two pieces). qgemm_int4_cuda /
// qgemm_int4_t_cuda take it for M > 64 and BF16 when qgemm_dense_for(M) (by default M >= 512); the memory plan
// counts its buffer as kernel scratch for the step's token count.
void q4_dequantize_bf16_cuda(const Q4View& w, uint16_t* out, void* stream = nullptr);
void qgemm_int4_dense_cuda(const Q4View& w, const void* x, DType x_dtype, int64_t M, float* y, void* stream = nullptr);
void qgemm_int4_t_dense_cuda(const Q4View& w, const void* dy, DType dy_dtype, int64_t M, float* dx,
                             void* stream = nullptr);
void qgemm_int4_dense_lowrank_cuda(const Q4View& w, const uint16_t* xa, const Q4LowRank& lr, int64_t M, float* y,
                                   void* stream = nullptr);
void qgemm_int4_t_dense_lowrank_cuda(const Q4View& w, const uint16_t* dya, const Q4LowRankT& lr, int64_t M, float* dx,
                                     bool accumulate, void* stream = nullptr);
// The tensor-core kernels (kernels/qgemm_tc.cu): any M >= 1 (meant for M > 64), BF16 activations only (F32
// throws), ŵ rounded to bf16. The act-order gather of x (forward) and any unaligned or K % 8 != 0 (N % 8 != 0
// for dy) activation go through a bf16 staging copy on the stream first.
void qgemm_int4_tc_cuda(const Q4View& w, const void* x, DType x_dtype, int64_t M, float* y, void* stream = nullptr);
void qgemm_int4_t_tc_cuda(const Q4View& w, const void* dy, DType dy_dtype, int64_t M, float* dx,
                          void* stream = nullptr);

// The Hopper kernels (kernels/qgemm_wgmma.cu): the tensor-core kernels' products, arguments and numerics
// (bf16(ŵ), fp32 sums, only the summation order differs) on wgmma, 128 x 128 x 64 tiles, two warpgroups.
// They need an sm_90 device running this build's sm_90a code (cuda_wgmma_supported(), kernels/cuda_check.h;
// refused with a message otherwise). qgemm_int4_cuda / qgemm_int4_t_cuda take them instead of the mma.sync
// kernels for M > 64 and BF16 when cuda_wgmma_enabled() (the default on such a device; QWENQ_WGMMA=0 turns it off).
// H200, 2026-12-04: 250-263 TFLOP/s at M >= 2048, 1.1x the mma.sync kernels, 0.31-0.38x cuBLASLt's bf16 GEMM.
void qgemm_int4_wgmma_cuda(const Q4View& w, const void* x, DType x_dtype, int64_t M, float* y,
                           void* stream = nullptr);
void qgemm_int4_t_wgmma_cuda(const Q4View& w, const void* dy, DType dy_dtype, int64_t M, float* dx,
                             void* stream = nullptr);

// A Q4 weight copied to the device through the caching allocator (kernels/device_allocator.h, tag weights;
// `name` goes into its out-of-memory message), the copies queued on `stream` and waited for. RAII: the arrays
// return to the allocator's cache of `stream` on destruction. view() has device pointers.
class Q4DeviceWeight {
 public:
  explicit Q4DeviceWeight(const Q4Layout& host, const std::string& name = "a 4-bit weight",
                          CudaStream stream = nullptr);
  ~Q4DeviceWeight();
  Q4DeviceWeight(const Q4DeviceWeight&) = delete;
  Q4DeviceWeight& operator=(const Q4DeviceWeight&) = delete;
  const Q4View& view() const { return view_; }
  // Bytes a kernel streams for the weight: qweight + meta (+ perm).
  int64_t bytes() const { return bytes_; }

 private:
  Q4View view_;
  int64_t bytes_ = 0;
  DeviceAllocation qweight_, meta_, perm_;
};
#endif

}  // namespace qwenq
