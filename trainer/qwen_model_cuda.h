// The Qwen2/Qwen3 forward of trainer/qwen_model.h on the GPU, for evaluation (perplexity, logits): every tensor
// of a loaded QwenModel is uploaded once, then each batch runs every op on one CUDA stream through the kernels'
// launchers. Same math and same contracts as QwenModel::forward_logits / next_token_nll; the numbers differ by
// where the GPU path rounds to bf16 (below).
//
// Data types at each step (T packed tokens, activations row-major):
//   embed        table as stored (F32/BF16/F16) -> x [T, C] fp32 (embedding_gather_cuda, exact)
//   residual     x stays fp32 for the whole pass; x += sublayer (add_inplace_cuda, fp32)
//   RMSNorm      fp32 in, fp32 out, weight as stored (rmsnorm_forward_cuda); Qwen3 q/k norm: rows T·H (T·Hkv),
//                D columns, on the fp32 q/k
//   Linear       dense W as stored: linear_forward_cuda with fp32 x -> fp32 y (cuBLASLt, fp32 accumulation; for
//                a BF16/F16 W it rounds x to W's dtype first; an F32 W is a true fp32 GEMM), bias by its epilogue.
//                Packed GPTQ/AWQ/NF4/FP4 W: repacked losslessly to Q4 at load (q4_from_int_linear / q4_from_nf4),
//                x rounded to bf16 (f32_to_bf16_cuda), qgemm_int4_cuda (W4A16, fp32 accumulation) -> fp32 y,
//                then the bias, if any (add_bias_rows_cuda).
//   RoPE         fp32 q, k in place (rope_forward_cuda)
//   attention    D = 64 or 128: q, k, v rounded to bf16, flash attention (attention_forward_cuda, bf16 out),
//                widened back to fp32. Other D (the tiny test models, stories260K's D = 8): the naive fp32 kernel
//                (attention_naive_forward_cuda), the same softmax as attention_forward_ref.
//   SwiGLU       fp32 (swiglu_forward_cuda)
//   lm_head      fp32 final hidden -> fp32 logits, over chunks of rows (next_token_nll: [T, V] never exists), then
//                cross_entropy_forward_cuda per chunk (nll fp32, the exp sum in double as the CPU's).
//   MoE MLP      (qwen2_moe / qwen3_moe layers) router logits (and Qwen2-MoE's shared-expert gate logit) computed
//                here, copied to the host and routed there by the CPU's function (moe_dispatch: the same experts for
//                the same logits), the routed rows gathered (embedding_gather_cuda over the fp32 activations), each
//                expert's Linears on its slice as above, the shared expert on every token, moe_combine_cuda adding
//                each token's weighted rows in the CPU block's order. Each layer's router and experts are a second
//                arena (qwen_moe_arena); QwenDecodeCuda runs it through moe_forward, the GPU trainer
//                (trainer/lora_model_cuda.h) through device_moe's weights; block_forward's expert hook and
//                set_expert_weight serve GPTQ; mlp_forward with every expert's gate/up replaced serves AWQ; an attached
//                adapter adapts every expert. A dense MLP Linear by index (set_linear_weight, block_linear_forward)
//                does not exist in a MoE layer.
// With F32 weights and D not 64/128 nothing is rounded to bf16: only the order of sums differs from the CPU.
//
// Memory: the weights once (dense as stored, packed as Q4: ~4.25 bits per weight), each decoder layer's in one
// allocation (trainer/qwen_weight_arena.h: every norm, bias, dense weight and Q4 array of the layer at 256-byte
// aligned offsets, so the allocator's 2 MiB rounding is paid once a layer, not once a tensor); the embedding, the
// final norm and an untied lm_head one allocation each. Plus activation buffers for
// the largest batch seen so far (about T·(4C + 2·H·D + 2·Hkv·D + 2·I) fp32 and their bf16 copies) and one
// chunk of logits (at most 256 MiB). Every buffer comes from the caching allocator (kernels/device_allocator.h,
// tagged weights / activations / logits); one that does not fit throws its OutOfMemoryError naming the tensor or
// buffer, its size, the device's free memory and the live bytes per tag. Nothing is printed.
// Not thread-safe: the batch buffers are reused by every call (hence the non-const methods).
//
// Block by block (GPTQ calibration on the GPU, trainer/gptq_model_cuda.cpp): embed_batch writes the embeddings of a
// batch into a caller-owned device buffer x [T, C]; block_forward runs one decoder block in place on such an x,
// calling a hook with the device pointer of each Linear group's input before that group runs (the hook may stop the
// block there); set_linear_weight replaces one Linear by a dense fp32 weight (the fake-quantized one) for the
// following passes; attention_forward / mlp_forward / block_linear_forward run one module of a block (AWQ's scale
// search, trainer/awq_model_cuda.cpp) with replacement weights for that call only. The caller bounds the
// activation memory by the batches it passes (whole windows, a chunk of the calibration set at a time): the
// buffers above are sized by the largest batch, independent of x.
//
// QwenModelCudaOptions::upload_embedding = false (the LoRA trainer, trainer/lora_model_cuda.h): an untied input
// embedding table is left in host memory (the trainer gathers a batch's rows there and uploads [T, C]);
// device_embed() is then null and forward_logits / next_token_nll / embed_batch refuse. A tied table is uploaded
// anyway (it is the lm_head). Default: uploaded, for every other user (evaluation, decoding, GPTQ).
//
// An unmerged LoRA adapter (attach_adapter, trainer/lora_inference_cuda.h): after each adapted Linear's base product
// and bias, y += s · (x Aᵀ) Bᵀ in fp32 (x the Linear's fp32 input), for every pass of this model and of the
// QwenDecodeCuda running on it; the base stays as uploaded (dense or Q4). Costs the adapter's fp32 A and B and a
// scratch [T, r] fp32 in the batch buffers.
#pragma once

