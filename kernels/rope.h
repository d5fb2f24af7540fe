// Rotary position embedding, rotate-half ("NeoX") convention used by Hugging Face Qwen2/Qwen3/Llama:
//   inv_freq[i] = 1 / θ^(2i/D), i = 0..D/2-1, angle = pos · inv_freq[i] (fp32, as transformers computes it)
//   x'[i]       = x[i]·cos - x[i+D/2]·sin
//   x'[i+D/2]   = x[i+D/2]·cos + x[i]·sin
// Backward: the rotation is orthogonal, so dx = Rᵀ·dx' is the rotation by -angle:
//   dx[i]       = dx'[i]·cos + dx'[i+D/2]·sin
//   dx[i+D/2]   = dx'[i+D/2]·cos - dx'[i]·sin
#pragma once

#include <cstdint>

namespace qwenq {

// x: [T, H, D] fp32, rotated in place; pos: [T] positions of the tokens.
void rope_forward_ref(float* x, int64_t T, int64_t H, int64_t D, const int32_t* pos, float theta);

// dx: [T, H, D] fp32, on entry the gradient of the rotated x', on return that of x (in place).
void rope_backward_ref(float* dx, int64_t T, int64_t H, int64_t D, const int32_t* pos, float theta);

}  // namespace qwenq
