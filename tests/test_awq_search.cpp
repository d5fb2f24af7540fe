// quant/awq_search.h's CPU twins against the code the AWQ driver ran before them, bit for bit:
//   - awq_candidate_ref = awq_fake_quantize(W·diag(s)) · diag(s)⁻¹ (the scale product, the fake quantization and
//     the division as separate fp32 steps), over shapes with a short last group, K < G, group -1, N = 1, 2..8 bits;
//   - awq_clip_inputs_ref = the sampled rows copied, each column divided by s, zero-padded (the driver's former
//     sampled_rows + scale_columns + pad_matrix), with and without s, several steps;
//   - awq_clip_search_ref = awq_search_clip on its sampled tokens, and its choice is the brute-force double search's
//     up to fp32 near ties (tests/support/awq_search_cases.h's measure, as the GPU test uses it);
//   - the CUDA kernel's arithmetic replayed on the CPU (tests/support/awq_search_cases.h: what the GPU test requires
//     of the kernel bit for bit) against the twin: the share of differing bounds (kClipFlipShare) and the double
//     error gap of the two choices where they differ (kClipNearTie), measured here so the GPU test's bounds rest on
//     numbers, and the replay against the brute-force double search (kReplayNearTie);
//   - the CPU block runner's loss_scaled and search_clip (trainer/awq_runner.h) = the driver's former host code;
//   - every argument refusal, with its message.
// Exact comparisons (memcmp / ==) wherever the contract says bit for bit; the near-tie bound kClipNearTie is the
// only tolerance.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "quant/awq.h"
#include "quant/awq_search.h"
#include "tests/support/awq_search_cases.h"
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

constexpr uint64_t kSeed = 20261201;
// Eigen's fp32 errors against double: two shrinks' errors closer than this relative are a near tie either may win
// (fp32 dot products of G ≤ 128 terms and fp32 squared norms of S ≤ 2000 terms: ≤ ~2e-4 relative, worst case).
constexpr double kClipNearTie = 1e-3;
// The replay sums squares in double; only its fp32 dot products (≤ ~1e-5 relative for G ≤ 128) err: 1e-4.
constexpr double kReplayNearTie = 1e-4;
// Share of bounds the replay (= the GPU) may choose differently from the twin (as tests/gpu/test_awq_search_cuda.cpp).
constexpr double kClipFlipShare = 1e-2;
constexpr int64_t kClipFlipFloor = 2;

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// The driver's former candidate: W·s, awq_fake_quantize, / s.
std::vector<float> former_candidate(const std::vector<float>& W, int64_t N, int64_t K, const std::vector<float>& s,
                                    int bits, int64_t G) {
  std::vector<float> c = W;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) c[n * K + k] = c[n * K + k] * s[k];
  c = awq_fake_quantize(c.data(), N, K, bits, G);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) c[n * K + k] = c[n * K + k] / s[k];
  return c;
}

struct Shape {
  int64_t N, K, G;
  int bits;
};

TEST(AwqSearch, CandidateIsTheFormerFakeQuantizeOfScaledWeights) {
  const Shape shapes[] = {{1, 7, 32, 4},   {5, 20, 8, 4},  {17, 100, 32, 4}, {33, 96, 64, 4}, {4, 130, 128, 4},
                          {9, 64, -1, 4},  {6, 40, 16, 2}, {6, 40, 16, 3},    {6, 40, 16, 8},  {64, 896, 128, 4}};
  uint64_t seed = kSeed;
  for (const Shape& c : shapes) {
    SCOPED_TRACE("N " + std::to_string(c.N) + " K " + std::to_string(c.K) + " G " + std::to_string(c.G) + " bits " +
                 std::to_string(c.bits));
    const std::vector<float> W = test::awq_weight(c.N, c.K, ++seed), s = test::awq_scales(c.K, ++seed);
    std::vector<float> out(W.size(), -1.f);
    awq_candidate_ref(W.data(), c.N, c.K, s.data(), c.bits, c.G, out.data());
    const std::vector<float> former = former_candidate(W, c.N, c.K, s, c.bits, c.G);
    EXPECT_TRUE(same_bits(out, former));
    // Not the identity: the candidate moved the weights onto a grid.
    EXPECT_FALSE(same_bits(out, W));
  }
}

