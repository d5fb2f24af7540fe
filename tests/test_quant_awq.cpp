// AWQ: the statistics and candidate scales against formulas evaluated here in double precision, the clip search
// against a brute-force double-precision search, the scale search's choice, and the whole-model driver: zero
// search strength gives RTN's files exactly, a saved search reloads to the same files, the folded scales keep
// the model's function (v -> o on a multi-head model too), and on the real stories260K AWQ loses clearly less
// perplexity than RTN at the same grid.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include "core/files.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "quant/awq.h"
#include "quant/grid.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_random.h"
#include "trainer/perplexity.h"
#include "trainer/quantize_model.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

using test::error_of;

constexpr uint64_t kSeed = 20261130;
// fp32 statistics against double sums of the same values: relative error of a mean of |values| < 1e-6.
constexpr double kMeanRelTol = 1e-6;
// Candidate scales: powers and the normalization in fp32 against double: relative 1e-5.
constexpr double kScaleRelTol = 1e-5;

TEST(Awq, StatisticsMatchTheirDefinitions) {
  const int64_t T = 37, K = 20, N1 = 5, N2 = 3, G = 8;  // a short last group (20 = 8 + 8 + 4)
  const auto x = test::normal_vector(T * K, kSeed);
  const auto w1 = test::normal_vector(N1 * K, kSeed + 1), w2 = test::normal_vector(N2 * K, kSeed + 2);
  const auto xm = awq_activation_mean(x.data(), T, K);
  const auto wm = awq_weight_mean({w1.data(), w2.data()}, {N1, N2}, K, G);
  for (int64_t k = 0; k < K; ++k) {
    double sx = 0;
    for (int64_t t = 0; t < T; ++t) sx += std::fabs(x[t * K + k]);
    EXPECT_NEAR(xm[k], sx / T, kMeanRelTol * sx / T) << "k " << k;
    double sw = 0;
    for (const auto* w : {&w1, &w2}) {
      const int64_t rows = w == &w1 ? N1 : N2;
      for (int64_t n = 0; n < rows; ++n) {
        const int64_t k0 = k / G * G, k1 = std::min(K, k0 + G);
        double mx = 0;
        for (int64_t j = k0; j < k1; ++j) mx = std::max(mx, std::fabs((double)(*w)[n * K + j]));
        sw += std::fabs((*w)[n * K + k]) / (mx + 1e-6);
      }
    }
    EXPECT_NEAR(wm[k], sw / (N1 + N2), kMeanRelTol * sw / (N1 + N2)) << "k " << k;
  }
}

TEST(Awq, CandidateScalesFollowTheDuoScalingFormula) {
  const std::vector<float> xm = {0.f, 0.5f, 2.f, 7.f, 1e-3f}, wm = {0.3f, 0.9f, 0.01f, 0.5f, 0.2f};
  for (double alpha : {0.0, 0.35, 0.95}) {
    for (bool duo : {true, false}) {
      const auto s = awq_candidate_scales(xm, wm, alpha, duo);
      std::vector<double> ref(xm.size());
      for (size_t k = 0; k < xm.size(); ++k) {
        double v = std::pow((double)xm[k], alpha);
        if (duo) v /= std::pow((double)wm[k], 1 - alpha) + 1e-4;
        ref[k] = std::max(v, 1e-4);
      }
      const double norm = std::sqrt(*std::max_element(ref.begin(), ref.end()) * *std::min_element(ref.begin(), ref.end()));
      for (size_t k = 0; k < xm.size(); ++k) {
        EXPECT_NEAR(s[k], ref[k] / norm, kScaleRelTol * ref[k] / norm) << "alpha " << alpha << " duo " << duo << " k " << k;
      }
    }
  }
  // Zero strength without duo scaling is the identity: RTN.
  for (float v : awq_candidate_scales(xm, wm, 0.0, false)) EXPECT_EQ(v, 1.f);
}

