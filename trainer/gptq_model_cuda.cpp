// The GPU driver of gptq_quantize_model (trainer/gptq_model.h): the CPU driver's loop with the activations on the
// device.
//   X      [T_all, C] fp32, the residual stream of every calibration window (T_all = windows·seq_len), on the device
//   chunks whole windows of at most chunk_tokens tokens (at least one), each a PackedBatch of its own (positions
//          restart per window, so chunking changes nothing in the block's function)
//   per block l and group g (q,k,v -> o -> gate,up -> down):
//     H_g = 0; for each chunk: work = X[chunk]; QwenModelCuda::block_forward(l, chunk, work) stopped at g's input,
//       whose rows update H_g on the device (hessian_accumulate_cuda: the running mean over the chunks, so H_g is
//       the CPU's (2/T_all)·ΣxxT up to fp32 summation order);
//     each Linear of g quantized by GptqLinearStep with gptq_quantize_cuda_device_h, which reads H_g in place (its
//       diagonal alone comes to the host; a padded down_proj's H is copied, zero beyond K, on the device); the
//       dequantized weight replaces the Linear on the device for the later groups (fp32, or bf16 with
//       --calib-dtype bf16: the later GEMMs then run on bf16 tensor cores instead of fp32 SIMT);
//   then X[chunk] = block l (quantized) of X[chunk] for every chunk (but after the last block).
// A mixture-of-experts layer's GateUp and Down groups (gptq_moe_group_cuda): one pass of every chunk through the block
// gives each expert (and the shared expert) the Hessian of the rows routed to it (block_forward's expert hook,
// hessian_accumulate_cuda per expert with its own row count: the CPU driver's HessianAccumulator per expert), then each
// expert's Linears of the group are quantized with it (GptqLinearStep::run_expert, gptq_quantize_cuda) and replaced
// on the device (set_expert_weight, fp32 or bf16); an expert no calibration token chose is quantized with H = I and named in
// the CPU's warning.
// Once the next block's inputs are computed the layer's weights are freed (release_layer): the device holds the
// uploaded model (its unquantized layers as stored) plus the replacements of one layer, not a model growing to
// fp32 layer by layer (2x a bf16 model by the end; a 32B model's 64 GB would reach 128 GB).
// Device memory: the model's weights, X, one work chunk [chunk, C], the block's activation buffers for a chunk, one
// Hessian [K_max, K_max] fp32 (K_max = max(C, q_dim, I)), and gptq_quantize_cuda's own (quant/gptq_cuda.h); a MoE
// layer adds one Hessian per expert of its input width (C for gate/up: 128 x 2048² x 4 B = 2.2 GB at Qwen3-30B-A3B;
// Im for down, the shared expert's Is), and its experts in fp32.
// Stage times (trainer/gptq_stage_times.h): the passes on CUDA events (CalibPassTimer), split at the Hessian
// accumulations; uploads, downloads and flushes by host wall time (each waits for its copy). A MoE layer's experts'
// Hessians still travel through the host (gptq_quantize_cuda), each of its own small width.
#ifdef QWENQ_HAVE_CUDA

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "quant/gptq_cuda.h"
#include "trainer/calib_chunks.h"
#include "trainer/gptq_stage_times.h"
#include "trainer/gptq_model.h"
#include "kernels/device_allocator.h"
#include "trainer/qwen_model_cuda.h"
#include "trainer/step_profile_cuda.h"