TEST(AwqSearch, ClipInputsAreTheSampledRowsScaledAndPadded) {
  const int64_t T = 53, K0 = 24;
  const std::vector<float> x = test::normal_vector(T * K0, kSeed + 50), s = test::awq_scales(K0, kSeed + 51);
  for (int64_t step : {1, 2, 7, 53, 60}) {
    for (int64_t K : {K0, K0 + 9}) {
      for (bool scaled : {false, true}) {
        SCOPED_TRACE("step " + std::to_string(step) + " K " + std::to_string(K) + (scaled ? " scaled" : ""));
        const int64_t S = awq_clip_rows(T, step);
        EXPECT_EQ(S, (T + step - 1) / step);
        std::vector<float> out(static_cast<size_t>(S * K), -1.f), expect(static_cast<size_t>(S * K), 0.f);
        for (int64_t i = 0; i < S; ++i)
          for (int64_t k = 0; k < K0; ++k)
            expect[i * K + k] = scaled ? x[i * step * K0 + k] / s[k] : x[i * step * K0 + k];
        awq_clip_inputs_ref(x.data(), T, K0, step, scaled ? s.data() : nullptr, K, out.data());
        EXPECT_TRUE(same_bits(out, expect));
      }
    }
  }
}

TEST(AwqSearch, ClipSearchIsAwqSearchClipAndBruteForceUpToNearTies) {
  const Shape shapes[] = {{1, 7, 32, 4}, {70, 40, 16, 4}, {33, 100, 32, 4}, {20, 256, 128, 4}, {5, 48, -1, 4}};
  uint64_t seed = kSeed + 100;
  for (const Shape& c : shapes) {
    for (int64_t T : {1, 5, 300}) {
      SCOPED_TRACE("N " + std::to_string(c.N) + " K " + std::to_string(c.K) + " G " + std::to_string(c.G) + " T " +
                   std::to_string(T));
      const std::vector<float> W = test::awq_weight(c.N, c.K, ++seed), x = test::normal_vector(T * c.K, ++seed);
      AwqSearchOptions o;
      o.group_size = c.G;
      o.n_sample_tokens = 64;  // T = 300: step 4, 75 sampled rows
      const int64_t G = c.G > 0 ? c.G : c.K, groups = (c.K + G - 1) / G;
      const int64_t step = awq_clip_token_step(T, o), S = awq_clip_rows(T, step);
      std::vector<float> rows(static_cast<size_t>(S * c.K));
      awq_clip_inputs_ref(x.data(), T, c.K, step, nullptr, c.K, rows.data());
      std::vector<float> twin(static_cast<size_t>(c.N * groups), -1.f);
      awq_clip_search_ref(W.data(), c.N, c.K, rows.data(), S, o, twin.data());
      EXPECT_TRUE(same_bits(twin, awq_search_clip(W.data(), c.N, c.K, x.data(), T, o)));
      // Against the double-precision argmin over the same grid points.
      const std::vector<float> brute = test::awq_clip_brute(W.data(), c.N, c.K, rows.data(), S, 4, G);
      const test::AwqClipAgreement a =
          test::awq_compare_clips(twin, brute, W.data(), c.N, c.K, rows.data(), S, 4, G);
      EXPECT_LE(a.worst_excess, kClipNearTie) << a.differing << " of " << a.total << " bounds differ";
    }
  }
}

