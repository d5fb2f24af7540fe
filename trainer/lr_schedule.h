// The learning-rate schedules of `qwen-qlora train --scheduler NAME --scheduler-kwargs JSON`: transformers 4.51.3's
// get_scheduler(NAME, num_warmup_steps, num_training_steps, scheduler_specific_kwargs=JSON) as its Trainer steps them
// (step s = 0, 1, ... of T steps, w warm-up steps, lr(s) = --lr · f(s); p = (s − w) / max(1, T − w)):
//   warm-up (all but warmup_stable_decay)   f = s / max(1, w)                           for s < w
//   linear                f = max(0, 1 − (1 − m)·p)     (m: --min-lr-ratio, 0 in transformers' own)
//   cosine                f = m + (1 − m)·max(0, ½(1 + cos(2π·c·p)))          c = num_cycles, 0.5
//   cosine_with_min_lr    the same with m = min_lr_rate, or min_lr / --lr (one of them, or --min-lr-ratio)
//   cosine_with_restarts  f = 0 for p >= 1, else max(0, ½(1 + cos(π·((c·p) mod 1))))      c = num_cycles, 1
//   polynomial            f = ((lr − e)·(1 − p)^k + e) / lr for s <= T, else e / lr       e = lr_end 1e-7, k = power 1
//   constant              f = 1 (after the warm-up: transformers' constant_with_warmup; its plain "constant"
//                         has no warm-up, which --warmup-steps 0 gives); constant_with_warmup the same
//   inverse_sqrt          f = 1 / √((s + τ − w) / τ), τ = w or 10000 (transformers passes no timescale)
//   warmup_stable_decay   (num_decay_steps d required; num_stable_steps n, else T − w − d; warmup_type,
//                         decay_type linear | cosine | 1-sqrt; min_lr_ratio m; num_cycles c 0.5)
//                         s < w: q = s / max(1, w), f = max(0, m + (1 − m)·g(q)), g = q, ½(1 − cos(π·q)) or
//                         1 − √(1 − q); w <= s < w + n: 1; s < w + n + d: q = (s − w − n) / max(1, d),
//                         f = max(0, m + (1 − m)·h(q)), h = 1 − q, ½(1 + cos(2π·c·q)) or 1 − √q; after: m
//   reduce_lr_on_plateau  f = 1 until an evaluation reduces it: torch's ReduceLROnPlateau, trainer/lr_plateau.h
//                         (lr_at gives the starting rate; the loop asks its LrPlateau)
// The kwargs each schedule takes are its transformers function's; any other key is refused (transformers raises a
// TypeError), as are kwargs for a schedule whose Trainer path passes none (linear, constant, constant_with_warmup,
// inverse_sqrt: transformers would drop them).
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace qwenq {

struct LrSchedule {
  std::string name = "cosine";
  double lr = 2e-4, min_lr_ratio = 0.0;
  int64_t warmup = 0, total = 1;
  double num_cycles = 0.5, lr_end = 1e-7, power = 1.0;
  int64_t num_decay_steps = 0, num_stable_steps = 0;
  std::string warmup_type = "linear", decay_type = "cosine";
};

// The schedule of a run of `total` steps with `warmup` warm-up steps at peak `lr`; `min_lr_ratio` is --min-lr-ratio
// (0: none given). Refuses, naming --scheduler / --scheduler-kwargs, an unknown name, a key the schedule does not
// take, a value of the wrong type or range. total may be 0 (the flags' check before the data is read: the checks
// that need T are made again when it is known).
LrSchedule make_lr_schedule(const std::string& name, const nlohmann::json& kwargs, double lr, double min_lr_ratio,
                            int64_t warmup, int64_t total);

// lr(s) for step s (0-based).
double lr_at(const LrSchedule& s, int64_t step);

}  // namespace qwenq
