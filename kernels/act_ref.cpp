// SwiGLU of the Qwen MLP: out[i] = silu(gate[i]) · up[i], silu(g) = g / (1 + e^-g), all in fp32 (torch's
// SiLU kernel computes x / (1 + exp(-x)) as well). For g → -inf, e^-g overflows to inf and silu → -0, the
// right limit. Elementwise, so out may alias gate or up.
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

}  // namespace qwenq
