// The Qwen2/Qwen3 decoder on the CPU, computed in fp32 from weights kept in their stored dtype.
//
// Per decoder layer (pre-norm), for the packed tokens x[T, C]:
//   n   = RMSNorm(x) · w_in
//   q   = n Wqᵀ + bq   k = n Wkᵀ + bk   v = n Wvᵀ + bv          (biases: Qwen2 only)
//   q,k = RMSNorm_D(q), RMSNorm_D(k) per head                   (Qwen3 only, before RoPE)
//   q,k = RoPE(q, pos), RoPE(k, pos)                             (rotate-half)
//   a   = softmax(q kᵀ / √D + causal mask) v                     (GQA: head h reads kv head h / (H/Hkv))
//   x   = x + a Woᵀ
//   n   = RMSNorm(x) · w_post
//   x   = x + (silu(n Wgᵀ) ⊙ n Wuᵀ) Wdᵀ                          (a MoE layer: x + moe(n), trainer/moe_block.h)
// then logits = RMSNorm(x) · w_final · W_headᵀ. This is transformers' modeling_qwen2 / modeling_qwen3 with
// every intermediate in fp32 (what it computes for torch_dtype=float32); qwen2_moe / qwen3_moe likewise.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "trainer/qwen_config.h"
#include "trainer/moe_block.h"
#include "trainer/qwen_weights.h"

namespace qwenq {

class GgufFile;
struct LoraArenaSlot;
struct LoraInferenceLayout;

// Several sequences packed back to back: tokens of sequence s are [cu_seqlens[s], cu_seqlens[s+1]).
struct PackedBatch {
  std::vector<int32_t> tokens;
  std::vector<int32_t> positions;   // restart at 0 for each sequence
  std::vector<int32_t> cu_seqlens;  // n_seqs + 1 entries
  static PackedBatch from_sequences(const std::vector<std::vector<int32_t>>& seqs);
  int64_t num_tokens() const { return static_cast<int64_t>(tokens.size()); }
  int64_t num_seqs() const { return static_cast<int64_t>(cu_seqlens.size()) - 1; }
};

// Next-token targets of a packed batch: targets[t] = tokens[t+1] inside each sequence, kIgnoreIndex (-100) at the
// last position of each sequence.
std::vector<int32_t> next_token_targets(const PackedBatch& batch);

// The four places inside a decoder block where Linear layers read their input (q/k/v share one, gate/up one).
enum class BlockLinear { QKV, O, GateUp, Down };
// The seven Linears of a decoder block in true-sequential order (q, k, v, o, gate, up, down; also LoraTarget's
// order): the name under "model.layers.<l>.", the group whose input they read and their index in
// QwenModel::linear_weight(l, group, index). The one table the quantizers, the trainer and the merge share.
struct DecoderLinear {
  const char* name;  // "self_attn.q_proj", ...
  BlockLinear group;
  int index;
};
inline constexpr DecoderLinear kDecoderLinears[7] = {
    {"self_attn.q_proj", BlockLinear::QKV, 0},    {"self_attn.k_proj", BlockLinear::QKV, 1},
    {"self_attn.v_proj", BlockLinear::QKV, 2},    {"self_attn.o_proj", BlockLinear::O, 0},
    {"mlp.gate_proj", BlockLinear::GateUp, 0},    {"mlp.up_proj", BlockLinear::GateUp, 1},
    {"mlp.down_proj", BlockLinear::Down, 0}};
// The in features K of the Linears of group g (the width of the input they share), and the out features N of one
// Linear of the block (unpadded: the config's intermediate_size).
inline int64_t block_linear_inputs(const QwenConfig& c, BlockLinear g) {
  return g == BlockLinear::O ? c.q_dim() : g == BlockLinear::Down ? c.intermediate_size : c.hidden_size;
}
inline int64_t decoder_linear_outputs(const QwenConfig& c, const DecoderLinear& d) {
  return d.group == BlockLinear::QKV ? (d.index == 0 ? c.q_dim() : c.kv_dim())
         : d.group == BlockLinear::GateUp ? c.intermediate_size
                                          : c.hidden_size;
}
// Sees the input [T, K] of each Linear group as a block runs (GPTQ calibration accumulates Hessians from it).
// In a MoE layer it sees QKV, O and GateUp (the MoE block's input n [T, C], which the router reads and each expert a
// subset of); the experts' own inputs go to a MoeInputHook (trainer/moe_block.h).
using LinearInputHook = std::function<void(BlockLinear, const float* x, int64_t T)>;
// The same, returning whether the block goes on past that input (block_forward_to's passes stop at it).
using LinearInputStopHook = std::function<bool(BlockLinear, const float* x, int64_t T)>;

// The storage of a KV cache (`generate --kv-cache f32|bf16`). F32 (the default) keeps the fp32 k and v rows. BF16
// rounds every k and v row to bf16 when it is written (round to nearest even, NaN kept: core/dtype.h) and attention
// reads the rounded values widened to fp32; all math stays fp32. Half the bytes per token; the numbers differ from
// F32 by that rounding of K and V only. The GPU decoder (trainer/qwen_decode_cuda.h) has the same semantics, so the
// CPU's bf16 cache is its oracle.
enum class KvCacheDType { F32, BF16 };
const char* kv_cache_dtype_name(KvCacheDType t);  // "f32", "bf16"
// "f32" or "bf16"; anything else throws naming `what` (e.g. "--kv-cache"), the value and the choices.
KvCacheDType parse_kv_cache_dtype(const std::string& name, const std::string& what);

// Keys and values of past tokens for incremental decoding of one sequence (after RoPE, k after the Qwen3 q/k norm).
struct KvCache {
  int64_t length = 0;    // tokens stored
  int64_t capacity = 0;  // tokens allocated
  KvCacheDType dtype = KvCacheDType::F32;
  std::vector<std::vector<float>> k, v;         // F32: per layer [capacity, Hkv, D]
  std::vector<std::vector<uint16_t>> k16, v16;  // BF16: per layer [capacity, Hkv, D] bf16 bits
  int64_t bytes() const;                        // the k and v storage
};

class QwenModel {
 public:
  // Loads config.json and maps the checkpoint of a model directory (already resolved), or maps a GGUF file
  // (trainer/gguf_model.h; its Linears stay in their ggml blocks, quant_config() is None). kSequenceScore reads a
  // sequence classifier's directory (trainer/qwen_weights.h, ModelHead): weights().score holds its head, and the
  // next-token calls below are for language models only (trainer/reward_model.h runs it).
  explicit QwenModel(const std::string& dir, ModelHead head = ModelHead::kLanguageModel);
  ~QwenModel();
  bool is_gguf() const { return gguf_ != nullptr; }
  const QwenConfig& config() const { return cfg_; }
  const QuantConfig& quant_config() const { return quant_; }
  const std::string& dir() const { return dir_; }
  // The bound weights (views into the map, or packed forms) for code that runs the blocks itself (the trainer).
  const QwenWeights& weights() const { return w_; }

