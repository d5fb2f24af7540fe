// metrics.jsonl and loss_curve.svg of a training run (trainer/train_log.h).
#include "trainer/train_log.h"

#include <algorithm>
#include <cstdio>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "trainer/kto.h"

namespace qwenq {

// Train loss (raw and smoothed) and eval loss against steps.
void write_loss_curve(const std::string& path, const std::vector<std::pair<int64_t, double>>& train,
                      const std::vector<std::pair<int64_t, double>>& eval, const std::string& what) {
  if (train.empty()) return;
  const double W = 720, H = 400, L = 60, R = 20, T = 30, B = 50;
  int64_t smax = 1;
  double lo = 1e300, hi = -1e300;
  for (const auto* series : {&train, &eval}) {
    for (const auto& [s, v] : *series) {
      smax = std::max(smax, s);
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  }
  if (hi - lo < 1e-9) hi = lo + 1;
  auto X = [&](int64_t s) { return L + (W - L - R) * static_cast<double>(s) / smax; };
  auto Y = [&](double v) { return T + (H - T - B) * (1 - (v - lo) / (hi - lo)); };
  std::ostringstream svg;
  svg << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H << "' font-family='sans-serif' font-size='12'>\n"
      << "<rect width='100%' height='100%' fill='white'/>\n<text x='" << L << "' y='18'>" << what << ": train (faint), its moving average (solid), eval (dashed)</text>\n"
      << "<line x1='" << L << "' y1='" << H - B << "' x2='" << W - R << "' y2='" << H - B << "' stroke='black'/>\n"
      << "<line x1='" << L << "' y1='" << T << "' x2='" << L << "' y2='" << H - B << "' stroke='black'/>\n";
  for (int i = 0; i <= 4; ++i) {
    const double v = lo + (hi - lo) * i / 4;
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3f", v);
    svg << "<text x='4' y='" << Y(v) + 4 << "'>" << buf << "</text>\n";
  }
  svg << "<text x='" << W - R - 60 << "' y='" << H - 15 << "'>step " << smax << "</text>\n";
  // Raw train losses faint, their exponential moving average (0.9) solid, eval dashed.
  std::vector<std::pair<int64_t, double>> smooth;
  double ema = train.front().second;
  for (const auto& [st, v] : train) smooth.emplace_back(st, ema = 0.9 * ema + 0.1 * v);
  struct Line {
    const std::vector<std::pair<int64_t, double>>* points;
    const char* style;
  };
  const Line lines[] = {{&train, "stroke='#1f77b4' stroke-opacity='0.3' stroke-width='1'"},
                        {&smooth, "stroke='#1f77b4' stroke-width='2'"},
                        {&eval, "stroke='#d62728' stroke-width='2' stroke-dasharray='6 4'"}};
  for (const Line& line : lines) {
    if (line.points->empty()) continue;
    svg << "<polyline fill='none' " << line.style << " points='";
    for (const auto& [st, v] : *line.points) svg << X(st) << "," << Y(v) << " ";
    svg << "'/>\n";
  }
  svg << "</svg>\n";
  write_file_atomic(path, svg.str());
}

// Keeps the lines of metrics.jsonl up to `step` (a resumed run rewrites what came after its checkpoint).
void truncate_metrics(const std::string& path, int64_t step) {
  if (!file_exists(path)) return;
  std::istringstream in(read_file(path));
  std::string keep, line;
  while (std::getline(in, line)) {
    try {
      if (nlohmann::json::parse(line).value("step", int64_t{0}) <= step) keep += line + "\n";
    } catch (const nlohmann::json::exception&) {
      // a line cut by a kill mid-write: dropped
    }
  }
  write_file_atomic(path, keep);
}

void write_run_curve(const std::string& metrics_path, const std::string& svg_path, const std::string& key) {
  std::vector<std::pair<int64_t, double>> curve, eval_curve;
  std::istringstream in(read_file(metrics_path));
  std::string line;
  const std::string eval_key = "eval_" + key;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded()) continue;
    if (j.contains(key) && j[key].is_number()) curve.emplace_back(j["step"].get<int64_t>(), j[key].get<double>());
    if (j.contains(eval_key) && j[eval_key].is_number())
      eval_curve.emplace_back(j["step"].get<int64_t>(), j[eval_key].get<double>());
  }
  write_loss_curve(svg_path, curve, eval_curve, key);
}

