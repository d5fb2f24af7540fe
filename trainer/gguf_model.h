// Qwen2 / Qwen3 / Llama models and the Qwen mixtures of experts as GGUF files (llama.cpp): export from any checkpoint
// we read, and read back for eval, generate and compare.
//
// Mixtures of experts as llama.cpp's qwen3moe / qwen2moe architectures (every layer sparse; qwen3moe renormalizes the
// top-k weights, qwen2moe does not and always has its shared expert: other configs are refused): the router
// mlp.gate -> ffn_gate_inp (F32, [E, C]), each layer's experts stacked into ffn_{gate,up,down}_exps (ne {C, Im, E}
// and {Im, C, E}, the stack of the experts' torch rows), qwen2moe's shared expert -> ffn_{gate,up,down}_shexp and its
// gate mlp.shared_expert_gate -> ffn_gate_inp_shexp (F32, ne {C}); {arch}.expert_count, expert_used_count,
// expert_feed_forward_length, expert_shared_feed_forward_length.
//
// Export maps names and metadata as llama.cpp's convert_hf_to_gguf.py does:
//   model.embed_tokens -> token_embd, model.norm -> output_norm, lm_head -> output (absent when tied),
//   layers.i.{input_layernorm, self_attn.{q,k,v,o}_proj, self_attn.{q,k}_norm, post_attention_layernorm,
//   mlp.{gate,up,down}_proj} -> blk.i.{attn_norm, attn_q, attn_k, attn_v, attn_output, attn_q_norm,
//   attn_k_norm, ffn_norm, ffn_gate, ffn_up, ffn_down} (.weight, .bias);
//   a torch [N, K] weight is stored with ne = {K, N}, i.e. the same bytes row by row. For "llama" the rows of
//   q and k are permuted back to llama.cpp's interleaved RoPE pairs (rotate-half -> adjacent pairs, per head:
//   row 2i <- i, row 2i+1 <- D/2 + i); Qwen2/Qwen3 use llama.cpp's NeoX RoPE (rotate-half) and keep theirs.
// Types: each tensor's as convert_hf_to_gguf.py (f32, f16, bf16, q8_0) or llama-quantize (q4_0 ... q5_1, the k-quant
// mixes q2_k ... q6_k, iq4_nl, iq4_xs; with or without an importance matrix) choose it: trainer/gguf_file_type.h.
// The tokenizer goes into tokenizer.ggml.* (gpt2 byte-level BPE with its merges for Qwen; llama SentencePiece
// with scores for Llama-style tokenizers). The file is written to a temporary name and renamed when complete.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "core/gguf.h"
#include "trainer/quantize_model.h"
#include "trainer/qwen_config.h"
#include "trainer/qwen_weights.h"

