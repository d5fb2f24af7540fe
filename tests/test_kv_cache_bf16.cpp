// The bf16 KV cache on the CPU (trainer/qwen_model.h, KvCacheDType::BF16): "every k/v row rounded to bf16 when
// written, read widened to fp32, all math fp32". Oracles:
//   - the rows themselves: layer 0's k and v see the same inputs with either cache, so the BF16 cache's layer-0
//     rows are exactly f32_to_bf16 of the F32 cache's (bit for bit), after a prefill and after steps; the storage
//     is half the F32 cache's;
//   - the logits: a prefill then single-token steps with a BF16 cache against the full causal forward with k and v
//     rounded the same way (forward_logits(batch, BF16): attention_forward_ref, a different attention code) at every
//     position, within kOrderRelTol; the same run against the unrounded F32 forward differs by more than 10x
//     kOrderRelTol (the rounding is really applied, so the first comparison can fail) and by at most kBf16RelTol;
//   - generate with SamplingOptions::kv_cache = BF16 is generate_with over forward_step with a BF16 cache (the
//     option reaches the cache), and differs from nothing else;
//   - parse_kv_cache_dtype's names and its refusal.
// Models: the tiny random Qwen2 preset (D = 16, GQA 2:1, q/k/v biases) and a 1-kv-head variant (GQA 4:1).
//
// Tolerances, relative to max |logit| at the position:
//   kOrderRelTol 1e-5  the two sides round the same k, v to the same bf16 values and differ only by the order of
//                      the fp32 sums (Eigen GEMM blocks vs plain loops) and exp: ~1e-7 observed for fp32 forwards.
//   kBf16RelTol  2e-2  bf16 keeps 8 significant bits (relative rounding <= 2^-9 per element); two layers of that on
//                      k and v move the logits by a few 2^-9 of their size at most; 2e-2 is ~10x 2^-9, the
//                      tolerance tests/gpu/test_decode_cuda.cpp uses for any bf16 rounding.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/generate.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

constexpr double kOrderRelTol = 1e-5;
constexpr double kBf16RelTol = 2e-2;

// max |got - want| / max |want| over one row of V logits.
double rel_err(const float* got, const float* want, int64_t V) {
  double mx = 0, err = 0;
  for (int64_t i = 0; i < V; ++i) {
    mx = std::max(mx, static_cast<double>(std::fabs(want[i])));
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    err = std::isnan(e) ? INFINITY : std::max(err, e);
  }
  return err / (mx > 0 ? mx : 1);
}

std::vector<int32_t> random_tokens(int64_t n, int64_t V, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(rng.below(static_cast<uint64_t>(V)));
  return t;
}

// Prefill `prompt` tokens of `seq` with a BF16 cache, then step through the rest: every position's logits against
// the rounded and the unrounded full forward.
void expect_steps_are_the_rounded_forward(const QwenModel& model, const std::vector<int32_t>& seq, int64_t prompt,
                                          const std::string& what) {
  SCOPED_TRACE(what);
  const int64_t V = model.config().vocab_size, T = static_cast<int64_t>(seq.size());
  const PackedBatch batch = PackedBatch::from_sequences({seq});
  const std::vector<float> rounded = model.forward_logits(batch, KvCacheDType::BF16);
  const std::vector<float> exact = model.forward_logits(batch);
  KvCache cache = model.make_cache(T, KvCacheDType::BF16);
  double worst_rounded = 0, least_exact = INFINITY, worst_exact = 0;
  for (int64_t p = prompt - 1; p < T; ++p) {
    const std::vector<float> got =
        p == prompt - 1 ? model.forward_step(std::vector<int32_t>(seq.begin(), seq.begin() + prompt), &cache)
                        : model.forward_step({seq[p]}, &cache);
    const double er = rel_err(got.data(), rounded.data() + p * V, V);
    const double ee = rel_err(got.data(), exact.data() + p * V, V);
    EXPECT_LE(er, kOrderRelTol) << "position " << p << ": BF16 cache vs the forward with k, v rounded";
    EXPECT_LE(ee, kBf16RelTol) << "position " << p << ": BF16 cache vs the unrounded forward";
    worst_rounded = std::max(worst_rounded, er);
    least_exact = std::min(least_exact, ee);
    worst_exact = std::max(worst_exact, ee);
  }
  EXPECT_EQ(cache.length, T);
  // The rounding must show at every position (each attends over at least its own rounded row), far above the
  // order noise the first comparison allows.
  EXPECT_GT(least_exact, 10 * kOrderRelTol) << "the BF16 cache changed nothing: no rounding applied";
  std::printf("[ %s ] max |dlogit|/max |logit| vs the rounded forward %.2e (tolerance %.0e); vs the unrounded "
              "forward %.2e..%.2e (%.0e)\n",
              what.c_str(), worst_rounded, kOrderRelTol, least_exact, worst_exact, kBf16RelTol);
}

TEST(KvCacheBf16, StepsAreTheForwardWithKvRoundedToBf16) {
  const std::string tmp = test::scratch_dir();
  const QwenModel gqa2(test::make_tiny_model(tmp + "/tiny", 3));
  const QwenModel gqa4(test::make_tiny_model(tmp + "/tiny-kv1", 4, /*kv_heads=*/1));
  ASSERT_EQ(gqa2.config().num_heads / gqa2.config().num_kv_heads, 2);
  ASSERT_EQ(gqa4.config().num_kv_heads, 1);
  const std::vector<int32_t> seq = random_tokens(41, gqa2.config().vocab_size, 17);
  expect_steps_are_the_rounded_forward(gqa2, seq, 17, "tiny GQA 2:1, prompt 17 + 24 steps");
  expect_steps_are_the_rounded_forward(gqa2, seq, 1, "tiny GQA 2:1, prompt 1 + 40 steps");
  expect_steps_are_the_rounded_forward(gqa4, seq, 30, "tiny GQA 4:1, prompt 30 + 11 steps");
}

