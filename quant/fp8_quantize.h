// Writing FP8 weights (qwen-quant fp8): one Linear's fp32 W [N, K] rounded to float8_e4m3fn with one fp32 scale per
// block of bn x bk weights (bn = 1, bk = K: per output channel, compressed-tensors' FP8_DYNAMIC; 128 x 128: the
// block-wise "fp8" of Qwen's and DeepSeek's FP8 releases). Per block:
//   s = max(max|w| / 448, 2^-23)          (448 the largest e4m3 value; the floor is compressed-tensors' eps, for an
//                                          all-zero block)
//   q = e4m3(clamp(w / s, -448, 448))     (round to nearest, ties to even, as torch's .to(torch.float8_e4m3fn))
//   ŵ = value(q) · s                      (quant/fp8.h reads it back bit for bit)
#pragma once

#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

namespace qwenq {

// The float8_e4m3fn byte nearest x (ties to the even mantissa), |x| beyond 448 saturated to ±448, NaN -> 0x7F
// (its sign kept).
uint8_t f32_to_e4m3(float x);

struct Fp8Blocks {
  int64_t N = 0, K = 0, block_n = 1, block_k = 1;
  std::vector<uint8_t> codes;  // [N, K]
  std::vector<float> scale;    // [ceil(N / block_n), ceil(K / block_k)]
};

// W [N, K] (finite) quantized as above, blocks in parallel; block_k >= K with block_n 1 is per channel.
Fp8Blocks quantize_fp8_blocks(const float* W, int64_t N, int64_t K, int64_t block_n, int64_t block_k);

// config.json "quantization_config" of a block-wise FP8 model, as Qwen's FP8 releases have it: {"activation_scheme":
// "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [block, block]}.
nlohmann::ordered_json fp8_block_quantization_config(int64_t block);

}  // namespace qwenq
