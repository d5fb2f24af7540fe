// AWQ: activation-aware weight quantization (Lin et al. 2023, arXiv 2306.00978), as AutoAWQ's AwqQuantizer runs
// it (REFERENCE A2.1). The model-independent half lives here: the statistics, the per-channel scale search over
// a grid of exponents, the clip search, and the search-result file. The driver that runs a Qwen block is
// trainer/awq_model.
//
// Scale search for a group of Linears that share one input x [T, K] (q,k,v after input_layernorm; gate,up after
// post_attention_layernorm; o after v; down after up):
//   x̄[k] = mean_t |x[t,k]|                                   (activation magnitude per input channel)
//   w̄[k] = mean over the rows of every Linear of |W[n,k]| / (max_{k' in group of k} |W[n,k']| + 1e-6)
//   for α = i/n_grid, i = 0..n_grid-1:
//     s = max(x̄^α / (w̄^(1-α) + 1e-4), 1e-4)  (duo scaling; without it s = max(x̄^α, 1e-4)),  s ← s / √(max s · min s)
//     every Linear W ← Q(W·diag(s))·diag(s)⁻¹  (Q: group round-to-nearest with the AWQ grid rule)
//     loss(α) = mean of (module(x) − module_fp(x))² over all outputs of the module that reads the group
//   keep the s of the smallest loss (ties: the first). With n_grid = 1 and no duo scaling s ≡ 1: RTN.
// Applying s is exact in real arithmetic: the previous op's output channels are divided by s (a norm's weight, or
// the rows of v_proj/up_proj and their bias) and the Linears' input columns multiplied by s.
//
// Clip search for one Linear (scaled weights W [N, K], scaled inputs x; AutoAWQ skips q and k): per output row n
// and group g, with m0 = max_k |W[n,k]| over the group and shrink r = 1 - i/n_grid, i = 0..max_shrink·n_grid-1,
//   W_c = clamp(W[n,g], -r·m0, r·m0),   err(r) = mean_t (x_t[g] · (Q(W_c) − W[n,g]))²
// over ~n_sample_tokens tokens (every ⌊T / n_sample_tokens⌋-th, at least every one); the weights are clamped to
// the best r·m0 before quantization.
// The heavy inner parts, the candidate Q(W·s)/s and the clip search's error table, are quant/awq_search.h's ops
// (CPU twins and CUDA kernels); awq_search_clip runs the CPU twin.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace qwenq {

struct AwqSearchOptions {
  int bits = 4;
  int64_t group_size = 128;
  int n_grid = 20;
  bool duo_scaling = true;
  double max_shrink = 0.5;
  int64_t n_sample_tokens = 512;
};

// Ŵ = Q(W) with the AWQ rule, zero point, fp16 scales; W [N, K] row-major; a short last group when G ∤ K.
std::vector<float> awq_fake_quantize(const float* W, int64_t N, int64_t K, int bits, int64_t group_size);

// x̄ [K] of x [T, K].
std::vector<float> awq_activation_mean(const float* x, int64_t T, int64_t K);
// w̄ [K] of several weights [N_i, K] stacked along N.
std::vector<float> awq_weight_mean(const std::vector<const float*>& weights, const std::vector<int64_t>& rows, int64_t K,
                                   int64_t group_size);
// The normalized candidate s for exponent α.
std::vector<float> awq_candidate_scales(const std::vector<float>& x_mean, const std::vector<float>& w_mean, double alpha,
                                        bool duo_scaling);

struct AwqScaleResult {
  std::vector<float> scales;   // [K]
  double best_alpha = 0.0;
  double best_loss = 0.0;
  std::vector<double> losses;  // per grid point
};
// loss(s) evaluates the module with the group's Linears replaced by Q(W·s)/s; called n_grid times.
AwqScaleResult awq_search_scale(const std::vector<float>& x_mean, const std::vector<float>& w_mean,
                                const AwqSearchOptions& opt, const std::function<double(const std::vector<float>&)>& loss);

// The clip search reads tokens t = 0, step, 2·step, ... of its T inputs: step = max(1, ⌊T / n_sample_tokens⌋).
// Those S = ⌈T / step⌉ rows alone give the same result: S < 2·n_sample_tokens, so their own step is 1 (a driver
// whose inputs live elsewhere, trainer/awq_model_cuda.cpp, fetches only them).
int64_t awq_clip_token_step(int64_t T, const AwqSearchOptions& opt);
// Best clip bound per (row, group): [N, ceil(K/G)]. x [T, K] are the Linear's (scaled) inputs.
std::vector<float> awq_search_clip(const float* W, int64_t N, int64_t K, const float* x, int64_t T,
                                   const AwqSearchOptions& opt);
// W[n, k] ← clamp(W[n, k], -max[n, g], max[n, g]).
void awq_apply_clip(float* W, int64_t N, int64_t K, int64_t group_size, const std::vector<float>& max_val);

// What the search found for a whole model, kept so a run can be repeated without searching (llm-awq's
// --dump_awq / --load_awq). Stored as safetensors: "<prev op>.awq_scales" F32 [K] (prev op: e.g.
// "model.layers.0.input_layernorm", "model.layers.0.mlp.up_proj") and "<linear>.awq_clip" F32 [N, G]; metadata
// format=qwenq-awq-search, version=1, bits, group_size, and the model's intermediate_size.
struct AwqSearchResult {
  int bits = 4;
  int64_t group_size = 128;
  int64_t intermediate_size = 0;
  std::map<std::string, std::vector<float>> scales;  // by previous op
  std::map<std::string, std::pair<std::vector<float>, std::vector<int64_t>>> clips;  // by Linear: values, shape
};
void save_awq_search(const std::string& path, const AwqSearchResult& r);
AwqSearchResult load_awq_search(const std::string& path);

}  // namespace qwenq
