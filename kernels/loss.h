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

// logits: [rows, V] fp32. Returns the number of counted rows.
int64_t cross_entropy_forward_ref(const float* logits, int64_t rows, int64_t V, const int32_t* targets,
                                  float* nll);

// logits, dlogits: [rows, V] fp32; dlogits may alias logits (in place saves a [rows, V] buffer).
void cross_entropy_backward_ref(const float* logits, int64_t rows, int64_t V, const int32_t* targets,
                                float dnll_scale, float* dlogits);

}  // namespace qwenq
