// GptqStageTimes' line and CalibPassTimer (trainer/gptq_stage_times.h).
#include "trainer/gptq_stage_times.h"

#include <algorithm>
#include <cstdio>
#include <utility>

#include "core/error.h"

namespace qwenq {

std::string GptqStageTimes::line(double total) const {
  std::vector<std::pair<const char*, double>> parts = {{"forwards", forwards}, {"hessians", hessians},
                                                       {"solves", solves},     {"transfers", transfers},
                                                       {"packing", packing},   {"writing", writing},
                                                       {"upload", upload}};
  std::stable_sort(parts.begin(), parts.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  std::string out;
  char buf[64];
  double sum = 0;
  for (const auto& [name, s] : parts) {
    sum += s;
    if (s <= 0) continue;
    std::snprintf(buf, sizeof buf, "%s%s %.1f s", out.empty() ? "" : ", ", name, s);
    out += buf;
  }
  std::snprintf(buf, sizeof buf, "%sother %.1f s of %.1f s", out.empty() ? "" : ", ", std::max(0.0, total - sum), total);
  return out + buf;
}

CalibPassTimer::CalibPassTimer(std::unique_ptr<StepClock> clock) : clock_(std::move(clock)) {
  QWENQ_CHECK(clock_ != nullptr, "CalibPassTimer: no clock");
}

void CalibPassTimer::begin() {
  QWENQ_CHECK(first_ < 0, "CalibPassTimer: begin() twice without end()");
  clock_->reset();
  hessian_marks_.clear();
  first_ = clock_->record();
}

void CalibPassTimer::hessian_begin() {
  QWENQ_CHECK(first_ >= 0 && hessian_marks_.size() % 2 == 0, "CalibPassTimer: hessian_begin() out of order");
  hessian_marks_.push_back(clock_->record());
}

void CalibPassTimer::hessian_end() {
  QWENQ_CHECK(first_ >= 0 && hessian_marks_.size() % 2 == 1, "CalibPassTimer: hessian_end() without a begin");
  hessian_marks_.push_back(clock_->record());
}

void CalibPassTimer::end(GptqStageTimes& times) {
  QWENQ_CHECK(first_ >= 0 && hessian_marks_.size() % 2 == 0, "CalibPassTimer: end() inside an accumulation");
  const int last = clock_->record();
  const std::vector<double> ms = clock_->milliseconds();
  QWENQ_CHECK(ms.size() == static_cast<size_t>(last) + 1, "CalibPassTimer: the clock has " << ms.size()
                                                                                           << " times for " << last + 1
                                                                                           << " marks");
  double hessian_ms = 0;
  for (size_t i = 0; i < hessian_marks_.size(); i += 2)
    hessian_ms += ms[static_cast<size_t>(hessian_marks_[i + 1])] - ms[static_cast<size_t>(hessian_marks_[i])];
  const double pass_ms = ms[static_cast<size_t>(last)] - ms[static_cast<size_t>(first_)];
  times.hessians += hessian_ms / 1e3;
  times.forwards += (pass_ms - hessian_ms) / 1e3;
  first_ = -1;
}

}  // namespace qwenq
