// KL divergence of two models' next-token distributions, row by row (trainer/kl_divergence.h's per-position
// statistics). For row r of the base logits b [rows, V] and the model logits q [rows, V], target t = targets[r]:
//
//   top_base = argmax_v b_v,  top = argmax_v q_v         first index of the largest value (torch.argmax's ties)
//   e_v   = exp(b_v − b_top),  s_b = Σ_v e_v,  s_q = Σ_v exp(q_v − q_top),  c = Σ_v e_v (b_v − q_v)   (double)
//   lse_b = b_top + log s_b,   lse_q = q_top + log s_q
//   kld   = c / s_b − lse_b + lse_q                      = Σ_v P_v (log P_v − log Q_v) = KL(P ‖ Q), nats
//   nll_base = lse_b − b_t,    nll = lse_q − q_t          (both 0 when t = kIgnoreIndex)
//
// One exp per value of each row, every sum in double. Forward only: nothing is differentiated through it.
// A row holding a NaN gives NaN sums (its kld and NLLs are NaN; its arg-maxima skip the NaN values).
#pragma once

#include <cstdint>

namespace qwenq {

struct KlRow {
  double kld = 0;
  double nll_base = 0, nll = 0;
  int64_t top_base = 0, top = 0;
};

// The first index of the largest non-NaN value of x[0, V) (0 when every value is NaN): both refs' arg-max.
int64_t first_argmax_ref(const float* x, int64_t V);

// Checks the shape (rows >= 0, V > 0) and every host-side target (in [0, V), or kIgnoreIndex), errors starting with
// `name`. Both twins check with it.
void kl_rows_check(const char* name, int64_t rows, int64_t V, const int32_t* targets);

// base, logits: [rows, V] fp32; targets [rows]; out [rows]. Each row's sums in index order.
void kl_rows_ref(const float* base, const float* logits, int64_t rows, int64_t V, const int32_t* targets, KlRow* out);

}  // namespace qwenq

#ifdef QWENQ_HAVE_CUDA
#include "kernels/cuda_check.h"

namespace qwenq {

// The CUDA twin (kernels/kl_rows.cu): base, logits, targets and out in device memory. One block per row: the two
// arg-maxima in one read of both rows, the three sums in a second (each thread over a strided share of the columns,
// then a fixed-order block merge: the same bits run to run). The sums differ from the ref's by their order only:
// relative error within about V·2⁻⁵³ each (tests/gpu/test_kl_rows_cuda.cpp's tolerance). The launcher copies the
// targets to the host to check them with the ref's messages, so it waits for the work already queued on `stream`.
void kl_rows_cuda(const float* base, const float* logits, int64_t rows, int64_t V, const int32_t* targets, KlRow* out,
                  CudaStream stream = nullptr);

}  // namespace qwenq
#endif  // QWENQ_HAVE_CUDA
