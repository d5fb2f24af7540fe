// Dense linear layer on the CPU: y[M,N] = x[M,K] · W[N,K]ᵀ (+ bias[N]).
//
// x and y are fp32 row-major; W is a PyTorch nn.Linear weight ([out, in], row = output channel) kept in its
// stored dtype (F32, BF16 or F16) and widened to fp32 one block of rows at a time, so a bf16 model is never
// held twice in memory. Accumulation is fp32. bias may be null; its dtype is given separately because
// checkpoints store it like the weight.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace qwenq {

void linear_forward_ref(const float* x, int64_t M, int64_t K, const void* w, DType w_dtype, int64_t N,
                        const void* bias, DType bias_dtype, float* y);

}  // namespace qwenq
