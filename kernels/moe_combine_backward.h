// The backward of kernels/moe_combine.h (the GPU LoRA trainer's mixture-of-experts layers). With the combine's
// inputs (y [R, C] the experts' rows grouped by expert, rows [T, k] token t's rows in ascending expert order, w [T, k]
// their routing weights, s [T, C] the shared expert's output and sw [T] = σ(g_t) its gate) and dout [T, C] = ∂L/∂out:
//
//   dy[rows[t, j], c] = w[t, j] · dout[t, c]                       (each row of y that some (t, j) names: written;
//                                                                    the rows named are distinct, as a dispatch's)
//   dw[t, j]          = (float) Σ_c dout[t, c] · y[rows[t, j], c]  (the products exact in double, summed in double)
//   ds[t, c]          = sw[t] · dout[t, c]                          (shared expert; s, sw, ds, dg all null without)
//   dg[t]             = ((float) dot · sw[t]) · (1 − sw[t]),  dot = Σ_c dout[t, c] · s[t, c] in double as dw's
//                       (∂L/∂g_t: σ' = σ(1 − σ)); in that order, one float rounding per operation, 1 − sw included
//
// dw goes to the host, where the routing's softmax backward turns it into the router logits' gradient
// (trainer/moe_block.h, moe_router_backward). dy and ds are one multiplication each: bit for bit across the twins;
// dw differs only by the order of the double sums (within a float ulp of the result plus C·2⁻⁵² of Σ|terms|), dg by
// that ulp carried through its two float products (a few ulps of dg).
//
// And the backward of the gather that fed the experts (x_rows = n[gather]): each token's row gradients added back,
//   dn[t, c] += dx[rows[t, 0], c] + … + dx[rows[t, k−1], c]        (left to right, one rounding per addition)
// in ascending expert order, the CPU block's (moe_block_backward adds expert by expert): bit for bit across the twins.
#pragma once

#include <cstdint>

namespace qwenq {

// The shapes and every host-side row index in [0, R) (each error starting with `name`); s, sw, ds, dg all given or
// all null. Both twins' check.
void moe_combine_backward_check(const char* name, int64_t R, int64_t C, const int32_t* rows, int64_t T, int64_t k,
                                const float* s, const float* sw, const float* ds, const float* dg);

// dout [T, C]; y [R, C]; rows, w [T, k]; s [T, C], sw [T] (null: no shared expert); outputs dy [R, C] (only the
// named rows written), dw [T, k], ds [T, C], dg [T] (null with s). Outputs must not overlap the inputs.
void moe_combine_backward_ref(const float* dout, const float* y, int64_t R, int64_t C, const int32_t* rows,
                              const float* w, int64_t T, int64_t k, const float* s, const float* sw, float* dy,
                              float* dw, float* ds, float* dg);

// dn [T, C] += Σ_j dx[rows[t, j]] in j order (dx [R, C]). dn must not overlap dx.
void moe_scatter_add_ref(const float* dx, int64_t R, int64_t C, const int32_t* rows, int64_t T, int64_t k, float* dn);

}  // namespace qwenq

#ifdef QWENQ_HAVE_CUDA
#include "kernels/cuda_check.h"

namespace qwenq {

// The CUDA twins (kernels/moe_combine_backward.cu): every array in device memory. Each launcher copies rows to the
// host to check them with the ref's message, so it waits for the work already queued on `stream`; host_rows (may be
// null), the host's copy of what rows holds (a caller that just uploaded them), is checked instead, without the
// wait. One block per token; the double sums in a fixed order (the same bits run to run).
void moe_combine_backward_cuda(const float* dout, const float* y, int64_t R, int64_t C, const int32_t* rows,
                               const float* w, int64_t T, int64_t k, const float* s, const float* sw, float* dy,
                               float* dw, float* ds, float* dg, CudaStream stream = nullptr,
                               const int32_t* host_rows = nullptr);
void moe_scatter_add_cuda(const float* dx, int64_t R, int64_t C, const int32_t* rows, int64_t T, int64_t k, float* dn,
                          CudaStream stream = nullptr, const int32_t* host_rows = nullptr);

}  // namespace qwenq
#endif  // QWENQ_HAVE_CUDA
