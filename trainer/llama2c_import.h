// Converts a llama2.c checkpoint (legacy .bin, as stories260K ships) into a Hugging Face Qwen2 directory
// that transformers loads with Qwen2ForCausalLM and qwenq loads as any other Qwen model.
//
// llama2.c file: 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
// seq_len; a negative vocab_size means an untied classifier follows), then fp32 tensors: tok_emb[V,C],
// rms_att[L,C], wq[L,C,C], wk[L,Hkv·D,C], wv[L,Hkv·D,C], wo[L,C,C], rms_ffn[L,C], w1[L,I,C] (gate),
// w2[L,C,I] (down), w3[L,I,C] (up), rms_final[C], two unused RoPE tables [seq_len, D/2] each, and the
// classifier [V,C] when untied.
//
// RoPE: llama2.c rotates interleaved pairs (2i, 2i+1) by angle pos·θ^(-2i/D); Hugging Face rotates
// (i, i+D/2) by the same angle. Reordering each head's rows of wq and wk as (0, 2, 4, ..., 1, 3, 5, ...)
// makes the rotate-half model compute exactly what the interleaved one did (q·k is invariant under the
// same permutation of q and k). Qwen2 has q/k/v biases: they are written as zeros.
#pragma once

#include <string>

#include "core/dtype.h"

namespace qwenq {

struct Llama2cImportOptions {
  std::string checkpoint;  // stories260K.bin
  std::string tokenizer;   // tok512.bin
  std::string out_dir;
  DType dtype = DType::F32;  // F32 or BF16
  bool overwrite = false;
  float rope_theta = 10000.0f;  // llama2.c's constant
  float rms_norm_eps = 1e-5f;   // llama2.c's constant
};

void import_llama2c(const Llama2cImportOptions& opt);

}  // namespace qwenq
