// llama.cpp's KL-divergence base file rows (trainer/kld_file.h has the file), row by row: the encoding that
// `llama-perplexity --kl-divergence-base` (and `qwen-quant eval --save-kld`) writes, and the scoring that
// `--kl-divergence` (and `eval --kl-base FILE`) computes against it. Arithmetic in float as llama.cpp's, each
// operation rounded once (the ref is compiled with -ffp-contract=off; the CUDA twin spells every step with the
// _rn intrinsics), so the twins' codes agree bit for bit.
//
// Encode a row of logits z [V] (nv = 2·⌈V/2⌉ + 4 uint16 a row):
//   m = max z,  lo = max(min z, m − 16),  s = Σ_v exp(z_v − m)  (float exp, double sum),  lse = (float) log s
//   scale = (m − lo) / 65535,  min_log_prob = (lo − m) − lse,  row = [scale (2 uint16), min_log_prob (2), q[V], 0?]
//   q_v = (uint16) min(rint((1/scale)·(z_v − lo)), 65535) for z_v > lo, else 0 (round half to even; every q 0 when
//   scale = 0; the clamp only matters for a degenerate row whose subnormal scale makes 1/scale infinite)
//   nll = (m + lse) − z_t                                        (float: −log P_t as llama.cpp computes it)
// Score a model's logits z' [V] against a row, target t:
//   log P_v = scale·q_v + min_log_prob (float),  lse' = max z' + log Σ exp(z' − max z') (double)
//   kld = Σ_{v : log P_v > −16} exp(log P_v) (log P_v − (z'_v − lse'))  (double)
//   nll_base = −log P_t,  nll = lse' − z'_t,  top_base = the first v of largest q_v,  top = first arg-max of z'
//   (NaN values skipped, as kernels/kl_rows.h)
#pragma once

#include <cstdint>

#include "kernels/kl_rows.h"

namespace qwenq {

// uint16 values per encoded row.
inline int64_t kld_row_width(int64_t V) { return 2 * ((V + 1) / 2) + 4; }

// logits [rows, V] fp32, targets [rows] (each in [0, V)) -> out [rows, kld_row_width(V)] uint16, nll [rows] fp32.
void kld_encode_rows_ref(const float* logits, int64_t rows, int64_t V, const int32_t* targets, uint16_t* out,
                         float* nll);
// base [rows, kld_row_width(V)] encoded rows, logits [rows, V], targets [rows] (each in [0, V)) -> out [rows].
void kld_score_rows_ref(const uint16_t* base, const float* logits, int64_t rows, int64_t V, const int32_t* targets,
                        KlRow* out);
// log P_v of an encoded row: scale·q_v + min_log_prob, two roundings (the scoring's own expression).
float kld_row_log_prob_ref(const uint16_t* row, int64_t v);
// Both twins' checks: the shape, and every host-side target in [0, V) (a scored position always has one).
void kld_rows_check(const char* name, int64_t rows, int64_t V, const int32_t* targets);

}  // namespace qwenq

#ifdef QWENQ_HAVE_CUDA
#include "kernels/cuda_check.h"

namespace qwenq {

// CUDA twins (kernels/kld_rows.cu), every array in device memory; each launcher copies the targets to the host to
// check them with the ref's message (waiting for the work queued on `stream`). One block per row. Encoding: codes
// and scale as the ref's bit for bit; lse differs through the exponentials' sum (its order, and expf's last bits: a
// few ulps of lse, more of a tiny lse when one logit dominates), which moves min_log_prob and nll by a few ulps of
// their terms (|lo − m| + |lse|, |m| + |lse|). Scoring: the arg-maxima exact, the double sums in another order.
void kld_encode_rows_cuda(const float* logits, int64_t rows, int64_t V, const int32_t* targets, uint16_t* out,
                          float* nll, CudaStream stream = nullptr);
void kld_score_rows_cuda(const uint16_t* base, const float* logits, int64_t rows, int64_t V, const int32_t* targets,
                         KlRow* out, CudaStream stream = nullptr);

}  // namespace qwenq
#endif  // QWENQ_HAVE_CUDA
