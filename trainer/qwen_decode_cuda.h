// Incremental decoding of one sequence on the GPU with a KV cache: the GPU twin of QwenModel::forward_step +
// KvCache (trainer/qwen_model.h), on the weights a QwenModelCuda uploaded (dense or Q4), and generate_cuda, the
// contract of trainer/generate.h's generate on it.
//
//   prefill(prompt)  the T prompt tokens at positions 0..T-1, as QwenModelCuda's forward (same ops, same order),
//                    except that the k and v projections write their rows straight into the cache (the cache of
//                    one sequence is [capacity, Hkv, D] fp32 per layer, the layout the attention kernels read
//                    k/v in) and the final norm and lm_head run on the last row only. Attention: flash (bf16 copies
//                    of q and of the cached k, v) for D = 64/128, else the naive fp32 kernel. Returns logits [V].
//   step(token)      one token at position length(): M = 1 through every Linear (Q4 weights through
//                    qgemm_int4_cuda with fp32 activations: the W4A16 GEMV qgemm_int4_decode_cuda, or with
//                    QWENQ_DECODE_MMA_F32=1 the tensor-core decode kernel on x split into three bf16 pieces; both
//                    exact fp32 ŵ, no activation rounding; with bf16_activations the rows rounded to bf16 and qgemm_int4_cuda's tensor-core decode kernel;
//                    dense weights through cuBLASLt, which rounds x to a 16-bit W's dtype), RoPE at the position,
//                    k and v written into cache row length(), then attention_decode_cuda
//                    (kernels/attention_decode.h) of the new query against rows [0, length()]. Returns logits [V].
// KV cache dtype (the constructor's `kv`, trainer/qwen_model.h's KvCacheDType; F32 by default): with BF16 the
// cache is [capacity, Hkv, D] bf16 per layer and the k and v rows of the prefill and of each step are projected into
// fp32 rows (after the q/k norm and RoPE, as before), rounded to bf16 into the cache (f32_to_bf16_cuda) and read
// from there: the flash prefill takes the bf16 cache directly (no bf16 copies of k, v), the naive fp32 prefill
// (D not 64/128) gets fp32 copies widened from it, and steps run attention_decode_bf16_cuda. Every read sees the
// rounded values, as the CPU's forward_step with a BF16 KvCache: that is the oracle of this mode. With flash the
// prefill's numbers are the F32 cache's (flash rounds k and v to bf16 either way); the steps differ from F32 by the
// rounding of K and V. Needs an even head_dim (all Qwen models).
// Linears in the prefill: Q4 with T <= 64 rows takes the same fp32 product; beyond, x is rounded to bf16 for
// the tensor-core W4A16 kernel (as QwenModelCuda does). The logits are downloaded to the host for sample_token.
// QWENQ_DECODE_GRAPH=1 (opt-in until it has run on a GPU; not for MoE models): the first step after an eager one (a
// prefill, or a one-token prompt's first step) is captured as a CUDA graph and every later one replays it (one launch instead of ~27 per layer): its k and v rows are stored at the
// position the device holds (store_row_cuda) and its decode attention is sized for the whole cache (the keys past
// the length in empty splits), so the logits differ from the launched steps' by the order of sums only.
// A mixture-of-experts layer's MLP (prefill and steps) is QwenModelCuda::moe_forward, the forward's own: routing on
// the host, each expert's Linears as QwenModelCuda runs them (Q4 experts with bf16 activations, even at M = 1), on the
// model's stream and buffers (synchronized with this one around the call).
//
// Numbers: with F32 weights and D not 64/128 (stories260K, the tiny test models) a step rounds nothing the CPU does
// not; only the order of sums differs, so greedy decoding gives the CPU's tokens except where two logits are
// within that difference of each other (a tie). BF16 weights and flash attention in the prefill add the bf16
// roundings described in trainer/qwen_model_cuda.h.
//
// Memory: the cache, 2 · layers · capacity · Hkv · D · 4 bytes (2 with BF16), allocated once in the constructor
// (Qwen2.5-7B: 112 KiB per token, 224 MiB for 2048 tokens; BF16 56 KiB, 112 MiB), plus activation buffers kept
// for the longest prompt so far (a step uses their first row) and one [V] logits row. A failed allocation throws
// naming the buffer and the device's free memory. Not thread-safe; one stream of its own.
// With an adapter attached to the model (QwenModelCuda::attach_adapter, trainer/lora_inference_cuda.h) every adapted
// Linear of the prefill and of each step adds y += s · (x Aᵀ) Bᵀ in fp32 after its base product (a step: two GEMVs
// through cuBLASLt, negligible next to the base's), with a scratch [rows, r] fp32 among the activation buffers.
#pragma once

#ifdef QWENQ_HAVE_CUDA

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "trainer/generate.h"
#include "trainer/qwen_model_cuda.h"

namespace qwenq {

class QwenDecodeCuda {
 public:
  // `model` must outlive this object. capacity: tokens the cache holds (prompt + new tokens), >= 1. kv: the cache's
  // storage (BF16: the k and v rows rounded to bf16, see above). bf16_activations: the Q4 products of up to 64 rows
  // take their input rounded to bf16 (SamplingOptions::bf16_activations).
  QwenDecodeCuda(const QwenModelCuda& model, int64_t capacity, KvCacheDType kv = KvCacheDType::F32,
                 bool bf16_activations = false);
  ~QwenDecodeCuda();
  QwenDecodeCuda(const QwenDecodeCuda&) = delete;
  QwenDecodeCuda& operator=(const QwenDecodeCuda&) = delete;

  int64_t capacity() const;
  int64_t length() const;  // tokens in the cache
  int64_t cache_bytes() const;  // the k and v caches as allocated (requested bytes)
  KvCacheDType kv_cache_dtype() const;
  // CUDA graphs the steps captured so far (QWENQ_DECODE_GRAPH=1: one, replayed, until the buffers or the adapter
  // change; 0 without the switch, for a MoE model, or after a capture the runtime refused).
  int64_t graph_captures() const;

  // Empties the cache and runs `prompt` (1..capacity tokens): logits [V] of its last token.
  std::vector<float> prefill(const std::vector<int32_t>& prompt);
  // Appends `token` at position length() (< capacity): its logits [V].
  std::vector<float> step(int32_t token);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// generate (trainer/generate.h) on the GPU: the same SamplingOptions, the same Rng use and the same loop
// (generate_with), the logits of each position from a QwenDecodeCuda whose cache holds prompt + max_new_tokens
// (at most the model's context) in opt.kv_cache.
std::vector<int32_t> generate_cuda(const QwenModelCuda& model, const std::vector<int32_t>& prompt,
                                   const SamplingOptions& opt, const std::function<void(int32_t)>& on_token = nullptr);

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
