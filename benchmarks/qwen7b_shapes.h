// The Linear shapes of one Qwen2.5-7B decoder layer (hidden 3584, 28 query and 4 key/value heads of 128,
// intermediate 18944, 28 layers), for the benchmarks that time a per-Linear step and extrapolate it to the whole
// model (bench_gptq_cuda, bench_quantize_cuda): q and o (3584 -> 3584), k and v (3584 -> 512), gate and up
// (3584 -> 18944), down (18944 -> 3584).
#pragma once

#include <cstdint>

namespace qwenq::bench {

struct Qwen7bLinearShape {
  const char* name;
  int64_t K, N;    // in, out features
  int per_layer;   // Linears of this shape in one decoder layer
};

constexpr Qwen7bLinearShape kQwen7bShapes[] = {
    {"q_proj/o_proj", 3584, 3584, 2},
    {"k_proj/v_proj", 3584, 512, 2},
    {"gate_proj/up_proj", 3584, 18944, 2},
    {"down_proj", 18944, 3584, 1},
};
constexpr int kQwen7bLayers = 28;

}  // namespace qwenq::bench
