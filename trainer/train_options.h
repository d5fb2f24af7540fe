// What train_lora derives from its options before it trains (trainer/train_loop.h declares the public ones:
// check_train_options, lr_at_step, run_interval, data_max_len): the run's learning-rate schedule, the best model's
// metric and direction, and the settings a resumed run must share with the checkpoint it continues.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "trainer/lr_schedule.h"
#include "trainer/train_loop.h"

namespace qwenq {

// The run's schedule over `total` steps (trainer/lr_schedule.h); warm-up steps as transformers' get_warmup_steps
// (warmup_steps, else ceil(warmup_ratio · total)). Throws on a bad name or kwargs.
LrSchedule run_schedule(const TrainOptions& o, int64_t total);

// --scheduler reduce_lr_on_plateau: the rate follows the evaluations (trainer/lr_plateau.h).
bool plateau_schedule(const TrainOptions& o);
// The run judges its evaluations by a metric: the best model, early stopping or reduce_lr_on_plateau.
bool watches_metric(const TrainOptions& o);

// The best model's (and reduce_lr_on_plateau's) metric as its evaluation key (--metric-for-best-model, else "loss"; GRPO "reward") and whether
// greater is better (--greater-is-better, else the Trainer's rule by name).
std::string best_metric_key(const TrainOptions& o);
bool best_greater_is_better(const TrainOptions& o);

// What a resumed run must share with the run it continues, as trainer_state.json's "options" holds it.
nlohmann::json resume_key(const TrainOptions& o);
// The keys of two resume keys that differ, each with its flag, on one line ("(none that can be named)" if none).
std::string settings_difference(const nlohmann::json& saved, const nlohmann::json& now);
// Adds to a checkpoint's saved resume key the keys that older checkpoints lack, at the values those runs had.
void add_legacy_resume_keys(nlohmann::json* saved);

}  // namespace qwenq
