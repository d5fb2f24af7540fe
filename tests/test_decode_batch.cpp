// Batched CPU decoding (QwenModel::forward_steps, generate_batch in trainer/generate.h): a step of B sequences at
// once gives each sequence, bit for bit, the logits and cache rows of its lone one-token forward_step; so
// generate_batch's outputs are generate()'s token for token, whatever the batch and the other prompts.
//   - forward_steps on 16, then 5, then 1 sequences of prompt lengths 1..30 with F32 and BF16 caches mixed, against
//     lone steps on copies of the caches: the tiny preset in fp32 and bf16, its GPTQ, AWQ and NF4 4-bit copies
//     (RTN, group 32) and a mixture of experts with a shared expert; with --cpu-matmul bf16 on as well (a batched
//     step keeps the fp32 products, as a lone step does);
//   - the same on the real stories260K (a K % 16 tail in the fp32 kernel) and its act-order GPTQ copy;
//   - generate_batch with sampling (temperature, top-k, repetition penalty, a stop id) against generate() per
//     prompt, at batch 1, 3 and kMaxDecodeBatch;
//   - the refusals (a cache shared by two sequences, a full cache, mismatched lists, a batch out of range).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/support/test_errors.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/generate.h"
#include "trainer/qwen_model.h"
#include "trainer/quantize_model.h"
#include "trainer/qwen_weights.h"

