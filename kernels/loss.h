// Softmax cross-entropy per row: nll[r] = logsumexp(logits[r]) - logits[r][target[r]].
// Rows whose target is kIgnoreIndex (-100, PyTorch's convention) get nll = 0 and are not counted.
//
// Backward of L = scale · Σ_r nll[r] (scale = dnll_scale, typically 1 / counted rows for the mean loss):
//   dlogits[r][v] = scale · (softmax(logits[r])[v] − [v == target[r]])    for counted rows
//   dlogits[r][v] = 0                                                     for kIgnoreIndex rows
// dlogits is written, not accumulated.
#pragma once

#include <cstdint>

namespace qwenq {

constexpr int32_t kIgnoreIndex = -100;

// Checks the shape (rows >= 0, V > 0) and every host-side target (in [0, V), or kIgnoreIndex), each error starting
// with `name`; returns the number of counted rows. The forward and backward (CPU and GPU) check with it.
int64_t cross_entropy_count_targets(const char* name, int64_t rows, int64_t V, const int32_t* targets);

// logits: [rows, V] fp32. Returns the number of counted rows.
int64_t cross_entropy_forward_ref(const float* logits, int64_t rows, int64_t V, const int32_t* targets,
                                  float* nll);

// logits, dlogits: [rows, V] fp32; dlogits may alias logits (in place saves a [rows, V] buffer).
void cross_entropy_backward_ref(const float* logits, int64_t rows, int64_t V, const int32_t* targets,
                                float dnll_scale, float* dlogits);

// Both in one pass per row (the CPU twin of cross_entropy_fused_cuda, and the CPU trainer's loss): nll as the
// forward writes it, and the logits overwritten with the backward's dlogits, bit for bit the two calls' results,
// with one max/sum pass over each row instead of two. Returns the number of counted rows.
// row_scale (may be null): [rows] per-row scales used instead of dnll_scale, the backward of L = Σ_r row_scale[r] ·
// nll[r] (a sequence-level loss such as DPO's, trainer/dpo.h: each row's weight is ∂L/∂nll of its sequence; any
// sign). Each must be finite.
int64_t cross_entropy_fused_ref(float* logits, int64_t rows, int64_t V, const int32_t* targets, float dnll_scale,
                                float* nll, const float* row_scale = nullptr);

}  // namespace qwenq

#ifdef QWENQ_HAVE_CUDA
#include "kernels/cuda_check.h"

namespace qwenq {

// CUDA twins (kernels/loss.cu): logits, targets, nll and dlogits in device memory. One block per row reads the
// row once with an online max/sum (exponentials in fp32, the sum in double, as the ref). The launchers copy the
// `rows` targets (4 bytes each) to the host to check them with the ref's messages and to count rows: each call
// therefore waits for the work already queued on `stream` (the kernels themselves are queued asynchronously).
// host_targets (may be null; forward and fused): the caller's host copy of what targets holds (a trainer that
// uploaded them), checked and counted instead, so the call does not wait for the stream.
int64_t cross_entropy_forward_cuda(const float* logits, int64_t rows, int64_t V, const int32_t* targets,
                                   float* nll, CudaStream stream = nullptr, const int32_t* host_targets = nullptr);
void cross_entropy_backward_cuda(const float* logits, int64_t rows, int64_t V, const int32_t* targets,
                                 float dnll_scale, float* dlogits, CudaStream stream = nullptr);

// Forward and backward in one pass over the logits, for training: nll as cross_entropy_forward_cuda, and the
// logits overwritten with dlogits as cross_entropy_backward_cuda(logits, ..., dnll_scale, logits) would write
// them. Reads the [rows, V] logits twice and writes them once (separate forward and backward: three reads).
// Returns the number of counted rows.
// row_scale (may be null): [rows] per-row scales in device memory, as the ref's (not checked for finiteness here:
// the caller's host copy is).
int64_t cross_entropy_fused_cuda(float* logits, int64_t rows, int64_t V, const int32_t* targets, float dnll_scale,
                                 float* nll, CudaStream stream = nullptr, const int32_t* host_targets = nullptr,
                                 const float* row_scale = nullptr);

}  // namespace qwenq
#endif  // QWENQ_HAVE_CUDA
