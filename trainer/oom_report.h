// What `qwen-qlora train --device cuda` says when the GPU runs out of memory: the caching allocator's message
// (kernels/device_allocator.h: the request, the device's free/total, allocated/reserved, live bytes per tag),
// then the `qwen-qlora plan` breakdown of the same run (trainer/memory_plan.h, one GPU of the device's size)
// next to what was live when the request failed, category by category, and what to lower:
//
//   memory at the failure vs `qwen-qlora plan --model M --seq-len S --batch-size B --lora-r r --target T ...`:
//   | category     | planned  | live at the failure       |
//   | base weights | 4.3 GiB  | 4.3 GiB                   |
//   | adapters     | ...      | ...                       |      gradients, optimizer alike
//   | activations  | ...      | ... (+ the failed request) |
//   | workspace    | ...      | ... (logits + scratch)    |
//   | total        | ...      | allocated + request       |
//   what to lower: <the category that holds the most>
//
// The live tags map to the plan's categories as weights -> base weights, adapter -> adapters, gradients,
// optimizer, activations -> activations, logits + workspace -> workspace. The plan counts the GPU trainer's own
// buffers (trainer/lora_cuda_buffers.h), each as the caching allocator holds it.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/device_allocator.h"
#include "lora/lora_config.h"
#include "trainer/memory_plan.h"
#include "trainer/qwen_config.h"

namespace qwenq {

// The plan of one training run on one GPU of `device_bytes`: the model's config, its directory's base format
// (plan_base_from_model_dir), the adapter's config, the micro-batch, checkpointing on (the GPU trainer always
// checkpoints).
PlanInput plan_input_for_training(const std::string& model_dir, const QwenConfig& config, const LoraConfig& lora,
                                  int64_t batch_size, int64_t seq_len, uint64_t device_bytes);

// The table and the advice above, for an out-of-memory failure with `facts` (the plan's capacity is taken from
// facts.device_total when known, else in.device_bytes). A plan that cannot be computed is named in one line.
std::string plan_vs_live_report(PlanInput in, const OutOfMemoryFacts& facts);

// e.what(), then the report: the message of the OutOfMemoryError the trainer rethrows (same facts).
OutOfMemoryError training_out_of_memory(const OutOfMemoryError& e, const std::string& context, const PlanInput& in);

}  // namespace qwenq
