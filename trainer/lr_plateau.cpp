// torch's ReduceLROnPlateau (trainer/lr_plateau.h).
#include "trainer/lr_plateau.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <utility>

#include "core/error.h"

namespace qwenq {

namespace {

double number_of(const nlohmann::json& kw, const char* key, bool integer) {
  const nlohmann::json& v = kw.at(key);
  const bool ok = integer ? v.is_number_integer() : v.is_number();
  QWENQ_CHECK(ok && std::isfinite(v.get<double>()), "--scheduler-kwargs: reduce_lr_on_plateau's \""
                                                        << key << "\" must be " << (integer ? "an integer" : "a number")
                                                        << ", got " << v.dump());
  return v.get<double>();
}

std::string choice_of(const nlohmann::json& kw, const char* key, const char* a, const char* b) {
  const nlohmann::json& v = kw.at(key);
  QWENQ_CHECK(v.is_string() && (v.get<std::string>() == a || v.get<std::string>() == b),
              "--scheduler-kwargs: reduce_lr_on_plateau's \"" << key << "\" must be \"" << a << "\" or \"" << b
                                                               << "\", got " << v.dump());
  return v.get<std::string>();
}

}  // namespace

PlateauOptions plateau_options(const nlohmann::json& kwargs) {
  static const std::set<std::string> kKeys = {"mode",     "factor", "patience", "threshold",
                                              "threshold_mode", "cooldown", "min_lr", "eps"};
  PlateauOptions p;
  if (kwargs.is_null()) return p;
  QWENQ_CHECK(kwargs.is_object(), "--scheduler-kwargs must be a JSON object, got " << kwargs.dump());
  for (auto it = kwargs.begin(); it != kwargs.end(); ++it) {
    QWENQ_CHECK(it.key() != "min_lr" || !it.value().is_array(),
                "--scheduler-kwargs: reduce_lr_on_plateau's \"min_lr\" must be one number here (a list gives one per "
                "torch parameter group; this trainer's groups are A and, with LoRA+, B)");
    QWENQ_CHECK(kKeys.count(it.key()), "--scheduler-kwargs: --scheduler reduce_lr_on_plateau takes cooldown, eps, "
                                       "factor, min_lr, mode, patience, threshold, threshold_mode, not \""
                                           << it.key() << "\"");
  }
  if (kwargs.contains("mode")) p.max_mode = choice_of(kwargs, "mode", "min", "max") == "max";
  if (kwargs.contains("threshold_mode")) p.abs_threshold = choice_of(kwargs, "threshold_mode", "rel", "abs") == "abs";
  if (kwargs.contains("factor")) p.factor = number_of(kwargs, "factor", false);
  if (kwargs.contains("patience")) p.patience = static_cast<int64_t>(number_of(kwargs, "patience", true));
  if (kwargs.contains("threshold")) p.threshold = number_of(kwargs, "threshold", false);
  if (kwargs.contains("cooldown")) p.cooldown = static_cast<int64_t>(number_of(kwargs, "cooldown", true));
  if (kwargs.contains("min_lr")) p.min_lr = number_of(kwargs, "min_lr", false);
  if (kwargs.contains("eps")) p.eps = number_of(kwargs, "eps", false);
  QWENQ_CHECK(p.factor > 0 && p.factor < 1, "--scheduler-kwargs: reduce_lr_on_plateau's factor must be in (0, 1) "
                                            "(torch: \"Factor should be < 1.0\"; 0 would stop training), got "
                                                << p.factor);
  QWENQ_CHECK(p.patience >= 0 && p.cooldown >= 0, "--scheduler-kwargs: reduce_lr_on_plateau's patience and cooldown "
                                                  "must be >= 0");
  QWENQ_CHECK(p.threshold >= 0 && p.min_lr >= 0 && p.eps >= 0,
              "--scheduler-kwargs: reduce_lr_on_plateau's threshold, min_lr and eps must be >= 0");
  return p;
}

LrPlateau::LrPlateau(const PlateauOptions& o, std::vector<double> group_lrs)
    : o_(o), lrs_(std::move(group_lrs)),
      best_(o.max_mode ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity()) {}

bool LrPlateau::better(double a) const {
  if (!o_.max_mode) return o_.abs_threshold ? a < best_ - o_.threshold : a < best_ * (1.0 - o_.threshold);
  return o_.abs_threshold ? a > best_ + o_.threshold : a > best_ * (o_.threshold + 1.0);
}

bool LrPlateau::observe(double metric) {
  ++evaluations_;
  if (better(metric)) {
    best_ = metric;
    bad_ = 0;
  } else {
    ++bad_;
  }
  if (cooldown_left_ > 0) {  // bad evaluations in the cooldown do not count
    --cooldown_left_;
    bad_ = 0;
  }
  if (bad_ <= o_.patience) return false;
  bool reduced = false;
  for (double& r : lrs_) {
    const double next = std::max(r * o_.factor, o_.min_lr);
    if (r - next > o_.eps) {
      r = next;
      reduced = true;
    }
  }
  cooldown_left_ = o_.cooldown;
  bad_ = 0;
  return reduced;
}

nlohmann::json LrPlateau::state() const {
  // best as null while infinite (no evaluation yet): JSON has no infinity.
  const nlohmann::json best = std::isfinite(best_) ? nlohmann::json(best_) : nlohmann::json(nullptr);
  return {{"lrs", lrs_}, {"best", best}, {"bad_evaluations", bad_}, {"cooldown_left", cooldown_left_},
          {"evaluations", evaluations_}};
}

void LrPlateau::restore(const nlohmann::json& s, const std::string& where) {
  try {
    const std::vector<double> lrs = s.at("lrs").get<std::vector<double>>();
    QWENQ_CHECK(lrs.size() == lrs_.size(), "lr_plateau has " << lrs.size() << " rate groups, this run "
                                                              << lrs_.size());
    for (double r : lrs) QWENQ_CHECK(std::isfinite(r) && r >= 0, "lr_plateau holds the rate " << r);
    const nlohmann::json& best = s.at("best");
    QWENQ_CHECK(best.is_null() || best.is_number(), "lr_plateau's best is " << best.dump());
    const int64_t bad = s.at("bad_evaluations").get<int64_t>(), cooldown = s.at("cooldown_left").get<int64_t>();
    const int64_t evaluations = s.at("evaluations").get<int64_t>();
    QWENQ_CHECK(bad >= 0 && cooldown >= 0 && evaluations >= 0, "lr_plateau's counters are negative");
    lrs_ = lrs;
    if (best.is_number()) best_ = best.get<double>();
    bad_ = bad;
    cooldown_left_ = cooldown;
    evaluations_ = evaluations;
  } catch (const nlohmann::json::exception& e) {
    QWENQ_FAIL(where << ": \"lr_plateau\" is not a reduce_lr_on_plateau state (" << e.what() << ")");
  } catch (const Error& e) {
    QWENQ_FAIL(where << ": " << e.what());
  }
}

}  // namespace qwenq
