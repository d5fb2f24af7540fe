// Block-wise FP8 weights as Qwen's and DeepSeek's FP8 checkpoints store them (config.json "quantization_config":
// {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [bn, bk]}):
//   <prefix>.weight            F8_E4M3 [N, K]
//   <prefix>.weight_scale_inv  F32, BF16 or F16 [ceil(N / bn), ceil(K / bk)]
//   ŵ[n, k] = float(weight[n, k]) · scale_inv[n / bn, k / bk]      (one fp32 multiply: the float8 value and the
//                                                                     scale are exact in fp32)
// "scale_inv" is the factor that takes the stored values back to the weight (the quantizer divided by it). Qwen3's
// dense FP8 releases store it in BF16, some in F16, DeepSeek-V3 in F32; all are widened exactly. The activations'
// dynamic FP8 rounding (vLLM's W8A8 kernels) is not applied: qwenq computes with ŵ in fp32, as the weight-only
// dequantized model that transformers' FP8 dequantization gives (it then rounds ŵ to the model dtype; we keep fp32).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/safetensors.h"

namespace qwenq {

struct Fp8Linear {
  int64_t N = 0, K = 0, block_n = 128, block_k = 128;
  const uint8_t* data = nullptr;  // [N, K] float8_e4m3fn, in the checkpoint's mapping (the Checkpoint outlives it)
  std::vector<float> scale_inv;   // [ceil(N / block_n), ceil(K / block_k)], widened to fp32
  int64_t scale_cols() const { return (K + block_k - 1) / block_k; }
};

// Reads <prefix>.weight and <prefix>.weight_scale_inv, checking dtypes, shapes against [N, K] and the block size,
// and that every scale is finite; errors name the tensor and the file.
Fp8Linear read_fp8_linear(const Checkpoint& ckpt, const std::string& prefix, int64_t block_n, int64_t block_k,
                          int64_t N, int64_t K);
// The same with the scales in <prefix>.<scale> (`what` names them in errors), e.g. compressed-tensors' weight_scale
// ([N, 1] per channel: block 1 x K; [1], [] or [1, 1] per tensor: block N x K).
Fp8Linear read_fp8_linear_scaled(const Checkpoint& ckpt, const std::string& prefix, const std::string& scale,
                                 const char* what, int64_t block_n, int64_t block_k, int64_t N, int64_t K);
// True when <prefix>.weight is stored as F8_E4M3.
bool has_fp8_linear(const Checkpoint& ckpt, const std::string& prefix);

// Inputs [k0, k0 + len) of row n of ŵ into out (the products' row reader; the same bits as the whole matrix).
void fp8_row(const Fp8Linear& w, int64_t n, int64_t k0, int64_t len, float* out);
// ŵ [N, K] into W (N·K floats), rows in parallel.
void dequantize_fp8_linear_into(const Fp8Linear& w, float* W);

}  // namespace qwenq
