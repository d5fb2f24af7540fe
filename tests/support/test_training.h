// Training fixtures shared by the CPU training tests (tests/test_train_loop.cpp) and the GPU ones
// (tests/gpu/test_lora_model_cuda.cpp, test_gptq_model_cuda.cpp): a learnable text dataset, the small LoRA run
// they all train, the per-step losses a run logged, and an adapter whose B is not zero (the merge and unmerged-branch
// tests, CPU and GPU).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "lora/lora_adapter.h"
#include "trainer/qwen_config.h"
#include "trainer/qwen_model.h"
#include "trainer/train_loop.h"

namespace qwenq::test {

// n JSONL lines {"text": "<subject> <verb phrase>."} of 4 subjects x 4 verb phrases drawn by Rng(6): repetitive
// sentences a tiny model learns in a few steps. Written to path; returns path.
std::string make_text_data(const std::string& path, int n);

// A small LoRA run: r = 4, alpha = 8 (dropout left at the default 0) on all seven projections, sequences of 128,
// batch 2, `max_steps` steps at lr 3e-3 with 2 warmup steps, 8 held-out evaluation examples, quiet.
TrainOptions small_lora_options(const std::string& model, const std::string& data, const std::string& out,
                                int64_t max_steps);

// small_lora_options as a GRPO run: padded micro-batches of 2 prompts, sequences of 64, 4 completions of up to 24
// tokens each, rewarded by contains=dog, lr 1e-3, no held-out prompts (tests set eval_data_path where they evaluate).
TrainOptions small_grpo_options(const std::string& model, const std::string& data, const std::string& out,
                                int64_t max_steps);

// `full` trained again into part_dir: stopped after stop_after steps (as if killed), then resumed from its newest
// checkpoint. Returns the resumed invocation's report (start_step: that checkpoint's step).
TrainReport train_interrupted(const TrainOptions& full, const std::string& part_dir, int64_t stop_after);
// Expects two run directories' final adapters (adapter_model.safetensors) to hold the same tensors, byte for byte.
void expect_same_adapter_file(const std::string& run_a, const std::string& run_b);
// A resumed run against the uninterrupted one: the step records' `fields` equal (every step, to the bit), then the
// final adapters (expect_same_adapter_file).
void expect_same_resumed_run(const std::string& run_a, const std::string& run_b,
                             std::initializer_list<const char*> fields);

// `field` ("targets", "grad_norm", ...) of every step record of a run's metrics.jsonl (the lines with a "loss"), in
// order.
std::vector<double> step_metric(const std::string& metrics, const std::string& field);
// The "loss" of every step record, in order.
std::vector<double> losses_of(const std::string& metrics);

// An adapter for `c` on `targets` (rank r, lora_alpha alpha, rsLoRA or not): PEFT's initialisation from `seed`
// (A random, B zero), then every B replaced by b_scale·N(0, 1) drawn from Rng(seed + 1), layer by layer, targets in
// table order (a MoE layer's MLP targets expert by expert: the adapter's slots), so that the adapter changes the model.
LoraAdapter adapter_with_random_b(const QwenConfig& c, std::vector<std::string> targets, int64_t r, double alpha,
                                  bool rslora, uint64_t seed, float b_scale);

// The magnitudes of a DoRA adapter `a` on `model` as PEFT starts them (the row norms of W + s·B A:
// init_dora_magnitudes), each then multiplied by a factor uniform in [0.8, 1.2] from Rng(seed), so that the gains
// g = m / ‖W + s·B A‖ are not all 1.
void perturbed_dora_magnitudes(const QwenModel& model, LoraAdapter* a, uint64_t seed);

// adapter_with_random_b's adapter made a DoRA adapter (use_dora) on `model`, its magnitudes
// perturbed_dora_magnitudes(seed + 2).
LoraAdapter dora_with_random_b(const QwenModel& model, std::vector<std::string> targets, int64_t r, double alpha,
                               uint64_t seed, float b_scale);

// `a` with every A and B (and a DoRA adapter's m) zero (every slot, a MoE layer's experts too): where gradients
// accumulate.
LoraAdapter zeros_like(const LoraAdapter& a);

// Every trainable value of `a` but a score head's, through f(float&) in one fixed order: slot by slot, its A, B and (DoRA)
// m. The finite-difference tests flatten an adapter and its gradient with it.
template <typename F>
void for_each_adapter_value(LoraAdapter& a, F&& f) {
  for (size_t i = 0; i < a.slots().size(); ++i) {  // every adapted Linear, a MoE expert's too
    for (float& v : a.weights(i).A) f(v);
    for (float& v : a.weights(i).B) f(v);
    for (float& v : a.weights(i).m) f(v);  // empty without DoRA
  }
}

}  // namespace qwenq::test
