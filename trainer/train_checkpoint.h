// Training checkpoints: `<out>/checkpoint-<step>/` holding
//   adapter/                  the adapter in fp32, PEFT layout (lora/peft_io.h), so any checkpoint is also usable
//   optimizer.safetensors     AdamW's m and v for every adapter tensor ("m.<peft name>", "v.<peft name>"), F32
//   trainer_state.json        {"step", "cursor": {"epoch","index","num_examples"}, "tokens_seen", "elapsed_s",
//                              "options": {...the settings a resumed run must share...},
//                              "best_model": {...} with --load-best-model-at-end / --early-stopping-patience
//                              (trainer/best_model.h's BestModelTracker::state), "lr_plateau": {...} with
//                              --scheduler reduce_lr_on_plateau (trainer/lr_plateau.h's LrPlateau::state)}
// built under a staging name and renamed when complete, so a kill at any moment leaves either the previous
// checkpoints or the new one whole. Older checkpoints beyond `keep` are removed after the new one is in place, the
// best one excepted (checkpoints_to_keep, trainer/best_model.h: transformers' rotation).
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "lora/lora_adapter.h"
#include "trainer/sft_data.h"

namespace qwenq {

struct TrainState {
  int64_t step = 0;  // optimizer steps done
  SftBatchIterator::State cursor;
  int64_t tokens_seen = 0;
  double elapsed_s = 0;
  nlohmann::json options;
  nlohmann::json best_model;  // null: no best model tracked
  nlohmann::json lr_plateau;  // null: no reduce_lr_on_plateau (trainer/lr_plateau.h's LrPlateau::state)
};

void save_train_checkpoint(const std::string& out_dir, const LoraAdapter& adapter, const LoraAdapter& m,
                           const LoraAdapter& v, const TrainState& state, int64_t keep, int64_t best_step = -1);

// The directory of step `step`'s checkpoint in out_dir (whether or not it exists).
std::string checkpoint_dir(const std::string& out_dir, int64_t step);

// The newest complete checkpoint directory in out_dir ("" when there is none).
std::string latest_checkpoint(const std::string& out_dir);

// Reads a checkpoint for a base of dimensions `dims`: the adapter (config included), m, v and the state.
void load_train_checkpoint(const std::string& dir, const LoraDims& dims, LoraAdapter* adapter, LoraAdapter* m,
                           LoraAdapter* v, TrainState* state);

}  // namespace qwenq
