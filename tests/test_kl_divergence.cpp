// KL divergence between two models' next-token distributions (trainer/kl_divergence.h): one position against
// torch's float64 log_softmax, the sample summaries against numpy.percentile, and whole evaluations against a
// brute-force loop over forward_logits written here in double, with logits chunks that straddle windows.
// tests/oracle/test_kld_oracle.py checks `eval --kl-base` against transformers on stories260K.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/loss.h"
#include "tests/support/safetensors_edit.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/kl_divergence.h"

namespace qwenq {
namespace {

// torch.log_softmax in float64 of the rows below (printed with repr): KL(P ‖ Q), P[1], Q[1].
constexpr double kTorchKl = 0.2333929732589193, kTorchPb1 = 0.23024879090473357, kTorchPq1 = 0.49885077643816433;
constexpr double kTol = 1e-12;  // double arithmetic on the same float inputs, a different summation order

TEST(KlDivergence, OnePositionEqualsTorch) {
  const float b[] = {2.0f, 1.0f, 0.5f, -3.0f}, q[] = {1.0f, 1.5f, 0.5f, -2.0f};
  const KlPosition p = kl_position(b, q, 4, /*target=*/1);
  EXPECT_NEAR(p.kld, kTorchKl, kTol);
  EXPECT_NEAR(p.p_base, kTorchPb1, kTol);
  EXPECT_NEAR(p.p, kTorchPq1, kTol);
  EXPECT_NEAR(p.nll_base, -std::log(kTorchPb1), kTol);
  EXPECT_NEAR(p.nll, -std::log(kTorchPq1), kTol);
  EXPECT_FALSE(p.same_top1);  // argmax 0 vs 1
  // Softmax is shift invariant: adding 4 (exact in float for these values) to either row changes nothing.
  const float q4[] = {5.0f, 5.5f, 4.5f, 2.0f};
  EXPECT_NEAR(kl_position(b, q4, 4, 1).kld, kTorchKl, kTol);
  // A row against itself: exactly 0, same top-1; an ignored target leaves the probabilities at 0.
  const KlPosition self = kl_position(b, b, 4, kIgnoreIndex);
  EXPECT_EQ(self.kld, 0.0);
  EXPECT_TRUE(self.same_top1);
  EXPECT_EQ(self.p, 0.0);
  EXPECT_EQ(self.nll, 0.0);
}

TEST(KlDivergence, TopOneTiesTakeTheFirstIndexAsTorchArgmax) {
  const float b[] = {1.0f, 3.0f, 3.0f}, q[] = {3.0f, 1.0f, 3.0f};
  EXPECT_FALSE(kl_position(b, q, 3, 0).same_top1);  // 1 vs 0
  const float b2[] = {3.0f, 3.0f, 0.0f}, q2[] = {3.0f, 1.0f, 3.0f};
  EXPECT_TRUE(kl_position(b2, q2, 3, 0).same_top1);  // 0 vs 0
}

TEST(KlDivergence, SummaryEqualsNumpy) {
  // numpy 2.2.6 (the oracle pin): np.percentile(x, p) (linear), x.mean(), x.std(ddof=1)/sqrt(n), sqrt(mean(x*x)).
  const std::vector<double> x = {0.3, -1.0, 2.5, 0.0, 7.25, 1.0, -0.5};
  const double numpy[kNumKlPercentiles] = {7.221500000000003, 6.964999999999998, 5.824999999999997,
                                           4.400000000000002, 0.3, -0.7, -0.85, -0.97, -0.997};
  const SampleSummary s = summarize_sample(x);
  for (int k = 0; k < kNumKlPercentiles; ++k) {
    EXPECT_NEAR(s.percentile[k], numpy[k], 1e-12) << kKlPercentiles[k];
    EXPECT_NEAR(percentile_linear(x, kKlPercentiles[k]), numpy[k], 1e-12) << kKlPercentiles[k];
  }
  EXPECT_NEAR(s.mean, 1.3642857142857143, 1e-15);
  EXPECT_NEAR(s.stderr_mean, 1.0704201603706327, 1e-14);
  EXPECT_NEAR(s.rms, 2.95568459558381, 1e-14);
  EXPECT_EQ(s.min, -1.0);
  EXPECT_EQ(s.max, 7.25);
  EXPECT_EQ(percentile_linear({4.0}, 50), 4.0);
  test::expect_error([] { summarize_sample({}); }, "empty sample");
}

// The same quantities by brute force: each window's full logits from forward_logits, a plain double loop.
struct BruteForce {
  double kld_mean = 0, same_top1 = 0, nll = 0, nll_base = 0, dp_mean = 0, kld_max = 0;
  int64_t n = 0;
};

BruteForce brute_force(const QwenModel& m, const QwenModel& base, const std::vector<int32_t>& tokens, int64_t L,
                       int64_t windows) {
  const int64_t V = m.config().vocab_size;
  BruteForce r;
  for (int64_t w = 0; w < windows; ++w) {
    const std::vector<int32_t> seq(tokens.begin() + w * L, tokens.begin() + (w + 1) * L);
    const PackedBatch b = PackedBatch::from_sequences({seq});
    const std::vector<float> lq = m.forward_logits(b), lb = base.forward_logits(b);
    for (int64_t t = 0; t + 1 < L; ++t) {
      const float* q = lq.data() + t * V;
      const float* p = lb.data() + t * V;
      double zq = 0, zp = 0;
      for (int64_t v = 0; v < V; ++v) zq += std::exp(static_cast<double>(q[v])), zp += std::exp(static_cast<double>(p[v]));
      double kl = 0;
      int64_t aq = 0, ap = 0;
      for (int64_t v = 0; v < V; ++v) {
        const double pp = std::exp(static_cast<double>(p[v])) / zp, qq = std::exp(static_cast<double>(q[v])) / zq;
        kl += pp * std::log(pp / qq);
        if (q[v] > q[aq]) aq = v;
        if (p[v] > p[ap]) ap = v;
      }
      const int32_t y = seq[t + 1];
      r.kld_mean += kl;
      r.kld_max = std::max(r.kld_max, kl);
      r.same_top1 += aq == ap;
      r.nll += -std::log(std::exp(static_cast<double>(q[y])) / zq);
      r.nll_base += -std::log(std::exp(static_cast<double>(p[y])) / zp);
      r.dp_mean += std::exp(static_cast<double>(q[y])) / zq - std::exp(static_cast<double>(p[y])) / zp;
      ++r.n;
    }
  }
  r.kld_mean /= r.n, r.same_top1 /= r.n, r.nll /= r.n, r.nll_base /= r.n, r.dp_mean /= r.n;
  return r;
}

TEST(KlDivergence, ModelsEqualTheBruteForceInChunksAcrossWindows) {
  const std::string root = test::scratch_dir() + "/kld";
  // The base with its (untied) output table plus seeded noise of the table's own scale, so that the two models agree
  // on some top-1 tokens and not on others.
  const std::string base_dir = test::make_random_model(root + "/base", "tiny256", DType::F32, 4, /*layers=*/2);
  test::copy_with_noisy_lm_head(base_dir, root + "/noisy", 17, 0.02f);
  QwenModel m(root + "/noisy"), base(base_dir);
  const int64_t L = 24, V = m.config().vocab_size;
  const std::vector<int32_t> tokens = test::lcg_tokens(5 * L + 7, V, 11);  // 5 windows and a dropped tail
  const BruteForce bf = brute_force(m, base, tokens, L, 4);
  PerplexityOptions opt;
  opt.seq_len = L;
  opt.max_windows = 4;
  opt.windows_per_batch = 3;  // batches of 3 and 1 windows
  opt.quiet = true;
  constexpr double kModelTol = 1e-5;  // fp32 logits of two forward paths (packed batch vs one sequence)
  for (int64_t chunk : {int64_t{0}, int64_t{7}, int64_t{1}}) {  // 7 rows: chunks straddle the windows' ends
    SCOPED_TRACE(chunk);
    const KlDivergenceResult r = evaluate_kl_divergence(m, base, tokens, opt, chunk);
    EXPECT_EQ(r.model.windows, 4);
    EXPECT_EQ(r.model.scored_tokens, bf.n);
    EXPECT_EQ(r.model.corpus_tokens, 5 * L + 7);
    EXPECT_NEAR(r.kld.mean, bf.kld_mean, kModelTol * bf.kld_mean);
    EXPECT_NEAR(r.kld.max, bf.kld_max, kModelTol * bf.kld_max);
    EXPECT_NEAR(r.same_top1, bf.same_top1, 1e-12);
    EXPECT_NEAR(std::log(r.model.perplexity), bf.nll, kModelTol);
    EXPECT_NEAR(std::log(r.base_perplexity), bf.nll_base, kModelTol);
    EXPECT_NEAR(r.ln_ppl_ratio, bf.nll - bf.nll_base, kModelTol);
    EXPECT_NEAR(r.delta_p.mean, bf.dp_mean, kModelTol * std::abs(bf.dp_mean) + 1e-9);
    EXPECT_GT(r.kld.mean, 1e-4);  // two different models: the comparison above is not 0 == 0
    EXPECT_GT(r.same_top1, 0.0);
    EXPECT_LT(r.same_top1, 1.0);
  }
  // The perplexity is evaluate_perplexity's to the bit (same windows, batches, logits chunks and NLL kernel).
  const PerplexityResult p = evaluate_perplexity(m, tokens, opt);
  EXPECT_EQ(evaluate_kl_divergence(m, base, tokens, opt).model.perplexity, p.perplexity);
}

TEST(KlDivergence, AModelAgainstItselfIsZero) {
  QwenModel m(test::make_tiny_model(test::scratch_dir() + "/kld-self", 5));
  const std::vector<int32_t> tokens = test::lcg_tokens(100, m.config().vocab_size, 2);
  PerplexityOptions opt;
  opt.seq_len = 32;
  opt.quiet = true;
  const KlDivergenceResult r = evaluate_kl_divergence(m, m, tokens, opt);
  EXPECT_EQ(r.kld.mean, 0.0);
  EXPECT_EQ(r.kld.max, 0.0);
  EXPECT_EQ(r.delta_p.rms, 0.0);
  EXPECT_EQ(r.same_top1, 1.0);
  EXPECT_EQ(r.same_top1_stderr, 0.0);
  EXPECT_EQ(r.ln_ppl_ratio, 0.0);
  EXPECT_NEAR(r.nll_correlation, 1.0, 1e-12);
  EXPECT_EQ(r.base_perplexity, r.model.perplexity);
  EXPECT_EQ(r.model.scored_tokens, 3 * 31);
}

// The noisy copy of a tied model (stories260K has no lm_head.weight) is untied, its lm_head the embedding plus the
// noise: the GPU KL tests compare against it, and a copy equal to the model (KLD 0) made their ratios 0 / 0 on the
// first H200 run.
TEST(KlDivergence, NoisyCopyOfATiedModelIsUntiedAndDiffers) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string root = test::scratch_dir() + "/kld-tied";
  const std::string base_dir = test::import_stories260k(root + "/stories");
  test::copy_with_noisy_lm_head(base_dir, root + "/noisy", 17, 0.02f);
  const QwenModel base(base_dir), noisy(root + "/noisy");
  ASSERT_TRUE(base.config().tie_word_embeddings);
  EXPECT_FALSE(noisy.config().tie_word_embeddings);
  const TensorView& e = noisy.weights().embed;
  const TensorView& h = noisy.weights().lm_head;
  ASSERT_NE(e.data, h.data);
  ASSERT_EQ(h.numel(), e.numel());
  double rms = 0;
  for (int64_t i = 0; i < e.numel(); ++i) {
    const double d = double(static_cast<const float*>(h.data)[i]) - static_cast<const float*>(e.data)[i];
    rms += d * d;
  }
  EXPECT_NEAR(std::sqrt(rms / e.numel()), 0.02, 0.002);  // the noise, N(0, 0.02²)
  PerplexityOptions opt;
  opt.seq_len = 64;
  opt.quiet = true;
  const std::vector<int32_t> tokens = test::tinystories_prefix_tokens(base_dir, 3 * 64);
  EXPECT_GT(evaluate_kl_divergence(noisy, base, tokens, opt).kld.mean, 0.0);
  // A model with neither table to perturb is refused, not copied unchanged.
  const std::string bare = root + "/bare";
  test::copy_with_noisy_lm_head(base_dir, bare, 1, 0.f);
  test::rewrite_safetensors(path_join(bare, "model.safetensors"),
                      [](const std::string& name, const TensorView& v, std::vector<uint8_t> bytes, SafetensorsWriter& w) {
                        if (name != "lm_head.weight") w.add_owned(name, v.dtype, v.shape, std::move(bytes));
                      });
  test::expect_error([&] { test::copy_with_noisy_lm_head(bare, root + "/bare2", 1, 0.1f); }, "has no lm_head.weight");
}

TEST(KlDivergence, RefusesTooLittleTextAndAnotherVocabulary) {
  QwenModel m(test::make_tiny_model(test::scratch_dir() + "/kld-err", 5));
  PerplexityOptions opt;
  opt.seq_len = 64;
  opt.quiet = true;
  test::expect_error([&] { evaluate_kl_divergence(m, m, test::lcg_tokens(50, 320, 1), opt); },
                     {"50 tokens", "fewer than one window of --seq-len 64"});
  QWENQ_REQUIRE_SHARED_DATA();
  QwenModel stories(test::import_stories260k(test::scratch_dir() + "/kld-stories"));
  test::expect_error([&] { evaluate_kl_divergence(m, stories, test::lcg_tokens(200, 320, 1), opt); },
                     {"has a vocabulary of 512 tokens", "one of 320", "needs the same vocabulary"});
}

}  // namespace
}  // namespace qwenq
