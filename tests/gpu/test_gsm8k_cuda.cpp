// qwen-quant gsm8k --device cuda: evaluate_gsm8k (trainer/gsm8k.h) over generate_cuda against the same evaluation
// over the CPU's generate on stories260K (F32, D = 8: the decode path computes in fp32, so greedy tokens agree
// unless two logits tie; tests/gpu/test_decode_cuda.cpp checks 200 such tokens). Twelve items made from TinyStories
// sentences, 2-shot, 40 new tokens, with a stop string that falls mid-output: the prompts, outputs, extractions and
// new-token counts must be the CPU's for at least 11 items (one near-tie allowed), and the accuracies then within
// one item. Skips without a device or without the shared data.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "tests/gpu/gpu_test.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/gsm8k.h"
#include "trainer/qwen_decode_cuda.h"
#include "trainer/qwen_model_cuda.h"

namespace qwenq {
namespace {

TEST(Gsm8kCuda, GreedyItemsAreTheCpus) {
  QWENQ_REQUIRE_GPU();
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string dir = test::import_stories260k(test::scratch_dir() + "/stories");
  const QwenModel cpu(dir);
  const QwenModelCuda gpu(cpu);
  const Tokenizer tok = Tokenizer::from_model(dir);
  const char* sentences[] = {"Lily went to the park.", "Tom had a red ball.", "The cat was very sleepy.",
                             "Sam saw a big dog.", "Mom made a cake.", "The sun was hot.", "Ben lost his toy.",
                             "A bird sang in the tree.", "Sue liked to read.", "The boat was slow.",
                             "Max ate an apple.", "The rain came down."};
  std::vector<Gsm8kItem> items, pool;
  for (int i = 0; i < 12; ++i) items.push_back({sentences[i], "#### " + std::to_string(i)});
  for (int i = 0; i < 4; ++i) pool.push_back({sentences[11 - i], "They were happy.\n#### " + std::to_string(i)});
  Gsm8kOptions opt;
  opt.fewshot = 2;
  opt.max_new_tokens = 40;
  opt.stops = {"Question:", "!"};
  opt.quiet = true;
  const Gsm8kResult want = evaluate_gsm8k(cpu, tok, items, pool, opt);
  const Gsm8kResult got = evaluate_gsm8k(
      [&gpu](const std::vector<int32_t>& p, const SamplingOptions& so) { return generate_cuda(gpu, p, so); },
      cpu.config(), tok, items, pool, opt);
  ASSERT_EQ(got.items.size(), want.items.size());
  int same = 0;
  for (size_t i = 0; i < want.items.size(); ++i) {
    EXPECT_EQ(got.items[i].prompt, want.items[i].prompt) << i;
    const bool eq = got.items[i].output == want.items[i].output && got.items[i].new_tokens == want.items[i].new_tokens &&
                    got.items[i].flexible == want.items[i].flexible;
    same += eq;
  }
  std::printf("[ gsm8k on stories260K ] %d of %zu items identical to the CPU's\n", same, want.items.size());
  EXPECT_GE(same, 11);
  EXPECT_NEAR(got.flexible, want.flexible, 1.0 / 12 + 1e-12);
}

}  // namespace
}  // namespace qwenq