TEST(Awq, ScaleSearchKeepsTheFirstSmallestLoss) {
  const std::vector<float> xm = {1.f, 4.f}, wm = {1.f, 1.f};
  AwqSearchOptions o;
  o.n_grid = 10;
  int calls = 0;
  // Loss minimal at alpha = 0.6 and 0.7 (tie): the first wins.
  const AwqScaleResult r = awq_search_scale(xm, wm, o, [&](const std::vector<float>& s) {
    const double alpha = (calls++) / 10.0;
    return std::fabs(alpha - 0.65) < 0.06 ? 1.0 : 2.0 + alpha;
  });
  EXPECT_EQ(calls, 10);
  EXPECT_DOUBLE_EQ(r.best_alpha, 0.6);
  EXPECT_EQ(r.scales, awq_candidate_scales(xm, wm, 0.6, true));
  ASSERT_EQ(r.losses.size(), 10u);
  EXPECT_NE(error_of([&] { awq_search_scale(xm, wm, o, [](const std::vector<float>&) { return NAN; }); })
                .find("awq: the module's output is not finite for scale exponent 0"),
            std::string::npos);
}

// The clip search by brute force in double precision, straight from the definition.
std::vector<double> clip_errors_ref(const std::vector<float>& W, int64_t n, int64_t K, int64_t g, int64_t G,
                                    const std::vector<float>& x, int64_t T, const AwqSearchOptions& o, float r) {
  const int64_t k0 = g * G, len = std::min(G, K - k0), step = std::max<int64_t>(1, T / o.n_sample_tokens);
  float m0 = 0;
  for (int64_t k = 0; k < len; ++k) m0 = std::max(m0, std::fabs(W[n * K + k0 + k]));
  const float mx = m0 * r;
  std::vector<float> cw(len);
  for (int64_t k = 0; k < len; ++k) cw[k] = std::min(std::max(W[n * K + k0 + k], -mx), mx);
  float scale;
  uint8_t zero;
  grid_for_group(cw.data(), len, 1, o.bits, false, GridRule::Awq, &scale, &zero);
  double err = 0;
  int64_t S = 0;
  for (int64_t t = 0; t < T; t += step, ++S) {
    double e = 0;
    for (int64_t k = 0; k < len; ++k) {
      const double q = dequantize_value(quantize_value(cw[k], scale, zero, (1 << o.bits) - 1), scale, zero);
      e += (double)x[t * K + k0 + k] * (q - W[n * K + k0 + k]);
    }
    err += e * e;
  }
  return {err / S, (double)m0 * r};
}

TEST(Awq, ClipSearchMatchesBruteForce) {
  const int64_t N = 70, K = 40, T = 1100, G = 16;  // 70 rows: a partial block of 64; K = 16 + 16 + 8
  auto W = test::normal_vector(N * K, kSeed + 3);
  for (int64_t n = 0; n < N; ++n) W[n * K + (n % K)] *= 8.f;  // an outlier per row: clipping pays off
  const auto x = test::normal_vector(T * K, kSeed + 4);
  AwqSearchOptions o;
  o.group_size = G;
  const std::vector<float> best = awq_search_clip(W.data(), N, K, x.data(), T, o);
  const int64_t groups = 3;
  ASSERT_EQ(best.size(), static_cast<size_t>(N * groups));
  int clipped = 0;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t g = 0; g < groups; ++g) {
      double best_err = std::numeric_limits<double>::infinity(), chosen_err = -1, unclipped = 0;
      for (int i = 0; i < 10; ++i) {
        const std::vector<double> ev = clip_errors_ref(W, n, K, g, G, x, T, o, 1.f - i / 20.f);
        if (i == 0) unclipped = ev[1];
        best_err = std::min(best_err, ev[0]);
        if (std::fabs(ev[1] - best[n * groups + g]) <= 1e-6 * ev[1]) chosen_err = ev[0];
      }
      ASSERT_GE(chosen_err, 0) << "row " << n << " group " << g << ": bound " << best[n * groups + g]
                               << " is not one of the grid points";
      // The chosen bound is the best one, up to fp32 rounding of nearly tied errors.
      EXPECT_LE(chosen_err, best_err * (1 + 1e-4) + 1e-12) << "row " << n << " group " << g;
      if (best[n * groups + g] < unclipped * 0.999) ++clipped;
    }
  }
  EXPECT_GT(clipped, N * groups / 10) << "the outliers should make clipping worthwhile in many groups";
}

