// Softmax cross-entropy per row: nll[r] = logsumexp(logits[r]) - logits[r][target[r]].
// Rows whose target is kIgnoreIndex (-100, PyTorch's convention) get nll = 0 and are not counted.
#pragma once

#include <cstdint>

namespace qwenq {

constexpr int32_t kIgnoreIndex = -100;

// logits: [rows, V] fp32. Returns the number of counted rows.
int64_t cross_entropy_forward_ref(const float* logits, int64_t rows, int64_t V, const int32_t* targets,
                                  float* nll);

}  // namespace qwenq