TEST(AwqSearch, KernelReplayAgreesWithTheTwinUpToNearTies) {
  const Shape shapes[] = {{1, 7, 32, 4},    {33, 100, 32, 4}, {70, 40, 16, 4}, {65, 384, 128, 4},
                          {5, 48, -1, 4},   {40, 96, 32, 3},  {128, 896, 128, 4}};
  uint64_t seed = kSeed + 400;
  int64_t differing = 0, total = 0;
  for (const Shape& c : shapes) {
    for (int64_t S : {1, 5, 129, 300}) {
      SCOPED_TRACE("N " + std::to_string(c.N) + " K " + std::to_string(c.K) + " G " + std::to_string(c.G) + " S " +
                   std::to_string(S));
      const std::vector<float> W = test::awq_weight(c.N, c.K, ++seed), x = test::normal_vector(S * c.K, ++seed);
      AwqSearchOptions o;
      o.bits = c.bits;
      o.group_size = c.G;
      const int64_t G = c.G > 0 ? c.G : c.K, groups = (c.K + G - 1) / G;
      std::vector<float> twin(static_cast<size_t>(c.N * groups)), replay(twin.size()), brute(twin.size());
      awq_clip_search_ref(W.data(), c.N, c.K, x.data(), S, o, twin.data());
      test::awq_clip_search_replay(W.data(), c.N, c.K, x.data(), S, o, replay.data());
      const test::AwqClipAgreement a =
          test::awq_compare_clips(replay, twin, W.data(), c.N, c.K, x.data(), S, c.bits, G);
      EXPECT_LE(a.differing, std::max<int64_t>(kClipFlipFloor, static_cast<int64_t>(kClipFlipShare * a.total)));
      EXPECT_LE(a.worst_excess, kClipNearTie) << a.differing << " of " << a.total << " bounds differ";
      differing += a.differing;
      total += a.total;
      // The replay's choice is the double search's up to its fp32 dot products.
      brute = test::awq_clip_brute(W.data(), c.N, c.K, x.data(), S, c.bits, G);
      const test::AwqClipAgreement b =
          test::awq_compare_clips(replay, brute, W.data(), c.N, c.K, x.data(), S, c.bits, G);
      EXPECT_LE(b.worst_excess, kReplayNearTie) << b.differing << " of " << b.total << " bounds differ";
    }
  }
  std::printf("  kernel replay vs twin: %lld of %lld clip bounds differ\n", (long long)differing, (long long)total);
  EXPECT_LE(differing, static_cast<int64_t>(kClipFlipShare * total));
}

TEST(AwqSearch, RefusalsNameTheOpAndTheArgument) {
  std::vector<float> buf(64, 1.f);
  const float* p = buf.data();
  float* q = buf.data();
  auto has = [](const std::string& msg, const std::string& what) {
    EXPECT_NE(msg.find(what), std::string::npos) << "message: " << msg;
  };
  has(error_of([&] { awq_candidate_ref(p, 0, 4, p, 4, 2, q); }), "awq_candidate: empty weight [0, 4]");
  has(error_of([&] { awq_candidate_ref(p, 2, 4, p, 9, 2, q); }), "awq_candidate: bits must be in 2..8, got 9");
  has(error_of([&] { awq_candidate_ref(p, 2, 4, p, 4, 0, q); }), "awq_candidate: group size must be positive or -1");
  has(error_of([&] { awq_clip_inputs_ref(p, 0, 4, 1, nullptr, 4, q); }), "awq_clip_inputs: no tokens");
  has(error_of([&] { awq_clip_inputs_ref(p, 4, 4, 0, nullptr, 4, q); }), "awq_clip_inputs: token step must be >= 1");
  has(error_of([&] { awq_clip_inputs_ref(p, 4, 4, 1, nullptr, 3, q); }), "awq_clip_inputs: cannot pad 4 input columns to 3");
  AwqSearchOptions o;
  has(error_of([&] { awq_clip_search_ref(p, 2, 4, p, 0, o, q); }), "awq_clip_search: no sampled tokens (S=0)");
  has(error_of([&] { awq_clip_search_ref(p, 0, 4, p, 2, o, q); }), "awq_clip_search: empty weight [0, 4]");
  o.max_shrink = 0.01;
  has(error_of([&] { awq_clip_search_ref(p, 2, 4, p, 2, o, q); }), "max_shrink * n_grid >= 1");
  o = AwqSearchOptions{};
  o.group_size = 0;
  has(error_of([&] { awq_clip_search_ref(p, 2, 4, p, 2, o, q); }), "awq_clip_search: group size must be positive or -1");
}

