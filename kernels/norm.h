// RMSNorm as Qwen2/Llama compute it: y = x · rsqrt(mean(x²) + eps) · w, statistics in fp32 per row.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace qwenq {

// x, y: [rows, C] fp32 (may alias); weight: [C] in w_dtype.
void rmsnorm_forward_ref(const float* x, int64_t rows, int64_t C, const void* weight, DType w_dtype, float eps,
                         float* y);

}  // namespace qwenq
