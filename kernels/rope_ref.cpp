// Rotary position embedding, rotate-half convention, computed the way transformers does for Qwen2/Qwen3/Llama:
//   inv_freq[i], s  = rope_table(spec, D) (kernels/rope_table.cpp: transformers' table of the rope type, fp32;
//                     s = attention_scaling, 1 but for yarn)
//   angle       = (float)pos · inv_freq[i]   one fp32 product (transformers: inv_freq @ position_ids in fp32)
//   cos, sin    = of the fp32 angle, evaluated in double and rounded to fp32 (the correctly rounded value;
//                 torch's vectorized cosf/sinf are within 1 ulp of it), then times s in fp32 (transformers:
//                 emb.cos() * attention_scaling; exact for s = 1)
//   x'[i]       = x[i]·cos − x[i+D/2]·sin,   x'[i+D/2] = x[i+D/2]·cos + x[i]·sin   (fp32)
// The backward is the same code with sin negated (s·Rᵀ, the transpose of s·R), with the very same scaled fp32
// cos and sin, so it is the exact adjoint of the forward's map.
// Parallel over tokens; each token's cos/sin row is computed once and applied to its H heads.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/rope.h"

namespace qwenq {

namespace {

// Rotates x in place by +angle (sign = 1) or −angle (sign = −1); `name` starts the error messages.
void rotate(const char* name, float* x, int64_t T, int64_t H, int64_t D, const int32_t* pos, const RopeSpec& rope,
            float sign) {
  QWENQ_CHECK(T >= 0 && H > 0 && D > 0, name << ": bad shape T=" << T << " H=" << H << " D=" << D);
  const RopeTable table = rope_table(rope, D, name);
  if (T == 0) return;
  QWENQ_CHECK(x != nullptr && pos != nullptr, name << ": null pointer");

  const int64_t half = D / 2;
  const std::vector<float>& inv_freq = table.inv_freq;
  const float scale = table.attention_scaling;
  parallel_for(T, std::max<int64_t>(1, 4096 / (H * D)), [&](int64_t t0, int64_t t1) {
    std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
    for (int64_t t = t0; t < t1; ++t) {
      const float p = static_cast<float>(pos[t]);
      for (int64_t i = 0; i < half; ++i) {
        const float angle = p * inv_freq[i];
        cs[i] = static_cast<float>(std::cos(static_cast<double>(angle))) * scale;
        sn[i] = sign * (static_cast<float>(std::sin(static_cast<double>(angle))) * scale);
      }
      for (int64_t h = 0; h < H; ++h) {
        float* xh = x + (t * H + h) * D;
        for (int64_t i = 0; i < half; ++i) {
          const float a = xh[i], b = xh[i + half];
          xh[i] = a * cs[i] - b * sn[i];
          xh[i + half] = b * cs[i] + a * sn[i];
        }
      }
    }
  });
}

}  // namespace

void rope_forward_ref(float* x, int64_t T, int64_t H, int64_t D, const int32_t* pos, const RopeSpec& rope) {
  rotate("rope_forward_ref", x, T, H, D, pos, rope, 1.f);
}

void rope_backward_ref(float* dx, int64_t T, int64_t H, int64_t D, const int32_t* pos, const RopeSpec& rope) {
  rotate("rope_backward_ref", dx, T, H, D, pos, rope, -1.f);
}

}  // namespace qwenq
