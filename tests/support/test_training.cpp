#include "tests/support/test_training.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "trainer/lora_model.h"

namespace qwenq::test {

std::string make_text_data(const std::string& path, int n) {
  Rng rng(6);
  const char* words[] = {"the cat", "a dog", "the bird", "one fish"};
  const char* verbs[] = {"sat on the mat", "ran to the park", "sang a song", "ate the food"};
  std::string out;
  for (int i = 0; i < n; ++i) {
    out += nlohmann::json{{"text", std::string(words[rng.below(4)]) + " " + verbs[rng.below(4)] + "."}}.dump() + "\n";
  }
  write_file_atomic(path, out);
  return path;
}

TrainOptions small_lora_options(const std::string& model, const std::string& data, const std::string& out,
                                int64_t max_steps) {
  TrainOptions o;
  o.model_dir = model;
  o.data_path = data;
  o.out_dir = out;
  o.lora.r = 4;
  o.lora.alpha = 8;
  o.lora.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  o.seq_len = 128;
  o.batch_size = 2;
  o.max_steps = max_steps;
  o.lr = 3e-3;
  o.warmup_steps = 2;
  o.data.eval_count = 8;
  o.quiet = true;
  return o;
}

TrainOptions small_grpo_options(const std::string& model, const std::string& data, const std::string& out,
                                int64_t max_steps) {
  TrainOptions o = small_lora_options(model, data, out, max_steps);
  o.grpo = true;
  o.batch_mode = SftBatchMode::kPadding;
  o.batch_size = 2;
  o.seq_len = 64;
  o.grpo_options.num_generations = 4;
  o.grpo_options.max_completion_len = 24;
  o.grpo_options.rewards = {"contains=dog"};
  o.lr = 1e-3;
  o.data.eval_count = 0;
  return o;
}

std::vector<double> step_metric(const std::string& metrics, const std::string& field) {
  std::vector<double> out;
  std::istringstream in(read_file(metrics));
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) out.push_back(j[field].get<double>());
  }
  return out;
}

TrainReport train_interrupted(const TrainOptions& full, const std::string& part_dir, int64_t stop_after) {
  TrainOptions part = full;
  part.out_dir = part_dir;
  part.stop_after = stop_after;
  train_lora(part);
  EXPECT_FALSE(file_exists(part_dir + "/adapter_model.safetensors")) << "a stopped run wrote its final adapter";
  part.stop_after = 0;
  part.resume = true;
  return train_lora(part);
}

void expect_same_adapter_file(const std::string& run_a, const std::string& run_b) {
  SafetensorsFile a(run_a + "/adapter_model.safetensors"), b(run_b + "/adapter_model.safetensors");
  ASSERT_EQ(a.names(), b.names());
  for (const auto& n : a.names()) EXPECT_EQ(0, std::memcmp(a.get(n).data, b.get(n).data, a.get(n).nbytes())) << n;
}

void expect_same_resumed_run(const std::string& run_a, const std::string& run_b,
                             std::initializer_list<const char*> fields) {
  for (const char* field : fields) {
    EXPECT_EQ(step_metric(run_a + "/metrics.jsonl", field), step_metric(run_b + "/metrics.jsonl", field)) << field;
  }
  expect_same_adapter_file(run_a, run_b);
}

std::vector<double> losses_of(const std::string& metrics) { return step_metric(metrics, "loss"); }

LoraAdapter adapter_with_random_b(const QwenConfig& c, std::vector<std::string> targets, int64_t r, double alpha,
                                  bool rslora, uint64_t seed, float b_scale) {
  LoraConfig cfg;
  cfg.r = r;
  cfg.alpha = alpha;
  cfg.use_rslora = rslora;
  cfg.target_modules = std::move(targets);
  LoraAdapter a(lora_dims_of(c), cfg);
  a.init_peft(seed);
  Rng rng(seed + 1);
  for (size_t i = 0; i < a.slots().size(); ++i) {  // layer by layer, targets in table order (a MoE layer's experts)
    for (float& b : a.weights(i).B) b = b_scale * static_cast<float>(rng.normal());
  }
  return a;
}

LoraAdapter dora_with_random_b(const QwenModel& model, std::vector<std::string> targets, int64_t r, double alpha,
                               uint64_t seed, float b_scale) {
  const LoraAdapter plain = adapter_with_random_b(model.config(), targets, r, alpha, false, seed, b_scale);
  LoraConfig cfg = plain.config();
  cfg.use_dora = true;
  LoraAdapter a(lora_dims_of(model.config()), cfg);
  for (size_t i = 0; i < a.slots().size(); ++i) {
    a.weights(i).A = plain.weights(i).A;
    a.weights(i).B = plain.weights(i).B;
  }
  perturbed_dora_magnitudes(model, &a, seed + 2);
  return a;
}

void perturbed_dora_magnitudes(const QwenModel& model, LoraAdapter* a, uint64_t seed) {
  init_dora_magnitudes(model, a);
  Rng rng(seed);
  for (size_t i = 0; i < a->slots().size(); ++i) {
    for (float& m : a->weights(i).m) m *= rng.uniform(0.8f, 1.2f);
  }
}

LoraAdapter zeros_like(const LoraAdapter& a) {
  LoraAdapter z = a;
  for (size_t i = 0; i < z.slots().size(); ++i) {
    std::fill(z.weights(i).A.begin(), z.weights(i).A.end(), 0.f);
    std::fill(z.weights(i).B.begin(), z.weights(i).B.end(), 0.f);
    std::fill(z.weights(i).m.begin(), z.weights(i).m.end(), 0.f);  // DoRA's magnitudes (empty otherwise)
  }
  return z;
}

}  // namespace qwenq::test