#ifdef QWENQ_HAVE_CUDA

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kernels/cuda_check.h"
#include "kernels/dora.h"
#include "kernels/qgemm.h"
#include "lora/lora_adapter.h"
#include "trainer/lora_inference_cuda.h"
#include "trainer/qwen_model.h"

namespace qwenq {

// The uploaded weights as device pointers, for code that runs its own passes over them (the LoRA trainer,
// trainer/lora_model_cuda.h; KV-cache decoding, trainer/qwen_decode_cuda.h). Owned by the QwenModelCuda (a
// layer's pointers all point into its arena); valid while it lives and until set_linear_weight changes that layer.
struct QwenDeviceTensor {
  const void* data = nullptr;  // null when the tensor is absent (a bias, Qwen2's q/k norm)
  DType dtype = DType::F32;
};
// One Linear [N, K]: a dense weight as stored, or (packed checkpoints) a Q4 weight for the dequant-matmul (its
// view's arrays in the layer's arena; empty for a dense Linear).
struct QwenDeviceLinear {
  int64_t N = 0, K = 0;
  QwenDeviceTensor dense;
  std::optional<Q4View> q4;
  QwenDeviceTensor bias;
  LoraDeviceBranch lora;  // an attached adapter's A and B (r == 0: none); added after the base and the bias
};
// A Linear's base weight as the DoRA kernels read it (kernels/dora.h): its dense tensor, or its Q4 view (the row
// norms of a DoRA adapter: trainer/lora_inference_cuda.h at attach, trainer/lora_model_cuda.h every step).
inline DoraBaseWeight dora_base_weight(const QwenDeviceLinear& L) {
  DoraBaseWeight W;
  W.dense = L.dense.data;
  W.dtype = L.dense.dtype;
  W.q4 = L.q4 ? &*L.q4 : nullptr;
  return W;
}
struct QwenDeviceLayer {
  QwenDeviceTensor input_norm, post_norm, q_norm, k_norm;
  QwenDeviceLinear q, k, v, o, gate, up, down;
};
// A mixture-of-experts layer's MLP (its own arena): the router [E, C], each expert's gate, up, down, and the shared
// expert's with its gate [1, C] (N = 0 in all four: no shared expert).
struct QwenDeviceMoe {
  QwenDeviceLinear router, shared_gate;
  std::vector<std::array<QwenDeviceLinear, 3>> experts;
  std::array<QwenDeviceLinear, 3> shared;
};

// Sees the input x [T, K] (fp32, device memory, valid until the block continues) of each Linear group of a block on
// the GPU, as LinearInputHook does on the CPU; K is C for QKV and GateUp, q_dim for O, intermediate_size for Down.
// Work on x must be queued on QwenModelCuda::stream() (or wait for it). Returning false stops the block there: the
// group and everything after it in the block are not computed (x of block_forward is then not the block's output).
using DeviceLinearInputHook = std::function<bool(BlockLinear, const float* x, int64_t T)>;
// Sees the rows one expert's Linears take in a mixture-of-experts layer's block_forward (GPTQ's per-expert Hessians),
// as MoeInputHook does on the CPU: expert e in [0, E) or -1 (the shared expert); at = GateUp: x [rows, C] the rows
// routed to it (in the CPU block's grouped order; the shared expert: every token), Down: x [rows, width] its SwiGLU
// output. tokens (host memory, valid during the call): the batch row (token) each of x's rows comes from, for a
// routed expert (both calls); null for the shared expert (row r is token r). Device memory valid during the call;
// work on x on QwenModelCuda::stream(). An expert no token chose is not called.
using DeviceExpertInputHook =
    std::function<void(BlockLinear at, int64_t expert, const float* x, int64_t rows, const int32_t* tokens)>;

struct QwenModelCudaOptions {
  bool upload_embedding = true;  // false: an untied embedding table stays on the host (see the header comment)
};

class QwenModelCuda {
 public:
  // Uploads every weight of `model` to the current CUDA device (the model may be destroyed afterwards). Throws
  // qwenq::Error when a tensor does not fit or a packed Linear has a layout the Q4 kernels do not read (not
  // 4-bit, a group size that is not a multiple of 8), naming the tensor.
  explicit QwenModelCuda(const QwenModel& model, const QwenModelCudaOptions& options = {});
  ~QwenModelCuda();
  QwenModelCuda(const QwenModelCuda&) = delete;
  QwenModelCuda& operator=(const QwenModelCuda&) = delete;

