// The best model and early stopping of a training run (`qwen-qlora train --load-best-model-at-end
// --metric-for-best-model M --early-stopping-patience N`): transformers' Trainer (load_best_model_at_end,
// metric_for_best_model, greater_is_better) and its EarlyStoppingCallback (early_stopping_patience,
// early_stopping_threshold), as transformers 4.51.3 decides them.
//
// Each evaluation after the first optimizer step (not the one before it: the Trainer makes none there) gives a value v
// of the metric "eval_" + M ("loss" -> "eval_loss"; a name already starting "eval_" is kept). With b the best value
// before this evaluation (unset at first), better(x, y) = x > y when greater_is_better, else x < y:
//   early stopping (the callback's on_evaluate, which runs before the best is updated):
//     counter = 0 if b is unset or (better(v, b) and |v − b| > threshold), else counter + 1;
//     the run stops after this evaluation when patience > 0 and counter >= patience
//   the best (Trainer._determine_best_metric; no threshold): better(v, b), or b unset -> b = v, best step = this step
// greater_is_better defaults to "the metric's name does not end in 'loss'" (TrainingArguments' rule).
//
// Where this differs from the Trainer, and why: there the best checkpoint is the best evaluation's only when a
// checkpoint happened to be saved at its step (save_steps a multiple of eval_steps; an unsaved best leaves
// best_model_checkpoint at an older one). Here, with load_best, an evaluation that sets a new best is always
// checkpointed (as save_strategy="best" does), so the final adapter is exactly the best evaluation's; the end-of-run
// evaluation counts too, its adapter being the final one. The checkpoint rotation keeps the best one as the Trainer's
// does (trainer/train_checkpoint.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace qwenq {

struct BestModelOptions {
  bool load_best = false;  // the final adapter is the best evaluation's
  std::string metric;      // "" : "loss" ("reward" for GRPO, whose evaluation has no loss)
  int greater_is_better = -1;  // -1: the Trainer's default for the metric's name; 0, 1
  int64_t patience = 0;        // early stopping after this many evaluations without improvement; 0: off
  double threshold = 0.0;      // the improvement that resets the patience counter must exceed this
  bool tracking() const { return load_best || patience > 0; }
};

// "eval_" + name unless it already starts with "eval_".
std::string eval_metric_key(const std::string& name);
// TrainingArguments' default: the name does not end in "loss".
bool default_greater_is_better(const std::string& name);

// The decisions above over a run's evaluations; its state goes into every checkpoint so that a resumed run decides
// as an uninterrupted one.
class BestModelTracker {
 public:
  // `key`: eval_metric_key of the metric; `greater`: resolved greater_is_better.
  BestModelTracker(std::string key, bool greater, int64_t patience, double threshold);

  struct Decision {
    bool new_best = false;
    bool stop = false;
  };
  Decision observe(int64_t step, double value);

  const std::string& key() const { return key_; }
  bool greater() const { return greater_; }
  bool has_best() const { return best_step_ >= 0; }
  double best() const { return best_; }
  int64_t best_step() const { return best_step_; }  // -1: none yet
  int64_t counter() const { return counter_; }
  int64_t last_step() const { return last_step_; }  // the step of the latest evaluation observed (-1: none)
  bool stopped() const { return patience_ > 0 && counter_ >= patience_; }

  // {"metric", "greater_is_better", "best_metric", "best_step", "patience_counter", "last_step"} (trainer_state.json's
  // "best_model"); restore refuses (naming `where`) a state of another metric or direction.
  nlohmann::json state() const;
  void restore(const nlohmann::json& j, const std::string& where);

 private:
  bool better(double a, double b) const { return greater_ ? a > b : a < b; }
  std::string key_;
  bool greater_;
  int64_t patience_;
  double threshold_;
  double best_ = 0;
  int64_t best_step_ = -1;
  int64_t counter_ = 0;
  int64_t last_step_ = -1;
};

// The checkpoints a rotation keeps, as transformers' Trainer._rotate_checkpoints keeps them: the newest `keep` of
// `steps` (ascending), except that a best checkpoint (best_step in steps) outside them is kept in place of the oldest
// of them, and with keep == 1 the newest is kept beside it. keep <= 0: all.
std::vector<int64_t> checkpoints_to_keep(const std::vector<int64_t>& steps, int64_t keep, int64_t best_step);

}  // namespace qwenq