// A prompt into an empty cache takes the packed forward's blocked attention; a second piece of several tokens onto a
// filled cache and single steps take attention_decode_cpu. Each returned row is the full forward's at its position
// (with k, v rounded as the cache stores them), for both caches; the prompt spans several query and key blocks.
TEST(KvCacheBf16, APromptThenAPieceThenStepsAreTheForward) {
  const QwenModel model(test::make_tiny_model(test::scratch_dir() + "/tiny", 8));
  const int64_t V = model.config().vocab_size;
  const std::vector<int32_t> seq = random_tokens(160, V, 9);
  const PackedBatch batch = PackedBatch::from_sequences({seq});
  for (KvCacheDType dt : {KvCacheDType::F32, KvCacheDType::BF16}) {
    SCOPED_TRACE(kv_cache_dtype_name(dt));
    const std::vector<float> want = model.forward_logits(batch, dt);
    KvCache cache = model.make_cache(160, dt);
    const auto check = [&](const std::vector<int32_t>& piece, const char* what) {
      const std::vector<float> got = model.forward_step(piece, &cache);
      EXPECT_LE(rel_err(got.data(), want.data() + (cache.length - 1) * V, V), kOrderRelTol) << what;
    };
    check(std::vector<int32_t>(seq.begin(), seq.begin() + 150), "the 150-token prompt");
    check(std::vector<int32_t>(seq.begin() + 150, seq.begin() + 157), "7 more tokens at once");
    for (size_t t = 157; t < seq.size(); ++t) check({seq[t]}, "a step");
    EXPECT_EQ(cache.length, 160);
  }
}

TEST(KvCacheBf16, RowsAreTheF32RowsRounded) {
  const QwenModel model(test::make_tiny_model(test::scratch_dir() + "/tiny", 5));
  const QwenConfig& c = model.config();
  const std::vector<int32_t> seq = random_tokens(20, c.vocab_size, 6);
  KvCache f32 = model.make_cache(24), b16 = model.make_cache(24, KvCacheDType::BF16);
  EXPECT_EQ(f32.dtype, KvCacheDType::F32);
  EXPECT_EQ(b16.dtype, KvCacheDType::BF16);
  EXPECT_EQ(f32.bytes(), 2 * c.num_layers * 24 * c.kv_dim() * 4);
  EXPECT_EQ(b16.bytes(), 2 * c.num_layers * 24 * c.kv_dim() * 2);
  const std::vector<int32_t> prompt(seq.begin(), seq.begin() + 12);
  model.forward_step(prompt, &f32);
  model.forward_step(prompt, &b16);
  for (size_t t = 12; t < seq.size(); ++t) {
    model.forward_step({seq[t]}, &f32);
    model.forward_step({seq[t]}, &b16);
  }
  const int64_t n = static_cast<int64_t>(seq.size()) * c.kv_dim();
  int64_t changed = 0;
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(b16.k16[0][i], f32_to_bf16(f32.k[0][i])) << "layer 0 k element " << i;
    ASSERT_EQ(b16.v16[0][i], f32_to_bf16(f32.v[0][i])) << "layer 0 v element " << i;
    changed += bf16_to_f32(b16.k16[0][i]) != f32.k[0][i];
  }
  EXPECT_GT(changed, n / 2) << "most fp32 k values are not bf16 values: the rows were not rounded";
  // Rows past the length are never written.
  for (int64_t i = n; i < 24 * c.kv_dim(); ++i) ASSERT_EQ(b16.k16[1][i], 0) << "layer 1 k element " << i;
}

TEST(KvCacheBf16, GenerateUsesTheOption) {
  const QwenModel model(test::make_tiny_model(test::scratch_dir() + "/tiny", 7));
  SamplingOptions opt;
  opt.max_new_tokens = 30;
  opt.kv_cache = KvCacheDType::BF16;
  const std::vector<int32_t> prompt = {5, 6, 7, 8};
  KvCache cache;
  DecodeFns fns;
  fns.prefill = [&](const std::vector<int32_t>& p, int64_t cap) {
    cache = model.make_cache(cap, KvCacheDType::BF16);
    return model.forward_step(p, &cache);
  };
  fns.step = [&](int32_t id) { return model.forward_step({id}, &cache); };
  const std::vector<int32_t> want = generate_with(model.config().max_position_embeddings, prompt, opt, fns);
  EXPECT_EQ(generate(model, prompt, opt), want);
  EXPECT_EQ(want.size(), 30u);
  EXPECT_EQ(cache.dtype, KvCacheDType::BF16);
  EXPECT_EQ(cache.length, 4 + 29);
}

TEST(KvCacheBf16, DtypeNames) {
  EXPECT_EQ(parse_kv_cache_dtype("f32", "--kv-cache"), KvCacheDType::F32);
  EXPECT_EQ(parse_kv_cache_dtype("bf16", "--kv-cache"), KvCacheDType::BF16);
  EXPECT_STREQ(kv_cache_dtype_name(KvCacheDType::F32), "f32");
  EXPECT_STREQ(kv_cache_dtype_name(KvCacheDType::BF16), "bf16");
  for (const char* bad : {"fp16", "BF16", "", "f16"}) {
    try {
      parse_kv_cache_dtype(bad, "--kv-cache");
      ADD_FAILURE() << "'" << bad << "' accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--kv-cache: '" + std::string(bad) +
                                           "' is not a KV cache dtype; use f32 or bf16"),
                std::string::npos)
          << e.what();
    }
  }
}

}  // namespace
}  // namespace qwenq