// The CPU runner's loss_scaled and search_clip against what the driver computed on the host before they existed:
// loss() of the former candidates, and awq_search_clip on the sampled rows divided by s and zero-padded. Exact.
TEST(AwqSearch, CpuRunnerIsTheDriversFormerHostCode) {
  const std::string dir = test::make_tiny_model(test::scratch_dir() + "/tiny-awq-search", 5, /*kv_heads=*/4);
  QwenModel model(dir);
  const QwenConfig& c = model.config();
  const auto windows = calibration_windows(test::source_dir() + "/README.md", "text", 6, 40, 0,
                                           Tokenizer::from_dir(dir));
  auto runner = make_awq_cpu_runner(model, windows, 80);
  AwqSearchOptions o;
  o.group_size = 16;
  o.n_sample_tokens = 50;  // 240 tokens: step 4
  const int64_t l = 1;
  runner->capture(l);
  std::vector<float> W[7];
  for (int i = 0; i < 7; ++i) W[i] = model.linear_weight(l, kDecoderLinears[i].group, kDecoderLinears[i].index).dequantize();
  for (const AwqScaleGroup& grp : kAwqGroups) {
    SCOPED_TRACE(grp.prev);
    const std::vector<float> x_mean = runner->input_mean(grp.input);
    const int64_t K = static_cast<int64_t>(x_mean.size());
    const std::vector<float> s = test::awq_scales(K, kSeed + 300);
    runner->set_reference(l, grp, W);
    std::vector<float> cand[3];
    for (size_t j = 0; j < grp.slots.size(); ++j) {
      const int64_t N = static_cast<int64_t>(W[grp.slots[j]].size()) / K;
      cand[j] = former_candidate(W[grp.slots[j]], N, K, s, 4, o.group_size);
    }
    const double scaled = runner->loss_scaled(l, grp, W, s, o);
    EXPECT_GT(scaled, 0.0);
    EXPECT_EQ(scaled, runner->loss(l, grp, cand));

    // Clip bounds of the group's first Linear folded by s, its input padded by 5 zero columns.
    const int slot = grp.slots[0];
    const int64_t N = static_cast<int64_t>(W[slot].size()) / K, K2 = K + 5;
    std::vector<float> folded(static_cast<size_t>(N * K2), 0.f);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) folded[n * K2 + k] = W[slot][n * K + k] * s[k];
    const int64_t step = awq_clip_token_step(runner->tokens(), o), S = awq_clip_rows(runner->tokens(), step);
    EXPECT_EQ(step, 4);
    std::vector<float> rows = runner->sampled_rows(grp.input, step), padded(static_cast<size_t>(S * K2), 0.f);
    for (int64_t i = 0; i < S; ++i)
      for (int64_t k = 0; k < K; ++k) padded[i * K2 + k] = rows[i * K + k] / s[k];
    const std::vector<float> expect = awq_search_clip(folded.data(), N, K2, padded.data(), S, o);
    EXPECT_TRUE(same_bits(runner->search_clip(grp.input, s, folded.data(), N, K2, o), expect));
    // Without scales: the rows as kept.
    const std::vector<float> plain = awq_search_clip(W[slot].data(), N, K, rows.data(), S, o);
    EXPECT_TRUE(same_bits(runner->search_clip(grp.input, {}, W[slot].data(), N, K, o), plain));
  }
  EXPECT_NE(error_of([&] { runner->search_clip(BlockLinear::QKV, {1.f, 2.f}, W[0].data(), c.q_dim(), c.hidden_size, o); })
                .find("2 scales for " + std::to_string(c.hidden_size) + " input columns"),
            std::string::npos);
}

}  // namespace
}  // namespace qwenq
