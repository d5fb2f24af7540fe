// Pieces shared by the two tensor-core W4A16 kernels on the Q4 layout: kernels/qgemm_tc.cu (mma.sync, sm_80+)
// and kernels/qgemm_wgmma.cu (wgmma, sm_90a): the cp.async copies, the dequantization of one packed word to
// 8 bf16 (fp32 as q4_dequant, then one round to nearest even), the argument checks and the staging copy of
// activations the kernels cannot read directly (unaligned, K % 8 != 0, act-order gather). For .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "kernels/cuda_check.h"
#include "kernels/qgemm.h"

namespace qwenq {
namespace qgemm_tc_detail {

// Output rows (M) per block of both kernels: the grid's y dimension is ceil(M / 128) <= 65535.
constexpr int kTcBlockRows = 128;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// NF4 / FP4 code books for the dequantization (each .cu file that includes this has its own copy).
static __constant__ float c_tc_books[2][16] = {
    {kNf4Code[0], kNf4Code[1], kNf4Code[2], kNf4Code[3], kNf4Code[4], kNf4Code[5], kNf4Code[6], kNf4Code[7],
     kNf4Code[8], kNf4Code[9], kNf4Code[10], kNf4Code[11], kNf4Code[12], kNf4Code[13], kNf4Code[14], kNf4Code[15]},
    {kFp4Code[0], kFp4Code[1], kFp4Code[2], kFp4Code[3], kFp4Code[4], kFp4Code[5], kFp4Code[6], kFp4Code[7],
     kFp4Code[8], kFp4Code[9], kFp4Code[10], kFp4Code[11], kFp4Code[12], kFp4Code[13], kFp4Code[14], kFp4Code[15]}};


__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy that bypasses L1 (.cg: each byte is used once per block from shared memory);
// src_size 0 writes 16 zero bytes and reads nothing (tails).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 bf16 matrices; lane l supplies the row address of matrix l / 8, row l % 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// D = A·B + D, A 16x16 (row), B 16x8 (col), bf16 in, fp32 accumulate (exact products).
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (lo) in the low half
  return *reinterpret_cast<const uint32_t*>(&v);
}

// The 8 weights of one Q4 word as bf16, each the fp32 q4_dequant value rounded to nearest even.
// Int: 0x4B000000 | q is the float 2^23 + q, so subtracting 2^23 + z gives q - z exactly with one LOP3 and
// one FADD (an I2F per weight would run at a quarter of the FADD rate); then one FMUL, as q4_dequant.
template <Q4Kind KIND>
__device__ __forceinline__ uint4 dequant_word(uint32_t word, uint32_t meta, const float* book) {
  float v[8];
  if constexpr (KIND == Q4Kind::Int) {
    const float scale = __half2float(__ushort_as_half(static_cast<unsigned short>(meta & 0xFFFFu)));
    const float bias = 8388608.0f + static_cast<float>((meta >> 16) & 0xFFu);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = (__uint_as_float(0x4B000000u | ((word >> (4 * j)) & 15u)) - bias) * scale;
  } else {
    const float absmax = __uint_as_float(meta);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = book[(word >> (4 * j)) & 15u] * absmax;
  }
  return make_uint4(pack_bf16x2(v[0], v[1]), pack_bf16x2(v[2], v[3]), pack_bf16x2(v[4], v[5]),
                    pack_bf16x2(v[6], v[7]));
}

// The kernels' parameters: C[m, c] = Σ_r A[m, r] · B[r, c] with A = x (forward) or dy (transposed).
struct TcParams {
  const uint16_t* a;  // x or dy, bf16 [M, lda]
  int64_t lda;
  int64_t a_width;    // valid reduction columns of a (a multiple of 8); chunks at or past it read as zeros
  const uint32_t* qweight;
  const uint32_t* meta;
  const int32_t* perm;  // transposed only: dx column of layout row kk; null = identity
  float* out;           // [M, n_out] fp32
  int64_t M, n_out;     // n_out = N (forward) or K (transposed)
  int64_t Kp, Np, group;
  int k_tiles;          // ceil(reduction length / kBK): Kp forward, Np transposed
};

// The parameters of a launch of either kernel (TRANS: dx = dy·Ŵ) with reduction stages of `stage_depth`: the
// activation staged when the kernel cannot read it directly (into *staged, on stream s), the forward's x gathered
// through perm, the transposed product's output scattered through it.
TcParams tc_params(const Q4View& w, const void* a, int64_t M, float* out, bool trans, int stage_depth,
                   DeviceMemory* staged, cudaStream_t s, const std::string& ctx);

// "fn M=.. K=.. N=.. group=.. kind=.. act=..": the context of the kernels' error messages.
std::string tc_context(const char* fn, const Q4View& w, int64_t M, DType dt);
// The checks both kernels share: the view, M in [1, 128·65535], non-null pointers, BF16 activations, 16-byte
// aligned qweight/meta in device memory, an 8-byte aligned output.
void check_tc_args(const Q4View& w, const void* a, DType dtype, int64_t M, const float* out, const char* fn);
// Stages a bf16 [M, valid] activation into [M, round_up(valid, 8)] (gathered through perm, zero-padded) when the
// kernel cannot read it directly (perm, valid % 8 != 0 or src not 16-byte aligned); returns the pointer and
// leading dimension the kernel reads and sets *width to the columns it may read.
const uint16_t* maybe_stage(const void* src, const int32_t* perm, int64_t M, int64_t valid, DeviceMemory* buf,
                            int64_t* lda, int64_t* width, cudaStream_t s, const std::string& ctx);

}  // namespace qgemm_tc_detail
}  // namespace qwenq
