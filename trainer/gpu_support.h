// Whether the GPU paths can run an input, decided on the host in any build (no CUDA here): `--device auto`
// (kernels/device.h's settle_device, tools/cli_common.h's DevicePick) runs a command on the CPU, saying why in its
// device line, when the GPU path would refuse the model; `--device cuda` fails with the same reason before the
// upload. The checks are the ones the uploads make themselves, shared with them: QwenModelCuda and QwenDecodeCuda
// call gpu_config_refusal, the weight arenas gpu_linear_refusal (trainer/qwen_weight_arena.h).
#pragma once

#include <string>

#include "trainer/qwen_config.h"
#include "trainer/qwen_model.h"

namespace qwenq {

// Forward: the GPU forward and everything built on it (eval, scoring, GPTQ/AWQ calibration, training);
// Decode: generation with a KV cache, which adds the decode attention's head-dim limit.
enum class GpuUse { Forward, Decode };

// "" or why the GPU kernels cannot run a model of this shape: RoPE needs an even head_dim of at most 512 (the
// attention runs flash for the compiled head dims, the naive kernel up to 512), the decode attention at most 256.
std::string gpu_config_refusal(const QwenConfig& c, GpuUse use);

// "" or the first reason the GPU cannot run `model`: its shape (above), a GGUF embedding or output table held
// quantized, then each Linear in upload order, named ("'model.layers.3.self_attn.k_proj': ...").
std::string gpu_model_refusal(const QwenModel& model, GpuUse use);
// The same from a model's config and weights.
std::string gpu_weights_refusal(const QwenConfig& c, const QwenWeights& w, GpuUse use);

// "" or why `gptq`/`awq --device cuda` cannot calibrate from the checkpoint in `model_dir` (a quantizer's source
// is dense or FP8; the FP8 weights are decoded on the CPU only), or its shape (above).
std::string gpu_source_refusal(const std::string& model_dir);

}  // namespace qwenq
