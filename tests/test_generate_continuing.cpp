// generate_continuing / prefill_continuing (trainer/generate.h): a conversation's KV cache kept between turns, on the
// tiny random Qwen2 preset. Oracles: the same call on a fresh cache (generate, forward_step):
//   - the first logits of a turn whose prompt extends the last turn's tokens are the fresh prefill's within
//     kOrderRelTol (only the attention's sums are grouped differently), and the greedy and sampled tokens are the
//     same as generate's;
//   - what is kept: the longest common prefix of the cache's tokens and the prompt, at most prompt − 1 tokens (a
//     prompt equal to the cache's tokens recomputes its last one), none for a cache of the other dtype; the cache
//     grows past its first capacity with its rows kept; after the call ctx holds the prompt and every generated
//     token but the last;
//   - a prompt the context cannot hold throws and leaves ctx empty.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/generate.h"

namespace qwenq {
namespace {

// max |logit − fresh| / max |fresh|: the two prefills differ only in how the attention groups its fp32 sums.
constexpr double kOrderRelTol = 1e-5;

double rel_err(const std::vector<float>& got, const std::vector<float>& want) {
  double mx = 0, err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    mx = std::max(mx, static_cast<double>(std::fabs(want[i])));
    err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[i]));
  }
  return err / (mx > 0 ? mx : 1);
}

std::vector<float> fresh_prefill(const QwenModel& model, const std::vector<int32_t>& prompt, KvCacheDType kv) {
  KvCache c = model.make_cache(static_cast<int64_t>(prompt.size()), kv);
  return model.forward_step(prompt, &c);
}

std::vector<int32_t> cat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

class GenerateContinuing : public ::testing::TestWithParam<KvCacheDType> {
 protected:
  // Greedy decoding of max_new tokens with the parameter's cache.
  SamplingOptions options(int64_t max_new) const {
    SamplingOptions opt;
    opt.max_new_tokens = max_new;
    opt.kv_cache = GetParam();
    return opt;
  }
};

TEST_P(GenerateContinuing, TurnsReuseTheCacheAndGiveTheFreshTokens) {
  const QwenModel model(test::make_tiny_model(test::scratch_dir() + "/tiny", 31));
  SamplingOptions opt = options(10);
  CachedContext ctx;

  // Turn 1: nothing to reuse.
  const std::vector<int32_t> a = {1, 5, 9, 200, 3, 3, 7, 40, 41, 42, 17, 8};
  const std::vector<int32_t> out1 = generate_continuing(model, &ctx, a, opt);
  EXPECT_EQ(out1, generate(model, a, opt));
  ASSERT_EQ(out1.size(), 10u);
  EXPECT_EQ(ctx.reused, 0);
  EXPECT_EQ(ctx.tokens, cat(a, std::vector<int32_t>(out1.begin(), out1.end() - 1)));
  EXPECT_EQ(ctx.cache.length, static_cast<int64_t>(ctx.tokens.size()));
  EXPECT_EQ(ctx.cache.dtype, GetParam());
  const int64_t first_capacity = ctx.cache.capacity;

  // Turn 2: the last turn, its reply and more (past the first capacity): everything the cache holds is kept.
  std::vector<int32_t> b = cat(cat(a, out1), {11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25});
  {
    CachedContext probe = ctx;
    const std::vector<float> got = prefill_continuing(model, &probe, b, static_cast<int64_t>(b.size()) + 10, GetParam());
    EXPECT_EQ(probe.reused, static_cast<int64_t>(a.size() + out1.size() - 1));
    EXPECT_LE(rel_err(got, fresh_prefill(model, b, GetParam())), kOrderRelTol);
    EXPECT_GT(probe.cache.capacity, first_capacity);
    EXPECT_EQ(probe.tokens, b);
  }
  opt.temperature = 0.8f;  // sampled: the same draws from the same seed
  opt.seed = 4;
  const std::vector<int32_t> out2 = generate_continuing(model, &ctx, b, opt);
  EXPECT_EQ(ctx.reused, static_cast<int64_t>(a.size() + out1.size() - 1));
  EXPECT_EQ(out2, generate(model, b, opt));

  // A prompt that leaves the conversation after 5 tokens keeps those 5.
  opt.temperature = 0;
  const std::vector<int32_t> c = {1, 5, 9, 200, 3, 60, 61, 62, 63};
  EXPECT_EQ(generate_continuing(model, &ctx, c, opt), generate(model, c, opt));
  EXPECT_EQ(ctx.reused, 5);

  // A prompt equal to what the cache holds recomputes its last token (its logits are needed).
  CachedContext same = ctx;
  const std::vector<int32_t> held = same.tokens;
  const std::vector<float> got = prefill_continuing(model, &same, held, static_cast<int64_t>(held.size()) + 1, GetParam());
  EXPECT_EQ(same.reused, static_cast<int64_t>(held.size()) - 1);
  EXPECT_LE(rel_err(got, fresh_prefill(model, held, GetParam())), kOrderRelTol);
}

TEST_P(GenerateContinuing, AnotherCacheDtypeStartsAfresh) {
  const QwenModel model(test::make_tiny_model(test::scratch_dir() + "/tiny", 32));
  SamplingOptions opt = options(4);
  CachedContext ctx;
  const std::vector<int32_t> a = {3, 4, 5, 6, 7};
  generate_continuing(model, &ctx, a, opt);
  opt.kv_cache = GetParam() == KvCacheDType::F32 ? KvCacheDType::BF16 : KvCacheDType::F32;
  EXPECT_EQ(generate_continuing(model, &ctx, a, opt), generate(model, a, opt));
  EXPECT_EQ(ctx.reused, 0);
  EXPECT_EQ(ctx.cache.dtype, opt.kv_cache);
}

TEST_P(GenerateContinuing, APromptPastTheContextThrowsAndEmptiesTheContext) {
  const QwenModel model(test::make_tiny_model(test::scratch_dir() + "/tiny", 33));
  const SamplingOptions opt = options(4);
  CachedContext ctx;
  generate_continuing(model, &ctx, {3, 4, 5}, opt);
  const std::vector<int32_t> too_long(static_cast<size_t>(model.config().max_position_embeddings), 7);
  test::expect_error([&] { generate_continuing(model, &ctx, too_long, opt); }, "the model's context is");
  EXPECT_TRUE(ctx.tokens.empty());
  EXPECT_EQ(ctx.cache.length, 0);
}

INSTANTIATE_TEST_SUITE_P(Caches, GenerateContinuing, ::testing::Values(KvCacheDType::F32, KvCacheDType::BF16),
                         [](const auto& info) { return std::string(kv_cache_dtype_name(info.param)); });

}  // namespace
}  // namespace qwenq
