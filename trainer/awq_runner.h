// The seam between the AWQ driver (trainer/awq_model.cpp: statistics, grid, scale and clip search, folding,
// writing) and the machine a decoder block runs on: AutoAWQ's scaling groups of a Qwen block, and AwqBlockRunner,
// which answers every question the driver asks of the calibration activations. Two implementations: the CPU's
// (awq_model.cpp, QwenModel) and the GPU's (awq_model_cuda.cpp, QwenModelCuda, activations and reductions on the
// device). Private to those two files and their tests (tests/gpu/test_awq_model_cuda.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "quant/awq.h"
#include "trainer/qwen_model.h"

namespace qwenq {

// The seven Linears of a block by index (trainer/qwen_model.h's kDecoderLinears).
inline constexpr int kAwqQ = 0, kAwqV = 2, kAwqO = 3, kAwqGate = 4, kAwqUp = 5, kAwqDown = 6;

// AutoAWQ's scaling groups for Qwen2/Qwen3 (awq/models/qwen2.py): the op whose output channels absorb 1/s, the
// Linears whose input columns take s, the group whose input they read (kAwqGroups[g].input == BlockLinear(g)), and
// the module whose output the search compares.
enum class AwqModule { SelfAttn, Mlp, Single };
struct AwqScaleGroup {
  const char* prev;  // relative to "model.layers.<l>."
  int prev_slot;     // -1: an RMSNorm weight
  std::vector<int> slots;
  BlockLinear input;
  AwqModule module;
};
inline const AwqScaleGroup kAwqGroups[4] = {
    {"input_layernorm", -1, {0, 1, 2}, BlockLinear::QKV, AwqModule::SelfAttn},
    {"self_attn.v_proj", kAwqV, {kAwqO}, BlockLinear::O, AwqModule::Single},
    {"post_attention_layernorm", -1, {kAwqGate, kAwqUp}, BlockLinear::GateUp, AwqModule::Mlp},
    {"mlp.up_proj", kAwqUp, {kAwqDown}, BlockLinear::Down, AwqModule::Single}};

// The calibration activations of the block being quantized, wherever they live. Call order per block l:
// capture(l), then for each searched group input_mean, set_reference, loss_scaled (n_grid times); then search_clip
// per clipped Linear. The heavy parts (the grid candidates, the clip search) run where the activations live, on
// quant/awq_search.h's ops: the CPU runner calls the twins, the GPU runner the kernels.
class AwqBlockRunner {
 public:
  virtual ~AwqBlockRunner() = default;
  // Calibration tokens T (all windows).
  virtual int64_t tokens() const = 0;
  // Runs block l with the model's own weights over the calibration tokens, keeping the input [T, K] of each of its
  // Linear groups; the block's output becomes the input of block l + 1 (AutoAWQ feeds blocks from the
  // unquantized model).
  virtual void capture(int64_t l) = 0;
  // x̄ [K] of group g's kept input: awq_activation_mean's contract (double sums over the tokens, then fp32).
  virtual std::vector<float> input_mean(BlockLinear g) = 0;
  // Keeps the reference: the output [T, C] of grp's module over its kept input, the group's Linears at the fp32
  // working copies W[slot] (W: the block's 7, by slot), every other Linear as the model holds it.
  virtual void set_reference(int64_t l, const AwqScaleGroup& grp, const std::vector<float>* W) = 0;
  // mean over the T·C outputs of (module output − reference)², in double, with the group's Linears replaced by
  // candidate[j] (fp32 [N, K], in grp.slots order) for this call only.
  virtual double loss(int64_t l, const AwqScaleGroup& grp, const std::vector<float>* candidate) = 0;
  // loss() of scale-grid point s [K]: candidate[j] = awq_candidate(W[grp.slots[j]], s) (quant/awq_search.h, with
  // opt.bits and opt.group_size), built where the module runs. W must be the working copies of the last
  // set_reference (same l and grp): the GPU runner builds the candidates from the copies it uploaded there.
  virtual double loss_scaled(int64_t l, const AwqScaleGroup& grp, const std::vector<float>* W,
                             const std::vector<float>& s, const AwqSearchOptions& opt) = 0;
  // Clip bounds [N, ⌈K/G⌉] of a folded Linear W [N, K] (host) that reads group g's kept input: awq_clip_search over
  // the rows awq_clip_token_step(T, opt) samples, divided by s [width(g)] (empty: not scaled), zero-padded to
  // K >= width(g) columns (awq_clip_inputs) — awq_search_clip's result on those inputs (the GPU's: see
  // quant/awq_search.h for where near ties may differ).
  virtual std::vector<float> search_clip(BlockLinear g, const std::vector<float>& s, const float* W, int64_t N,
                                         int64_t K, const AwqSearchOptions& opt) = 0;
  // Rows t = 0, step, 2·step, ... of group g's kept input (unscaled): [⌈T / step⌉, K] on the host (for tests).
  virtual std::vector<float> sampled_rows(BlockLinear g, int64_t step) = 0;
};

// The CPU runner (awq_model.cpp) over `model`, whose Linears it swaps for candidates during a call (and restores);
// module evaluations run on pieces of whole windows of at most chunk_tokens tokens.
std::unique_ptr<AwqBlockRunner> make_awq_cpu_runner(QwenModel& model, const std::vector<std::vector<int32_t>>& windows,
                                                    int64_t chunk_tokens);

#ifdef QWENQ_HAVE_CUDA
// The GPU runner (awq_model_cuda.cpp) over `model` uploaded to the current device; the windows are run in chunks
// of whole windows of at most chunk_tokens tokens (at least one window each).
std::unique_ptr<AwqBlockRunner> make_awq_cuda_runner(const QwenModel& model,
                                                     const std::vector<std::vector<int32_t>>& windows,
                                                     int64_t chunk_tokens);
#endif

}  // namespace qwenq
