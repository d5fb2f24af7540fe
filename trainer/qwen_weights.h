// The weights of a Qwen model as views into the memory-mapped checkpoint: nothing is copied or widened up
// front, so a bf16 model costs its file size in page cache and nothing more. Every tensor is looked up by
// its Hugging Face name and its shape checked against config.json, with errors naming tensor and file.
#pragma once

#include <memory>
#include <vector>

#include "core/safetensors.h"
#include "quant/format/qgemm_layout.h"
#include "quant/fp8.h"
#include "quant/ggml_blocks.h"
#include "quant/int_checkpoint.h"
#include "quant/nf4_checkpoint.h"
#include "trainer/qwen_config.h"
#include "trainer/quant_config.h"

namespace qwenq {

// One nn.Linear weight [N, K]: a view of dense bf16/fp16/fp32 values, or a packed 4-bit form (GPTQ/AWQ
// integer codes or bitsandbytes NF4/FP4) read from a quantized checkpoint, or ggml blocks of a GGUF file.
struct LinearWeight {
  int64_t N = 0, K = 0;
  TensorView dense;                               // data null when packed
  std::shared_ptr<const PackedIntLinear> packed;  // GPTQ / AWQ
  std::shared_ptr<const Nf4Linear> nf4;           // bitsandbytes 4-bit
  std::shared_ptr<const GgmlLinear> ggml;         // GGUF (llama.cpp) blocks
  std::shared_ptr<const Fp8Linear> fp8;           // block-wise FP8 (quant/fp8.h)
  std::shared_ptr<const std::vector<float>> owned;  // backs `dense` when the values were computed (fake-quant)
  bool is_dense() const { return dense.data != nullptr; }
  static LinearWeight from_fp32(std::vector<float> W, int64_t N, int64_t K);
  // The fp32 values [N, K] the packed form stands for (exactly what the format's readers compute); _into writes
  // them to W [N·K floats].
  std::vector<float> dequantize() const;
  void dequantize_into(float* W) const;
};

// The sparse MoE block of a qwen2_moe / qwen3_moe layer (QwenConfig::is_moe_layer): the router [E, C], E routed
// SwiGLU experts ([Im, C], [Im, C], [C, Im]) and, for qwen2_moe, a shared expert ([Is, C] ...) scaled per token by
// sigmoid(x · shared_gate) ([1, C]). Each is an nn.Linear, dense or packed like any other.
struct MoeExpertWeights {
  LinearWeight gate, up, down;
};
// "mlp.experts.<e>." below "model.layers.<l>.", or "mlp.shared_expert." for expert -1: the prefix of an expert's
// gate_proj / up_proj / down_proj in checkpoints and PEFT adapters.
std::string moe_expert_path(int64_t expert);
// Linear `which` (0 gate_proj, 1 up_proj, 2 down_proj) of an expert (MoeExpertWeights, const or not).
template <typename Expert>
auto& expert_member(Expert& e, int which) {
  return which == 0 ? e.gate : which == 1 ? e.up : e.down;
}

struct MoeWeights {
  LinearWeight router;  // mlp.gate
  std::vector<MoeExpertWeights> experts;
  MoeExpertWeights shared;   // absent (N = 0) without a shared expert
  LinearWeight shared_gate;  // mlp.shared_expert_gate
};

struct QwenLayerWeights {
  TensorView input_norm;                       // [C]
  LinearWeight q, k, v, o;                     // [H*D, C], [Hkv*D, C], [Hkv*D, C], [C, H*D]
  TensorView q_bias, k_bias, v_bias;           // [H*D], [Hkv*D], [Hkv*D] (data null when absent)
  TensorView q_norm, k_norm;                   // [D] (Qwen3 only)
  TensorView post_norm;                        // [C]
  LinearWeight gate, up, down;                 // [I, C], [I, C], [C, I] (a dense MLP; N = 0 in a MoE layer)
  MoeWeights moe;                              // a MoE layer's MLP (no router / experts otherwise)
};

// Linear t of a layer in true-sequential order (q=0, k, v, o, gate, up, down=6; LoraTarget's and kDecoderLinears'):
// for QwenLayerWeights and for any layer with the same seven members (the GPU's QwenDeviceLayer).
template <typename Layer>
auto& layer_linear(Layer& L, int t) {
  switch (t) {
    case 0: return L.q;
    case 1: return L.k;
    case 2: return L.v;
    case 3: return L.o;
    case 4: return L.gate;
    case 5: return L.up;
    default: return L.down;
  }
}

struct QwenWeights {
  TensorView embed;       // [V, C] (no data when embed_q holds the table)
  std::vector<QwenLayerWeights> layers;
  TensorView final_norm;  // [C]
  TensorView lm_head;     // [V, C] (= embed when tied; no data when lm_head_q holds the table, or for a score head)
  TensorView score;       // [L, C]: a sequence classifier's head (ModelHead::kSequenceScore), else no data
  // GGUF: a quantized token_embd / output table kept in its blocks and dequantized a row at a time as it is read,
  // instead of widened to fp32 at load (2.2 GB each for a 7B's 152,064 x 3,584). Null for every other table.
  std::shared_ptr<const GgmlLinear> embed_q, lm_head_q;
  std::vector<std::shared_ptr<const std::vector<float>>> owned;  // backs views whose values were computed (GGUF)
};

// Row r of a [V, C] table in fp32: `view` widened from its stored dtype, or q's blocks dequantized (q non-null).
void table_row_f32(const TensorView& view, const GgmlLinear* q, int64_t r, float* out);
// logits[M, V] = hidden[M, C] · lm_headᵀ, the table read in place, or (lm_head_q) dequantized block_rows rows at a
// time (0: kTableBlockFloats / C, at least 64) into fp32 rows that are multiplied and dropped; with block_rows 0 and
// at most kGgmlMatvecMaxRows rows (decode), ggml_linear_matvec (quant/packed_matvec.h) instead; with the int8 switch
// (set_int8_activations below) and a supported type, ggml_linear_matvec_int8 for any M.
void lm_head_forward(const QwenWeights& w, const float* hidden, int64_t M, float* logits, int64_t block_rows = 0);
constexpr int64_t kTableBlockFloats = int64_t{1} << 22;  // 16 MiB of dequantized rows
// Rows of logits computed at once on the CPU from a table read in place: about 2^24 values (64 MiB fp32), at least one
// row. lm_head_nll's chunk, the LoRA loss's and the KL-divergence evaluations' (whose NLLs thereby are eval's to the
// bit).
inline int64_t logits_block_rows(int64_t vocab_size) {
  return vocab_size >= (int64_t{16} << 20) ? 1 : (int64_t{16} << 20) / vocab_size;
}
// nll[r] = logsumexp(logits[r]) − logits[r][targets[r]] for the logits hidden[rows, C] · lm_headᵀ (kIgnoreIndex rows:
// 0, not counted; returns the counted rows). A table read in place: logits in chunks of logits_block_rows, each
// through cross_entropy_forward_ref. lm_head_q: each block of block_rows table rows (as lm_head_forward) is
// dequantized once for all rows (with the int8 switch: multiplied from its bytes with the rows quantized once), and every row keeps a running max m and Σ exp(l − m) (exp_sum_row of
// kernels/exp_rows.h, as the dense path: exp in fp32, the sum in double; rescaled by exp(m_old − m_new) when the max
// grows) and its target's logit.
int64_t lm_head_nll(const QwenWeights& w, const float* hidden, int64_t rows, const int32_t* targets, float* nll,
                    int64_t block_rows = 0);
// Throws naming `what` when a table is held in GGUF blocks: the paths that read the tables in place (training, the
// GPU upload) call this.
void require_dense_tables(const QwenWeights& w, const std::string& what);

// Every nn.Linear of decoder layer l as the checkpoint names it below "model.layers.<l>.": the seven of a dense layer
// (decoder_index 0..6: q, k, v, o, gate, up, down), or in a MoE layer q, k, v, o then the router "mlp.gate", each
// expert's "mlp.experts.<e>.{gate,up,down}_proj" and qwen2_moe's "mlp.shared_expert.*" and "mlp.shared_expert_gate"
// (decoder_index -1 past o_proj). For the tools that walk a checkpoint's Linears (dequantize, merge).
struct LayerLinear {
  std::string name;
  int64_t N = 0, K = 0;
  int decoder_index = -1;
};
std::vector<LayerLinear> layer_linears(const QwenConfig& c, int64_t l);
// Σ over the layers of layer_linears(c, l).size() (the progress of the tools that walk them).
int64_t count_layer_linears(const QwenConfig& c);

// y[M, N] = x[M, K] · Wᵀ (+ bias when bias.data is set): a dense W in its stored dtype, a packed one widened to
// fp32 for the duration of the call (one Linear at a time, never the model; the GPU's fused kernels do without),
// into one buffer per thread that grows to the largest Linear met and is reused (a fresh 271 MB of a Qwen2.5-7B
// MLP weight costs ~150 ms in page faults alone on a 2-core machine: benchmarks/bench_dequant_cpu.cpp).
void apply_linear(const LinearWeight& w, const float* x, int64_t M, const TensorView& bias, float* y);
// The CPU's forward products with GGUF block weights (apply_linear, lm_head_forward, lm_head_nll) and GPTQ/AWQ
// weights (apply_linear): exact by default (quant/packed_matvec.h up to its row limit, the dequantized GEMM above),
// or, switched on process-wide by `--int8-activations`, int8 products for every M (each activation row rounded to
// 8 bits per block, integer sums): llama.cpp's for every quantized GGUF tensor (quant/ggml_dot_int8.h,
// ggml_int8_product_supported), and the same idea for 4- and 8-bit GPTQ and AWQ Linears (quant/int_dot_int8.h,
// int_int8_product_supported; act-order GPTQ rows are sorted by group at load whatever the switch, and when it is on
// AWQ's words are repacked along K at load, so set it before loading). F32/F16/BF16 tensors, dense and NF4 Linears, 2/3-bit GPTQ, act-order
// GPTQ whose groups are not all group_size inputs long, and the backward products stay exact.
void set_int8_activations(bool on);
bool int8_activations();
// `eval --cpu-matmul bf16`, process-wide: the CPU forward's products with an F32 or BF16 weight (dense Linears, a
// dense lm_head) on bf16 operands with fp32 sums (kernels/gemm_bf16.h: the GPU's numerics on a 16-bit weight, about
// twice as fast with AVX512_BF16), and those of a GPTQ/AWQ or bitsandbytes 4-bit Linear (act-order GPTQ too, its rows
// as sorted at load) from kCpuBf16Q4MinRows rows on, multiplied from its Q4 form (q4_linear_form,
// qgemm_int4_forward_bf16; the bits of the bf16 product on its fp32 dequantization); below that the packed fp32
// product keeps them (--int8-activations, where it applies, wins over both). A 4-bit Linear with no Q4 form takes its
// fp32 dequantization past the packed product's row limit. F16 weights, the packed products below those rows, GGUF
// tables and every backward stay as they are. A product with a 16-bit or fp32 weight on fewer than
// kCpuBf16MinRows rows (a decode step) keeps the fp32 product even with the switch on: the bf16 kernel packs the
// whole weight into its panels on every call, which costs more than the fp32 matvec's one read of it below 8 rows
// (benchmarks/bench_gemm_cpu's few_rows_* rows: at M = 1 the bf16 product is 3-4x slower, at M = 8 already faster).
// The attention of a prompt or an evaluated window follows the same switch and floor (cpu_bf16_attention): its products
// on bf16 operands as the GPU's flash attention computes them (kernels/attention.h, bf16), 1.8-2.1x faster; a decode
// step's attention (attention_decode_cpu) stays fp32, as the GPU's decode kernels.
// `generate --cpu-matmul bf16` so takes it for the prompt and not for the tokens decoded after it. Off by default
// (the fp32 reference); the trainer has its own switch (LoraStepOptions::bf16_matmul).
void set_cpu_bf16_products(bool on);
bool cpu_bf16_products();
// Whether the CPU attention of `rows` query rows takes bf16 operands: the switch on and rows >= kCpuBf16MinRows.
bool cpu_bf16_attention(int64_t rows);
// The switch off for a scope, restored after (process-wide, as the switch): QwenModel::forward_steps' batched decode
// steps, whose products must have a lone step's bits whatever the number of rows.
class CpuFp32Products {
 public:
  CpuFp32Products() : saved_(cpu_bf16_products()) { set_cpu_bf16_products(false); }
  ~CpuFp32Products() { set_cpu_bf16_products(saved_); }
  CpuFp32Products(const CpuFp32Products&) = delete;
  CpuFp32Products& operator=(const CpuFp32Products&) = delete;

