// GPTQ on the GPU: the CUDA twin of quant/gptq.h (same math, options and results contract; read that header
// first), plus the GPTQ Hessian's running-mean update on the device.
//
// gptq_quantize_cuda takes host W and H like gptq_quantize and returns the same GptqResult (codes in original
// column order, grid, g_idx, order, damp_used, damp_retries, loss, warnings). What runs where:
//   host:   the argument checks, dead inputs and the act-order permutation (O(K) work on diag H, the same code
//           as the CPU, so `order` and `g_idx` are identical), mean(diag H) in double, the final un-permutation
//           of the codes (K row copies) and the loss sum over rows.
//   device: non-finite checks of W and of H's lower triangle; M = J·P·(H + λI)·Pᵀ·J gathered from H;
//           M = RᵀR by cuSOLVER potrf (upper; R = L'ᵀ of the CPU's chol(J·H·J) = L'·L'ᵀ); R⁻¹ by cuSOLVER trtri;
//           U = J·L'⁻¹·J, which is R⁻¹ with its storage reversed read as a row-major matrix (one in-place swap
//           kernel, which also zeroes the strict lower triangle and checks U is finite); the static grids; and the
//           blocked error-feedback loop below.
//   Damping retries follow the CPU exactly: λ = damp·mean(diag H); on potrf failure (devInfo = i > 0: the
//   leading minor of order i is not positive definite), a singular trtri or a non-finite U, damp ×10 (0 -> 0.01),
//   M rebuilt from the untouched device copy of H, up to max_damp_retries times, each retry noted in `warnings`.
//
// The error-feedback loop, with W (dead inputs zeroed) permuted to processing order on the device, Wp [N, K]:
//   for each block [p1, p1 + b) of b = min(block_size, 128) columns:
//     gptq_block_kernel: one warp per row of W (16 rows per thread block), the block's b columns of the row in
//       registers (4 per lane), U[p1:p1+b, p1:p1+b] in shared memory (64 KiB, loaded once per thread block).
//       Column by column: open the group's grid if one starts here (warp min/max over the group's current
//       values, including columns past the block through the pending update W − E·U, exactly as gptq.cpp's
//       open_group), round, e = (w − ŵ)/U[p,p], update the block's later columns of the row from registers.
//     cublasSgemm: Wp[:, p1+b:] −= E[:, 0:b] · U[p1:p1+b, p1+b:] (fp32; cuBLAS's default math, no TF32).
// Grids, rounding and e use the CPU's formulas with IEEE division and no fused multiply-add (__fdiv_rn,
// __fmul_rn, __fsub_rn; round-half-even rintf; fp16 scales by __float2half_rn, which rounds exactly as
// core's f32_to_f16), so equal inputs give equal bits.
//
// Agreement with gptq_quantize: the factor U and the lazy updates are computed in another fp32 summation order
// (cuSOLVER's blocked Cholesky and inverse, cuBLAS's GEMM vs the CPU's Eigen tiles), so the weights a column
// is rounded from differ by a few ulps. A code differs where such a value sits within those ulps of a rounding
// boundary, and once a code differs, the rest of that row sees a different error (a cascade that stays small
// because GPTQ's feedback is contracting). A grid differs where a group's min/max sits at an fp16 rounding
// boundary of the scale (or a zero-point tie). Static grids, the first group of every row, `order` and `g_idx`
// are bit-identical. tests/gpu/test_gptq_cuda.cpp measures the shares (codes ≥ 99.9 %, grids ≥ 99.8 %, loss
// within 1e-3; CPU-only perturbations of the same kind give 99.98 % and 99.91 % at K 896 x N 4864).
//
// Memory (device): 2·K² floats while factoring (the uploaded H, kept for retries, and M; K = 18944: 2.9 GB),
// then K² (U) + 2·N·K floats + N·K code bytes. Calls are serialized per device (one stream and one
// cuBLAS/cuSOLVER handle pair per device, created on first use). Everything is synchronous to the caller.
#pragma once

#ifdef QWENQ_HAVE_CUDA

#include <cstdint>

#include "core/eigen_core.h"
#include "quant/gptq.h"
#include "quant/gptq_cuda_device.h"

namespace qwenq {

// W [N, K] row-major (host); H [K, K] symmetric (host), only its lower triangle is read.
GptqResult gptq_quantize_cuda(const float* W, int64_t N, int64_t K, Eigen::MatrixXf H, const GptqOptions& options);

// The same with H already on the device: dH [K, K] column-major fp32 (only the lower triangle is read; never
// written), complete before the call (the stream that wrote it synchronized: the solver runs on a stream of its
// own). The whole-model GPU driver's path (trainer/gptq_model_cuda.cpp): its Hessian is accumulated on the device,
// and downloading it to pass it here would cost two K² transfers over PCIe and a host copy (2 x 1.4 GB for a
// Qwen2.5-7B down_proj). Only the diagonal (K floats) comes to the host, for the dead inputs and act-order.
GptqResult gptq_quantize_cuda_device_h(const float* W, int64_t N, int64_t K, const float* dH,
                                       const GptqOptions& options);

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
