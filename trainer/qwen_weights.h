// The weights of a Qwen model as views into the memory-mapped checkpoint: nothing is copied or widened up
// front, so a bf16 model costs its file size in page cache and nothing more. Every tensor is looked up by
// its Hugging Face name and its shape checked against config.json, with errors naming tensor and file.
#pragma once

#include <memory>
#include <vector>

#include "core/safetensors.h"
#include "trainer/qwen_config.h"

namespace qwenq {

struct QwenLayerWeights {
  TensorView input_norm;                       // [C]
  TensorView q, k, v, o;                       // [H*D, C], [Hkv*D, C], [Hkv*D, C], [C, H*D]
  TensorView q_bias, k_bias, v_bias;           // [H*D], [Hkv*D], [Hkv*D] (data null when absent)
  TensorView q_norm, k_norm;                   // [D] (Qwen3 only)
  TensorView post_norm;                        // [C]
  TensorView gate, up, down;                   // [I, C], [I, C], [C, I]
};

struct QwenWeights {
  TensorView embed;       // [V, C]
  std::vector<QwenLayerWeights> layers;
  TensorView final_norm;  // [C]
  TensorView lm_head;     // [V, C] (= embed when tied)
};

// Binds views for every tensor the config calls for. `ckpt` must outlive the result.
QwenWeights bind_qwen_weights(const QwenConfig& cfg, const Checkpoint& ckpt);

}  // namespace qwenq
