// A StepClock whose marks happen at scripted times (trainer/step_profile.h): for StepProfile's and GPTQ's stage
// timers' tests.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <utility>
#include <vector>

#include "trainer/step_profile.h"

namespace qwenq::test {

// Mark i happens at times[i] milliseconds (of the step; the clock restarts after each step's reset).
class ScriptedClock final : public StepClock {
 public:
  explicit ScriptedClock(std::vector<double> times) : times_(std::move(times)) {}
  int record() override { return recorded_++; }
  std::vector<double> milliseconds() override {
    ++waits_;
    EXPECT_LE(static_cast<size_t>(recorded_), times_.size() - offset_) << "more marks than the script has";
    std::vector<double> ms;
    for (int i = 0; i < recorded_; ++i) ms.push_back(times_[offset_ + static_cast<size_t>(i)] - times_[offset_]);
    return ms;
  }
  void reset() override {
    offset_ += static_cast<size_t>(recorded_);
    recorded_ = 0;
  }
  int recorded() const { return recorded_; }
  int waits() const { return waits_; }

 private:
  std::vector<double> times_;
  size_t offset_ = 0;
  int recorded_ = 0;
  int waits_ = 0;
};

}  // namespace qwenq::test
