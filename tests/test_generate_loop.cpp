// generate_with (trainer/generate.h), the decoding loop the CPU generate and the GPU generate_cuda share, driven
// by a scripted model whose logits make token (position · 7 + 3) mod V the greedy choice: the capacity it asks for,
// the tokens, the number of steps (the last token drawn is never stepped), the stop ids, the context limit, and
// sampling's use of the seed. Also: generate on a tiny CPU model is generate_with over forward_step.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/error.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/generate.h"

namespace qwenq {
namespace {

constexpr int64_t kV = 11;

int32_t scripted(int64_t position) { return static_cast<int32_t>((position * 7 + 3) % kV); }

// Logits peaked at the scripted token of the position being predicted.
std::vector<float> logits_for(int64_t position) {
  std::vector<float> l(kV, 0.f);
  l[scripted(position)] = 5.f;
  return l;
}

struct Script {
  int64_t capacity = -1, length = 0, steps = 0;
  std::vector<int32_t> stepped;
  DecodeFns fns() {
    DecodeFns f;
    f.prefill = [this](const std::vector<int32_t>& p, int64_t cap) {
      capacity = cap;
      length = static_cast<int64_t>(p.size());
      return logits_for(length);
    };
    f.step = [this](int32_t id) {
      EXPECT_LT(length, capacity) << "a step past the capacity";
      stepped.push_back(id);
      ++steps;
      return logits_for(++length);
    };
    return f;
  }
};

TEST(GenerateLoop, GreedyTokensStepsAndCapacity) {
  Script s;
  SamplingOptions opt;
  opt.max_new_tokens = 5;
  std::vector<int32_t> seen;
  const std::vector<int32_t> out =
      generate_with(100, {1, 2, 3}, opt, s.fns(), [&](int32_t id) { seen.push_back(id); });
  const std::vector<int32_t> want = {scripted(3), scripted(4), scripted(5), scripted(6), scripted(7)};
  EXPECT_EQ(out, want);
  EXPECT_EQ(seen, want);
  EXPECT_EQ(s.capacity, 8);  // prompt + max_new_tokens
  EXPECT_EQ(s.steps, 4);     // the fifth token is not stepped
  EXPECT_EQ(s.stepped, std::vector<int32_t>(want.begin(), want.begin() + 4));
}

TEST(GenerateLoop, StopsAtAStopIdAndAtTheContext) {
  Script s;
  SamplingOptions opt;
  opt.max_new_tokens = 50;
  opt.stop_ids = {scripted(5)};
  EXPECT_EQ(generate_with(100, {0, 0, 0}, opt, s.fns()), (std::vector<int32_t>{scripted(3), scripted(4), scripted(5)}));
  EXPECT_EQ(s.steps, 2);

  Script c;
  opt.stop_ids.clear();
  const std::vector<int32_t> out = generate_with(6, {0, 0, 0}, opt, c.fns());  // context of 6: 3 new tokens
  EXPECT_EQ(c.capacity, 6);
  EXPECT_EQ(out.size(), 3u);
  EXPECT_EQ(c.steps, 2);

  Script z;
  opt.max_new_tokens = 0;
  EXPECT_TRUE(generate_with(100, {4}, opt, z.fns()).empty());
  EXPECT_EQ(z.capacity, 1);

  opt.max_new_tokens = 4;
  try {
    generate_with(3, {0, 0, 0}, opt, z.fns());
    ADD_FAILURE() << "a prompt filling the context was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the prompt has 3 tokens, the model's context is 3"), std::string::npos)
        << e.what();
  }
  try {
    generate_with(3, {}, opt, z.fns());
    ADD_FAILURE() << "an empty prompt was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the prompt is empty"), std::string::npos) << e.what();
  }
}

// Sampling draws from one Rng(seed): two runs with a seed agree, and the draws follow the seed.
TEST(GenerateLoop, SamplingIsSeeded) {
  SamplingOptions opt;
  opt.max_new_tokens = 40;
  opt.temperature = 5.f;  // flat enough that the draws vary
  const auto run = [&](uint64_t seed) {
    Script s;
    opt.seed = seed;
    return generate_with(100, {1}, opt, s.fns());
  };
  EXPECT_EQ(run(3), run(3));
  EXPECT_NE(run(3), run(4));
}

TEST(GenerateLoop, CpuGenerateIsTheLoopOverForwardStep) {
  const std::string dir = test::make_tiny_model(test::scratch_dir() + "/tiny", 5);
  const QwenModel model(dir);
  SamplingOptions opt;
  opt.max_new_tokens = 12;
  opt.temperature = 0.9f;
  opt.top_k = 20;
  opt.seed = 8;
  const std::vector<int32_t> prompt = {5, 6, 7, 8};
  KvCache cache;
  DecodeFns fns;
  int64_t steps = 0;
  fns.prefill = [&](const std::vector<int32_t>& p, int64_t cap) {
    cache = model.make_cache(cap);
    return model.forward_step(p, &cache);
  };
  fns.step = [&](int32_t id) {
    ++steps;
    return model.forward_step({id}, &cache);
  };
  const std::vector<int32_t> want = generate_with(model.config().max_position_embeddings, prompt, opt, fns);
  EXPECT_EQ(generate(model, prompt, opt), want);
  EXPECT_EQ(want.size(), 12u);
  EXPECT_EQ(steps, 11);
}

}  // namespace
}  // namespace qwenq