// The drivers hand awq_search_clip only the tokens it samples (awq_clip_token_step): the same bounds bit for bit,
// for T on both sides of every multiple of n_sample_tokens up to 5x (the sampled count stays below 2·n, so its own
// step is 1).
TEST(Awq, ClipSearchOnItsSampledTokensGivesTheSameBounds) {
  const int64_t N = 9, K = 24, G = 8;
  const auto W = test::normal_vector(N * K, kSeed + 7);
  AwqSearchOptions o;
  o.group_size = G;
  o.n_sample_tokens = 16;
  for (int64_t T : {1, 2, 15, 16, 17, 31, 32, 33, 47, 48, 49, 63, 64, 65, 79, 80, 81, 100}) {
    const auto x = test::normal_vector(T * K, kSeed + 100 + T);
    const int64_t step = awq_clip_token_step(T, o), S = (T + step - 1) / step;
    EXPECT_EQ(step, std::max<int64_t>(1, T / o.n_sample_tokens)) << "T " << T;
    EXPECT_LT(S, 2 * o.n_sample_tokens) << "T " << T;
    EXPECT_EQ(awq_clip_token_step(S, o), 1) << "T " << T;
    std::vector<float> rows(static_cast<size_t>(S * K));
    for (int64_t i = 0; i < S; ++i) std::copy_n(x.data() + i * step * K, K, rows.data() + i * K);
    EXPECT_EQ(awq_search_clip(W.data(), N, K, rows.data(), S, o), awq_search_clip(W.data(), N, K, x.data(), T, o))
        << "T " << T;
  }
  o.n_sample_tokens = 0;
  EXPECT_NE(error_of([&] { awq_clip_token_step(10, o); }).find("n_sample_tokens must be >= 1"), std::string::npos);
}

// ---- the whole-model driver ------------------------------------------------------------------------------

std::string make_random(const std::string& dir, int64_t kv_heads = 0) {
  return test::make_tiny_model(dir, /*seed=*/11, kv_heads);
}

std::string make_calib(const std::string& path) { return test::write_random_words(path, 40000, kSeed); }


// Every tensor of two single-file directories, compared byte for byte.
void expect_same_tensors(const std::string& a, const std::string& b) {
  SafetensorsFile fa(a + "/model.safetensors"), fb(b + "/model.safetensors");
  ASSERT_EQ(fa.names(), fb.names());
  for (const auto& name : fa.names()) {
    const TensorView &ta = fa.get(name), &tb = fb.get(name);
    ASSERT_EQ(ta.dtype, tb.dtype) << name;
    ASSERT_EQ(ta.shape, tb.shape) << name;
    EXPECT_EQ(0, std::memcmp(ta.data, tb.data, ta.nbytes())) << name << " differs";
  }
}

double logits_error(const std::string& a, const std::string& b) {
  const PackedBatch batch = PackedBatch::from_sequences({{1, 5, 9, 200, 3, 3, 7, 40, 41, 42}, {42, 17, 99}});
  const auto la = QwenModel(a).forward_logits(batch), lb = QwenModel(b).forward_logits(batch);
  double e = 0;
  for (size_t i = 0; i < la.size(); ++i) e += (la[i] - lb[i]) * (la[i] - lb[i]);
  return std::sqrt(e / la.size());
}

TEST(AwqModel, ZeroSearchStrengthWritesRtnFilesExactly) {
  const std::string root = test::scratch_dir();
  const std::string src = make_random(root + "/fp32"), calib = make_calib(root + "/calib.txt");
  AwqModelOptions a = test::awq_test_options(src, root + "/awq", calib);
  a.search.n_grid = 1;           // alpha = 0 only
  a.search.duo_scaling = false;  // s = x^0 = 1
  a.clip = false;
  const QuantizeReport r = awq_quantize_model(a);
  EXPECT_EQ(r.linears, 14);
  QuantizeOptions rtn = a.out;
  rtn.out_dir = root + "/rtn";
  rtn.sym = false;
  quantize_model(rtn);
  expect_same_tensors(a.out.out_dir, rtn.out_dir);
}

