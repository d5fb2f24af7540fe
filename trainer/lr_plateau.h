// `qwen-qlora train --scheduler reduce_lr_on_plateau`: torch 2.5's ReduceLROnPlateau as transformers 4.51.3's Trainer
// drives it. The rate starts at --lr (no warm-up: the Trainer passes none to it) and changes only at an evaluation:
// after each one during the run (not step 0's, which the Trainer makes only with eval_on_start, skipping the
// scheduler), the metric m (--metric-for-best-model, default eval_loss; the Trainer's metric_for_best_model) is
// compared with the best so far:
//   better(m, best) = m < best·(1 − t)   (mode min, threshold_mode rel)      m < best − t   (min, abs)
//                     m > best·(1 + t)   (mode max, rel)                     m > best + t   (max, abs)
//   better: best = m, bad = 0; else bad += 1
//   in cooldown (cooldown_left > 0): cooldown_left −= 1, bad = 0
//   bad > patience: each group's rate r = max(r·factor, min_lr) where r − that > eps; cooldown_left = cooldown; bad = 0
// best starts at +inf (min) or −inf (max). Defaults: mode min, factor 0.1, patience 10, threshold 1e-4, rel,
// cooldown 0, min_lr 0, eps 1e-8 (--scheduler-kwargs sets them, as lr_scheduler_kwargs). The mode is torch's own
// (min unless given), whatever the metric's direction: transformers does not derive it from greater_is_better.
// Rate groups as PEFT's optimizers have them: one (every tensor at --lr), or with LoRA+ (--loraplus-lr-ratio) two,
// A (and the score head) at --lr and B (and DoRA's m) at ratio·--lr, each reduced on its own (min_lr can bind one
// first).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace qwenq {

struct PlateauOptions {
  bool max_mode = false;      // mode "max"
  double factor = 0.1;
  int64_t patience = 10;
  double threshold = 1e-4;
  bool abs_threshold = false;  // threshold_mode "abs"
  int64_t cooldown = 0;
  double min_lr = 0.0;
  double eps = 1e-8;
};

// The options from --scheduler-kwargs (null or an object; ReduceLROnPlateau's keywords, checked: an unknown key, a
// value of the wrong type, mode / threshold_mode other than torch's, factor outside (0, 1), negative patience,
// cooldown, threshold, min_lr or eps; a min_lr list is refused: one value for every group).
PlateauOptions plateau_options(const nlohmann::json& kwargs);

class LrPlateau {
 public:
  // group_lrs: each rate group's starting rate.
  LrPlateau(const PlateauOptions& o, std::vector<double> group_lrs);
  // One evaluation's metric; returns true when the rates were reduced.
  bool observe(double metric);
  const PlateauOptions& options() const { return o_; }
  const std::vector<double>& lrs() const { return lrs_; }
  double best() const { return best_; }
  int64_t bad_evaluations() const { return bad_; }
  int64_t evaluations() const { return evaluations_; }
  // The state a checkpoint keeps (trainer_state.json "lr_plateau") and its restore (`where` names the file).
  nlohmann::json state() const;
  void restore(const nlohmann::json& state, const std::string& where);

 private:
  bool better(double a) const;
  PlateauOptions o_;
  std::vector<double> lrs_;
  double best_;
  int64_t bad_ = 0, cooldown_left_ = 0, evaluations_ = 0;
};

}  // namespace qwenq
