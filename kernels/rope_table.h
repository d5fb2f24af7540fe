// The RoPE frequency table of each rope type that transformers 4.51.3 computes at model init
// (modeling_rope_utils.py), for a head dim D, i = 0..D/2-1, θ = rope_theta:
//   default  inv_freq[i] = 1 / θ^(2i/D),                         attention_scaling = 1
//   linear   inv_freq[i] = default[i] / factor                    (positions divided by factor)
//   yarn     interp = 1 / (factor·θ^(2i/D)), extrap = default; ramp[i] = clamp((i − low) / (high − low), 0, 1)
//            with low = max(⌊d(β_fast)⌋, 0), high = min(⌈d(β_slow)⌉, D − 1), d(r) = D·ln(L / (2π·r)) / (2 ln θ),
//            L = the pre-extension context; inv_freq = interp·ramp + extrap·(1 − ramp);
//            attention_scaling = attention_factor (cos and sin are multiplied by it)
//   llama3   wavelen = 2π / default[i]; wavelen > L/low_freq_factor: default/factor; wavelen < L/high_freq_factor:
//            default; in between: (1 − s)·default/factor + s·default, s = (L/wavelen − low) / (high − low)
// The config-level choices (which factor yarn uses, its default attention_factor) are trainer/qwen_config.cpp's;
// this file is the arithmetic, in transformers' fp32 operation order (rope_table.cpp says which ops round).
// RoPE applies x' = s·R(pos·inv_freq)·x; the whole rotary embedding is in rope.h.
#pragma once

#include <cstdint>
#include <vector>

namespace qwenq {

enum class RopeType { Default, Linear, Yarn, Llama3 };

// rope_type as config.json spells it ("default", "linear", "yarn", "llama3").
const char* rope_type_name(RopeType t);

struct RopeSpec {
  RopeType type = RopeType::Default;
  double theta = 10000.0;  // rope_theta
  double factor = 1.0;     // linear, yarn (the factor transformers uses), llama3
  // yarn: the context the correction range is computed for (rope_scaling's original_max_position_embeddings, else
  // max_position_embeddings); llama3: old_context_len.
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0, beta_slow = 1.0;              // yarn
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  double attention_factor = 1.0;                         // yarn: cos/sin multiplier; 1 for the others
};

// Plain RoPE with base θ.
RopeSpec rope_spec_default(double theta);

// YaRN's default attention_factor (transformers' get_mscale): m(s, k) = 0.1·k·ln(s) + 1 for s > 1, else 1;
// with mscale and mscale_all_dim both non-zero m(factor, mscale) / m(factor, mscale_all_dim), else m(factor, 1).
double yarn_default_attention_factor(double factor, double mscale, double mscale_all_dim);

struct RopeTable {
  std::vector<float> inv_freq;  // [D/2]
  float attention_scaling = 1.f;
};

// The table for head dim D. Throws qwenq::Error starting with `name` on an odd or non-positive D or an invalid
// spec (theta, factor, attention_factor, low/high_freq_factor not finite and positive; high <= low; no context).
RopeTable rope_table(const RopeSpec& spec, int64_t D, const char* name = "rope_table");

}  // namespace qwenq
