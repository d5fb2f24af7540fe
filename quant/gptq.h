// GPTQ for one linear layer (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
// Pre-trained Transformers"; reference behaviour: AutoGPTQ fasterquant, REFERENCE A1.3/A1.4).
//
// Each output row w (K input weights) is quantized column by column; after column p is rounded to q, the
// not-yet-quantized columns absorb the error so that the layer output X·wᵀ moves as little as possible:
//   H⁻¹ = Uᵀ·U with U upper triangular (the Cholesky factor of the inverse Hessian, H = (2/n)·XᵀX + λ·I)
//   e = (w_p − q_p) / U[p,p];   w_j ← w_j − e · U[p,j]  for j > p;   loss += ½·e²
// In exact arithmetic Σ ½e² equals ½·Δᵀ(H + λI)Δ summed over rows, Δ = w − ŵ: with H = (2/n)·XᵀX and λ = 0
// that is ‖X·(W − Ŵ)ᵀ‖² / n. The updates are applied lazily: within a block of block_size columns one column at
// a time, to the rest of the matrix with one GEMM per block (the result does not depend on block_size).
//
// Before the loop (same order as the reference):
//   * dead inputs (H[k,k] = 0) get H[k,k] = 1 and W[:,k] = 0;
//   * desc_act: columns are processed in order of decreasing diag(H) (stable on ties; torch's argsort is not);
//   * λ = damp · mean(diag H); if H + λI is not positive definite, damp is multiplied by 10 (0 becomes 0.01) and
//     the factorization retried, up to max_damp_retries times; each retry is noted in `warnings`.
// Grids (quant/grid.h, GridRule::Gptq, fp16 scales): a group opens every group_size *processed* columns and
// its grid is computed from the weights as they are at that moment (all earlier columns' updates applied).
// The reference instead reads the group from the copy taken at the start of the current block, so it misses
// the updates of the block's earlier columns when a group opens mid-block (group_size not a multiple of
// block_size); the two agree for the usual group_size = block_size = 128 and for group_size = -1.
// static_groups: the grids of the groups of *original* columns are computed once, up front, from the
// (dead-zeroed) weights, and column k uses group k / G.
// g_idx[k]: k / G, or (position of k in the processing order) / G with desc_act and without static_groups.
// Codes are returned in original column order, so dequantize_codes(codes, grid, g_idx) reproduces exactly the
// weights whose errors GPTQ fed back.
//
// Precision and memory: everything is fp32 like the reference. The factor U is computed without forming H⁻¹:
// with J the reversal permutation, chol(J·H·J) = L' gives H⁻¹ = (J·L'⁻¹·J)ᵀ(J·L'⁻¹·J), so U = J·L'⁻¹·J — one
// Cholesky and one triangular inverse, in place in the Hessian plus one K×K matrix (peak 2·K² floats beside
// the caller's; pass H with std::move to avoid a third). K = 18944: 1.4 GB per matrix.
#pragma once

#include <cstdint>

#include "core/eigen_core.h"
#include "quant/gptq_types.h"

namespace qwenq {

// W [N, K] row-major (nn.Linear weight); H [K, K] symmetric, only its lower triangle is read.
GptqResult gptq_quantize(const float* W, int64_t N, int64_t K, Eigen::MatrixXf H, const GptqOptions& options);

// The checks gptq_quantize and gptq_quantize_cuda share: N, K > 0, H is K x K, the options in range.
void check_gptq_shapes_and_options(int64_t N, int64_t K, const Eigen::MatrixXf& H, const GptqOptions& options);
// The same without a host H (gptq_quantize_cuda_device_h: H on the device, K x K by contract).
void check_gptq_shape_and_options(int64_t N, int64_t K, const GptqOptions& options);

}  // namespace qwenq
