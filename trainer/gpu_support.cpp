// Whether the GPU paths can run an input (trainer/gpu_support.h).
#include "trainer/gpu_support.h"

#include <algorithm>
#include <sstream>

#include "core/progress.h"
#include "core/safetensors.h"
#include "kernels/attention_decode.h"
#include "kernels/attention_naive.h"
#include "kernels/device_allocator.h"
#include "kernels/rope.h"
#include "trainer/quant_config.h"
#include "trainer/qwen_weight_arena.h"

namespace qwenq {

// The flash attention head dims (64, 128) are within the naive kernel's limit, so the naive limit alone decides.
static_assert(kAttentionNaiveMaxHeadDim >= 128, "a compiled flash head dim beyond the naive kernel's limit");

std::string gpu_config_refusal(const QwenConfig& c, GpuUse use) {
  const int64_t D = c.head_dim;
  std::ostringstream why;
  if (D % 2 != 0 || D > kRopeMaxHeadDim || D > kAttentionNaiveMaxHeadDim) {
    why << "head_dim " << D << ": the GPU's RoPE and attention kernels need an even head_dim of at most "
        << std::min(kRopeMaxHeadDim, kAttentionNaiveMaxHeadDim);
  } else if (use == GpuUse::Decode && D > kAttentionDecodeMaxHeadDim) {
    why << "head_dim " << D << " exceeds the GPU decode attention's limit " << kAttentionDecodeMaxHeadDim;
  }
  return why.str();
}

namespace {

// "" or "'<name>': <why>" for a Linear the arenas cannot hold (an absent one, N = 0, passes).
std::string linear_refusal(const LinearWeight& w, const std::string& name) {
  const std::string why = gpu_linear_refusal(w);
  return why.empty() ? why : "'" + name + "': " + why;
}

}  // namespace

std::string gpu_model_refusal(const QwenModel& model, GpuUse use) {
  return gpu_weights_refusal(model.config(), model.weights(), use);
}

std::string gpu_weights_refusal(const QwenConfig& c, const QwenWeights& w, GpuUse use) {
  std::string why = gpu_config_refusal(c, use);
  if (!why.empty()) return why;
  if (w.embed_q || w.lm_head_q) {
    return "this GGUF model holds its embedding or output table quantized, which the GPU forward reads in place "
           "(`qwen-quant dequantize` turns it into a directory the GPU reads)";
  }
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const QwenLayerWeights& L = w.layers[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (const auto& [lw, name] : {std::pair<const LinearWeight*, const char*>{&L.q, "self_attn.q_proj"},
                                   {&L.k, "self_attn.k_proj"}, {&L.v, "self_attn.v_proj"}, {&L.o, "self_attn.o_proj"},
                                   {&L.gate, "mlp.gate_proj"}, {&L.up, "mlp.up_proj"}, {&L.down, "mlp.down_proj"}}) {
      if (!(why = linear_refusal(*lw, p + name)).empty()) return why;
    }
    const MoeWeights& m = L.moe;
    if (!(why = linear_refusal(m.router, p + "mlp.gate")).empty()) return why;
    const int64_t E = static_cast<int64_t>(m.experts.size());
    for (int64_t e = 0; e <= E; ++e) {  // the routed experts, then the shared one (absent: N = 0)
      const MoeExpertWeights& x = e < E ? m.experts[static_cast<size_t>(e)] : m.shared;
      const std::string ep = p + moe_expert_path(e < E ? e : -1);
      for (const auto& [lw, name] : {std::pair<const LinearWeight*, const char*>{&x.gate, "gate_proj"},
                                     {&x.up, "up_proj"}, {&x.down, "down_proj"}}) {
        if (!(why = linear_refusal(*lw, ep + name)).empty()) return why;
      }
    }
    if (!(why = linear_refusal(m.shared_gate, p + "mlp.shared_expert_gate")).empty()) return why;
  }
  return "";
}

uint64_t gpu_weight_bytes(const QwenConfig& c, const QwenWeights& w, GpuUse use) {
  const auto table = [](const TensorView& t) -> uint64_t {
    return t.data == nullptr ? 0 : DeviceAllocator::round_size(static_cast<size_t>(t.nbytes()));
  };
  const bool tied = w.embed.data != nullptr && w.embed.data == w.lm_head.data;
  uint64_t total = table(w.final_norm) + table(w.lm_head);
  if (!tied && use != GpuUse::Train) total += table(w.embed);
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const std::string prefix = "model.layers." + std::to_string(l) + ".";
    total += DeviceAllocator::round_size(static_cast<size_t>(qwen_layer_arena_bytes(w.layers[l], prefix)));
    if (c.is_moe_layer(static_cast<int64_t>(l))) {
      total += DeviceAllocator::round_size(static_cast<size_t>(qwen_moe_arena_bytes(w.layers[l].moe, prefix)));
    }
  }
  return total;
}

std::string gpu_fit_refusal(uint64_t weight_bytes, uint64_t free_bytes) {
  if (weight_bytes + kGpuAutoHeadroomBytes <= free_bytes) return "";
  return "the weights take " + format_bytes(weight_bytes) + " on the GPU, which has " + format_bytes(free_bytes) +
         " free (" + format_bytes(kGpuAutoHeadroomBytes) + " is kept for the work)";
}

uint64_t gpu_source_weight_bytes(const std::string& model_dir) {
  const Checkpoint ckpt(model_dir);
  uint64_t total = 0;
  for (const std::string& name : ckpt.names()) {
    total += DeviceAllocator::round_size(static_cast<size_t>(ckpt.get(name).nbytes()));
  }
  return total;
}

std::string gpu_source_refusal(const std::string& model_dir) {
  if (load_quant_config(model_dir).float8_weights()) {
    return model_dir + " is an FP8 model, whose weights are decoded on the CPU only (`qwen-quant dequantize` it "
                       "first for the GPU)";
  }
  return gpu_config_refusal(load_qwen_config(model_dir), GpuUse::Forward);
}

}  // namespace qwenq
