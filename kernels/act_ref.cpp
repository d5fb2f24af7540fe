// SwiGLU of the Qwen MLP: out[i] = silu(gate[i]) · up[i], silu(g) = g / (1 + e^-g), all in fp32 (torch's
// SiLU kernel computes x / (1 + exp(-x)) as well). For g → -inf, e^-g overflows to inf and silu → -0, the
// right limit. Elementwise, so out may alias gate or up.
// Backward: e = e^-g, s = 1 / (1 + e) in fp32 (0 for g → -inf, 1 for g → +inf), silu = g·s,
//   dup = dout · silu,  dgate = dout · up · s · (1 + g·(1 − s)); finite g gives a finite result at both ends.
// 1 − s is taken as e·s for g >= 0: written 1 − s it cancels as s → 1 (relative error ~g·e^-g/2^24 in
// g·(1 − s), 1e-6 of dgate at g ≈ 16; torch's silu_backward writes 1 − s and carries that error).
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/act.h"

namespace qwenq {

void swiglu_forward_ref(const float* gate, const float* up, int64_t n, float* out) {
  QWENQ_CHECK(n >= 0, "swiglu_forward_ref: negative size " << n);
  if (n == 0) return;
  QWENQ_CHECK(gate != nullptr && up != nullptr && out != nullptr, "swiglu_forward_ref: null pointer");
  parallel_for(n, 1 << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float g = gate[i];
      out[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
  });
}

void swiglu_backward_ref(const float* dout, const float* gate, const float* up, int64_t n, float* dgate,
                         float* dup) {
  QWENQ_CHECK(n >= 0, "swiglu_backward_ref: negative size " << n);
  if (n == 0) return;
  QWENQ_CHECK(dout != nullptr && gate != nullptr && up != nullptr && dgate != nullptr && dup != nullptr,
              "swiglu_backward_ref: null pointer");
  QWENQ_CHECK(dgate != dup, "swiglu_backward_ref: dgate and dup must be different buffers");
  parallel_for(n, 1 << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float g = gate[i], u = up[i], d = dout[i];
      const float e = std::exp(-g), s = 1.0f / (1.0f + e);
      const float one_minus_s = g >= 0.f ? e * s : 1.0f - s;
      dgate[i] = d * u * (s * (1.0f + g * one_minus_s));
      dup[i] = d * (g * s);
    }
  });
}

}  // namespace qwenq
