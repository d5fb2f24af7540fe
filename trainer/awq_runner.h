// The seam between the AWQ driver (trainer/awq_model.cpp: statistics, grid, scale and clip search, folding,
// writing) and the machine a decoder block runs on: AutoAWQ's scaling groups of a Qwen block, and AwqBlockRunner,
// which answers every question the driver asks of the calibration activations. Two implementations: the CPU's
// (awq_model.cpp, QwenModel) and the GPU's (awq_model_cuda.cpp, QwenModelCuda, activations and reductions on the
// device). Private to those two files and their tests (tests/gpu/test_awq_model_cuda.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "quant/awq.h"
#include "trainer/qwen_model.h"

namespace qwenq {

// The seven Linears of a block by index (trainer/qwen_model.h's kDecoderLinears).
inline constexpr int kAwqQ = 0, kAwqV = 2, kAwqO = 3, kAwqGate = 4, kAwqUp = 5, kAwqDown = 6;

// Where a group of Linears reads its input: a block-level group (expert kAwqBlock: the QKV, O, GateUp or Down input
// of the block, all T tokens; in a MoE layer GateUp is the MoE block's input n), or the Linears of expert e of a MoE
// layer (e >= 0: the rows of the tokens routed to it; -1: the shared expert, every token): at = GateUp their
// gate/up input, Down their down_proj's.
inline constexpr int64_t kAwqBlock = -2;
struct AwqInput {
  BlockLinear at;
  int64_t expert = kAwqBlock;
  AwqInput(BlockLinear a, int64_t e = kAwqBlock) : at(a), expert(e) {}  // NOLINT: a block input converts implicitly
  bool is_block() const { return expert == kAwqBlock; }
};

// The quantized Linears of decoder layer l in the order the driver keeps them (its W[i]): a dense layer's seven in
// kDecoderLinears order (index = slot), a MoE layer's q, k, v, o (slots 0..3) then every expert's gate, up, down and
// qwen2_moe's shared expert's (routers stay dense: AwqScaleGroup::dense_readers).
struct AwqLinear {
  std::string name;           // below "model.layers.<l>."
  int64_t N = 0, K = 0;       // unpadded
  AwqInput input;             // the rows it reads
  int slot = -1;              // kDecoderLinears index of a block Linear; -1 for an expert's
  int64_t expert = kAwqBlock;  // an expert's Linear: the expert (-1 shared) ...
  int which = -1;             // ... and 0 gate_proj, 1 up_proj, 2 down_proj
  bool clipped = true;        // AutoAWQ's clip search skips q and k, whose errors the attention softmax amplifies
};
std::vector<AwqLinear> awq_layer_linears(const QwenConfig& c, int64_t l);
// The Linear a of layer l as `model` holds it.
LinearWeight& awq_linear_weight(QwenModel& model, int64_t l, const AwqLinear& a);

// AutoAWQ's scaling groups for Qwen2/Qwen3 (awq/models/qwen2.py) and Qwen3-MoE (awq/models/qwen3_moe.py): the op
// whose output channels absorb 1/s, the Linears whose input columns take s, the input they read and the module whose
// output the search compares.
enum class AwqModule { SelfAttn, Mlp, Single };
struct AwqScaleGroup {
  std::string prev;  // relative to "model.layers.<l>."
  int prev_slot;     // -1: an RMSNorm weight; else the index of a Linear in awq_layer_linears
  std::vector<int> slots;  // indices in awq_layer_linears
  AwqInput input;
  AwqModule module;
  // Unquantized Linears that read the same input (a MoE layer's router mlp.gate and qwen2_moe's mlp.shared_expert_gate):
  // their input columns take s too, so that the folded norm leaves the routing as it was. AutoAWQ 0.2.9 scales the
  // experts only, which shifts the routing of its Qwen3-MoE outputs.
  std::vector<std::string> dense_readers = {};
};
// A dense layer's four (kAwqGroups[g].input == BlockLinear(g)).
inline const AwqScaleGroup kAwqGroups[4] = {
    {"input_layernorm", -1, {0, 1, 2}, BlockLinear::QKV, AwqModule::SelfAttn},
    {"self_attn.v_proj", kAwqV, {kAwqO}, BlockLinear::O, AwqModule::Single},
    {"post_attention_layernorm", -1, {kAwqGate, kAwqUp}, BlockLinear::GateUp, AwqModule::Mlp},
    {"mlp.up_proj", kAwqUp, {kAwqDown}, BlockLinear::Down, AwqModule::Single}};
// The groups of layer l in search order: the attention's two (v -> o only when v_proj and o_proj have one shape, as
// AutoAWQ), then a dense MLP's two, or a MoE layer's: post_attention_layernorm -> every expert's gate_proj and up_proj
// (the shared expert's too) over the MoE block, then per expert up_proj -> down_proj on the rows routed to it.
std::vector<AwqScaleGroup> awq_layer_groups(const QwenConfig& c, int64_t l);

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
  // The rows of a kept input (tokens(), or the tokens routed to an expert: 0 when none was).
  virtual int64_t rows(const AwqInput& in) const = 0;
  // x̄ [K] of a kept input: awq_activation_mean's contract (double sums over the rows, then fp32).
  virtual std::vector<float> input_mean(const AwqInput& in) = 0;
  // Keeps the reference: the output [rows, C] of grp's module over its kept input, the group's Linears at the fp32
  // working copies W[slot] (W: the layer's awq_layer_linears, by index), every other Linear as the model holds it.
  // With a bf16 calibration (the runners' calib_dtype) the group's Linears, here and in every loss, are their
  // values rounded to bf16 (nearest even), as AutoAWQ evaluates its candidates in the model's 16-bit dtype.
  virtual void set_reference(int64_t l, const AwqScaleGroup& grp, const std::vector<float>* W) = 0;
  // mean over the rows·C outputs of (module output − reference)², in double, with the group's Linears replaced by
  // candidate[j] (fp32 [N, K], in grp.slots order) for this call only.
  virtual double loss(int64_t l, const AwqScaleGroup& grp, const std::vector<float>* candidate) = 0;
  // loss() of scale-grid point s [K]: candidate[j] = awq_candidate(W[grp.slots[j]], s) (quant/awq_search.h, with
  // opt.bits and opt.group_size), built where the module runs. W must be the working copies of the last
  // set_reference (same l and grp): the GPU runner builds the candidates from the copies it uploaded there.
  virtual double loss_scaled(int64_t l, const AwqScaleGroup& grp, const std::vector<float>* W,
                             const std::vector<float>& s, const AwqSearchOptions& opt) = 0;
  // Clip bounds [N, ⌈K/G⌉] of a folded Linear W [N, K] (host) that reads the kept input `in` (R = rows(in) > 0):
  // awq_clip_search over the rows awq_clip_token_step(R, opt) samples, divided by s [width] (empty: not scaled),
  // zero-padded to K >= width columns (awq_clip_inputs) — awq_search_clip's result on those inputs (the GPU's: see
  // quant/awq_search.h for where near ties may differ).
  virtual std::vector<float> search_clip(const AwqInput& in, const std::vector<float>& s, const float* W, int64_t N,
                                         int64_t K, const AwqSearchOptions& opt) = 0;
  // Rows 0, step, 2·step, ... of a kept input (unscaled): [⌈R / step⌉, K] on the host (for tests).
  virtual std::vector<float> sampled_rows(const AwqInput& in, int64_t step) = 0;
};

