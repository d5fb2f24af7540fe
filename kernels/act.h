// SwiGLU activation of the Qwen MLP: out = silu(gate) ⊙ up, silu(x) = x / (1 + e^-x).
#pragma once

#include <cstdint>

namespace qwenq {

void swiglu_forward_ref(const float* gate, const float* up, int64_t n, float* out);

}  // namespace qwenq