  // An unmerged LoRA adapter that every forward below then adds to the Linears it targets, after the base product
  // and its bias: y = x Wᵀ (+ b) + s·(x Aᵀ) Bᵀ (lora/lora_linear.h's lora_forward_ref on trainer/lora_inference.h's
  // arena), so a 4-bit base keeps its packed weights (`eval --adapter` and friends, tools/cli_common.h; GRPO's
  // rollouts with the adapter being trained, re-attached before each step's generation). A MoE layer's experts take
  // their branches the same way (trainer/lora_inference.h's LoraBranch, through trainer/moe_block.h). DoRA (PEFT's DoraLinearLayer at inference) scales
  // each adapted output row by g = m / ‖W + s·B A‖, computed here once (kernels/dora.h's dora_row_norms_ref, the
  // base read as stored: dense, its Q4 form, or dequantized a Linear at a time): y = g·(x Wᵀ + s·(x Aᵀ) Bᵀ) + b,
  // the merged DoRA Linear of trainer/lora_merge.h up to fp32 reassociation. The branch's products are row by row
  // the same for any row count up to kMaxDecodeBatch (the fp32 register-tile kernel), so forward_steps keeps
  // forward_step's bits. null detaches. Not owned: `lora` must outlive its attachment. Refused: a layout of another
  // layer count, or one whose experts the model does not have.
  void attach_adapter(const LoraInferenceLayout* lora);
  const LoraInferenceLayout* attached_adapter() const { return lora_; }

  // Final hidden states (after model.norm) for every packed token: hidden is resized to [T, C]. kv = BF16 rounds k
  // and v to bf16 before attention, as a BF16 KvCache stores them (the packed twin of forward_step with one).
  void forward_hidden(const PackedBatch& batch, std::vector<float>* hidden,
                      KvCacheDType kv = KvCacheDType::F32) const;
  // logits[rows, V] = hidden[rows, C] · lm_headᵀ.
  void logits(const float* hidden, int64_t rows, float* out) const;
  // Full logits for a batch: [T, V]. Only for small vocabularies or short inputs (tests, generation).
  std::vector<float> forward_logits(const PackedBatch& batch, KvCacheDType kv = KvCacheDType::F32) const;

  // Negative log-likelihood of each next token: nll[t] = -log p(tokens[t+1] | tokens[..t]) inside each
  // sequence; the last position of each sequence gets 0 and is not counted. The lm_head runs over chunks of
  // rows so that the [T, V] logits never exist at once. Returns the number of counted positions.
  int64_t next_token_nll(const PackedBatch& batch, std::vector<float>* nll) const;
  // The same for final hidden states already computed: nll[r] = -log softmax(hidden[r] · lm_headᵀ)[targets[r]]
  // (kIgnoreIndex rows: 0, not counted), the lm_head over chunks of rows (~64 MB of logits at a time).
  int64_t hidden_nll(const float* hidden, int64_t rows, const int32_t* targets, float* nll) const;