  const QwenConfig& config() const;
  // Device bytes requested for the weights (each layer's arena with its alignment gaps, the embedding, final norm,
  // lm_head and set_linear_weight's replacements), before the allocator's rounding.
  int64_t weight_bytes() const;
  // "flash (bf16 q/k/v)" or "naive (fp32)": the attention kernel this model's head dim selects.
  const char* attention_kernel() const;

  // The contracts of QwenModel::forward_logits ([T, V] fp32, host) and QwenModel::next_token_nll (nll[t] =
  // −log p(tokens[t+1] | ...) inside each sequence, 0 at each sequence's last position; returns the count).
  std::vector<float> forward_logits(const PackedBatch& batch);
  int64_t next_token_nll(const PackedBatch& batch, std::vector<float>* nll);

  // ---- a batch's final hidden states kept on the device (KL divergence, multiple choice: trainer/logits_source.h)
  // forward_hidden runs the batch and keeps its final hidden states [T, C] (after the final norm) on the device
  // until the next call that runs a batch or a module. logits_rows then copies the logits of rows [r0, r0 + rows)
  // to the host (out [rows, V] fp32: QwenModel::logits of those rows), the lm_head over chunks of at most 64 Mi
  // logits; hidden_nll is QwenModel::hidden_nll's contract for all T rows (targets [T] on the host, kIgnoreIndex:
  // 0 and not counted; nll [T] on the host) and returns the counted rows. Both refuse without hidden states.
  void forward_hidden(const PackedBatch& batch);
  void logits_rows(int64_t r0, int64_t rows, float* out);
  int64_t hidden_nll(const int32_t* targets, float* nll);
  // The logits of rows [r0, r0 + rows) into the model's own device buffer [rows, V] fp32 (grown to `rows`, one
  // lm_head product): valid until the model's next call, the work finished when it returns (the stream is synced),
  // so work on any stream may read it. KL divergence on the device (kernels/kl_rows.h) reads two models' rows so.
  const float* logits_device(int64_t r0, int64_t rows);

