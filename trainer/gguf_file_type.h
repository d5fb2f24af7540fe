// The file types `qwen-quant gguf --type` writes, and the ggml type each tensor gets in them: the rules of the tool
// that makes such files in llama.cpp, so that our files hold what theirs do.
//
// convert_hf_to_gguf.py --outtype (f32, f16, bf16, q8_0): every 2-D weight in the type (embedding and output too),
//   a Q8_0 tensor whose rows do not split into 32-blocks in F16.
// llama-quantize (q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k, iq4_nl,
// iq4_xs), from
// llama_tensor_get_type for a dense model (not Falcon, no experts):
//   output (the embedding when tied): Q6_K, or Q8_0 when its rows do not split into 256-blocks; an untied embedding:
//     the file's base type;
//   attn_v: q2_k Q4_K when n_gqa >= 4 else Q3_K; q3_k_m Q5_K in the first 2 layers, then Q4_K; q3_k_l Q5_K;
//     q4_k_m / q5_k_m Q6_K in the layers use_more_bits picks; q4_k_s Q5_K in the first 4; iq4_nl / iq4_xs Q5_K when
//     n_gqa >= 4; then a Q3_K or Q4_K of an
//     80-layer model (llama.cpp's 70B type) is Q5_K;
//   ffn_down: q2_k Q3_K; q3_k_m Q5_K in the first n/16 layers, then Q4_K; q3_k_l Q5_K; q4_k_m / q5_k_m Q6_K where
//     use_more_bits; q4_k_s Q5_K in the first n/8; iq4_nl / iq4_xs without an importance matrix Q5_K in the first n/8;
//     q4_0 / q5_0 with an importance matrix Q4_1 / Q5_1 in the first n/8;
//   attn_output: q2_k Q3_K, q3_k_m Q4_K, q3_k_l Q5_K;
//   with exactly 8 experts (llama.cpp's Mixtral rule): attn_v and attn_k Q8_0 in every llama-quantize type, attn_output
//     Q5_K for q2_k, q3_k_s, q3_k_m, q4_k_s, q4_k_m, iq4_nl, iq4_xs and the base type otherwise; an expert stack's
//     layer is the one its name says (ffn_down_exps and ffn_down_shexp of layer i both count as layer i of n);
//   ffn_gate_inp (a MoE router) is never quantized: F32 as convert_hf_to_gguf.py writes it;
//   everything else the base type (Q2_K, Q3_K for q3_k_*, Q4_K for q4_k_*, Q5_K for q5_k_*, IQ4_NL, IQ4_XS).
//   use_more_bits(i, n) = i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2.
//   A type whose blocks do not divide the rows falls back: Q2_K, Q3_K -> Q4_0 (older llama.cpp: IQ4_NL), IQ4_XS ->
//   IQ4_NL, Q4_K -> Q5_0, Q5_K -> Q5_1,
//   Q6_K -> Q8_0, then F16 when 32 does not divide them either (Qwen2.5-0.5B's 896-wide rows: every Linear but
//   ffn_down; Qwen2.5-72B's ffn_down, 29568 wide).
// 1-D tensors (norms, biases) are F32 in every file type.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/gguf.h"

namespace qwenq {

struct GgufFileType {
  const char* name;       // "q4_k_m"
  uint32_t ftype;         // general.file_type (llama_ftype: MOSTLY_Q4_K_M = 15, ...)
  GgmlType base;          // the type of the tensors no rule singles out
  bool llama_quantize;    // llama-quantize's rules (else convert_hf_to_gguf's)
};

// The file type named `name` ("q4_k_m", case-insensitive); throws listing the names.
const GgufFileType& gguf_file_type(const std::string& name);
// "f32, f16, bf16, q8_0, q4_0, ..." for help and errors, and the same names as a list (the flags' choices).
std::string gguf_file_type_names();
std::vector<std::string> gguf_file_type_list();

enum class GgufRole { TokenEmbd, Output, AttnV, AttnK, AttnOutput, FfnDown, OtherLinear };

// The ggml type of a 2-D tensor of role `role` in layer `layer` of `n_layers`, rows of `ne0` values. `tied`: the model
// has no output tensor (the embedding is the output). n_gqa: attention heads per kv head. imatrix: an importance
// matrix is given (llama-quantize's has_imatrix). n_expert: the model's routed experts (0: dense). *fell_back is set
// when the rows forced another type. A 3-D expert stack (ffn_*_exps) takes its 2-D name's rule.
GgmlType gguf_tensor_type(const GgufFileType& ft, GgufRole role, int64_t layer, int64_t n_layers, int64_t ne0,
                          bool tied, bool* fell_back, int64_t n_gqa = 1, bool imatrix = false, int64_t n_expert = 0);

}  // namespace qwenq
