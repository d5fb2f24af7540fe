// What the two drivers of gptq_quantize_model (trainer/quantize_model.h) share: the CPU one (gptq_model.cpp:
// blocks run by QwenModel on host buffers, Hessians by HessianAccumulator, quant/gptq) and the GPU one
// (gptq_model_cuda.cpp: blocks run by QwenModelCuda on device buffers, Hessians by hessian_accumulate_cuda,
// quant/gptq_cuda). Both visit the Linears in the same order and hand each one, with its group's Hessian, to
// GptqLinearStep, which alone reads the original weight, pads it, runs the GPTQ solver it is given, writes the
// packed tensors and reports progress; the drivers only differ in where the activations live.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/eigen_core.h"
#include "core/progress.h"
#include "quant/gptq.h"
#include "trainer/gptq_stage_times.h"
#include "trainer/quantize_model.h"
#include "trainer/quantize_output.h"
#include "trainer/qwen_model.h"

namespace qwenq {

// One Linear of a block (trainer/qwen_model.h's table; q, k, v, o, gate, up, down is the true-sequential order).
using GptqSlot = DecoderLinear;
// QKV, O, GateUp, Down.
extern const BlockLinear kGptqGroups[4];

// gptq_quantize or gptq_quantize_cuda (same contract, quant/gptq.h).
using GptqSolver = GptqResult (*)(const float* W, int64_t N, int64_t K, Eigen::MatrixXf H, const GptqOptions& o);
// One solver call with the Hessian the call holds itself: W [N, K] host row-major, K the padded width (a padded
// down_proj's H is zero beyond the real inputs). The GPU driver's, whose Hessian stays on the device.
using GptqSolve = std::function<GptqResult(const float* W, int64_t N, int64_t K, const GptqOptions& o)>;
// What a driver does with each quantized Linear's dequantized weight (GptqLinearStep::run_group).
using GptqUse = std::function<void(const GptqSlot& slot, std::vector<float> back)>;

class GptqLinearStep {
 public:
  // I2: the intermediate size written (padded_intermediate); calib_dtype: GptqModelOptions::calib_dtype (F32 or
  // BF16); times: where the solves and the packing are added. Every reference must outlive the step.
  GptqLinearStep(QwenModel& model, const QuantizeOptions& out, int64_t I2, const GptqOptions& gptq, DType calib_dtype,
                 ShardedWriter& shards, QuantizeReport& rep, Progress& bar, GptqStageTimes& times)
      : model_(model), out_(out), I2_(I2), gptq_(gptq), calib_dtype_(calib_dtype), shards_(shards), rep_(rep),
        bar_(bar), times_(times) {}

  // Quantizes Linear `slot` of block `layer` from the model's own (original) weight with its group's Hessian
  // h [K, K] (the unpadded K; only the lower triangle is read) by `solve`: the MLP width is zero-padded when
  // asked (zero rows of gate/up; zero columns of down with H = 0 there), the solver's warnings are printed, the
  // packed tensors go to the shard writer, the progress bar advances. Returns the dequantized weight [N, K]
  // (unpadded) that the rest of the block and the later blocks must see: rounded to bf16 when calib_dtype is BF16.
  std::vector<float> run(int64_t layer, const GptqSlot& slot, Eigen::MatrixXf h, GptqSolver solve);
  // run() for every Linear of `group` of block `layer` in kDecoderLinears order, the group's Hessian moved into the
  // last one (a copy for each of the others: a down_proj's H is 1.4 GB at Qwen2.5-7B), each result handed to `use`.
  void run_group(int64_t layer, BlockLinear group, Eigen::MatrixXf h, GptqSolver solve, const GptqUse& use);
  // The same with the Hessian left to `solve` (called once per Linear, with the padded width).
  void run_group(int64_t layer, BlockLinear group, const GptqSolve& solve, const GptqUse& use);
  // The same for Linear `which` (0 gate_proj, 1 up_proj, 2 down_proj) of expert `expert` of a MoE layer (-1: the
  // shared expert), with the Hessian of that expert's own input (never padded).
  std::vector<float> run_expert(int64_t layer, int64_t expert, int which, Eigen::MatrixXf h, GptqSolver solve);
  DType calib_dtype() const { return calib_dtype_; }
  // PiSSA (lora/pissa.h; `gptq --pissa-rank`): each Linear `adapter` targets is split first, its A and B stored in the
  // adapter, and GPTQ quantizes the residual W − s·B A with the Linear's Hessian, whose objective ‖X (W_res − Q)ᵀ‖ is
  // then exactly the adapted Linear's output error ‖X (W − Q − s·B A)ᵀ‖; the weight handed back is Q + s·B A (rounded
  // to bf16 when calib_dtype is BF16), so the later blocks see the adapted model. nullptr (the default): no PiSSA.
  void set_pissa(LoraAdapter* adapter) { pissa_ = adapter; }
  // Σ σ_i² / ‖W‖_F² over the Linears split so far (QuantizeReport::pissa_share).
  double pissa_share() const { return pissa_w2_ > 0 ? pissa_p2_ / pissa_w2_ : 0; }