namespace qwenq {

namespace {

// Through the caching allocator (kernels/device_allocator.h), whose out-of-memory message names the buffer, the
// device's free memory and what else is held; GPTQ adds which of its options lower the request.
DeviceAllocation allocate_named(size_t bytes, MemoryTag tag, const std::string& what, CudaStream s) {
  try {
    return cuda_device_allocator().allocate(bytes, s, tag, "gptq: " + what);
  } catch (const OutOfMemoryError& e) {
    throw Error(std::string(e.what()) + "\ngptq: fewer --calib-samples, a shorter --calib-seq-len or a smaller "
                "--chunk-tokens lower it");
  }
}

// GPTQ of one group (GateUp or Down) of MoE layer l on the GPU (see the top of the file): the CPU driver's
// gptq_moe_group_cpu with the Hessians on the device.
void gptq_moe_group_cuda(QwenModelCuda& gpu, QwenModel& model, int64_t l, BlockLinear group, const CalibChunks& split,
                         const float* x_all, float* work, GptqLinearStep& step,
                         CalibPassTimer& pass, GptqStageTimes& times) {
  const QwenConfig& cfg = model.config();
  const int64_t C = cfg.hidden_size, E = cfg.num_experts;
  const bool shared = cfg.shared_expert_intermediate_size > 0;
  const CudaStream s = gpu.stream();
  auto width = [&](int64_t e) { return gptq_expert_input_width(cfg, group, e); };
  // Slot i's Hessian [K_i, K_i] (column-major, leading dimension K_i) at float offset off[i]: the routed experts' of
  // one width, Qwen2-MoE's shared expert's of its own (its down_proj input is wider: 20480 vs 2560 at Qwen2-57B-A14B).
  const int64_t S = E + (shared ? 1 : 0);
  std::vector<size_t> off(static_cast<size_t>(S) + 1, 0);
  for (int64_t i = 0; i < S; ++i) {
    const int64_t K = width(i < E ? i : -1);
    off[static_cast<size_t>(i) + 1] = off[static_cast<size_t>(i)] + static_cast<size_t>(K * K);
  }
  const size_t floats = off[static_cast<size_t>(S)];
  DeviceAllocation dH = allocate_named(floats * sizeof(float), MemoryTag::Workspace,
                                       "the experts' Hessians (" + std::to_string(E) + " of [" +
                                           std::to_string(width(0)) + ", " + std::to_string(width(0)) + "]" +
                                           (shared ? " and the shared expert's [" + std::to_string(width(-1)) + ", " +
                                                         std::to_string(width(-1)) + "]"
                                                   : std::string()) +
                                           ", fp32)",
                                       s);
  QWENQ_CUDA_CHECK(cudaMemsetAsync(dH.get(), 0, floats * sizeof(float), s));
  std::vector<int64_t> count(static_cast<size_t>(S), 0);
  const int64_t C_bytes = C * static_cast<int64_t>(sizeof(float));
  pass.begin();
  for (size_t c = 0; c < split.batches.size(); ++c) {
    const int64_t T = split.batches[c].num_tokens();
    QWENQ_CUDA_CHECK(cudaMemcpyAsync(work, x_all + split.offsets[c] * C, static_cast<size_t>(T * C_bytes),
                                     cudaMemcpyDeviceToDevice, s));
    gpu.block_forward(l, split.batches[c], work, nullptr,
                      [&](BlockLinear at, int64_t e, const float* x, int64_t rows, const int32_t*) {
      if (at != group) return;
      const size_t i = static_cast<size_t>(e < 0 ? E : e);
      pass.hessian([&] {
        hessian_accumulate_cuda(dH.as<float>() + off[i], width(e), count[i], x, rows, s, step.calib_dtype());
      });
      count[i] += rows;
    });
  }
  pass.end(times);
  std::vector<int64_t> idle;
  for (int64_t i = 0; i < S; ++i) {
    const int64_t e = i < E ? i : -1, K = width(e);
    Eigen::MatrixXf h;
    if (count[static_cast<size_t>(i)] > 0) {
      const StageScope t(times.transfers);
      h.resize(K, K);  // only the lower triangle is meaningful (and read)
      QWENQ_CUDA_CHECK(cudaMemcpyAsync(h.data(), dH.as<float>() + off[static_cast<size_t>(i)],
                                       static_cast<size_t>(K * K) * sizeof(float), cudaMemcpyDeviceToHost, s));
      QWENQ_CUDA_CHECK(cudaStreamSynchronize(s));
    } else {
      h = Eigen::MatrixXf::Identity(K, K);
      if (group == BlockLinear::GateUp) idle.push_back(e);
    }
    for (int w : gptq_expert_linears(group)) {
      const LinearWeight& lw = model.expert_linear(l, e, w);
      const int64_t N = lw.N, Kw = lw.K;
      const std::vector<float> back = step.run_expert(l, e, w, h, gptq_quantize_cuda);
      const StageScope t(times.transfers);
      gpu.set_expert_weight(l, e, w, back.data(), N, Kw, step.calib_dtype());
    }
  }
  warn_idle_experts(l, idle, E);
}

}  // namespace

void gptq_blocks_cuda(QwenModel& model, const std::vector<std::vector<int32_t>>& windows, int64_t chunk_tokens,
                      GptqLinearStep& step, ShardedWriter& shards, GptqStageTimes& times) {
  QWENQ_CHECK(!windows.empty(), "gptq: no calibration windows");
  const QwenConfig& cfg = model.config();
  const int64_t C = cfg.hidden_size, L = cfg.num_layers;
  std::unique_ptr<QwenModelCuda> uploaded;
  {
    const StageScope t(times.upload);
    uploaded = std::make_unique<QwenModelCuda>(model);
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(uploaded->stream()));
  }
  QwenModelCuda& gpu = *uploaded;
  const CudaStream s = gpu.stream();
  CalibPassTimer pass(make_cuda_step_clock(s));

