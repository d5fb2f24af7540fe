#include "trainer/best_model.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "core/error.h"
#include "core/strings.h"

namespace qwenq {

std::string eval_metric_key(const std::string& name) {
  return name.rfind("eval_", 0) == 0 ? name : "eval_" + name;
}

bool default_greater_is_better(const std::string& name) {
  return !ends_with(name, "loss");
}

BestModelTracker::BestModelTracker(std::string key, bool greater, int64_t patience, double threshold)
    : key_(std::move(key)), greater_(greater), patience_(patience), threshold_(threshold) {}

BestModelTracker::Decision BestModelTracker::observe(int64_t step, double value) {
  QWENQ_CHECK(std::isfinite(value), "the metric for the best model, " << key_ << ", is " << value << " at step " << step);
  Decision d;
  last_step_ = step;
  // The callback first, against the best before this evaluation.
  if (!has_best() || (better(value, best_) && std::fabs(value - best_) > threshold_)) counter_ = 0;
  else ++counter_;
  d.stop = stopped();
  if (!has_best() || better(value, best_)) {
    best_ = value;
    best_step_ = step;
    d.new_best = true;
  }
  return d;
}

nlohmann::json BestModelTracker::state() const {
  nlohmann::json j = {{"metric", key_}, {"greater_is_better", greater_}, {"patience_counter", counter_},
                      {"best_step", best_step_}, {"last_step", last_step_}};
  j["best_metric"] = has_best() ? nlohmann::json(best_) : nlohmann::json(nullptr);
  return j;
}

void BestModelTracker::restore(const nlohmann::json& j, const std::string& where) {
  try {
    const std::string key = j.at("metric").get<std::string>();
    const bool greater = j.at("greater_is_better").get<bool>();
    QWENQ_CHECK(key == key_ && greater == greater_,
                where << " tracked " << key << (greater ? " (greater is better)" : " (less is better)")
                      << ", this run " << key_ << (greater_ ? " (greater is better)" : " (less is better)")
                      << ": resume with the same --metric-for-best-model and --greater-is-better");
    best_step_ = j.at("best_step").get<int64_t>();
    best_ = best_step_ >= 0 ? j.at("best_metric").get<double>() : 0.0;
    counter_ = j.at("patience_counter").get<int64_t>();
    last_step_ = j.at("last_step").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    QWENQ_FAIL(where << ": malformed \"best_model\" state (" << e.what() << ")");
  }
}

std::vector<int64_t> checkpoints_to_keep(const std::vector<int64_t>& steps, int64_t keep, int64_t best_step) {
  const int64_t n = static_cast<int64_t>(steps.size());
  if (keep <= 0 || n <= keep) return steps;
  std::vector<int64_t> kept(steps.end() - keep, steps.end());
  const bool best_saved = std::find(steps.begin(), steps.end(), best_step) != steps.end();
  if (best_saved && std::find(kept.begin(), kept.end(), best_step) == kept.end()) {
    // The best in place of the oldest kept; with keep == 1 beside the newest.
    kept.assign(steps.end() - std::max<int64_t>(keep - 1, 1), steps.end());
    kept.insert(kept.begin(), best_step);
  }
  return kept;
}

}  // namespace qwenq