namespace qwenq {
namespace {

struct Bf16Switch {
  explicit Bf16Switch(bool on) { set_cpu_bf16_products(on); }
  ~Bf16Switch() { set_cpu_bf16_products(false); }
};

void expect_batched_steps_are_lone_steps(const QwenModel& model, const std::string& what) {
  const int64_t V = model.config().vocab_size, S = 16;
  std::vector<KvCache> batched, lone;
  for (int64_t i = 0; i < S; ++i) {
    const std::vector<int32_t> prompt = test::lcg_tokens(1 + (i * 7) % 30, V, static_cast<uint32_t>(100 + i));
    const KvCacheDType dt = i % 2 ? KvCacheDType::BF16 : KvCacheDType::F32;
    batched.push_back(model.make_cache(static_cast<int64_t>(prompt.size()) + 4, dt));
    model.forward_step(prompt, &batched.back());
    lone.push_back(batched.back());
  }
  int round = 0;
  for (const int64_t B : {S, int64_t{5}, int64_t{1}}) {
    const std::vector<int32_t> ids = test::lcg_tokens(B, V, static_cast<uint32_t>(7 + round++));
    std::vector<KvCache*> caches;
    for (int64_t b = 0; b < B; ++b) caches.push_back(&batched[b]);
    const std::vector<float> got = model.forward_steps(ids, caches);
    ASSERT_EQ(static_cast<int64_t>(got.size()), B * V);
    for (int64_t b = 0; b < B; ++b) {
      const std::vector<float> want = model.forward_step({ids[b]}, &lone[b]);
      ASSERT_TRUE(std::equal(want.begin(), want.end(), got.begin() + b * V))
          << what << ": sequence " << b << " of " << B << " (cache length " << lone[b].length << ")";
      ASSERT_EQ(batched[b].length, lone[b].length);
      ASSERT_TRUE(batched[b].k == lone[b].k && batched[b].v == lone[b].v && batched[b].k16 == lone[b].k16 &&
                  batched[b].v16 == lone[b].v16)
          << what << ": sequence " << b << "'s cache rows";
    }
  }
}

TEST(DecodeBatch, ForwardStepsAreEachSequencesLoneStep) {
  const std::string root = test::scratch_dir();
  const std::string src = test::make_tiny_model(root + "/fp32", 31);
  std::vector<std::pair<std::string, std::string>> models = {
      {"tiny fp32", src},
      {"tiny bf16", test::make_random_model(root + "/bf16", "tiny", DType::BF16, 32)},
      {"tiny-moe-shared", test::make_random_model(root + "/moe", "tiny-moe-shared", DType::F32, 33)}};
  for (const auto& [name, method, layout] :
       {std::tuple<const char*, QuantizeOptions::Method, IntLayout>{"gptq", QuantizeOptions::Method::Rtn, IntLayout::GptqV1},
        {"awq", QuantizeOptions::Method::Rtn, IntLayout::AwqGemm},
        {"nf4", QuantizeOptions::Method::Nf4, IntLayout::GptqV1}}) {
    QuantizeOptions o;
    o.method = method;
    o.layout = layout;
    o.group_size = 32;
    o.model_dir = src;
    o.out_dir = root + "/" + name;
    o.quiet = true;
    quantize_model(o);
    models.push_back({name, o.out_dir});
  }
  for (const auto& [name, dir] : models) {
    const QwenModel model(dir);
    for (bool bf16 : {false, true}) {
      const Bf16Switch s(bf16);
      expect_batched_steps_are_lone_steps(model, name + (bf16 ? " (--cpu-matmul bf16)" : ""));
    }
  }
}

// The real stories260K (hidden 64, intermediate 172: the fp32 kernel's K % 16 tail on down_proj; GQA 8:4, D 8) and
// its act-order GPTQ copy (rows sorted by group at load, the packed product's gathered inputs).
TEST(DecodeBatch, Stories260kStepsAreLoneSteps) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string root = test::scratch_dir();
  const std::string hf = test::import_stories260k(root + "/hf");
  ASSERT_NE(QwenModel(hf).config().intermediate_size % 16, 0) << "no K % 16 tail left to exercise";
  const std::string act = test::gptq_act_order_stories260k(hf, root + "/act", 8, 64);
  for (const auto& [name, dir] : {std::pair<const char*, std::string>{"stories260K", hf}, {"act-order GPTQ", act}}) {
    const QwenModel model(dir);
    for (bool bf16 : {false, true}) {
      const Bf16Switch s(bf16);
      expect_batched_steps_are_lone_steps(model, std::string(name) + (bf16 ? " (--cpu-matmul bf16)" : ""));
    }
  }
}

TEST(DecodeBatch, GenerateBatchIsEachPromptsGenerate) {
  const QwenModel model(test::make_tiny_model(test::scratch_dir() + "/tiny", 41));
  const int64_t V = model.config().vocab_size;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 7; ++i) prompts.push_back(test::lcg_tokens(1 + (i * 11) % 25, V, static_cast<uint32_t>(50 + i)));
  SamplingOptions opt;
  opt.max_new_tokens = 12;
  opt.temperature = 0.9f;
  opt.top_k = 20;
  opt.repetition_penalty = 1.1f;
  opt.seed = 5;
  opt.stop_ids = {3};
  opt.kv_cache = KvCacheDType::BF16;
  std::vector<std::vector<int32_t>> want;
  for (const auto& p : prompts) want.push_back(generate(model, p, opt));
  bool stopped_early = false;
  for (const auto& w : want) stopped_early |= static_cast<int64_t>(w.size()) < opt.max_new_tokens;
  EXPECT_TRUE(stopped_early) << "no prompt hit the stop id: sequences of different lengths were not exercised";
  for (const int64_t batch : {int64_t{1}, int64_t{3}, kMaxDecodeBatch}) {
    std::vector<size_t> done;
    const auto got = generate_batch(model, prompts, opt, batch, [&](size_t i, const std::vector<int32_t>& ids) {
      done.push_back(i);
      EXPECT_EQ(ids, want[i]);
    });
    EXPECT_EQ(got, want) << "batch " << batch;
    EXPECT_EQ(done.size(), prompts.size()) << "batch " << batch;
  }
}

TEST(DecodeBatch, RefusalsAreClear) {
  const QwenModel model(test::make_tiny_model(test::scratch_dir() + "/tiny", 43));
  KvCache a = model.make_cache(4), full = model.make_cache(2);
  model.forward_step({1, 2}, &full);
  test::expect_error([&] { model.forward_steps({1, 2}, {&a, &a}); }, "sequences 0 and 1 share one KV cache");
  test::expect_error([&] { model.forward_steps({1}, {&full}); }, "sequence 0 has no room in its KV cache (capacity 2)");
  test::expect_error([&] { model.forward_steps({1, 2}, {&a}); }, "forward_steps: 2 tokens for 1 caches");
  SamplingOptions opt;
  for (const int64_t batch : {int64_t{0}, kMaxDecodeBatch + 1})
    test::expect_error([&] { generate_batch(model, {{1, 2}}, opt, batch); },
                       std::vector<std::string>{"a batch of " + std::to_string(batch) + " sequences",
                                                "it must be in [1, " + std::to_string(kMaxDecodeBatch) + "]"});
}

}  // namespace
}  // namespace qwenq
