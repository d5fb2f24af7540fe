// An oracle's file of sequences and PEFT-named adapter gradients read back and compared (the oracle tests that backpropagate through
// transformers + PEFT: tests/test_lora_grad_oracle.cpp, test_dpo_oracle.cpp, test_kto_oracle.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "lora/lora_adapter.h"

namespace qwenq::test {

// The sequences of an oracle's file: "input_ids" (concatenated), "lengths" and "masks" (1 where a token is scored,
// int32 each) -> the sequences and their next-token targets (kIgnoreIndex where the next token is not scored).
void oracle_sequences(const SafetensorsFile& f, std::vector<std::vector<int32_t>>* seqs, std::vector<int32_t>* targets);

struct GradComparison {
  int compared = 0, nonzero = 0;  // tensors compared, those whose oracle gradient is not all zero
  double worst_rel = 0;           // the largest max|ours − oracle| / max|oracle| over the nonzero ones
};
// Every slot's A and B (and a DoRA adapter's m) of `grads` against expected.get(prefix + PEFT name + ".grad"):
// expects max|ours − oracle| <= tol · max|oracle| per tensor (an all-zero oracle tensor: ours exactly zero).
GradComparison expect_peft_grads_close(const LoraAdapter& grads, const SafetensorsFile& expected,
                                       const std::string& prefix, double tol);

}  // namespace qwenq::test