  // The device copies of the weights (see QwenDeviceTensor).
  const QwenDeviceLayer& device_layer(int64_t l) const;
  // Throws naming the layer unless it is a mixture-of-experts layer (its device_layer's gate/up/down are then empty).
  const QwenDeviceMoe& device_moe(int64_t l) const;
  QwenDeviceTensor device_embed() const;  // data null when the table was left on the host
  QwenDeviceTensor device_final_norm() const;
  QwenDeviceTensor device_lm_head() const;

  // ---- block by block (calibration) ----
  // The stream every op of this model runs on. The calls below are asynchronous on it (except where noted).
  CudaStream stream() const;
  // x [T, C] fp32 (device memory the caller owns, T = batch.num_tokens()) = the embeddings of batch.tokens.
  void embed_batch(const PackedBatch& batch, float* x);
  // Decoder block `layer` applied in place to x [T, C] (device; QwenModel::block_forward's contract and this
  // class's data types), the hook (may be empty) called before each Linear group: QKV (the normalized input),
  // O (the attention output), GateUp (the normalized residual), Down (silu(gate)·up). x must not alias the
  // model's own buffers (the hook's pointers). A mixture-of-experts layer offers `hook` QKV, O and GateUp (the MoE
  // block's input, as the CPU's hook); expert_hook (may be empty) sees its experts' inputs.
  void block_forward(int64_t layer, const PackedBatch& batch, float* x, const DeviceLinearInputHook& hook,
                     const DeviceExpertInputHook& expert_hook = nullptr);
  // Replaces the weight of Linear `index` of group `which` in block `layer` (q=0,k=1,v=2 / gate=0,up=1, as
  // QwenModel::linear_weight) by the dense fp32 W [N, K] (host, row-major; N, K must be the Linear's), so that
  // every later pass computes with it (a true fp32 GEMM); its bias is kept. The new weight is an allocation of its
  // own; the old one is freed when it had its own, and once every Linear of the layer has been replaced the layer's
  // arena is freed too (its norms and biases moved to a small allocation first: device_layer's pointers change).
  // Waits for the upload (W may be freed on return). Throws naming the layer when out of range or misshapen.
  // dtype BF16 stores W rounded to bf16 (to nearest even; half the bytes), and the later passes then multiply it on
  // bf16 tensor cores with their activations rounded to bf16 (kernels/blas_lt.h's rule): GPTQ's --calib-dtype bf16.
  void set_linear_weight(int64_t layer, BlockLinear which, int index, const float* W, int64_t N, int64_t K,
                         DType dtype = DType::F32);
  // The same for Linear `which` (0 gate, 1 up, 2 down) of expert `expert` (-1: the shared expert) of MoE layer
  // `layer`: an allocation of its own (fp32 or, with dtype BF16, bf16), kept with the layer's experts (their arena is
  // not freed).
  void set_expert_weight(int64_t layer, int64_t expert, int which, const float* W, int64_t N, int64_t K,
                         DType dtype = DType::F32);
  // Frees every weight of decoder layer `layer`: its arena (or its norms and biases once every Linear was replaced),
  // its replaced fp32 weights, a MoE layer's router, experts and their replacements. GPTQ's driver calls it once a
  // layer is quantized and the next block's inputs computed, so it holds the uploaded model plus one layer in fp32
  // (not the whole model growing to fp32: 2x a bf16 model's bytes by the last layer; one MoE layer's fp32 experts
  // are 2.4 GB at Qwen3-30B-A3B). Any later use of the layer (a pass, device_layer, a replacement) throws.
  void release_layer(int64_t layer);