nlohmann::json step_record(const StepLog& s) {
  nlohmann::json record = {{"step", s.step}, {"epoch", s.epoch}, {"loss", s.loss}, {"lr", s.lr},
                           {"grad_norm", s.grad_norm}, {"tokens", s.tokens}, {"targets", s.targets},
                           {"tokens_per_s", s.tokens / std::max(s.seconds, 1e-9)}, {"elapsed_s", s.elapsed_s}};
  // The pair objectives' statistics (TRL's names): means over the step's pairs.
  const auto add_pairs = [&record](int64_t pairs, double reward_c, double reward_r, double accuracy) {
    const double p = static_cast<double>(std::max<int64_t>(1, pairs));
    record["pairs"] = pairs;
    record["rewards_chosen"] = reward_c / p;
    record["rewards_rejected"] = reward_r / p;
    record["rewards_margin"] = (reward_c - reward_r) / p;
    record["rewards_accuracy"] = accuracy;
    return p;
  };
  if (s.dpo) {
    const DpoStats& d = *s.dpo;
    const double p = add_pairs(d.pairs, d.reward_c, d.reward_r,
                               static_cast<double>(d.correct) / static_cast<double>(std::max<int64_t>(1, d.pairs)));
    record["logps_chosen"] = d.logp_c / p;
    record["logps_rejected"] = d.logp_r / p;
  }
  if (s.reward) add_pairs(s.reward->pairs, s.reward->reward_c, s.reward->reward_r, s.reward->accuracy());
  if (s.kto) {
    record["kl"] = s.kto->mean_kl();
    add_kto_rewards(*s.kto, "", &record);
  }
  if (s.classify) {
    record["examples"] = s.classify->examples;
    add_classify_metrics(*s.classify, *s.classify_task, "", &record);
  }
  if (s.grpo) record.update(*s.grpo);
  return record;
}

std::string step_progress_text(const StepLog& s) {
  char text[128];
  const double tok_s = s.tokens / std::max(s.seconds, 1e-9);
  if (s.classify) {
    const std::string metrics = classify_metrics_text(*s.classify, *s.classify_task);
    std::snprintf(text, sizeof text, "loss %.4f%s%s lr %.2e %.0f tok/s", s.loss, metrics.empty() ? "" : " ",
                  metrics.c_str(), s.lr, tok_s);
  } else if (s.dpo || s.reward) {
    const double accuracy = s.dpo ? static_cast<double>(s.dpo->correct) / static_cast<double>(std::max<int64_t>(1, s.dpo->pairs))
                                  : s.reward->accuracy();
    std::snprintf(text, sizeof text, "loss %.4f acc %.2f lr %.2e %.0f tok/s", s.loss, accuracy, s.lr, tok_s);
  } else if (s.kto) {
    std::snprintf(text, sizeof text, "loss %.4f kl %.3f margin %.3f lr %.2e %.0f tok/s", s.loss, s.kto->mean_kl(),
                  s.kto->margin(), s.lr, tok_s);
  } else if (s.grpo) {
    std::snprintf(text, sizeof text, "reward %.3f len %.0f lr %.2e %.0f tok/s", (*s.grpo)["reward"].get<double>(),
                  (*s.grpo)["completions_mean_length"].get<double>(), s.lr, tok_s);
  } else {
    std::snprintf(text, sizeof text, "loss %.4f lr %.2e %.0f tok/s", s.loss, s.lr, tok_s);
  }
  return text;
}

}  // namespace qwenq