 private:
  bool saved_;
};
constexpr int64_t kCpuBf16MinRows = 8;
// From 32 rows the Q4 tiles on bf16 operands beat the packed fp32 product for every 4-bit kind (benchmarks/
// bench_gemm_cpu's q4_rows_* rows, Qwen2.5-0.5B MLP shapes, 2 Zen 4 cores: GPTQ 1.2-1.5x at 32 rows, 2.1x at 512;
// AWQ 1.6x and 2.6x; NF4 0.9-1.2x and 2.5-2.9x); at 8-16 rows the packed product is faster.
constexpr int64_t kCpuBf16Q4MinRows = 32;
// A 4-bit Linear's Q4 form for one product (quant/format/qgemm_layout.h, q4_transient_int_linear / q4_transient_nf4:
// GPTQ's own words, AWQ's and bitsandbytes' moved into Q4's order); no form (has_form() false) for a dense, GGUF or
// FP8 weight, act-order GPTQ whose rows are not sorted by group, other bit widths and shapes Q4 cannot take without
// padding. Borrows from w.
Q4Transient q4_linear_form(const LinearWeight& w);
// True when the int8 products apply to q / p (non-null, a supported type or layout, the switch on).
bool uses_int8_activations(const GgmlLinear* q);
bool uses_int8_activations(const PackedIntLinear* p);
// How much of a model the switch reaches: of its `linears` nn.Linear weights (every decoder Linear, MoE routers,
// experts and shared experts included), `int8` take the int8 products; `lm_head` whether the output table does.
struct Int8Coverage {
  int64_t int8 = 0, linears = 0;
  bool lm_head = false;
};
Int8Coverage int8_coverage(const QwenWeights& w);
// dx[M, K] = dy[M, N] · W (written), W as apply_linear reads it.
void apply_linear_backward_input(const LinearWeight& w, const float* dy, int64_t M, float* dx);

// The Linear `prefix` ("model.layers.0.mlp.up_proj") of shape [N, K]: packed when the checkpoint holds it packed
// (per `quant`), else a dense view.
LinearWeight load_linear(const Checkpoint& ckpt, const QuantConfig& quant, const std::string& prefix, int64_t N,
                         int64_t K);

// The head a checkpoint is read for: a causal LM's lm_head (next-token logits), or the score head [L, C] of a sequence
// classifier (Qwen2ForSequenceClassification, Qwen3ForSequenceClassification: what reward models are), which holds
// "score.weight" (no bias) and no "lm_head.weight"; its decoder is the causal LM's, quantized or not.
enum class ModelHead { kLanguageModel, kSequenceScore };
// Whether a checkpoint is a sequence classifier's (score.weight and no lm_head.weight).
bool is_sequence_classifier(const Checkpoint& ckpt);
// The head a model directory holds: kSequenceScore for a sequence classifier's checkpoint, else kLanguageModel (a GGUF
// file's too). For the calibrating quantizers (gptq, awq), which run the decoder only and pass the head through.
ModelHead checkpoint_head(const std::string& dir);

// Binds views for every tensor the config calls for; Linear layers of a quantized checkpoint (per `quant`) are
// read in their packed form. `ckpt` must outlive the result. kLanguageModel refuses a sequence classifier's
// checkpoint (score.weight without lm_head.weight: it has no next-token logits); kSequenceScore binds `score` and
// (untied) no lm_head, and refuses a checkpoint without score.weight.
QwenWeights bind_qwen_weights(const QwenConfig& cfg, const QuantConfig& quant, const Checkpoint& ckpt,
                              ModelHead head = ModelHead::kLanguageModel);

}  // namespace qwenq
