// StepProfile (trainer/step_profile.h): the phases' times from a scripted clock (each phase gets the time to the
// next mark, a stop's gap is unattributed, a repeated mark records nothing, a dropped step adds nothing), the table,
// the host clock, and `qwen-qlora train --profile` refused without --device cuda. The trainer's marks on the GPU:
// tests/gpu/test_lora_model_cuda.cpp (ProfileTimesThePhasesAndChangesNothing).
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "tests/support/scripted_clock.h"
#include "tests/support/test_errors.h"
#include "trainer/step_profile.h"
#include "trainer/train_loop.h"

namespace qwenq {
namespace {

using test::ScriptedClock;

TEST(StepProfile, PhasesGetTheTimeToTheNextMark) {
  // Step 1: Embed 0-1, Base 1-4, Lora 4-6, Base 6-10, stop at 10, gap to 12, Optimizer 12-13, stop 13.
  // Step 2: Base 0-5, stop at 5.
  auto clock = std::make_unique<ScriptedClock>(std::vector<double>{0, 1, 4, 6, 10, 12, 13, 100, 105});
  ScriptedClock* c = clock.get();
  StepProfile p(std::move(clock));
  p.mark(StepPhase::Embed);
  p.mark(StepPhase::Base);
  p.mark(StepPhase::Base);  // already open: no mark
  EXPECT_EQ(c->recorded(), 2);
  p.mark(StepPhase::Lora);
  p.mark(StepPhase::Base);
  p.stop();
  p.stop();  // nothing open: no mark
  p.mark(StepPhase::Optimizer);
  p.end_step();  // closes the optimizer
  EXPECT_EQ(p.steps(), 1);
  EXPECT_DOUBLE_EQ(p.total_ms(StepPhase::Embed), 1);
  EXPECT_DOUBLE_EQ(p.total_ms(StepPhase::Base), 3 + 4);
  EXPECT_DOUBLE_EQ(p.total_ms(StepPhase::Lora), 2);
  EXPECT_DOUBLE_EQ(p.total_ms(StepPhase::Optimizer), 1);
  EXPECT_DOUBLE_EQ(p.wall_ms(), 13);
  EXPECT_DOUBLE_EQ(p.unattributed_ms(), 2);
  p.mark(StepPhase::Base);
  p.end_step();
  EXPECT_EQ(p.steps(), 2);
  EXPECT_DOUBLE_EQ(p.total_ms(StepPhase::Base), 7 + 5);
  EXPECT_DOUBLE_EQ(p.wall_ms(), 18);
  EXPECT_DOUBLE_EQ(p.total_ms(StepPhase::Attention), 0);
  // The table: per step (2 steps), largest first, then the unattributed time and the wall time.
  const std::string t = p.table();
  EXPECT_NE(t.find("base linears            6.000    66.7%"), std::string::npos) << t;
  EXPECT_LT(t.find("base linears"), t.find("lora")) << t;
  EXPECT_NE(t.find("unattributed            1.000"), std::string::npos) << t;
  EXPECT_NE(t.find("step (wall)             9.000   100.0%"), std::string::npos) << t;
  EXPECT_NE(t.find("(2 steps)"), std::string::npos) << t;
  EXPECT_EQ(t.find("attention"), std::string::npos) << "a phase that took no time is not listed:\n" << t;
  // metrics.jsonl's numbers: the phases with time in StepPhase order, then the sums, per step.
  const std::vector<std::pair<std::string, double>> want = {
      {"embed", 0.5}, {"base linears", 6}, {"lora", 1}, {"optimizer", 0.5}, {"unattributed", 1}, {"step", 9}};
  EXPECT_EQ(p.per_step_ms(), want);
}

TEST(StepProfile, DroppedStepAddsNothingButWaits) {
  auto clock = std::make_unique<ScriptedClock>(std::vector<double>{0, 50, 60, 61});
  ScriptedClock* c = clock.get();
  StepProfile p(std::move(clock));
  p.mark(StepPhase::Base);
  p.mark(StepPhase::Lora);
  p.end_step(false);  // a warm-up
  EXPECT_EQ(p.steps(), 0);
  EXPECT_EQ(c->waits(), 1) << "the clock's marks are reused only once they have their times";
  EXPECT_DOUBLE_EQ(p.wall_ms(), 0);
  EXPECT_DOUBLE_EQ(p.total_ms(StepPhase::Base), 0);
  p.end_step();  // nothing marked: a step of no time
  EXPECT_EQ(p.steps(), 1);
  EXPECT_DOUBLE_EQ(p.wall_ms(), 0);
}

TEST(StepProfile, HostClockCoversTheStep) {
  StepProfile p(make_host_step_clock());
  volatile double sink = 0;
  p.mark(StepPhase::Norm);
  for (int i = 0; i < 100000; ++i) sink = sink + i;
  p.mark(StepPhase::Rope);
  for (int i = 0; i < 100000; ++i) sink = sink + i;
  p.end_step();
  EXPECT_GT(p.wall_ms(), 0);
  EXPECT_GT(p.total_ms(StepPhase::Norm), 0);
  EXPECT_GT(p.total_ms(StepPhase::Rope), 0);
  EXPECT_NEAR(p.unattributed_ms(), 0.0, 1e-9);
  test::expect_error([] { StepProfile q(nullptr); }, "StepProfile: no clock");
}

TEST(StepProfile, EveryPhaseHasAName) {
  for (int i = 0; i < kStepPhases; ++i) EXPECT_STRNE(step_phase_name(static_cast<StepPhase>(i)), "?") << i;
}

TEST(StepProfile, TrainRefusesProfileOnTheCpu) {
  TrainOptions o;
  o.model_dir = "unused";
  o.data_path = "unused";
  o.out_dir = "unused";
  o.max_steps = 1;
  o.profile = true;
  test::expect_error([&] { train_lora(o); }, "--profile times the GPU trainer's phases: it needs --device cuda");
}

}  // namespace
}  // namespace qwenq