  // Chunks of whole windows (trainer/calib_chunks.h); offsets in tokens into X.
  const CalibChunks split = split_calibration(windows, chunk_tokens);
  const std::vector<PackedBatch>& chunks = split.batches;
  const std::vector<int64_t>& offset = split.offsets;
  const int64_t total = split.total_tokens, largest = split.largest;
  const auto rows_bytes = [&](int64_t rows, int64_t cols) { return static_cast<size_t>(rows * cols) * sizeof(float); };
  DeviceAllocation X = allocate_named(rows_bytes(total, C), MemoryTag::Activations, "the calibration residual stream [" + std::to_string(total) +
                                                            ", " + std::to_string(C) + "] fp32", s);
  DeviceAllocation work = allocate_named(rows_bytes(largest, C), MemoryTag::Activations, "one chunk of the residual stream", s);
  int64_t K_max = 0;
  for (BlockLinear group : kGptqGroups) {
    if (group == BlockLinear::Down && !cfg.has_dense_mlp()) continue;  // every MLP is a MoE block's (own Hessians)
    K_max = std::max(K_max, block_linear_inputs(cfg, group));
  }
  DeviceAllocation dH = allocate_named(rows_bytes(K_max, K_max), MemoryTag::Workspace, "a Hessian [" + std::to_string(K_max) + ", " +
                                                                  std::to_string(K_max) + "] fp32", s);
  float* x_all = X.as<float>();
  pass.begin();
  for (size_t c = 0; c < chunks.size(); ++c) gpu.embed_batch(chunks[c], x_all + offset[c] * C);
  pass.end(times);

  for (int64_t l = 0; l < L; ++l) {
    for (BlockLinear group : kGptqGroups) {
      if (cfg.is_moe_layer(l) && (group == BlockLinear::GateUp || group == BlockLinear::Down)) {
        gptq_moe_group_cuda(gpu, model, l, group, split, x_all, work.as<float>(), step, pass, times);
        const StageScope t(times.writing);
        shards.maybe_flush();
        continue;
      }
      // Hessian of this group's input, with every earlier Linear of the block already quantized.
      const int64_t K = block_linear_inputs(cfg, group);
      QWENQ_CUDA_CHECK(cudaMemsetAsync(dH.get(), 0, rows_bytes(K, K), s));
      int64_t count = 0;
      pass.begin();
      for (size_t c = 0; c < chunks.size(); ++c) {
        const int64_t T = chunks[c].num_tokens();
        QWENQ_CUDA_CHECK(cudaMemcpyAsync(work.get(), x_all + offset[c] * C, rows_bytes(T, C), cudaMemcpyDeviceToDevice, s));
        gpu.block_forward(l, chunks[c], work.as<float>(), [&](BlockLinear at, const float* x, int64_t rows) {
          if (at != group) return true;
          pass.hessian([&] { hessian_accumulate_cuda(dH.as<float>(), K, count, x, rows, s, step.calib_dtype()); });
          count += rows;
          return false;  // nothing after this group's input is needed
        });
      }
      pass.end(times);
      QWENQ_CUDA_CHECK(cudaStreamSynchronize(s));  // H is complete for the solver, which runs on its own stream
      QWENQ_CHECK(count == total, "gptq: layer " << l << " never reached a Linear group");
      // The solver reads H where it was accumulated (only its diagonal comes to the host). A padded down_proj
      // (--pad-intermediate) gets a copy zero beyond the K real inputs, made once for the group.
      DeviceAllocation padded;
      const GptqSolve solve = [&](const float* W, int64_t N2, int64_t K2, const GptqOptions& o) {
        const float* h = dH.as<float>();
        if (K2 != K) {
          if (!padded) {  // timed with the solve that asks for it
            padded = allocate_named(rows_bytes(K2, K2), MemoryTag::Workspace, "the padded Hessian [" +
                                    std::to_string(K2) + ", " + std::to_string(K2) + "] fp32", s);
            QWENQ_CUDA_CHECK(cudaMemsetAsync(padded.get(), 0, rows_bytes(K2, K2), s));
            QWENQ_CUDA_CHECK(cudaMemcpy2DAsync(padded.get(), static_cast<size_t>(K2) * sizeof(float), dH.get(),
                                               static_cast<size_t>(K) * sizeof(float),
                                               static_cast<size_t>(K) * sizeof(float), static_cast<size_t>(K),
                                               cudaMemcpyDeviceToDevice, s));
            QWENQ_CUDA_CHECK(cudaStreamSynchronize(s));
          }
          h = padded.as<float>();
        }
        return gptq_quantize_cuda_device_h(W, N2, K2, h, o);
      };
      step.run_group(l, group, solve, [&](const GptqSlot& slot, std::vector<float> back) {
        const LinearWeight& lw = model.linear_weight(l, slot.group, slot.index);
        const StageScope t(times.transfers);
        gpu.set_linear_weight(l, slot.group, slot.index, back.data(), lw.N, lw.K, step.calib_dtype());
      });
      const StageScope t(times.writing);
      shards.maybe_flush();
    }
    // Inputs of the next block, through the quantized block (the last block's output is not needed).
    if (l + 1 < L) {
      pass.begin();
      for (size_t c = 0; c < chunks.size(); ++c) gpu.block_forward(l, chunks[c], x_all + offset[c] * C, nullptr);
      pass.end(times);
    }
    gpu.release_layer(l);  // its replaced weights (a MoE layer's experts too) are not needed any more
  }
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(s));
}

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
