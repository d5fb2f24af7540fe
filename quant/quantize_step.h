// The per-Linear step of calibration-free quantization (qwen-quant rtn | nf4 | fp4), each op with its CPU twin
// `<op>_ref` and, in CUDA builds, `<op>_cuda`: the same arguments in device memory plus a trailing CudaStream.
// The GPU results are BYTE-IDENTICAL to the twins' (tests/gpu/test_quantize_step_cuda.cpp):
//
//   weight_to_f32   W [N, K] fp32 = the stored [N0, K0] weight (F32/BF16/F16) converted exactly (core/dtype.h:
//                   bf16 = top half of an fp32, IEEE binary16 with subnormals, NaN payloads kept), zero-padded to
//                   N >= N0 rows and K >= K0 columns (the --pad-intermediate MLP shapes).
//   rtn_quantize    quant/grid.h's find_grid + quantize_rtn into caller buffers: scale [ceil(K/G), N] fp32 (fp16
//                   values), zero [ceil(K/G), N], codes [K, N]; group_size -1 means K. Refuses non-finite weights
//                   (the first index is named), as nf4_quantize always did, since min/max and round-to-nearest of a
//                   NaN have no meaning a file could hold.
//   nf4_quantize_blocks_ref   quant/nf4.h's nf4_quantize_blocks (the first level: absmax per block of B, packed
//                   codes, [ceil(n/2)] bytes high nibble first, a partial last block allowed); the double
//                   quantization of the absmax (nf4_from_blocks) stays on the host: its offset is a sequential
//                   double sum that a GPU reduction would reorder, and it reads 1/B of the data.
//
// Why the bits agree. Quantization decides per element, so both sides evaluate the same float expressions in the
// same order: the GPU with the IEEE intrinsics (__fdiv_rn, __fmul_rn, __fsub_rn, __fadd_rn: no fma contraction,
// no approximate division), rintf (half to even, as nearbyint in the default rounding mode), fp16 rounding by
// __float2half_rn (= core's f32_to_f16), and std::min/std::max's comparison semantics written out. The CPU build
// (GCC, -O3 -march=native, -std=c++17) contracts a·b + c into fma (-ffp-contract=fast is GCC's C++ default), but
// none of the expressions here has that shape (checked: grid.o and nf4.o hold no fma instruction), so nothing
// needs -ffp-contract=off. The reductions (group min/max, block absmax) are exact in any order for finite inputs;
// the order can only change the sign of a zero min/max, which no later step sees (the GPTQ and AWQ rules map ±0
// to the same scale and zero point). Hence equal inputs give equal bits, on any shape.
//
// The CUDA launchers check their arguments with the twins' messages. rtn_quantize_cuda and nf4_quantize_blocks_cuda
// wait for `stream` before returning (their non-finite scan reads one flag back) and then throw the twins' message;
// weight_to_f32_cuda only queues its kernel.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "kernels/cuda_check.h"
#include "quant/grid.h"

namespace qwenq {

// The argument checks both twins run first (qwenq::Error naming the op, the argument and the problem).
void weight_to_f32_check_args(DType dtype, int64_t N0, int64_t K0, int64_t N, int64_t K);
void rtn_quantize_check_args(int64_t N, int64_t K, int bits, int64_t group_size);
void nf4_quantize_blocks_check_args(int64_t n, int64_t blocksize);
// "rtn_quantize: weight [n, k] is nan; quantization needs finite weights" for flat index i of W [N, K].
[[noreturn]] void throw_rtn_nonfinite(int64_t i, int64_t K, float value);

void weight_to_f32_ref(DType dtype, const void* src, int64_t N0, int64_t K0, int64_t N, int64_t K, float* W);

void rtn_quantize_ref(const float* W, int64_t N, int64_t K, int bits, int64_t group_size, bool sym, GridRule rule,
                      float* scale, uint8_t* zero, uint8_t* codes);

// packed [ceil(n/2)], absmax [ceil(n/blocksize)]; blocksize a power of two in [32, 4096].
void nf4_quantize_blocks_ref(const float* w, int64_t n, int64_t blocksize, bool fp4, uint8_t* packed, float* absmax);

#ifdef QWENQ_HAVE_CUDA
void weight_to_f32_cuda(DType dtype, const void* src, int64_t N0, int64_t K0, int64_t N, int64_t K, float* W,
                        CudaStream stream = nullptr);
void rtn_quantize_cuda(const float* W, int64_t N, int64_t K, int bits, int64_t group_size, bool sym, GridRule rule,
                       float* scale, uint8_t* zero, uint8_t* codes, CudaStream stream = nullptr);
void nf4_quantize_blocks_cuda(const float* w, int64_t n, int64_t blocksize, bool fp4, uint8_t* packed, float* absmax,
                              CudaStream stream = nullptr);
#endif

}  // namespace qwenq