  // ---- an unmerged LoRA adapter (trainer/lora_inference_cuda.h) ----
  // Uploads `adapter` (fp32 A and B) and from then on adds its branch after every Linear it targets, in every
  // forward and in every QwenDecodeCuda call on this model; replaces an adapter attached before. `source` names the
  // adapter (its directory) in errors. Throws, before changing anything, when the adapter does not fit this model
  // (trainer/lora_inference.h's checks: dimensions, tensor shapes by PEFT name, non-finite values) or the device.
  // Waits for the upload. Not while a QwenDecodeCuda call runs.
  void attach_adapter(const LoraAdapter& adapter, const std::string& source);
  // Back to the base model (frees the adapter).
  void detach_adapter();
  // The attached adapter, or null.
  const LoraInferenceCuda* adapter() const;
  // Counts attach_adapter and detach_adapter calls: what a captured decode graph compares (a new adapter may take a
  // freed one's address).
  uint64_t adapter_generation() const;

  // ---- one module of a block (AWQ's scale search, trainer/awq_model_cuda.cpp) ----
  // QwenModel::attention_forward / mlp_forward's modules and one Linear on device buffers, this class's data types,
  // asynchronous on stream(). Replacement weights (device, dense [N, K] row-major in `wdtype`, F32 or BF16, the
  // Linear's shape; a null array or entry keeps the stored weight) serve this call only: the stored weights are not
  // touched, so nothing needs restoring. A replaced Linear is a dense GEMM (its bias kept): a true fp32 one for F32,
  // bf16 tensor cores for BF16 (the fp32 activations rounded to bf16 at its input, kernels/blas_lt.h).
  //   attention_forward  out [T, C] = o_proj(attention(q, k, v of n)) for the normalized input n [T, C] (T =
  //                      batch.num_tokens(); positions and sequences from batch); qkv: q, k, v replacements
  //   mlp_forward        out [T, C] = down(silu(gate(n)) ⊙ up(n)); gate_up: gate, up replacements. A
  //                      mixture-of-experts layer: out = its MoE block (routing as the forward: one host wait for
  //                      the router logits), gate_up (null, or 2·(E + 1 if a shared expert) entries) expert e's gate
  //                      and up at 2e and 2e + 1, the shared expert's at 2E and 2E + 1; the routers and down_projs
  //                      as stored
  //   block_linear_forward  out [T, N] = x [T, K] · Wᵀ (+ bias) for Linear `index` of group `which` (numbered as
  //                      set_linear_weight); W: its replacement
  // out may alias n (not x); n, x and out must not alias the model's own buffers.
  void attention_forward(int64_t layer, const PackedBatch& batch, const float* n, float* out,
                         const void* const* qkv = nullptr, DType wdtype = DType::F32);
  void mlp_forward(int64_t layer, const float* n, int64_t T, float* out, const void* const* gate_up = nullptr,
                   DType wdtype = DType::F32);
  // The mixture-of-experts MLP of MoE layer `layer` on device rows n [T, C] -> out [T, C] (may alias n), as the
  // forward runs it, for another pass over this model's weights (QwenDecodeCuda's prompt and steps). Work queued on
  // `caller` is waited for first, and the MLP is complete when this returns, so the caller's stream may read out.
  // Uses this model's batch buffers (hence not for use while one of its own passes runs; const for the decoder,
  // which holds a const model).
  void moe_forward(int64_t layer, const float* n, int64_t T, float* out, CudaStream caller) const;
  void block_linear_forward(int64_t layer, BlockLinear which, int index, const float* x, int64_t T, float* out,
                            const void* W = nullptr, DType wdtype = DType::F32);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
