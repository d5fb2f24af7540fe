// Calibration-free quantization of a whole checkpoint, one tensor at a time: round-to-nearest onto a group
// grid (written as GPTQ v1/v2 or AWQ GEMM tensors) or bitsandbytes NF4/FP4 (optionally double-quantized).
// The decoder's Linear weights (q, k, v, o, gate, up, down) are quantized; embeddings, norms, biases and
// lm_head pass through unchanged. Output: a Hugging Face directory (config.json with quantization_config,
// safetensors shards of at most max_shard_bytes written as it goes plus model.safetensors.index.json when
// there are several, tokenizer files copied), built under a temporary name and renamed when complete.
// Host memory stays near one shard plus one layer (two Linears with the GPU): input tensors are read from the memory
// map. With the GPU the host half of each Linear (packing, double quantization, adding it to the shard, writing a
// full shard) runs on a helper thread while the next Linear is quantized (one in flight, tensors reach the writer in
// file order: the same bytes).
#pragma once

#include <cstdint>
#include <string>

#include "core/dtype.h"
#include "kernels/device.h"
#include "quant/awq.h"
#include "quant/int_checkpoint.h"
#include "lora/lora_config.h"

namespace qwenq {

struct QuantizeOptions {
  enum class Method { Rtn, Nf4, Fp4, Fp8 };
  Method method = Method::Rtn;
  std::string model_dir, out_dir;
  bool overwrite = false;
  // RTN
  int bits = 4;
  int64_t group_size = 128;  // -1: one group per output channel
  bool sym = true;
  IntLayout layout = IntLayout::GptqV1;
  // Write the integer codes as llm-compressor's compressed-tensors "pack-quantized" Linears (quant/compressed_tensors.h;
  // what vLLM and transformers with compressed-tensors load) instead of the layout's own tensors. The codes are made
  // as for `layout`, which must then be GptqV2 (any zero point, g_idx): the same ŵ bit for bit.
  bool compressed_tensors = false;
  // Zero-pad the MLP's intermediate size (gate/up rows, down columns; config.json updated) up to a multiple the
  // layout and group size accept, when it does not already fit (stories260K's 172). The padded model computes
  // exactly the same function: the extra channels are silu(0)·0 = 0 and their down_proj columns are 0.
  bool pad_intermediate = false;
  // FP8 (quant/fp8_quantize.h; CPU only): fp8_block 0 scales each output channel, written as compressed-tensors'
  // FP8_DYNAMIC (float-quantized, dynamic per-token float8 activations, what vLLM runs as W8A8 on Hopper/Ada);
  // fp8_block B > 0 scales blocks of B x B, written as the block-wise "fp8" of Qwen's FP8 releases (a MoE model's
  // routers listed in modules_to_not_convert by their whole paths).
  int64_t fp8_block = 0;
  // NF4 / FP4
  bool double_quant = true;
  int64_t blocksize = 64;
  uint64_t max_shard_bytes = uint64_t{4} << 30;
  bool quiet = false;
  // Where quantize_model quantizes each Linear (tools resolve --device). Cuda (CUDA builds; trainer/
  // quantize_model_cuda.h): upload, convert and quantize on the GPU, pack and write on the host (overlapped with the
  // next Linear's GPU step); the same bytes.
  // The other drivers take their own device option (GptqModelOptions::device, AwqModelOptions::device) and
  // ignore this one.
  Device device = Device::Cpu;
  // Run each Linear's host half on a helper thread on the CPU too, as the GPU path always does (the same bytes; no
  // faster there, where the next Linear's conversion and codes already use every thread). The tests set it to run
  // the GPU path's pipeline on the CPU.
  bool host_overlap = false;
  // LoftQ (lora/loftq.h; PEFT's init_lora_weights="loftq"): with loftq.r > 0 the adapter that completes the stored
  // base (s·B A = rank-r(W − Q)) is written to <out>/loftq_init/, a PEFT adapter directory for `qwen-qlora train
  // --init-adapter`, `eval --adapter` or PEFT's PeftModel.from_pretrained. loftq_iters 1: the one-shot step on the
  // finished output (either device; trainer/adapter_init.h's write_loftq_adapter); more: every targeted Linear is
  // stored as q(X), X = W − L R after loftq_iters alternations (CPU only). The SVDs are Eigen's, on the CPU.
  LoraConfig loftq = [] {  // r 0: no LoftQ
    LoraConfig c;
    c.r = 0;
    return c;
  }();
  int loftq_iters = 1;
  // PiSSA (lora/pissa.h; PEFT's init_lora_weights="pissa", then the residual model quantized): with pissa.r > 0
  // every targeted Linear is stored as q(W − s·B A), s·B A the rank-r principal part of W, and the adapter is written
  // to <out>/pissa_init/ (a PEFT adapter directory, as for LoftQ). quantize_model: on the CPU; gptq_quantize_model:
  // either device (GptqLinearStep::set_pissa, the split on the host); not with LoftQ; awq_quantize_model refuses it.
  LoraConfig pissa = [] {  // r 0: no PiSSA
    LoraConfig c;
    c.r = 0;
    return c;
  }();
};

struct QuantizeReport {
  int64_t linears = 0;        // Linear layers quantized
  int64_t params_quantized = 0;
  uint64_t bytes_written = 0; // payload bytes of all shards
  int shards = 0;
  double seconds = 0;
  uint64_t peak_rss = 0;
  // With LoftQ: ‖W − q(W)‖_F (plain quantization) and ‖W − q(X) − s·B A‖_F over the targeted Linears.
  double loftq_plain_error = 0, loftq_error = 0;
  // With PiSSA: ‖W − q(W)‖_F (plain quantization), ‖W_res − q(W_res)‖_F (the stored base + s·B A against W) and
  // Σ σ_i² / ‖W‖_F² (the share of the targeted weights' energy the adapters hold) over the targeted Linears.
  double pissa_plain_error = 0, pissa_error = 0, pissa_share = 0;
};

QuantizeReport quantize_model(const QuantizeOptions& opt);
// "" or why quantize_model cannot run `opt` on the GPU (`--device auto` then takes the CPU): fp8 output, an FP8
// source (decoded on the CPU), LoftQ with more than one iteration (it re-quantizes on the CPU's copy of W), PiSSA (it
// quantizes the CPU's residual).
std::string quantize_gpu_refusal(const QuantizeOptions& opt);

// GPTQ over a whole model, layer by layer (Frantar et al. 2022 as AutoGPTQ runs it): calibration windows are
// embedded once; for each decoder block, in true-sequential order (q,k,v -> o -> gate,up -> down), the block is
// run on the current inputs to accumulate each group's Hessian with the already-quantized Linears in place, each
// Linear is quantized with quant/gptq and replaced by its fake-quantized values, and the block's output (from
// the quantized block) becomes the next block's input. Output tensors as quantize_model writes them.
// device Cuda (CUDA builds; trainer/gptq_model.h): the same driver with the blocks, the Hessians and GPTQ on the GPU
// (QwenModelCuda, hessian_accumulate_cuda, gptq_quantize_cuda), the packing and writing on the host as on the CPU.
// Its results agree with the CPU's within GPU rounding (bf16 activations into 16-bit GEMMs, flash attention's bf16
// q/k/v, fp32 summation order): most codes are equal, the rest one step apart (tests/gpu/test_gptq_model_cuda.cpp).
struct GptqModelOptions {
  QuantizeOptions out;  // model_dir, out_dir, bits, group_size, sym, layout, pad_intermediate, shards, quiet
  std::string calib_path, text_field = "text";
  int64_t calib_samples = 128, calib_seq_len = 2048;
  uint64_t seed = 0;
  double damp = 0.01;
  bool desc_act = false, static_groups = false;
  int64_t block_size = 128;
  Device device = Device::Cpu;  // where the blocks, Hessians and GPTQ run (tools resolve --device)
  // Both drivers forward at most this many tokens (whole windows, at least one: trainer/calib_chunks.h) through a
  // block at a time: the activation buffers (~T·(2C + 2·q_dim + 2·kv_dim + 2·I) fp32) stay bounded; the Hessians
  // sum over the chunks. The residual stream of the whole calibration set stays in memory (windows·seq_len·C fp32,
  // on the device with Cuda); the CPU driver refuses up front a calibration whose lower bound of host memory
  // exceeds what is available (gptq_cpu_memory_parts).
  int64_t chunk_tokens = 16384;
  // What the calibration computes with (`--calib-dtype`): F32 (the default): the Hessians of the fp32 inputs, and
  // once a Linear is quantized its dequantized weight as is. BF16, as a bf16 model runs under AutoGPTQ and GPTQModel:
  // that weight rounded to bf16 (they write Q.to(dtype) back), and every Hessian of the Linears' inputs rounded to
  // bf16 (what the bf16 model's Linear reads, and what their Hessians get: H of X̃ = bf16(X), the products exact,
  // the sums fp32; quant/hessian.h). Then on the GPU every later GEMM of the calibration runs on bf16 tensor cores
  // (the activations rounded to bf16 at its input, kernels/blas_lt.h) and so do the Hessians (cublasGemmEx) instead
  // of fp32 SIMT; on the CPU the roundings alone differ.
  DType calib_dtype = DType::F32;
};
QuantizeReport gptq_quantize_model(const GptqModelOptions& opt);

// AWQ over a whole model, block by block, as AutoAWQ runs it (quant/awq.h has the math): the calibration windows
// run through the original block once, capturing the inputs of every Linear group (and giving the next block's
// input: AutoAWQ feeds blocks from the unquantized model); the scales of each scaling group are searched against
// the output of the module that reads the group (self_attn for q,k,v; o_proj for o after v when v and o have the
// same shape, i.e. no GQA; mlp for gate,up; down_proj after up), folded into the previous op (the RMSNorm weights
// and the rows of v_proj/up_proj are rewritten in the output) and into the Linears; then clip bounds are searched
// for every Linear but q and k; then each Linear is rounded onto the AWQ grid (zero point, fp16 scales) and written
// as AutoAWQ GEMM (or GPTQ v2) tensors. With load_search the saved scales and clips are applied without running
// the model at all; save_search writes what was found. Padding of the MLP width (pad_intermediate) happens after
// the scale search, which runs on the real channels.
struct AwqModelOptions {
  QuantizeOptions out;  // model_dir, out_dir, group_size, layout (AwqGemm or GptqV2), pad_intermediate, shards, quiet
  std::string calib_path, text_field = "text";
  int64_t calib_samples = 128, calib_seq_len = 512;  // AutoAWQ's defaults
  uint64_t seed = 0;
  AwqSearchOptions search;  // bits and group_size are taken from `out`
  bool clip = true;
  std::string save_search, load_search;
  // AutoAWQ's calibration instead of random windows: the first calib_samples documents that fit calib_seq_len,
  // concatenated and cut into blocks (calibration_blocks_concat).
  bool calib_concat = false;
  // Block captures and module evaluations run on at most this many tokens at a time (memory); the CPU runner refuses
  // up front a calibration whose lower bound of host memory exceeds what is available (awq_cpu_memory_parts).
  int64_t chunk_tokens = 16384;
  // Where the blocks, the module evaluations and their reductions run (tools resolve --device). Cuda (CUDA builds,
  // trainer/awq_model_cuda.cpp): the calibration residual stream, the captured group inputs, the reference outputs
  // and the losses stay on the device; the grid, the candidate weights, the folding and the clip search (on the
  // sampled tokens, downloaded) run on the host as on the CPU.
  Device device = Device::Cpu;
  // What the scale search's module evaluations compute with: F32, or BF16 (the searched Linears' reference and
  // candidates rounded to bf16, as AutoAWQ evaluates them in the model's fp16; on the GPU they are then bf16
  // tensor-core GEMMs, the activations rounded to bf16 at each GEMM's input). The clip search, the folding and the
  // written weights are the same either way (trainer/awq_runner.h).
  DType calib_dtype = DType::F32;
};
QuantizeReport awq_quantize_model(const AwqModelOptions& opt);

// The inverse for inspection and for tools that want dense weights: a GPTQ/AWQ/bitsandbytes-4bit directory
// (ours or the Python tools') -> a dense directory whose Linear weights are the dequantized values in `dtype`
// (BF16, F16 or F32); every other tensor passes through. Same atomic, sharded output as quantize_model.
struct DequantizeOptions {
  std::string model_dir, out_dir;
  DType dtype = DType::BF16;
  bool overwrite = false;
  uint64_t max_shard_bytes = uint64_t{4} << 30;
  bool quiet = false;
};
QuantizeReport dequantize_model(const DequantizeOptions& opt);

}  // namespace qwenq
