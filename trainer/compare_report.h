// The accuracy-loss comparison table of `qwen-quant compare`: one row per method (the unquantized model
// first), rendered as Markdown, CSV, JSON and an SVG bar chart of the perplexity increase per method; with --kld
// also each method's mean KL divergence from the original and its top-1 agreement (trainer/kl_divergence.h); with
// --choices each model's multiple-choice accuracy (trainer/multiple_choice.h); with --gsm8k each model's GSM8K exact
// match, both of lm-eval's filters (trainer/gsm8k.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qwenq {

struct CompareRow {
  std::string method;       // "bf16 (original)", "rtn", "nf4", ...
  std::string format;       // file layout: "safetensors bf16", "gptq", "awq-gemm", "bnb-nf4", ...
  int bits = 16;
  int64_t group_size = 0;   // 0: not applicable, -1: per channel, else G (NF4: block size)
  uint64_t size_bytes = 0;  // on disk, all files of the directory
  std::vector<double> perplexity;  // one per evaluation text
  std::vector<double> kld;         // compare --kld: mean KL divergence from the original per text (empty: none)
  std::vector<double> same_top1;   //   and the fraction of positions with the original's top-1 token
  std::vector<double> acc, acc_norm;  // compare --choices: accuracy per multiple-choice set (empty: none)
  double gsm8k_strict = -1, gsm8k_flexible = -1;  // compare --gsm8k: exact match (-1: none)
  double quant_seconds = 0;
  uint64_t quant_peak_rss = 0;  // bytes, 0 for the original
  std::string adapter;          // "" or the adapter folder written in the base (loftq_init, pissa_init) it is
                                // evaluated with (size includes it)
  bool given = false;           // quantized elsewhere (compare --quantized): no quantization time or memory
};

struct CompareTable {
  std::string model;
  std::vector<std::string> datasets;  // names of the evaluation texts
  int64_t seq_len = 0;
  int64_t max_windows = 0;
  bool kld = false;              // KLD and top-1 columns (rows without them, the original's, show "-")
  std::string kld_scoring = "windows: the original beside each model";  // which positions the KLD columns score
  std::vector<std::string> choice_sets;  // names of the multiple-choice sets: acc and acc_norm columns each
  std::string gsm8k_set;                 // the GSM8K file's name: strict and flexible columns ("": none)
  int64_t gsm8k_fewshot = 0;
  std::vector<CompareRow> rows;  // rows[0] is the unquantized reference
};

std::string compare_markdown(const CompareTable& t);
std::string compare_csv(const CompareTable& t);
std::string compare_json(const CompareTable& t);
// Horizontal bars: perplexity increase (%) over the original for each method and dataset.
std::string compare_svg(const CompareTable& t);

}  // namespace qwenq
