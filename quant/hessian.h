// The GPTQ Hessian of one linear layer, accumulated over calibration batches:
//
//   H = (2/n) · Σ_r x_r x_rᵀ   (x_r: one input row of the layer, K values; n: rows seen so far)
//
// kept as a running mean so its magnitude stays that of one outer product however many rows arrive:
//   H ← H · n_old/n_new + (2/n_new) · XᵀX     (AutoGPTQ's add_batch, same order of operations)
// Storage and arithmetic are fp32, like the reference: a fp64 H for down_proj of a 7B model (K = 18944) would
// take 2.9 GB, and GPTQ factors H in fp32 anyway. Only the lower triangle is updated (half the flops);
// matrix() and release() return the full symmetric matrix.
//
// n counts rows (tokens). AutoGPTQ counts batch entries (sequences) instead; the difference is a constant
// factor on H, which changes nothing in GPTQ (dampening is relative to mean(diag H), and the updates use ratios
// of H⁻¹ entries) except the scale of the loss it reports.
//
// Input dtype BF16 (GPTQ's --calib-dtype bf16): every input is rounded to bf16 (nearest even) first, as a bf16
// model's Linear reads it and as AutoGPTQ's 16-bit model hands its activations to the Hessian:
//   H ← H · n_old/n_new + (2/n_new) · bf16(X)ᵀ bf16(X)
// Each product of two bf16 values is exact in fp32, so only the fp32 sums round: what the GPU twin computes on bf16
// tensor cores (hessian_accumulate_cuda). The rows are rounded kBf16RoundRows at a time, one rank update each.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "core/eigen_core.h"

namespace qwenq {

class HessianAccumulator {
 public:
  static constexpr int64_t kBf16RoundRows = 1024;

  // input_dtype: F32 (the inputs as given) or BF16 (rounded first, see above).
  explicit HessianAccumulator(int64_t K, DType input_dtype = DType::F32);

  // x [rows, K] row-major, the activations entering the layer. Throws on non-finite values.
  void add_batch(const float* x, int64_t rows);

  int64_t K() const { return K_; }
  DType input_dtype() const { return dtype_; }
  int64_t count() const { return count_; }
  // The symmetric H [K, K] (a copy).
  Eigen::MatrixXf matrix() const;
  // The symmetric H, moved out (no copy); add_batch throws afterwards.
  Eigen::MatrixXf release();

 private:
  int64_t K_;
  DType dtype_;
  int64_t count_ = 0;
  Eigen::MatrixXf lower_;  // H in the lower triangle; the strict upper triangle is unused
};

}  // namespace qwenq
