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

// Forward: the GPU forward and everything built on it (eval, scoring, GPTQ/AWQ calibration); Decode: generation
// with a KV cache, which adds the decode attention's head-dim limit; Train: the LoRA trainer, whose untied input
// embedding table stays on the host.
enum class GpuUse { Forward, Decode, Train };

// "" or why the GPU kernels cannot run a model of this shape: RoPE needs an even head_dim of at most 512 (the
// attention runs flash for the compiled head dims, the naive kernel up to 512), the decode attention at most 256.
std::string gpu_config_refusal(const QwenConfig& c, GpuUse use);

// "" or the first reason the GPU cannot run `model`: its shape (above), a GGUF embedding or output table held
// quantized, then each Linear in upload order, named ("'model.layers.3.self_attn.k_proj': ...").
std::string gpu_model_refusal(const QwenModel& model, GpuUse use);
// The same from a model's config and weights.
std::string gpu_weights_refusal(const QwenConfig& c, const QwenWeights& w, GpuUse use);

// The device bytes of a model's weights as QwenModelCuda uploads them for `use`, as the caching allocator holds them:
// each decoder layer's arena and a MoE layer's expert arena (qwen_layer_arena_bytes / qwen_moe_arena_bytes), the
// final norm, the output table and the input one (once when tied; not for Train unless tied), each allocation
// rounded by DeviceAllocator::round_size. Throws a Linear's refusal (gpu_linear_refusal) when the arenas could not
// hold one; callers ask gpu_weights_refusal first, which also covers the tables and head_dim.
uint64_t gpu_weight_bytes(const QwenConfig& c, const QwenWeights& w, GpuUse use);

// The least device memory `--device auto` leaves for the work beyond the weights (cuBLASLt's workspace, a batch's
// activations, a logits chunk): a model whose weights leave less runs on the CPU. One that leaves more may still
// run out on a long batch; the out-of-memory message then says what was live and what to lower.
constexpr uint64_t kGpuAutoHeadroomBytes = uint64_t{1} << 30;

// "" or why weights of `weight_bytes` do not fit a GPU with `free_bytes` free (kGpuAutoHeadroomBytes kept):
// "the weights take 14.2 GiB on the GPU, which has 11.6 GiB free (1.0 GiB is kept for the work)".
std::string gpu_fit_refusal(uint64_t weight_bytes, uint64_t free_bytes);

// "" or why `gptq`/`awq --device cuda` cannot calibrate from the checkpoint in `model_dir` (a quantizer's source
// is dense or FP8; the FP8 weights are decoded on the CPU only), or its shape (above).
std::string gpu_source_refusal(const std::string& model_dir);
// The device bytes of that source's tensors as uploaded for calibration (each rounded by the allocator: an upper
// bound of the arenas' packing of a layer's tensors into one allocation), read from the safetensors headers.
uint64_t gpu_source_weight_bytes(const std::string& model_dir);

}  // namespace qwenq
