// AWQ's bf16 calibration (AwqModelOptions::calib_dtype, `qwen-quant awq --calib-dtype bf16`): the scale search's
// module evaluations see the searched Linears rounded to bf16, as AutoAWQ evaluates its candidates in the model's
// fp16. Oracles:
//   - the CPU runner with BF16 is the fp32 runner on the same weights rounded to bf16 (core/dtype.h's f32_to_bf16),
//     loss for loss, bit for bit; and the rounding changes the loss (the runner does round);
//   - on stories260K the bf16 search keeps AWQ's quality: tests/test_quant_awq.cpp's AwqModel.BeatsRtnOnStories260K;
//   - any other dtype is refused before anything is written.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/files.h"
#include "quant/awq.h"
#include "quant/awq_search.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/awq_runner.h"
#include "trainer/quantize_model.h"
#include "trainer/quantize_output.h"
#include "trainer/qwen_model.h"
#include "trainer/tokenizer.h"

namespace qwenq {
namespace {

using test::error_of;

std::vector<float> rounded(std::vector<float> w) {
  bf16_round_inplace(w.data(), w.size());
  return w;
}

TEST(AwqCalibDtype, Bf16RunnerIsTheFp32RunnerOnRoundedWeights) {
  // fp32 weights: every candidate and working copy changes when rounded. MHA (kv_heads = heads), so all four groups
  // are searched.
  const std::string dir = test::make_tiny_model(test::scratch_dir() + "/tiny", 5, /*kv_heads=*/4);
  QwenModel m32(dir), m16(dir);
  const auto windows = calibration_windows(test::source_dir() + "/README.md", "text", 6, 40, 0,
                                           Tokenizer::from_dir(dir));
  auto r32 = make_awq_cpu_runner(m32, windows, 80);
  auto r16 = make_awq_cpu_runner(m16, windows, 80, DType::BF16);
  const int64_t G = 16;
  AwqSearchOptions o;
  o.group_size = G;
  for (int64_t l = 0; l < m32.config().num_layers; ++l) {
    r32->capture(l);
    r16->capture(l);
    std::vector<float> W[7], Wr[7];
    std::vector<LinearWeight> stored;
    for (int i = 0; i < 7; ++i) {
      stored.push_back(m32.linear_weight(l, kDecoderLinears[i].group, kDecoderLinears[i].index));
      W[i] = stored.back().dequantize();
      Wr[i] = rounded(W[i]);
    }
    for (const AwqScaleGroup& grp : kAwqGroups) {
      SCOPED_TRACE("layer " + std::to_string(l) + " group " + grp.prev);
      // The fp32 runner's reference of a whole module reads the model's own weights: the group's rounded (only the
      // searched Linears round; the module's others, o_proj in the attention, stay as stored).
      for (int i = 0; i < 7; ++i) {
        const bool in_group = std::find(grp.slots.begin(), grp.slots.end(), i) != grp.slots.end();
        m32.linear_weight(l, kDecoderLinears[i].group, kDecoderLinears[i].index) =
            in_group ? LinearWeight::from_fp32(Wr[i], stored[i].N, stored[i].K) : stored[i];
      }
      r32->set_reference(l, grp, Wr);
      r16->set_reference(l, grp, W);
      const std::vector<float> mean = r16->input_mean(grp.input);
      const std::vector<float> s = awq_candidate_scales(mean, mean, 0.5, /*duo_scaling=*/false);
      const int64_t K = static_cast<int64_t>(s.size());
      std::vector<float> cand[3], cand_r[3];
      for (size_t j = 0; j < grp.slots.size(); ++j) {
        const std::vector<float>& w = W[grp.slots[j]];
        cand[j].resize(w.size());
        awq_candidate_ref(w.data(), static_cast<int64_t>(w.size()) / K, K, s.data(), 4, G, cand[j].data());
        cand_r[j] = rounded(cand[j]);
      }
      const double l16 = r16->loss(l, grp, cand);
      EXPECT_GT(l16, 0.0);
      EXPECT_EQ(l16, r32->loss(l, grp, cand_r));
      EXPECT_EQ(r16->loss_scaled(l, grp, W, s, o), l16);  // the candidates built by the runner, rounded alike
      std::vector<float> originals[3];
      for (size_t j = 0; j < grp.slots.size(); ++j) originals[j] = W[grp.slots[j]];
      EXPECT_EQ(r16->loss(l, grp, originals), 0.0);  // the working weights themselves: the reference
      // The rounding is there: the unrounded candidates against the unrounded reference give another loss.
      for (int i = 0; i < 7; ++i) m32.linear_weight(l, kDecoderLinears[i].group, kDecoderLinears[i].index) = stored[i];
      r32->set_reference(l, grp, W);
      EXPECT_NE(r32->loss(l, grp, cand), l16);
    }
  }
  EXPECT_NE(error_of([&] { make_awq_cpu_runner(m32, windows, 80, DType::F16); })
                .find("awq: the calibration dtype must be fp32 or bf16, got F16"),
            std::string::npos);
}

TEST(AwqCalibDtype, RefusedDtypeWritesNothing) {
  const std::string root = test::scratch_dir();
  const std::string src = test::make_tiny_model(root + "/tiny", 9);
  AwqModelOptions a = test::awq_test_options(src, root + "/awq", test::source_dir() + "/README.md");
  a.calib_dtype = DType::F16;
  EXPECT_NE(error_of([&] { awq_quantize_model(a); }).find("awq: the calibration dtype must be fp32 or bf16, got F16"),
            std::string::npos);
  EXPECT_FALSE(dir_exists(a.out.out_dir));
}

}  // namespace
}  // namespace qwenq
