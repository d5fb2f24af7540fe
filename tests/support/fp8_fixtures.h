// Block-wise FP8 checkpoints written by the tests' own quantizer (independent of qwenq's reader, quant/fp8.h), shared
// by the FP8 reader tests and the tests of quantizing from an FP8 model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace qwenq::test {

// Blocks of 16 x 48: partial blocks in both directions on the tiny models.
constexpr int64_t kBlockN = 16, kBlockK = 48;

// The e4m3 value of byte b by the format's definition, in double (NaN for 0x7F / 0xFF).
double e4m3_definition(int b);

// The tests' quantizer of one weight [N, K]: per block, scale = bf16(max|w| / 448) (1 for an all-zero block), code
// = the finite e4m3 value nearest w / scale (brute force; ties to the lower byte). ŵ = value(code)·scale in fp32.
struct Quantized {
  std::vector<uint8_t> codes;
  std::vector<uint16_t> scales;  // bf16 [ceil(N / bn), ceil(K / bk)]
  std::vector<float> w_hat;
};
Quantized quantize_fp8(const float* W, int64_t N, int64_t K);

// `src` (an F32 tiny model) written twice: fp8_dir with every decoder Linear in FP8 (weight F8_E4M3 and
// weight_scale_inv BF16; quantization_config `qc`), ref_dir with the same ŵ in F32.
void write_fp8_pair(const std::string& src, const std::string& fp8_dir, const std::string& ref_dir,
                    const nlohmann::json& qc);

// quantization_config of a block-wise FP8 model (Qwen's and DeepSeek's "fp8", blocks kBlockN x kBlockK).
nlohmann::json qwen_fp8_config();

}  // namespace qwenq::test
