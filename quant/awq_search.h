// The heavy inner parts of AWQ's search (quant/awq.h), each op with its CPU twin `<op>_ref`
// (quant/awq_search_ref.cpp) and, in CUDA builds, `<op>_cuda` (quant/awq_search.cu): the same arguments in device
// memory plus a trailing CudaStream. The AWQ driver (trainer/awq_model.cpp) reaches them through its block runner
// (trainer/awq_runner.h): the CPU runner calls the twins, the GPU runner the kernels.
//
//   awq_candidate     Ŵ = Q(W·diag(s))·diag(s)⁻¹ for W [N, K], s [K]: per row n and group g (G = group_size, -1
//                     means K; a short last group when G ∤ K), v_k = W[n,k]·s[k], the AWQ asym grid of those v
//                     (quant/grid.h, fp16 scale), Ŵ[n,k] = dequantize(quantize(v_k)) / s[k]. The candidate of one
//                     scale-grid point: exactly what the driver built before as awq_fake_quantize(W·s) / s.
//   awq_clip_inputs   out [S, K] = rows t = 0, step, 2·step, ... (S = ⌈T / step⌉) of x [T, K0], each column divided
//                     by s[k] (s null: copied), zero columns K0..K-1 (the --pad-intermediate width): the clip
//                     search's sampled tokens, scaled like the folded weights' inputs.
//   awq_clip_search   max_val [N, ⌈K/G⌉]: per row n and group g, m0 = max |W[n,g]|, r_i = 1 − i/n_grid for i = 0 ..
//                     shrinks−1 (shrinks = ⌊max_shrink·n_grid⌋ ≥ 1), err_i = Σ_t (x_t[g] · (Q(clamp(W[n,g], ±r_i·m0))
//                     − W[n,g]))² / S over the S rows of x [S, K]; max_val = r_i·m0 of the smallest err_i (ties and
//                     NaN: the first; errors from 1e9 up are never chosen, m0 stays) — awq_search_clip's search on
//                     tokens it has already sampled.
//
// Equality. awq_candidate and awq_clip_inputs decide per element, so both sides evaluate the same float
// expressions in the same order (quant/grid_device.cuh: IEEE intrinsics, no contraction, fp16 rounding as core's):
// BYTE-IDENTICAL results for finite W and s (the group min/max reductions are exact in any order; they can only
// change the sign of a zero extremum, which the AWQ rule maps to the same grid). The CPU build contracts a·b + c
// into fma, but neither op has that shape. Non-finite weights make the reference module output, hence the
// driver's loss, non-finite, and the scale search refuses them (awq_search_scale).
// awq_clip_search is NOT bit-identical: the CPU twin is awq_search_clip's Eigen code (fp32 GEMM x·Δᵀ in Eigen's
// blocked order, then a fp32 squared norm per row), which the driver's CPU output must keep byte for byte. The
// kernel evaluates the same grid candidates Q(clamp(·)) bit for bit (the same formulas; a group's clamped min/max
// is the clamp of its min/max, clamp being monotone), then each token's dot product x_t[g]·Δ in fp32 fma in k
// order, and the sum of squares over the tokens in double. Both err_i carry a relative error of ~√G·2⁻²⁴ from the
// fp32 dot products, so the argmin can differ only where two shrinks' errors are that close — a near tie, where
// either bound is as good; identical Δ vectors give identical err_i on each side, so exact ties resolve alike. Every
// step of the kernel is IEEE-rounded in a fixed order (no atomics, fma written out, the squares exact in double), so
// its bounds are replayed bit for bit on the CPU (tests/support/awq_search_cases.h): tests/gpu/test_awq_search_cuda.cpp
// requires them exactly, and tests/test_awq_search.cpp measures the replay against the twin (0 of 6236 bounds
// differ on its seeded cases) and bounds the share of differing bounds and the error they cost.
//
// The launchers check their arguments with the twins' messages and only queue kernels (no host wait).
#pragma once

#include <cstdint>

#include "kernels/cuda_check.h"
#include "quant/awq.h"

namespace qwenq {

// The argument checks both twins run first (qwenq::Error naming the op, the argument and the problem).
void awq_candidate_check_args(int64_t N, int64_t K, int bits, int64_t group_size);
void awq_clip_inputs_check_args(int64_t T, int64_t K0, int64_t step, int64_t K);
// Returns shrinks = ⌊max_shrink·n_grid⌋.
int awq_clip_search_check_args(int64_t N, int64_t K, int64_t S, const AwqSearchOptions& opt);
// ⌈T / step⌉, the rows awq_clip_inputs writes.
inline int64_t awq_clip_rows(int64_t T, int64_t step) { return (T + step - 1) / step; }

void awq_candidate_ref(const float* W, int64_t N, int64_t K, const float* s, int bits, int64_t group_size, float* out);
void awq_clip_inputs_ref(const float* x, int64_t T, int64_t K0, int64_t step, const float* s, int64_t K, float* out);
void awq_clip_search_ref(const float* W, int64_t N, int64_t K, const float* x, int64_t S, const AwqSearchOptions& opt,
                         float* max_val);

#ifdef QWENQ_HAVE_CUDA
void awq_candidate_cuda(const float* W, int64_t N, int64_t K, const float* s, int bits, int64_t group_size, float* out,
                        CudaStream stream = nullptr);
void awq_clip_inputs_cuda(const float* x, int64_t T, int64_t K0, int64_t step, const float* s, int64_t K, float* out,
                          CudaStream stream = nullptr);
void awq_clip_search_cuda(const float* W, int64_t N, int64_t K, const float* x, int64_t S, const AwqSearchOptions& opt,
                          float* max_val, CudaStream stream = nullptr);
#endif

}  // namespace qwenq
