// GPTQ's `--calib-dtype bf16` (GptqModelOptions::calib_dtype) and the stage times `qwen-quant gptq` prints
// (trainer/gptq_stage_times.h).
//
// Oracles: the Hessian of inputs rounded to bf16 is HessianAccumulator's fp32 one of the rounded inputs (bit for bit
// in one block of rows, within fp32 summation order across blocks), and differs from the unrounded one. End to end,
// the fp32 run of the same model and calibration: with bf16 even the first group of the first block (q, k, v), solved
// before any weight is replaced, has a Hessian of rounded inputs, so some of its codes must flip, and so must later
// groups' (which also see weights rounded to bf16, 2^-9 relative); the model must be as good (perplexity within 1 %,
// as tests/test_calib_chunks.cpp allows for a change of summation order). The timers: a scripted clock.
// The GPU driver's bf16 replacements (tensor-core GEMMs) and its tensor-core Hessian:
// tests/gpu/test_gptq_model_cuda.cpp, tests/gpu/test_gptq_cuda.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/eigen_core.h"
#include "core/rng.h"
#include "quant/hessian.h"
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
// The bf16 Hessian in blocks of rows against one fp32 update of the same rounded rows: fp32 sums of 3000 terms in
// another order, relative to max |H| (tests/gpu/test_gptq_cuda.cpp's kHessianRel for two implementations).
constexpr double kHessianSumRel = 1e-5;

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

std::vector<float> rounded(std::vector<float> x) {
  bf16_round_inplace(x.data(), x.size());
  return x;
}

// H of x [rows, K] through one accumulator of `dtype`, in batches of `batch` rows.
Eigen::MatrixXf hessian(const std::vector<float>& x, int64_t K, DType dtype, int64_t batch) {
  HessianAccumulator acc(K, dtype);
  const int64_t rows = static_cast<int64_t>(x.size()) / K;
  for (int64_t r0 = 0; r0 < rows; r0 += batch) acc.add_batch(x.data() + r0 * K, std::min(batch, rows - r0));
  return acc.release();
}

TEST(GptqCalibDtype, Bf16HessianIsTheFp32OneOfTheRoundedInputs) {
  const int64_t K = 40;
  Rng rng(17);
  std::vector<float> x(static_cast<size_t>(3000 * K));
  for (float& v : x) v = static_cast<float>(rng.normal());
  // Batches of at most HessianAccumulator::kBf16RoundRows rows: one rank update each way, bit for bit.
  const std::vector<float> small(x.begin(), x.begin() + 700 * K);
  const Eigen::MatrixXf h16 = hessian(small, K, DType::BF16, 300);
  EXPECT_TRUE(h16 == hessian(rounded(small), K, DType::F32, 300));
  EXPECT_FALSE(h16 == hessian(small, K, DType::F32, 300));
  // 3000 rows in one batch: three blocks of rounded rows, the sums in another order than one fp32 update.
  const Eigen::MatrixXf big16 = hessian(x, K, DType::BF16, 3000), big32 = hessian(rounded(x), K, DType::F32, 3000);
  EXPECT_LE((big16 - big32).cwiseAbs().maxCoeff(), kHessianSumRel * big32.cwiseAbs().maxCoeff());
  EXPECT_NE(error_of([] { HessianAccumulator bad(4, DType::F16); }).find("fp32 or rounded to bf16, not F16"),
            std::string::npos);
}

TEST(GptqCalibDtype, Bf16ChangesEveryGroupAndKeepsTheQuality) {
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
  std::printf("GPTQ with bf16 vs fp32 calibration: layer 0 q/k/v flipped %.5f, all %.5f; perplexity %.4f vs %.4f\n",
              first, all, p16, p32);
  EXPECT_GT(first, 0.0) << "layer 0's q, k and v: their Hessian never read inputs rounded to bf16";
  EXPECT_GT(all, first) << "the bf16 rounding never reached a later group";
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