 private:
  std::vector<float> quantize(int64_t layer, const std::string& name, LinearWeight& lw, int64_t N2, int64_t K2,
                              const GptqSolve& solve);
  // solve with h [K, K] zero-padded to K2 first when K2 > K.
  static GptqSolve with_host_h(Eigen::MatrixXf& h, GptqSolver solve);
  // Linear `slot` of `layer` (its padded shape) by `solve`.
  std::vector<float> run_group_member(int64_t layer, const GptqSlot& slot, const GptqSolve& solve);

  QwenModel& model_;
  const QuantizeOptions& out_;
  int64_t I2_;
  const GptqOptions& gptq_;
  DType calib_dtype_;
  ShardedWriter& shards_;
  QuantizeReport& rep_;
  Progress& bar_;
  GptqStageTimes& times_;
  LoraAdapter* pissa_ = nullptr;
  double pissa_w2_ = 0, pissa_p2_ = 0;
};

// A MoE layer's GateUp or Down group on either driver: the input width of expert e's Linears of the group (-1: the
// shared expert; C for GateUp, the expert's width for Down), which of its Linears the group holds (0 gate_proj,
// 1 up_proj / 2 down_proj), and the warning naming the experts no calibration token chose (quantized with H = I).
int64_t gptq_expert_input_width(const QwenConfig& c, BlockLinear group, int64_t expert);
std::vector<int> gptq_expert_linears(BlockLinear group);
void warn_idle_experts(int64_t layer, const std::vector<int64_t>& idle, int64_t num_experts);

#ifdef QWENQ_HAVE_CUDA
// The GPU driver (gptq_model_cuda.cpp): uploads the model, embeds the windows into a device residual stream
// [windows·seq_len, C] fp32, and per block and group runs the block on chunks of at most chunk_tokens tokens
// (whole windows, at least one) up to the group's input, accumulating its Hessian on the device over the chunks;
// downloads it (K² floats), quantizes each Linear of the group with gptq_quantize_cuda through `step`, uploads the
// dequantized weight; then runs the quantized block on every chunk for the next block's input. A MoE layer's experts
// get a Hessian each from the rows routed to them (the CPU driver's per-expert rule) and are freed on the device once
// the layer is done.
// With the step's calib_dtype BF16 the replaced weights are stored in bf16 on the device (their values are bf16
// already, GptqLinearStep), so that cuBLASLt multiplies them on tensor cores, and the Hessians are accumulated from
// the inputs rounded to bf16 on tensor cores (hessian_accumulate_cuda's BF16; the CPU driver's HessianAccumulator
// does the same rounding). The stages' times are added to `times`.
void gptq_blocks_cuda(QwenModel& model, const std::vector<std::vector<int32_t>>& windows, int64_t chunk_tokens,
                      GptqLinearStep& step, ShardedWriter& shards, GptqStageTimes& times);
#endif

}  // namespace qwenq
