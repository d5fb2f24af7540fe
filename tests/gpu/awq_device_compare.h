// AWQ on both devices compared, for the GPU AWQ tests (test_awq_model_cuda.cpp: dense models; test_awq_moe_cuda.cpp:
// mixtures of experts): awq_quantize_model with device Cpu and Cuda into <out>-cpu / <out>-gpu (searches saved
// beside them), then the share of scaling groups with the same α, of equal clip bounds and of equal dequantized
// weights (every Linear awq_layer_linears lists: a MoE layer's experts too), and the perplexity of both outputs (CPU
// evaluation), held to the thresholds of awq_tol below (their reasons: test_awq_model_cuda.cpp's header); and the
// tiny models' AWQ setting both files use.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "core/files.h"
#include "quant/awq.h"
#include "tests/gpu/gpu_test_compare.h"
#include "tests/support/test_paths.h"
#include "trainer/awq_runner.h"
#include "trainer/perplexity.h"
#include "trainer/quantize_model.h"
#include "trainer/qwen_model.h"
#include "trainer/tokenizer.h"

namespace qwenq::test {

// The GPU AWQ tests' tolerances (test_awq_model_cuda.cpp's header gives the reason for each).
namespace awq_tol {
constexpr double kFp32RelTol = 1e-4;
constexpr double kMeanRelTol = 1e-4;
constexpr double kLossRelTol = 2e-3;
constexpr double kScaleMatchRelTol = 1e-4;
constexpr double kAlphaAgreement = 0.75;
constexpr double kWeightAgreement = 0.7;
constexpr double kPplRelTol = 1e-2;
constexpr double kClipNearTie = 1e-3;
constexpr double kClipFlipShare = 1e-2;
constexpr int64_t kClipFlipFloor = 2;
}  // namespace awq_tol

struct AwqAgreement {
  double alpha = 0;    // scaling groups whose scales agree within scale_tol relative per channel (the same α)
  double clip = 0;     // clip bounds within 1e-6 relative
  double weights = 0;  // equal dequantized weights
  double ppl_cpu = 0, ppl_gpu = 0;
};

// Share of scaling groups with the same α in two saved searches, and share of clip bounds within 1e-6 relative.
inline std::pair<double, double> awq_search_agreement(const std::string& a, const std::string& b, double scale_tol) {
  const AwqSearchResult ra = load_awq_search(a), rb = load_awq_search(b);
  EXPECT_EQ(ra.scales.size(), rb.scales.size());
  int same = 0;
  for (const auto& [key, sa] : ra.scales) {
    auto it = rb.scales.find(key);
    if (it == rb.scales.end() || it->second.size() != sa.size()) continue;
    bool eq = true;
    for (size_t k = 0; k < sa.size(); ++k) eq = eq && std::fabs(sa[k] - it->second[k]) <= scale_tol * std::fabs(sa[k]);
    same += eq;
  }
  int64_t clips_same = 0, clips = 0;
  for (const auto& [key, ca] : ra.clips) {
    auto it = rb.clips.find(key);
    if (it == rb.clips.end()) continue;
    for (size_t i = 0; i < std::min(ca.first.size(), it->second.first.size()); ++i)
      clips_same += std::fabs(ca.first[i] - it->second.first[i]) <= 1e-6 * std::fabs(ca.first[i]);
    clips += static_cast<int64_t>(ca.first.size());
  }
  return {ra.scales.empty() ? 0.0 : static_cast<double>(same) / ra.scales.size(),
          clips ? static_cast<double>(clips_same) / clips : 1.0};
}

// Share of equal dequantized weights over every quantized Linear of two quantized directories of the same model.
inline double awq_weight_agreement(const std::string& a, const std::string& b) {
  QwenModel ma(a), mb(b);
  int64_t equal = 0, total = 0;
  for (int64_t l = 0; l < ma.config().num_layers; ++l) {
    for (const AwqLinear& lin : awq_layer_linears(ma.config(), l)) {
      const std::vector<float> wa = awq_linear_weight(ma, l, lin).dequantize();
      const std::vector<float> wb = awq_linear_weight(mb, l, lin).dequantize();
      EXPECT_EQ(wa.size(), wb.size()) << lin.name;
      for (size_t j = 0; j < std::min(wa.size(), wb.size()); ++j) equal += wa[j] == wb[j];
      total += static_cast<int64_t>(wa.size());
    }
  }
  return total > 0 ? static_cast<double>(equal) / total : 0.0;
}

// AWQ of `opt` on both devices (out_dir + "-cpu" / "-gpu"), compared; perplexity of both outputs on `ids` at
// seq_len (CPU evaluation). Prints one line under `label`.
inline AwqAgreement awq_compare_devices(AwqModelOptions opt, const std::vector<int32_t>& ids, int64_t seq_len,
                                        const char* label) {
  const std::string base = opt.out.out_dir;
  double secs[2];
  for (int d = 0; d < 2; ++d) {
    opt.device = d == 0 ? Device::Cpu : Device::Cuda;
    opt.out.out_dir = base + (d == 0 ? "-cpu" : "-gpu");
    opt.save_search = opt.out.out_dir + ".search.safetensors";
    const auto t0 = Clock::now();
    awq_quantize_model(opt);
    secs[d] = seconds_since(t0);
  }
  AwqAgreement r;
  std::tie(r.alpha, r.clip) =
      awq_search_agreement(base + "-cpu.search.safetensors", base + "-gpu.search.safetensors",
                           awq_tol::kScaleMatchRelTol);
  r.weights = awq_weight_agreement(base + "-cpu", base + "-gpu");
  PerplexityOptions po;
  po.seq_len = seq_len;
  po.quiet = true;
  r.ppl_cpu = evaluate_perplexity(QwenModel(base + "-cpu"), ids, po).perplexity;
  r.ppl_gpu = evaluate_perplexity(QwenModel(base + "-gpu"), ids, po).perplexity;
  std::printf("[ %s ] scaling groups with equal alpha %.3f, equal clip bounds %.4f, equal weights %.5f; perplexity "
              "CPU-quantized %.4f GPU-quantized %.4f; AWQ %.2fs CPU %.2fs GPU\n",
              label, r.alpha, r.clip, r.weights, r.ppl_cpu, r.ppl_gpu, secs[0], secs[1]);
  return r;
}

// awq_compare_devices held to the agreements and the perplexity of awq_tol.
inline void expect_awq_devices_agree(const AwqModelOptions& opt, const std::vector<int32_t>& ids, int64_t seq_len,
                                     const char* label) {
  const AwqAgreement r = awq_compare_devices(opt, ids, seq_len, label);
  EXPECT_GE(r.alpha, awq_tol::kAlphaAgreement);
  EXPECT_GE(r.weights, awq_tol::kWeightAgreement);
  EXPECT_NEAR(r.ppl_gpu, r.ppl_cpu, awq_tol::kPplRelTol * r.ppl_cpu);
}

// The tiny models' setting: `src` into `out`, group 32, calibrated on 12 windows of 64 tokens of the repository's
// README (any text: the tiny tokenizers are byte-level) in three chunks of 5, 5 and 2 windows, quiet.
inline AwqModelOptions tiny_awq_options(const std::string& src, const std::string& out) {
  AwqModelOptions a;
  a.out.model_dir = src;
  a.out.out_dir = out;
  a.out.group_size = 32;
  a.out.layout = IntLayout::AwqGemm;  // AutoAWQ's (the default GPTQ v1 cannot store AWQ's zero points of 0)
  a.out.quiet = true;
  a.calib_path = test::source_dir() + "/README.md";
  a.calib_samples = 12;
  a.calib_seq_len = 64;
  a.chunk_tokens = 5 * 64;
  return a;
}

// The first 8 x 128 tokens of the README by src's tokenizer: the tiny models' perplexity text.
inline std::vector<int32_t> tiny_awq_eval_tokens(const std::string& src) {
  std::vector<int32_t> ids =
      Tokenizer::from_dir(src).encode(read_file(test::source_dir() + "/README.md"));
  ids.resize(std::min<size_t>(ids.size(), 8 * 128));
  return ids;
}

}  // namespace qwenq::test
