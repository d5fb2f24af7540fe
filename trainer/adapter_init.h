// Where a training run's adapter starts, when not at PEFT's default (A random, B = 0; lora/lora_adapter.h):
//   --init-adapter DIR  the weights of a PEFT adapter directory (ours or PEFT's), e.g. the loftq_init/ that
//                       `qwen-quant nf4|fp4|rtn --loftq-rank R` writes next to the base it quantized;
//   --loftq-model DIR   LoftQ's one-shot form (PEFT's replace_lora_weights_loftq) on the base as stored: for each
//                       adapted Linear, A and B from the rank-r part of W − Q, W the original weights in DIR and Q
//                       the stored base's dequantized values (lora/loftq.h: s·B A = rank-r(W − Q)).
// The original model must be the unquantized model the base was made from: the same architecture (the base's MLP
// may be zero-padded, `--pad-intermediate`; W is padded with zeros to match) and the same norm weights. An AWQ base
// folds its search's scales into the norms and the Linears, so its Linears no longer approximate the original ones;
// it is refused by that check (the norms differ), as is a wrong model.
#pragma once

#include <string>

#include "lora/lora_adapter.h"
#include "trainer/qwen_model.h"

namespace qwenq {

// Copies the A, B (and DoRA m) of the adapter in `dir` into `adapter`, whose rank, alpha, rsLoRA, DoRA and targets
// must be the file's (each difference named). Shapes are checked against adapter->dims() by load_peft_adapter.
void init_adapter_from_dir(const std::string& dir, LoraAdapter* adapter);

struct LoftqInitReport {
  int64_t linears = 0;
  double quant_error = 0;      // ‖W − Q‖_F over every adapted Linear
  double corrected_error = 0;  // ‖W − Q − s·B A‖_F
};

// LoftQ's one-shot initialisation of every adapted Linear of `adapter` (progress on stderr unless quiet).
LoftqInitReport loftq_init_adapter(const QwenModel& base, const std::string& original_dir, LoraAdapter* adapter,
                                   bool quiet = false);

// LoftQ's one-shot step after a quantization that cannot iterate (GPTQ: its error feedback quantizes whole rows
// against the calibration Hessian, not W − L R): `adapter` (made for the quantized model's dims before the long work,
// so a bad rank is refused at once) is filled from the model in `quantized_dir` and `original_dir`, and written to
// `quantized_dir`/loftq_init.
LoftqInitReport write_loftq_adapter(const std::string& quantized_dir, const std::string& original_dir,
                                    LoraAdapter* adapter, bool quiet);

}  // namespace qwenq
