// Small Qwen2/Qwen3 checkpoints for the GPU model tests, with every tensor the forward reads made non-trivial
// (q/k/v biases for Qwen2, q/k norm weights for Qwen3, norm weights around 1), which trainer/random_model.h's presets
// leave at 0 and 1: the one writer of these models for every GPU test (test_model_cuda, test_decode_cuda,
// test_lora_model_cuda), and their 4-bit copies (`quantized`). The CPU tests' models (tests/support/test_models.h)
// are the random_model presets.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/files.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "trainer/quantize_model.h"

namespace qwenq::test {

struct GpuTestArch {
  std::string model_type;  // "qwen2" (biases) or "qwen3" (q/k norm, explicit head_dim)
  int64_t C, I, H, Hkv, D, V, layers;
  bool tied;
  std::string rope_scaling;  // config.json's rope_scaling as JSON text; empty: none (default RoPE)
};

// The two D = 64 architectures of the model, LoRA and decode tests (flash attention runs at D = 64): Qwen2 with
// q/k/v biases and a tied lm_head, Qwen3 with q/k norms, head_dim != hidden / heads and an untied lm_head.
inline const GpuTestArch kGpuQwen2Bias{"qwen2", 128, 256, 2, 1, 64, 384, 2, true, ""};
inline const GpuTestArch kGpuQwen3{"qwen3", 128, 256, 4, 2, 64, 384, 2, false, ""};
// The same with scaled RoPE: YaRN factor 4 over the 4096-token context (ramp over i = 10..23, attention scaling
// 1.139), and llama3 from a 64-token context (i <= 3 kept, 4..8 smoothed, >= 9 divided by 8).
inline const GpuTestArch kGpuQwen2Yarn{"qwen2", 128, 256, 2, 1, 64, 384, 2, true, R"({"type":"yarn","factor":4.0})"};
inline const GpuTestArch kGpuQwen3Llama3{"qwen3", 128, 256, 4, 2, 64, 384, 2, false,
                                         R"({"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,)"
                                         R"("high_freq_factor":4.0,"original_max_position_embeddings":64})"};

// config.json + model.safetensors in `dtype` (F32 or BF16) from a seeded normal generator.
inline void write_gpu_test_model(const std::string& dir, const GpuTestArch& a, DType dtype, uint64_t seed) {
  Rng rng(seed);
  SafetensorsWriter w;
  const auto add = [&](const std::string& name, std::vector<int64_t> shape, float mean, float stddev) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> f(static_cast<size_t>(n));
    for (auto& x : f) x = mean + static_cast<float>(rng.normal()) * stddev;
    std::vector<uint8_t> bytes(f.size() * dtype_size(dtype));
    from_f32(dtype, f.data(), bytes.data(), f.size());
    w.add_owned(name, dtype, std::move(shape), std::move(bytes));
  };
  const int64_t Q = a.H * a.D, KV = a.Hkv * a.D;
  const bool qwen3 = a.model_type == "qwen3";
  add("model.embed_tokens.weight", {a.V, a.C}, 0.f, 0.5f);
  for (int64_t l = 0; l < a.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {a.C}, 1.f, 0.1f);
    add(p + "self_attn.q_proj.weight", {Q, a.C}, 0.f, 0.08f);
    add(p + "self_attn.k_proj.weight", {KV, a.C}, 0.f, 0.08f);
    add(p + "self_attn.v_proj.weight", {KV, a.C}, 0.f, 0.08f);
    if (qwen3) {
      add(p + "self_attn.q_norm.weight", {a.D}, 1.f, 0.1f);
      add(p + "self_attn.k_norm.weight", {a.D}, 1.f, 0.1f);
    } else {
      add(p + "self_attn.q_proj.bias", {Q}, 0.f, 0.1f);
      add(p + "self_attn.k_proj.bias", {KV}, 0.f, 0.1f);
      add(p + "self_attn.v_proj.bias", {KV}, 0.f, 0.1f);
    }
    add(p + "self_attn.o_proj.weight", {a.C, Q}, 0.f, 0.08f);
    add(p + "post_attention_layernorm.weight", {a.C}, 1.f, 0.1f);
    add(p + "mlp.gate_proj.weight", {a.I, a.C}, 0.f, 0.08f);
    add(p + "mlp.up_proj.weight", {a.I, a.C}, 0.f, 0.08f);
    add(p + "mlp.down_proj.weight", {a.C, a.I}, 0.f, 0.06f);
  }
  add("model.norm.weight", {a.C}, 1.f, 0.1f);
  if (!a.tied) add("lm_head.weight", {a.V, a.C}, 0.f, 0.1f);
  nlohmann::ordered_json cfg = {
      {"model_type", a.model_type},
      {"vocab_size", a.V},
      {"hidden_size", a.C},
      {"intermediate_size", a.I},
      {"num_hidden_layers", a.layers},
      {"num_attention_heads", a.H},
      {"num_key_value_heads", a.Hkv},
      {"hidden_act", "silu"},
      {"max_position_embeddings", 4096},
      {"rms_norm_eps", 1e-6},
      {"rope_theta", 10000.0},
      {"tie_word_embeddings", a.tied},
      {"torch_dtype", dtype == DType::BF16 ? "bfloat16" : "float32"},
  };
  if (qwen3) cfg["head_dim"] = a.D;
  if (!a.rope_scaling.empty()) cfg["rope_scaling"] = nlohmann::ordered_json::parse(a.rope_scaling);
  std::filesystem::create_directories(dir);
  write_file_atomic(dir + "/config.json", cfg.dump(2) + "\n");
  w.write(dir + "/model.safetensors");
}

// Copies every regular file of model directory `from` except config.json and *.safetensors (the tokenizer files)
// into `dir`, so that a model written above can be trained or tokenized with `from`'s tokenizer.
inline void copy_tokenizer_files(const std::string& from, const std::string& dir) {
  for (const auto& e : std::filesystem::directory_iterator(from)) {
    const std::string name = e.path().filename().string();
    if (name == "config.json" || name.find(".safetensors") != std::string::npos || !e.is_regular_file()) continue;
    std::filesystem::copy_file(e.path(), dir + "/" + name, std::filesystem::copy_options::overwrite_existing);
  }
}

// `src` quantized by `method` (RTN: 4 bits, symmetric, GPTQ v1 layout: QuantizeOptions' defaults) with groups of 32 into `out`, which it returns; `pad`
// pads the MLP width to the group (QuantizeOptions::pad_intermediate).
inline std::string quantized(const std::string& src, QuantizeOptions::Method method, const std::string& out,
                             bool pad = false) {
  QuantizeOptions q;
  q.method = method;
  q.group_size = 32;
  q.model_dir = src;
  q.out_dir = out;
  q.pad_intermediate = pad;
  q.quiet = true;
  quantize_model(q);
  return out;
}

}  // namespace qwenq::test