TEST(AwqModel, SavedSearchReloadsToTheSameFiles) {
  const std::string root = test::scratch_dir();
  const std::string src = make_random(root + "/fp32"), calib = make_calib(root + "/calib.txt");
  AwqModelOptions a = test::awq_test_options(src, root + "/searched", calib);
  a.save_search = root + "/search.safetensors";
  awq_quantize_model(a);
  const AwqSearchResult saved = load_awq_search(a.save_search);
  EXPECT_EQ(saved.scales.size(), 2u * 3u);  // per layer: input_layernorm, post_attention_layernorm, up_proj (GQA: no v)
  EXPECT_EQ(saved.clips.size(), 2u * 5u);   // v, o, gate, up, down
  AwqModelOptions b = test::awq_test_options(src, root + "/loaded", "");
  b.load_search = a.save_search;
  awq_quantize_model(b);
  expect_same_tensors(a.out.out_dir, b.out.out_dir);
  // The scales really moved something: the norms differ from the original ones.
  SafetensorsFile orig(src + "/model.safetensors"), q(a.out.out_dir + "/model.safetensors");
  const TensorView &n0 = orig.get("model.layers.0.input_layernorm.weight"), &n1 = q.get("model.layers.0.input_layernorm.weight");
  EXPECT_NE(0, std::memcmp(n0.data, n1.data, n0.nbytes()));

  // A search made for another grid is refused.
  AwqModelOptions c = b;
  c.out.out_dir = root + "/other";
  c.out.group_size = 64;
  EXPECT_NE(error_of([&] { awq_quantize_model(c); }).find("the search was made for 4-bit, group size 32, not 4-bit, group size 64"),
            std::string::npos);
  EXPECT_FALSE(dir_exists(c.out.out_dir));
}

TEST(AwqModel, FoldedScalesKeepTheFunctionWithAndWithoutGqa) {
  for (int64_t kv : {0, 4}) {  // tiny preset: 4 heads, 2 kv heads; kv = 4 is multi-head (v -> o scaling applies)
    SCOPED_TRACE(::testing::Message() << "kv heads " << (kv ? kv : 2));
    const std::string root = test::scratch_dir() + "/kv" + std::to_string(kv);
    const std::string src = make_random(root + "/fp32", kv), calib = make_calib(root + "/calib.txt");
    AwqModelOptions a = test::awq_test_options(src, root + "/awq", calib);
    a.save_search = root + "/search.safetensors";
    awq_quantize_model(a);
    EXPECT_EQ(load_awq_search(a.save_search).scales.count("model.layers.0.self_attn.v_proj"), kv == 4 ? 1u : 0u);
    QuantizeOptions rtn = a.out;
    rtn.out_dir = root + "/rtn";
    rtn.sym = false;
    quantize_model(rtn);
    const double e_awq = logits_error(src, a.out.out_dir), e_rtn = logits_error(src, rtn.out_dir);
    std::printf("random tiny (kv %lld): logits RMS error vs fp32: awq %.3g, rtn %.3g\n", (long long)kv, e_awq, e_rtn);
    // A scale folded the wrong way (or into the wrong channels) changes the function by far more than 4-bit
    // rounding; AWQ's search compares against RTN-equivalent candidates, so it should not be much worse.
    EXPECT_LT(e_awq, 1.5 * e_rtn);
  }
}

