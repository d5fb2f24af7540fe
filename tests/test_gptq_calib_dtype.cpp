// GPTQ's `--calib-dtype bf16` (GptqModelOptions::calib_dtype) and the stage times `qwen-quant gptq` prints
// (trainer/gptq_stage_times.h).
//
// Oracles: the fp32 run of the same model and calibration. The first group of the first block (q, k, v) is solved
// before any weight is replaced, so its Hessian and its codes are bit for bit the fp32 run's; every later group sees
// weights rounded to bf16 (2^-9 relative), so some codes must flip, and the model must be as good (perplexity within
// 1 %, as tests/test_calib_chunks.cpp allows for a change of summation order). The timers: a scripted clock.
// The GPU driver's bf16 replacements (tensor-core GEMMs): tests/gpu/test_gptq_model_cuda.cpp.
#include <gtest/gtest.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "tests/support/checkpoint_compare.h"
#include "tests/support/scripted_clock.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/gptq_stage_times.h"
#include "trainer/quantize_model.h"

namespace qwenq {
namespace {

using test::error_of;
using test::ScriptedClock;

constexpr double kPplRelTol = 1e-2;

TEST(GptqStageTimes, LineListsTheStagesLargestFirstThenWhatIsLeft) {
  GptqStageTimes t;
  t.forwards = 4.1;
  t.hessians = 2.3;
  t.solves = 2.0;
  t.packing = 0.4;
  t.writing = 0.1;
  EXPECT_EQ(t.line(9.3), "forwards 4.1 s, hessians 2.3 s, solves 2.0 s, packing 0.4 s, writing 0.1 s, other 0.4 s of 9.3 s");
  t.upload = 5.0;  // now the largest; the stages exceed the wall time: nothing is left over
  EXPECT_EQ(t.line(9.3).substr(0, 15), "upload 5.0 s, f");
  EXPECT_NE(t.line(9.3).find("other 0.0 s of 9.3 s"), std::string::npos);
  EXPECT_EQ(GptqStageTimes{}.line(1.5), "other 1.5 s of 1.5 s");
}

TEST(CalibPassTimer, SplitsAPassAtItsHessianAccumulations) {
  // Pass 1: begin 0, accumulations 2-5 and 7-8, end 10. Pass 2: begin 100, end 103.
  auto clock = std::make_unique<ScriptedClock>(std::vector<double>{0, 2, 5, 7, 8, 10, 100, 103});
  CalibPassTimer pass(std::move(clock));
  GptqStageTimes t;
  pass.begin();
  pass.hessian_begin();
  pass.hessian_end();
  pass.hessian_begin();
  pass.hessian_end();
  pass.end(t);
  EXPECT_DOUBLE_EQ(t.hessians, 0.004);
  EXPECT_DOUBLE_EQ(t.forwards, 0.006);
  pass.begin();
  pass.end(t);
  EXPECT_DOUBLE_EQ(t.hessians, 0.004);
  EXPECT_DOUBLE_EQ(t.forwards, 0.009);
}

TEST(CalibPassTimer, RefusesMarksOutOfOrder) {
  CalibPassTimer pass(std::make_unique<ScriptedClock>(std::vector<double>(16, 0.0)));
  GptqStageTimes t;
  EXPECT_NE(error_of([&] { pass.hessian_begin(); }).find("out of order"), std::string::npos);
  pass.begin();
  EXPECT_NE(error_of([&] { pass.begin(); }).find("begin() twice"), std::string::npos);
  EXPECT_NE(error_of([&] { pass.hessian_end(); }).find("without a begin"), std::string::npos);
  pass.hessian_begin();
  EXPECT_NE(error_of([&] { pass.end(t); }).find("inside an accumulation"), std::string::npos);
  EXPECT_EQ(t.forwards + t.hessians, 0.0);
}

TEST(GptqCalibDtype, Bf16ChangesWhatComesAfterTheFirstGroupOnly) {
  const std::string root = test::scratch_dir();
  const std::string src = test::make_tiny_model(root + "/fp32", /*seed=*/13);
  const std::string calib = test::write_random_words(root + "/calib.txt", 30000, 5);
  GptqModelOptions g = test::tiny_gptq_options(src, calib, /*seed=*/3, root + "/fp32-calib");
  gptq_quantize_model(g);
  g.out.out_dir = root + "/bf16-calib";
  g.calib_dtype = DType::BF16;
  gptq_quantize_model(g);
  const double first = test::flipped_fraction(root + "/fp32-calib", root + "/bf16-calib", /*first_group_only=*/true);
  const double all = test::flipped_fraction(root + "/fp32-calib", root + "/bf16-calib");
  const double p32 = test::perplexity_on(root + "/fp32-calib", calib);
  const double p16 = test::perplexity_on(root + "/bf16-calib", calib);
  std::printf("GPTQ with bf16 vs fp32 replaced weights: layer 0 q/k/v flipped %.5f, all %.5f; perplexity %.4f vs %.4f\n",
              first, all, p16, p32);
  EXPECT_EQ(first, 0.0) << "layer 0's q, k and v are solved before any weight is replaced";
  EXPECT_GT(all, 0.0) << "the bf16 rounding never reached a later group's Hessian";
  EXPECT_NEAR(p16, p32, kPplRelTol * p32);
}

TEST(GptqCalibDtype, RefusesOtherDtypes) {
  const std::string root = test::scratch_dir();
  GptqModelOptions g;
  g.out.model_dir = test::make_tiny_model(root + "/m", /*seed=*/13);
  g.out.out_dir = root + "/q";
  g.out.quiet = true;
  g.calib_path = test::write_random_words(root + "/calib.txt", 2000, 5);
  g.calib_dtype = DType::F16;
  EXPECT_NE(error_of([&] { gptq_quantize_model(g); }).find("calibration dtype must be fp32 or bf16, got"),
            std::string::npos);
}

}  // namespace
}  // namespace qwenq