namespace qwenq {

struct GgufExportOptions {
  std::string type = "q8_0";  // a file type of trainer/gguf_file_type.h: f32 ... q8_0, q4_0 ... q4_k_m, q6_k
  std::string name;                // general.name (default: the model directory's name)
  bool overwrite = false;
  bool quiet = false;  // no progress bar
  // Zero-pad the MLP width to a multiple of the file type's block, at least 32 (gate/up rows, down columns; exact:
  // silu(0)·0 = 0), so that ffn_down's rows split into blocks instead of falling back (stories260K: 172 -> 192, or
  // 256 for k-quants), as the other formats' --pad-intermediate.
  bool pad_intermediate = false;
  // > 0: split files of at most this many bytes of tensor data each ("m-00001-of-0000N.gguf" ...; gguf-split's
  // --split-max-size), e.g. under the Hugging Face Hub's 50 GB per file.
  uint64_t split_max_bytes = 0;
  // An importance matrix file (llama-imatrix's GGUF or .dat, or `qwen-quant imatrix`'s; quant/ggml_imatrix.h): each
  // 2-D tensor it has an entry for is quantized with that entry's E[x²] weights, as llama-quantize --imatrix does
  // (quant/ggml_kquants.h), and the file gets llama-quantize's quantize.imatrix.* keys. Types follow the same rules.
  std::string imatrix_path;
};

// The GGUF name of Linear `index` of a decoder block in trainer/qwen_model.h's kDecoderLinears order (q, k, v, o,
// gate, up, down): "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down".
const char* gguf_linear_name(int index);

struct GgufExportReport {
  std::string arch;
  int64_t tensors = 0;
  int64_t fallbacks = 0;      // 2-D tensors whose rows forced another type than the rules' (e.g. F16 for rows of 172)
  std::map<std::string, int64_t> types;  // ggml type name -> 2-D tensors of that type
  int64_t intermediate = 0;   // the MLP width written (padded or not)
  int64_t imatrix_tensors = 0;  // 2-D tensors quantized with importance weights (not F16/BF16/F32/Q8_0 ones)
  uint64_t bytes = 0;         // file size (all files)
  std::vector<std::string> files;  // the one file, or the split files in order
  double seconds = 0;
};

// `model_dir` may be a GGUF file too: its tensors are dequantized and quantized again (as llama-quantize re-quantizes;
// from an F32/F16/BF16 file the result is what the directory it came from would give in that precision).
GgufExportReport export_gguf(const std::string& model_dir, const std::string& out_path, const GgufExportOptions& o);

// A GGUF file (o.model_dir) as a Hugging Face directory in o.dtype: every tensor dequantized (k-quants included) and
// renamed back, llama q/k rows back in rotate-half order, config.json from the metadata, the tokenizer as
// tokenizer.json. For fine-tuning or re-quantizing a model published only as GGUF.
QuantizeReport gguf_to_hf(const DequantizeOptions& o);

// Throws, naming `where`, when a mixture-of-experts config has no GGUF form: dense layers (llama.cpp's qwen3moe and
// qwen2moe make every layer sparse), norm_topk_prob other than the architecture's (qwen3moe renormalizes, qwen2moe
// does not), or a qwen2_moe without its shared expert. Nothing for a dense model.
void check_gguf_moe(const QwenConfig& c, const std::string& where);

// config.json of a model directory, or the metadata of a GGUF file.
QwenConfig load_model_config(const std::string& dir_or_gguf);

// The architecture facts a GGUF file's metadata states (llama.cpp's keys), as a QwenConfig; refuses
// architectures other than qwen2, qwen3 and llama, and RoPE scalings other than none/linear.
QwenConfig qwen_config_from_gguf(const GgufFile& f);

// One tensor of a model in a GGUF file: its GGUF and Hugging Face names, its torch shape, and for Llama's q/k the
// head dim whose RoPE pairs its rows store interleaved (GgmlLinear::rope_head_dim; 0 otherwise).
// A MoE layer's expert stack (ffn_{gate,up,down}_exps: ne {K, N, E}) is one entry with experts = E: hf holds "{}"
// where the expert index goes (gguf_expert_hf), shape is one expert's [N, K].
struct GgufModelTensor {
  std::string gguf, hf;
  std::vector<int64_t> shape;
  int64_t rope_head_dim = 0;
  int64_t experts = 0;
};
// The Hugging Face name of expert e of a stack ("model.layers.0.mlp.experts.3.up_proj.weight").
std::string gguf_expert_hf(const GgufModelTensor& t, int64_t e);
// Every tensor `cfg` calls for, embedding first, in llama.cpp's order.
std::vector<GgufModelTensor> gguf_model_tensors(const QwenConfig& cfg);
// Refuses, naming the file and tensor, one that is missing, of another shape, or of a type we cannot read.
void check_gguf_tensor(const GgufFile& f, const GgufModelTensor& t);

// Views of every tensor the config calls for. Linears stay in their stored ggml type (dequantized one at a time by
// LinearWeight::dequantize); the embedding and output tables are views when F32/F16/BF16, else kept in their blocks
// (QwenWeights::embed_q, lm_head_q); norms are views, or dequantized into memory the result owns. "llama" q/k rows are permuted back to rotate-half while dequantizing.
QwenWeights bind_gguf_weights(const QwenConfig& cfg, const GgufFile& f);

}  // namespace qwenq