  // Incremental decoding of one sequence: appends `tokens` at positions cache->length.. and returns the
  // logits [V] of the last one. The cache's dtype decides how its rows are stored (KvCacheDType).
  std::vector<float> forward_step(const std::vector<int32_t>& tokens, KvCache* cache) const;
  // One decode step of several sequences at once: token ids[b] appended to *caches[b] (each at its own length) and
  // the logits [B, V] of each returned, row b equal bit for bit to forward_step({ids[b]}, caches[b]): the products
  // run on B rows (each weight read once per step, not once per sequence), the attention per sequence. The steps
  // keep the fp32 products whatever --cpu-matmul says (as a one-token forward_step does), so that batching changes
  // no bits. Caches may differ in length and dtype; each must have room for one more row.
  std::vector<float> forward_steps(const std::vector<int32_t>& ids, const std::vector<KvCache*>& caches) const;
  KvCache make_cache(int64_t capacity, KvCacheDType dtype = KvCacheDType::F32) const;
  // Grows a cache of this model to `capacity` tokens (at least its own), its rows and length kept.
  void grow_cache(KvCache* cache, int64_t capacity) const;

  // Layer-by-layer access for calibration: embeddings of a batch, one decoder block applied in place to
  // x [T, C] (hook sees each Linear group's input), and the Linear weights of a block (index: q=0,k=1,v=2 or
  // gate=0,up=1), which a quantizer may replace with their fake-quantized values.
  void embed_batch(const PackedBatch& batch, std::vector<float>* x) const;
  void block_forward(int64_t layer, const PackedBatch& batch, float* x, const LinearInputHook& hook,
                     const MoeInputHook& moe_hook = nullptr) const;
  // block_forward only until the input of Linear group `group`, which `at` sees; nothing after it runs, so x is
  // left part-way through the block (pass a scratch copy). GPTQ's per-group passes need nothing more: a pass for the
  // QKV group is one RMSNorm, not a block. In a MoE layer GateUp is the MoE block's input (its experts' own inputs
  // need the whole block_forward with a MoeInputHook) and Down has no input of its own: refused.
  void block_forward_to(int64_t layer, const PackedBatch& batch, float* x, BlockLinear group,
                        const std::function<void(const float* x, int64_t T)>& at) const;
  LinearWeight& linear_weight(int64_t layer, BlockLinear which, int index = 0);
  // Linear `which` (0 gate_proj, 1 up_proj, 2 down_proj) of expert `expert` of MoE layer `layer` (-1: the shared
  // expert); throws naming the layer when it has no such expert.
  LinearWeight& expert_linear(int64_t layer, int64_t expert, int which);
  // The two halves of a block as modules (AWQ evaluates them): out [T, C] = self_attn(n) = o_proj(attention(q,k,v
  // of n)) and out [T, C] = mlp(n) = down(silu(gate(n)) ⊙ up(n)), for n the normalized input [T, C] (no
  // residual). out may alias n.
  void attention_forward(int64_t layer, const PackedBatch& batch, const float* n, float* out) const;
  void mlp_forward(int64_t layer, const float* n, int64_t T, float* out) const;

 private:
  struct Scratch;
  template <typename AttnFn>
  void run_layers(float* x, int64_t T, const int32_t* pos, AttnFn&& attention) const;
  // The sublayers and the layer return false when the hook stopped them (at a Linear group's input).
  template <typename AttnFn>
  bool attention_sublayer(int64_t l, const float* n, int64_t T, const int32_t* pos, AttnFn&& attention, Scratch& s,
                          const LinearInputStopHook& hook, float* out) const;
  bool mlp_sublayer(int64_t l, const float* n, int64_t T, Scratch& s, const LinearInputStopHook& hook,
                    const MoeInputHook& moe_hook, float* out) const;
  template <typename AttnFn>
  bool layer_forward(int64_t l, float* x, int64_t T, const int32_t* pos, AttnFn&& attention, Scratch& s,
                     const LinearInputStopHook& hook, const MoeInputHook& moe_hook = nullptr) const;
  // Layer l on a packed batch (its positions and sequences), as block_forward / block_forward_to run it.
  void batch_layer(int64_t l, const PackedBatch& b, float* x, const LinearInputStopHook& hook,
                   const MoeInputHook& moe_hook) const;
  void embed(const std::vector<int32_t>& tokens, float* x) const;
  // Linear t (table order, kDecoderLinears) of layer l on x [T, K] into y, plus the attached adapter's branch.
  void linear_at(int64_t l, int t, const float* x, int64_t T, const LinearWeight& w, const TensorView& bias,
                 float* y) const;

  std::string dir_;
  QwenConfig cfg_;
  QuantConfig quant_;
  std::unique_ptr<Checkpoint> ckpt_;
  std::unique_ptr<GgufFile> gguf_;
  QwenWeights w_;
  // The attached adapter (attach_adapter): per layer-level Linear [layer · 7 + t] its branch (A null: not adapted);
  // per MoE layer its experts' branches ([(E + 1)·3], empty when the layer has none); the DoRA gains
  // g = m / ‖W + s·B A‖ of every adapted Linear, computed at attach (the branches point into them).
  const LoraInferenceLayout* lora_ = nullptr;
  std::vector<LoraBranch> lora_linears_;
  std::vector<std::vector<LoraBranch>> lora_experts_;
  std::vector<float> lora_gains_;
};

}  // namespace qwenq