TEST(AwqModel, RefusalsLeaveNoOutput) {
  const std::string root = test::scratch_dir();
  const std::string src = make_random(root + "/fp32"), calib = make_calib(root + "/calib.txt");
  AwqModelOptions a = test::awq_test_options(src, root + "/awq", calib);
  a.out.bits = 3;
  EXPECT_NE(error_of([&] { awq_quantize_model(a); }).find("only 4-bit AWQ is supported"), std::string::npos);
  a.out.bits = 4;
  a.out.layout = IntLayout::GptqV1;
  EXPECT_NE(error_of([&] { awq_quantize_model(a); }).find("GPTQ v1 files cannot store"), std::string::npos);
  a.out.layout = IntLayout::AwqGemm;
  a.calib_path.clear();
  EXPECT_NE(error_of([&] { awq_quantize_model(a); }).find("give --calib"), std::string::npos);
  a.calib_path = calib;
  a.out.group_size = 48;  // 64 is not a multiple of 48
  EXPECT_NE(error_of([&] { awq_quantize_model(a); }).find("AWQ GEMM readers need K to be a multiple of the group size 48"),
            std::string::npos);
  EXPECT_FALSE(dir_exists(a.out.out_dir));
  a.out.group_size = 32;
  awq_quantize_model(a);
  EXPECT_NE(error_of([&] { awq_quantize_model(a); }).find("exists (pass --overwrite to replace it)"), std::string::npos);
  AwqModelOptions again = test::awq_test_options(a.out.out_dir, root + "/again", calib);
  EXPECT_NE(error_of([&] { awq_quantize_model(again); }).find("is already quantized"), std::string::npos);
  EXPECT_FALSE(dir_exists(again.out.out_dir));
}

// The acceptance on a real model: at the same 4-bit g64 AWQ grid, AWQ calibrated on C4 loses clearly less
// perplexity on TinyStories than round-to-nearest; so does the search with --calib-dtype bf16 (fp32 weights, so every
// candidate rounds), within kBf16SearchPplRel of the fp32 search: the two pick their scales from losses that differ
// by the weights' bf16 rounding (2^-9 relative), so a few grid points can flip (measured +0.22 %).
constexpr double kBf16SearchPplRel = 0.01;

TEST(AwqModel, BeatsRtnOnStories260K) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string root = test::scratch_dir();
  const std::string fp32 = test::import_stories260k(root + "/fp32");
  AwqModelOptions a = test::awq_test_options(fp32, root + "/awq", test::shared_data_dir() + "/c4/c4_demo.jsonl");
  a.out.group_size = 64;
  a.out.pad_intermediate = true;
  a.calib_samples = 32;
  a.calib_seq_len = 128;
  const QuantizeReport r = awq_quantize_model(a);
  EXPECT_EQ(r.linears, 35);
  EXPECT_EQ(QwenModel(a.out.out_dir).config().intermediate_size, 192);
  QuantizeOptions rtn = a.out;
  rtn.out_dir = root + "/rtn";
  rtn.sym = false;
  quantize_model(rtn);

  std::vector<int32_t> ids = test::tinystories_tokens(fp32);
  ids.resize(32 * 256);
  PerplexityOptions po;
  po.seq_len = 256;
  po.windows_per_batch = 8;
  po.quiet = true;
  const double base = evaluate_perplexity(QwenModel(fp32), ids, po).perplexity;
  const double p_rtn = evaluate_perplexity(QwenModel(rtn.out_dir), ids, po).perplexity;
  const double p_awq = evaluate_perplexity(QwenModel(a.out.out_dir), ids, po).perplexity;
  AwqModelOptions b = a;
  b.out.out_dir = root + "/awq-bf16";
  b.calib_dtype = DType::BF16;
  awq_quantize_model(b);
  const double p_bf16 = evaluate_perplexity(QwenModel(b.out.out_dir), ids, po).perplexity;
  std::printf("stories260K, 4-bit g64 AWQ grid, 32 x 256 TinyStories tokens: fp32 %.4f, rtn %.4f (+%.1f%%), awq %.4f "
              "(+%.1f%%), awq with bf16 search %.4f (%+.2f%% of awq)\n",
              base, p_rtn, 100 * (p_rtn / base - 1), p_awq, 100 * (p_awq / base - 1), p_bf16, 100 * (p_bf16 / p_awq - 1));
  EXPECT_LT(p_awq - base, 0.9 * (p_rtn - base));
  EXPECT_GT(p_awq, base);
  EXPECT_LT(p_bf16 - base, 0.9 * (p_rtn - base));
  EXPECT_LE(std::fabs(p_bf16 - p_awq), kBf16SearchPplRel * p_awq);
}

}  // namespace
}  // namespace qwenq
