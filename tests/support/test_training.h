// Training fixtures shared by the CPU training tests (tests/test_train_loop.cpp) and the GPU ones
// (tests/gpu/test_lora_model_cuda.cpp, test_gptq_model_cuda.cpp): a learnable text dataset, the small LoRA run
// they all train, and the per-step losses a run logged.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "trainer/train_loop.h"

namespace qwenq::test {

// n JSONL lines {"text": "<subject> <verb phrase>."} of 4 subjects x 4 verb phrases drawn by Rng(6): repetitive
// sentences a tiny model learns in a few steps. Written to path; returns path.
std::string make_text_data(const std::string& path, int n);

// A small LoRA run: r = 4, alpha = 8 (dropout left at the default 0) on all seven projections, sequences of 128,
// batch 2, `max_steps` steps at lr 3e-3 with 2 warmup steps, 8 held-out evaluation examples, quiet.
TrainOptions small_lora_options(const std::string& model, const std::string& data, const std::string& out,
                                int64_t max_steps);

// The "loss" of every line of a run's metrics.jsonl that has one, in order.
std::vector<double> losses_of(const std::string& metrics);

}  // namespace qwenq::test