// calib_dtype (AwqModelOptions::calib_dtype): F32 (every module evaluation in fp32) or BF16 (the group's Linears
// rounded to bf16 in the reference and the candidates; the CPU keeps fp32 activations and sums, the GPU stores those
// weights in bf16 and multiplies on tensor cores, the activations rounded to bf16 at each GEMM's input). Anything
// else is refused.
void check_awq_calib_dtype(DType calib_dtype);

// The CPU runner (awq_model.cpp) over `model`, whose Linears it swaps for candidates during a call (and restores);
// module evaluations run on pieces of whole windows of at most chunk_tokens tokens. Dense and MoE layers.
std::unique_ptr<AwqBlockRunner> make_awq_cpu_runner(QwenModel& model, const std::vector<std::vector<int32_t>>& windows,
                                                    int64_t chunk_tokens, DType calib_dtype = DType::F32);

#ifdef QWENQ_HAVE_CUDA
// The GPU runner (awq_model_cuda.cpp) over `model` uploaded to the current device; the windows are run in chunks
// of whole windows of at most chunk_tokens tokens (at least one window each). Dense and MoE layers.
std::unique_ptr<AwqBlockRunner> make_awq_cuda_runner(const QwenModel& model,
                                                     const std::vector<std::vector<int32_t>>& windows,
                                                     int64_t chunk_tokens, DType calib_dtype = DType::F32);
#endif

}  // namespace qwenq
