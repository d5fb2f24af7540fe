// The run directory's logs: metrics.jsonl (one JSON line per step, per evaluation, and a summary at the end) and
// loss_curve.svg (the train loss, its moving average and the eval loss against steps).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/classify.h"
#include "trainer/dpo.h"
#include "trainer/kto.h"
#include "trainer/reward.h"

namespace qwenq {

// One optimizer step as metrics.jsonl and the progress line report it. At most one of the objective's statistics is
// set (the step's pairs or examples, summed over the data-parallel ranks; GRPO's logged statistics).
struct StepLog {
  int64_t step = 0, epoch = 0;  // step: 1-based, the steps done
  double loss = 0, lr = 0, grad_norm = 0;
  int64_t tokens = 0, targets = 0;
  double seconds = 0, elapsed_s = 0;  // this step's wall time; the run's so far (resumed runs included)
  const DpoStats* dpo = nullptr;
  const RewardStats* reward = nullptr;
  const KtoStats* kto = nullptr;
  const ClassifyStats* classify = nullptr;
  const ClassifyTask* classify_task = nullptr;  // with classify
  const nlohmann::json* grpo = nullptr;
};

// The step's metrics.jsonl record: {"step","epoch","loss","lr","grad_norm","tokens","targets","tokens_per_s",
// "elapsed_s"} and the objective's statistics (TRL's names: rewards_chosen/rejected/margin/accuracy, logps_*, kl, ...;
// a classifier's examples and its problem type's metrics: accuracy, f1, pearson).
nlohmann::json step_record(const StepLog& s);
// The progress line's text for the step ("loss 2.3456 lr 1.00e-04 1234 tok/s", with accuracy, KL or reward).
std::string step_progress_text(const StepLog& s);

// Writes an SVG of the train values (faint), their exponential moving average (0.9, solid) and the eval values
// (dashed) against steps; `what` names the quantity in the title ("loss", GRPO's "reward"). Nothing without train
// points.
void write_loss_curve(const std::string& path, const std::vector<std::pair<int64_t, double>>& train,
                      const std::vector<std::pair<int64_t, double>>& eval, const std::string& what = "loss");

// Keeps the lines of a JSON-lines log (metrics.jsonl, completions.jsonl) whose "step" is at most `step`, dropping a
// line cut by a kill mid-write (a resumed run rewrites what came after its checkpoint).
void truncate_metrics(const std::string& path, int64_t step);

// loss_curve.svg from a run's metrics.jsonl: the records' `key` values (loss, GRPO's reward) and "eval_" + key.
void write_run_curve(const std::string& metrics_path, const std::string& svg_path, const std::string& key);

}  // namespace qwenq
