// What the tests of adapters that start off B = 0 share (LoftQ: tests/test_loftq_model.cpp; PiSSA:
// tests/test_pissa_model.cpp): their LoRA config, how far a base + adapter's logits are from the original's, and that a
// padded MLP's extra channels stay out of the adapter.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lora/lora_adapter.h"
#include "lora/lora_config.h"
#include "trainer/perplexity.h"
#include "trainer/quantize_model.h"
#include "trainer/qwen_model.h"

namespace qwenq::test {

// Rank r, lora_alpha alpha, on all seven Linears.
LoraConfig all_linear_lora(int64_t r, double alpha);

// `method` from `model` into `out`, quiet, RTN groups of 32 (the tiny models' widths), the rest the defaults.
QuantizeOptions small_quantize_options(const std::string& model, const std::string& out, QuantizeOptions::Method method);

// Mean |logit − ref| of `m` with `adapter` over `batch` (ref: the original model's logits of the same batch).
double mean_logit_error(const QwenModel& m, const LoraAdapter& adapter, const std::vector<float>& ref,
                        const PackedBatch& batch);

// Every layer's up_proj B rows and down_proj A columns from `intermediate` to `padded` are zero (gtest failures).
void expect_padding_untouched(const LoraAdapter& a, int64_t layers, int64_t intermediate, int64_t padded);

}  // namespace qwenq::test
