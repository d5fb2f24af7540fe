// `qwen-quant imatrix`: llama-imatrix's importance matrix of a model over calibration text, computed by our CPU
// forward (a model directory in any format we read, or a GGUF file).
//
// As llama-imatrix: the text is tokenized whole (BOS first when the tokenizer adds one, special tokens parsed only
// with parse_special, llama-imatrix's --parse-special, or when chat records were rendered with the chat template:
// their <|im_start|> ... are the template's special tokens),
// cut into n = ⌊tokens / ctx⌋ chunks of ctx tokens (at most `chunks`), the first token of each chunk replaced by BOS
// when the tokenizer adds one; every chunk runs through the model as its own sequence, and for every matrix
// multiplication of a decoder block by a weight W [N, K] each of the ctx tokens' inputs x [K] is counted:
//   in_sum2[j] += x_j²,  in_sum[j] += x_j,  counts += 1
// for the weights blk.<l>.{attn_q, attn_k, attn_v} (input: the normalized hidden state), attn_output (the attention
// output), ffn_gate, ffn_up (the normalized hidden state after attention) and ffn_down (silu(gate) ⊙ up); with
// process_output also output.weight (the final normalized hidden state; an untied model only: a tied output is the
// embedding, which llama-imatrix does not collect either). Sums run in double and are stored as fp32.
// A mixture of experts (the configs GGUF takes: check_gguf_moe) as llama-imatrix sees llama.cpp's qwen3moe / qwen2moe
// graphs: ffn_gate_inp (the router; and ffn_gate_inp_shexp) reads the MoE block's input; ffn_gate_exps / ffn_up_exps
// and ffn_down_exps hold one matrix per expert (n_mat = E), each over the rows of the tokens routed to it, with its
// own count (0 for an expert no token reached: llama-quantize then weighs it 1.0); ffn_*_shexp as dense Linears.
// Unless no_ppl, it also reports llama-imatrix's perplexity estimate of the pass: exp of the mean next-token NLL over
// the second half of every chunk (positions ctx/2 .. ctx-2 predicting the next token), ± ppl·sqrt(var(NLL)/(n−1)).
// The result is written with quant/ggml_imatrix.h and read by `qwen-quant gguf --imatrix` and llama-quantize.
#pragma once

#include <cstdint>
#include <string>

#include "quant/ggml_imatrix.h"

namespace qwenq {

struct ImatrixOptions {
  std::string model;       // a resolved model directory or GGUF file
  std::string calib_path;  // text or JSONL (trainer/text_data.h), chat records rendered with the chat template
  std::string text_field = "text";
  int64_t ctx = 512;        // tokens per chunk (llama-imatrix -c)
  int64_t chunks = -1;      // at most this many chunks (-1: all the text gives)
  bool process_output = false;
  bool parse_special = false;  // llama-imatrix --parse-special (on by itself for rendered chat records)
  bool no_ppl = false;  // skip the perplexity estimate (its lm_head over half the tokens)
  int64_t batch_tokens = 4096;  // whole chunks forwarded together (memory ~ batch_tokens · (4C + 2I) floats)
  bool quiet = false;
};

struct ImatrixReport {
  int64_t text_tokens = 0;  // the tokenized text
  bool chat_records = false;  // chat records were rendered (and special tokens parsed)
  int64_t chunks = 0, tokens = 0;  // evaluated
  int64_t entries = 0;
  double ppl = 0, ppl_err = 0;  // the estimate and its standard error (0 with no_ppl)
  int64_t ppl_tokens = 0;
  bool tied_output = false;  // process_output asked on a model whose output is the embedding: nothing collected
  double seconds = 0;
};

Imatrix compute_imatrix(const ImatrixOptions& o, ImatrixReport* report = nullptr);

}  // namespace qwenq
