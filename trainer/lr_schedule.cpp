#include "trainer/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "core/error.h"
#include "trainer/lr_plateau.h"

namespace qwenq {

namespace {

// A number of the kwargs: finite, and an integer where `integer` (transformers' int parameters).
double number(const nlohmann::json& kwargs, const char* key, bool integer) {
  const nlohmann::json& v = kwargs.at(key);
  QWENQ_CHECK(v.is_number() && std::isfinite(v.get<double>()) && (!integer || v.is_number_integer()),
              "--scheduler-kwargs: \"" << key << "\" must be " << (integer ? "an integer" : "a number") << ", got "
                                       << v.dump());
  return v.get<double>();
}

std::string text(const nlohmann::json& kwargs, const char* key) {
  const nlohmann::json& v = kwargs.at(key);
  QWENQ_CHECK(v.is_string(), "--scheduler-kwargs: \"" << key << "\" must be a string, got " << v.dump());
  const std::string s = v.get<std::string>();
  QWENQ_CHECK(s == "linear" || s == "cosine" || s == "1-sqrt",
              "--scheduler-kwargs: \"" << key << "\" must be linear, cosine or 1-sqrt, not " << s);
  return s;
}

}  // namespace

LrSchedule make_lr_schedule(const std::string& name, const nlohmann::json& kwargs, double lr, double min_lr_ratio,
                            int64_t warmup, int64_t total) {
  static const std::set<std::string> kNames = {"linear",   "cosine",       "cosine_with_restarts", "polynomial",
                                               "constant", "constant_with_warmup", "inverse_sqrt",
                                               "cosine_with_min_lr", "warmup_stable_decay", "reduce_lr_on_plateau"};
  QWENQ_CHECK(kNames.count(name), "--scheduler must be linear, cosine, cosine_with_restarts, polynomial, constant, "
                                  "constant_with_warmup, inverse_sqrt, cosine_with_min_lr, warmup_stable_decay or "
                                  "reduce_lr_on_plateau, not "
                                      << name);
  QWENQ_CHECK(kwargs.is_null() || kwargs.is_object(),
              "--scheduler-kwargs must be a JSON object (transformers' lr_scheduler_kwargs), got " << kwargs.dump());
  QWENQ_CHECK(min_lr_ratio >= 0 && min_lr_ratio < 1, "--min-lr-ratio must be in [0, 1), got " << min_lr_ratio);
  LrSchedule s;
  s.name = name;
  s.lr = lr;
  s.min_lr_ratio = min_lr_ratio;
  s.warmup = warmup;
  s.total = total;
  if (name == "reduce_lr_on_plateau") {  // driven by the evaluations (trainer/lr_plateau.h): its kwargs checked there
    plateau_options(kwargs);
    QWENQ_CHECK(min_lr_ratio == 0, "--min-lr-ratio does not apply to --scheduler reduce_lr_on_plateau (its floor is "
                                   "--scheduler-kwargs' min_lr)");
    QWENQ_CHECK(warmup == 0, "--scheduler reduce_lr_on_plateau has no warm-up (transformers' Trainer passes it none): "
                             "leave --warmup-steps and --warmup-ratio out");
    return s;
  }
  // The keys each schedule's transformers function takes (none where the Trainer passes none).
  std::set<std::string> takes;
  if (name == "cosine") takes = {"num_cycles"};
  if (name == "cosine_with_restarts") takes = {"num_cycles"};
  if (name == "polynomial") takes = {"lr_end", "power"};
  if (name == "cosine_with_min_lr") takes = {"num_cycles", "min_lr", "min_lr_rate"};
  if (name == "warmup_stable_decay")
    takes = {"num_decay_steps", "num_stable_steps", "warmup_type", "decay_type", "min_lr_ratio", "num_cycles"};
  const nlohmann::json kw = kwargs.is_null() ? nlohmann::json::object() : kwargs;
  std::string list;
  for (const std::string& k : takes) list += (list.empty() ? "" : ", ") + k;
  for (auto it = kw.begin(); it != kw.end(); ++it) {
    QWENQ_CHECK(takes.count(it.key()), "--scheduler-kwargs: --scheduler " << name << " takes "
                                           << (list.empty() ? std::string("no keyword arguments") : list)
                                           << ", not \"" << it.key() << "\"");
  }
  QWENQ_CHECK(min_lr_ratio == 0 || name == "linear" || name == "cosine" || name == "cosine_with_min_lr" ||
                  name == "warmup_stable_decay",
              "--min-lr-ratio applies to --scheduler linear, cosine, cosine_with_min_lr or warmup_stable_decay, not "
                  << name);
  if (name == "cosine_with_restarts") s.num_cycles = 1;
  if (kw.contains("num_cycles")) s.num_cycles = number(kw, "num_cycles", name == "cosine_with_restarts");
  if (name == "polynomial") {
    if (kw.contains("lr_end")) s.lr_end = number(kw, "lr_end", false);
    if (kw.contains("power")) s.power = number(kw, "power", false);
    QWENQ_CHECK(lr > s.lr_end, "--scheduler-kwargs: lr_end (" << s.lr_end << ") must be smaller than --lr (" << lr << ")");
  }
  if (name == "cosine_with_min_lr") {
    const int given = static_cast<int>(kw.contains("min_lr")) + static_cast<int>(kw.contains("min_lr_rate")) +
                      static_cast<int>(min_lr_ratio > 0);
    QWENQ_CHECK(given == 1, "--scheduler cosine_with_min_lr needs exactly one of --min-lr-ratio and the kwargs "
                            "min_lr, min_lr_rate (" << given << " given)");
    if (kw.contains("min_lr")) s.min_lr_ratio = number(kw, "min_lr", false) / lr;
    if (kw.contains("min_lr_rate")) s.min_lr_ratio = number(kw, "min_lr_rate", false);
  }
  if (name == "warmup_stable_decay") {
    QWENQ_CHECK(kw.contains("num_decay_steps"),
                "--scheduler warmup_stable_decay needs --scheduler-kwargs '{\"num_decay_steps\": N}'");
    s.num_decay_steps = static_cast<int64_t>(number(kw, "num_decay_steps", true));
    QWENQ_CHECK(s.num_decay_steps >= 0, "--scheduler-kwargs: num_decay_steps must be >= 0");
    QWENQ_CHECK(!(kw.contains("min_lr_ratio") && min_lr_ratio > 0),
                "give the minimum ratio as --min-lr-ratio or the kwarg min_lr_ratio, not both");
    if (kw.contains("min_lr_ratio")) s.min_lr_ratio = number(kw, "min_lr_ratio", false);
    if (kw.contains("warmup_type")) s.warmup_type = text(kw, "warmup_type");
    if (kw.contains("decay_type")) s.decay_type = text(kw, "decay_type");
    if (kw.contains("num_stable_steps")) {
      s.num_stable_steps = static_cast<int64_t>(number(kw, "num_stable_steps", true));
      QWENQ_CHECK(s.num_stable_steps >= 0, "--scheduler-kwargs: num_stable_steps must be >= 0");
    } else {
      s.num_stable_steps = total - warmup - s.num_decay_steps;
      QWENQ_CHECK(total == 0 || s.num_stable_steps >= 0,
                  "--scheduler warmup_stable_decay: " << warmup << " warm-up and " << s.num_decay_steps
                                                      << " decay steps exceed the run's " << total << " steps");
    }
  }
  QWENQ_CHECK(s.min_lr_ratio >= 0 && s.min_lr_ratio <= 1, "the minimum learning-rate ratio must be in [0, 1], got "
                                                              << s.min_lr_ratio);
  QWENQ_CHECK(s.power > 0 && s.num_cycles > 0, "--scheduler-kwargs: power and num_cycles must be positive");
  return s;
}

double lr_at(const LrSchedule& s, int64_t step) {
  if (s.name == "reduce_lr_on_plateau") return s.lr;  // until an evaluation reduces it (LrPlateau)
  const double m = s.min_lr_ratio;
  if (s.name == "warmup_stable_decay") {
    double f;
    if (step < s.warmup) {
      const double q = static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, s.warmup));
      const double g = s.warmup_type == "linear" ? q
                       : s.warmup_type == "cosine" ? 0.5 * (1.0 - std::cos(M_PI * q))
                                                 : 1.0 - std::sqrt(1.0 - q);
      f = std::max(0.0, g * (1.0 - m) + m);
    } else if (step < s.warmup + s.num_stable_steps) {
      f = 1.0;
    } else if (step < s.warmup + s.num_stable_steps + s.num_decay_steps) {
      const double q = static_cast<double>(step - s.warmup - s.num_stable_steps) /
                       static_cast<double>(std::max<int64_t>(1, s.num_decay_steps));
      const double h = s.decay_type == "linear" ? 1.0 - q
                       : s.decay_type == "cosine" ? 0.5 * (1.0 + std::cos(M_PI * s.num_cycles * 2.0 * q))
                                                : 1.0 - std::sqrt(q);
      f = std::max(0.0, h * (1.0 - m) + m);
    } else {
      f = m;
    }
    return s.lr * f;
  }
  // transformers': 0 at step 0
  if (step < s.warmup) return s.lr * static_cast<double>(step) / static_cast<double>(s.warmup);
  if (s.name == "constant" || s.name == "constant_with_warmup") return s.lr;
  if (s.name == "inverse_sqrt") {
    const double tau = static_cast<double>(s.warmup > 0 ? s.warmup : 10000);
    return s.lr * (1.0 / std::sqrt((static_cast<double>(step) + tau - static_cast<double>(s.warmup)) / tau));
  }
  const double p = std::min(1.0, static_cast<double>(step - s.warmup) /
                                     static_cast<double>(std::max<int64_t>(1, s.total - s.warmup)));
  if (s.name == "linear") return s.lr * (1.0 - (1.0 - m) * p);
  if (s.name == "cosine_with_restarts") {
    if (p >= 1.0) return 0.0;
    return s.lr * std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * std::fmod(s.num_cycles * p, 1.0))));
  }
  if (s.name == "polynomial") {
    if (step > s.total) return s.lr_end;
    const double decay = (s.lr - s.lr_end) * std::pow(1.0 - p, s.power) + s.lr_end;
    return s.lr * (decay / s.lr);
  }
  // cosine, cosine_with_min_lr (num_cycles 0.5: the half cosine from lr to m·lr)
  return s.lr * (m + (1.0 - m) * std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * (2.0 * s.num_cycles) * p))));
}

}  // namespace qwenq
