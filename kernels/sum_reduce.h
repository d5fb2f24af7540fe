// Sums the AWQ search reduces over activations, in double, with their CPU twins (kernels/sum_reduce_ref.cpp):
//
//   sum_sq_diff     *sum += Σ_i (a[i] − b[i])²        a, b [n] fp32; each difference and square in double
//                                                     (double(a) − double(b) is exact for finite fp32 inputs)
//   column_abs_sum  sum[k] += Σ_t |x[t, k]|           x [T, K] fp32 row-major, sum [K] double
//
// The AWQ driver (trainer/awq_model_cuda.cpp) keeps the module outputs and the calibration inputs on the device and
// reduces them there: sum_sq_diff is the loss of one scale candidate (mean = sum / n, as the CPU's sum_sq_diff in
// trainer/awq_model.cpp), column_abs_sum / T is awq_activation_mean (quant/awq.h). Both accumulate into `sum`, so a
// caller may reduce a tensor chunk by chunk without reading anything back.
//
// Precision. Every term is ≥ 0, so any order of summation is within (m − 1)·2⁻⁵³ relative of the exact sum of the m
// rounded terms (plus 2⁻⁵³ per term for the square's rounding, which a fused multiply-add may skip): the twins agree
// to kSumReduceRelTol(m) = 4·m·2⁻⁵³ relative, far below an fp32 rounding of the mean (2⁻²⁴) for any m < 2²⁶.
// The refs sum in index order (the order of the CPU's AWQ loops, which they reproduce bit for bit); the CUDA
// kernels in a fixed blocked order (no atomics: the same inputs give the same bits on every run):
//   sum_sq_diff_cuda     chunks of 64K elements, one block each (double per thread, then a block tree), the
//                        chunk sums added by one block in a fixed order, then added to *sum;
//   column_abs_sum_cuda  32 columns per block, the rows cut into at most 64 contiguous slices (one block row each,
//                        8 rows in flight per column), the slice sums added per column in slice order.
#pragma once

#include <cstdint>

namespace qwenq {

// Relative agreement of any two summation orders of m non-negative double terms (see above).
constexpr double kSumReduceRelTol(int64_t m) { return 4.0 * static_cast<double>(m < 1 ? 1 : m) * 0x1p-53; }

// *sum += Σ (a[i] − b[i])² over n ≥ 0 elements (nothing read when n = 0).
void sum_sq_diff_ref(const float* a, const float* b, int64_t n, double* sum);
// sum[k] += Σ_t |x[t, k]| for x [T, K], T ≥ 0, K ≥ 1.
void column_abs_sum_ref(const float* x, int64_t T, int64_t K, double* sum);

}  // namespace qwenq

#ifdef QWENQ_HAVE_CUDA
#include "kernels/cuda_check.h"

namespace qwenq {

// The twins: a, b, x and sum in device memory, queued on `stream` (stream-ordered scratch, no host wait).
void sum_sq_diff_cuda(const float* a, const float* b, int64_t n, double* sum, CudaStream stream = nullptr);
void column_abs_sum_cuda(const float* x, int64_t T, int64_t K, double* sum, CudaStream stream = nullptr);

}  // namespace qwenq
#endif  // QWENQ_HAVE_CUDA
