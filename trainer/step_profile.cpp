// StepProfile's bookkeeping and the host clock (trainer/step_profile.h).
#include "trainer/step_profile.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>

#include "core/error.h"

namespace qwenq {

const char* step_phase_name(StepPhase p) {
  switch (p) {
    case StepPhase::Embed: return "embed";
    case StepPhase::Base: return "base linears";
    case StepPhase::Lora: return "lora";
    case StepPhase::Dora: return "dora";
    case StepPhase::Attention: return "attention";
    case StepPhase::Norm: return "rmsnorm";
    case StepPhase::Rope: return "rope";
    case StepPhase::Activation: return "swiglu";
    case StepPhase::Residual: return "residual";
    case StepPhase::Moe: return "moe routing";
    case StepPhase::Head: return "lm_head + loss";
    case StepPhase::Optimizer: return "optimizer";
    case StepPhase::Checkpoint: return "checkpoints";
    case StepPhase::Gaps: return "gaps";
    case StepPhase::kCount: break;
  }
  return "?";
}

namespace {

class HostClock final : public StepClock {
 public:
  int record() override {
    t_.push_back(std::chrono::steady_clock::now());
    return static_cast<int>(t_.size()) - 1;
  }
  std::vector<double> milliseconds() override {
    std::vector<double> ms(t_.size());
    for (size_t i = 0; i < t_.size(); ++i) ms[i] = std::chrono::duration<double, std::milli>(t_[i] - t_[0]).count();
    return ms;
  }
  void reset() override { t_.clear(); }

 private:
  std::vector<std::chrono::steady_clock::time_point> t_;
};

}  // namespace

std::unique_ptr<StepClock> make_host_step_clock() { return std::make_unique<HostClock>(); }

StepProfile::StepProfile(std::unique_ptr<StepClock> clock) : clock_(std::move(clock)) {
  QWENQ_CHECK(clock_ != nullptr, "StepProfile: no clock");
}

void StepProfile::mark(StepPhase phase) {
  const int p = static_cast<int>(phase);
  QWENQ_CHECK(p >= 0 && p < kStepPhases, "StepProfile: phase " << p << " out of range");
  if (p == open_) return;
  marks_.emplace_back(p, clock_->record());
  open_ = p;
}

void StepProfile::stop() {
  if (open_ < 0) return;
  marks_.emplace_back(-1, clock_->record());
  open_ = -1;
}

void StepProfile::end_step(bool keep) {
  stop();
  if (!keep) {
    if (!marks_.empty()) clock_->milliseconds();  // waits, so that the clock's marks may be reused
    marks_.clear();
    clock_->reset();
    return;
  }
  if (!marks_.empty()) {
    const std::vector<double> ms = clock_->milliseconds();
    QWENQ_CHECK(ms.size() == static_cast<size_t>(marks_.back().second) + 1,
                "StepProfile: the clock has " << ms.size() << " times for " << marks_.back().second + 1 << " marks");
    for (size_t i = 0; i + 1 < marks_.size(); ++i) {
      if (marks_[i].first < 0) continue;  // from a stop to the next mark: unattributed
      totals_[static_cast<size_t>(marks_[i].first)] += ms[static_cast<size_t>(marks_[i + 1].second)] -
                                                      ms[static_cast<size_t>(marks_[i].second)];
    }
    wall_ += ms[static_cast<size_t>(marks_.back().second)] - ms[static_cast<size_t>(marks_.front().second)];
  }
  marks_.clear();
  clock_->reset();
  ++steps_;
}

double StepProfile::unattributed_ms() const {
  return wall_ - std::accumulate(totals_.begin(), totals_.end(), 0.0);
}

std::vector<std::pair<std::string, double>> StepProfile::per_step_ms() const {
  const double n = static_cast<double>(std::max<int64_t>(steps_, 1));
  std::vector<std::pair<std::string, double>> ms;
  for (int p = 0; p < kStepPhases; ++p)
    if (totals_[p] > 0) ms.emplace_back(step_phase_name(static_cast<StepPhase>(p)), totals_[p] / n);
  ms.emplace_back("unattributed", unattributed_ms() / n);
  ms.emplace_back("step", wall_ / n);
  return ms;
}

std::string StepProfile::table() const {
  std::vector<std::pair<std::string, double>> rows = per_step_ms();
  std::stable_sort(rows.begin(), rows.end() - 2, [](const auto& a, const auto& b) { return a.second > b.second; });
  rows.back().first = "step (wall)";
  const double wall = rows.back().second;
  std::string out;
  char line[160];
  std::snprintf(line, sizeof line, "%-16s %12s %8s\n", "phase", "ms / step", "share");
  out += line;
  for (const auto& [name, ms] : rows) {
    std::snprintf(line, sizeof line, "%-16s %12.3f %7.1f%%\n", name.c_str(), ms, wall > 0 ? 100.0 * ms / wall : 0.0);
    out += line;
  }
  std::snprintf(line, sizeof line, "(%lld steps)\n", static_cast<long long>(steps_));
  out += line;
  return out;
}

}  // namespace qwenq
