// The GPU trainer's adapter arena walk (trainer/lora_cuda_buffers.h: lora_arena_put / lora_arena_get), against the
// arena written out: every slot's A then B (then a DoRA adapter's m) in slots() order, for a LoRA and a DoRA adapter. A MoE adapter (every expert and the shared expert
// adapted, tiny-moe-shared's dimensions) with distinct values, through stages of 1, 7, 64 floats (stages cutting A and
// B anywhere, several per tensor), exactly the arena, and larger than it: the stages cover the arena once, in order,
// each full but the last, and the walk back restores every value.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "lora/lora_adapter.h"
#include "tests/support/test_errors.h"
#include "trainer/lora_cuda_buffers.h"
#include "trainer/lora_model.h"
#include "trainer/random_model.h"

namespace qwenq {
namespace {

// dora: with magnitudes m (numbered too), which follow each slot's B in the arena.
LoraAdapter numbered_adapter(bool dora) {
  LoraConfig lc;
  lc.r = 2;
  lc.use_dora = dora;
  lc.target_modules = {"q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"};
  LoraAdapter a(lora_dims_of(qwen_preset("tiny-moe-shared")), lc);
  float x = 1.f;
  for (size_t s = 0; s < a.slots().size(); ++s) {
    for (float& v : a.weights(s).A) v = x++;
    for (float& v : a.weights(s).B) v = -(x++);
    for (float& v : a.weights(s).m) v = 0.5f * (x++);
  }
  return a;
}

void check_walk(bool dora) {
  SCOPED_TRACE(dora ? "DoRA" : "LoRA");
  const LoraAdapter a = numbered_adapter(dora);
  std::vector<float> want;
  for (size_t s = 0; s < a.slots().size(); ++s) {
    want.insert(want.end(), a.weights(s).A.begin(), a.weights(s).A.end());
    want.insert(want.end(), a.weights(s).B.begin(), a.weights(s).B.end());
    want.insert(want.end(), a.weights(s).m.begin(), a.weights(s).m.end());
    EXPECT_EQ(static_cast<int64_t>(a.weights(s).m.size()), dora ? a.weights(s).N : 0);
  }
  const int64_t total = static_cast<int64_t>(want.size());
  ASSERT_GT(a.slots().size(), 30u);  // the experts' slots are there
  for (int64_t stage : {int64_t{1}, int64_t{7}, int64_t{64}, total, total + 5}) {
    SCOPED_TRACE(stage);
    std::vector<float> arena(want.size(), 0.f);
    int64_t expect_at = 0, calls = 0;
    lora_arena_put(a, stage, [&](const float* data, int64_t offset, int64_t n) {
      EXPECT_EQ(offset, expect_at);
      EXPECT_TRUE(n == stage || offset + n == total) << "a short stage before the end";
      ASSERT_LE(offset + n, total);
      std::copy(data, data + n, arena.begin() + offset);
      expect_at += n;
      ++calls;
    });
    EXPECT_EQ(expect_at, total);
    EXPECT_EQ(calls, (total + stage - 1) / stage);
    EXPECT_EQ(arena, want);
    LoraAdapter back = a;
    for (size_t s = 0; s < back.slots().size(); ++s) {
      std::fill(back.weights(s).A.begin(), back.weights(s).A.end(), 0.f);
      std::fill(back.weights(s).B.begin(), back.weights(s).B.end(), 0.f);
      std::fill(back.weights(s).m.begin(), back.weights(s).m.end(), 0.f);
    }
    expect_at = 0;
    lora_arena_get(&back, stage, [&](float* data, int64_t offset, int64_t n) {
      EXPECT_EQ(offset, expect_at);
      ASSERT_LE(offset + n, total);
      std::copy(arena.begin() + offset, arena.begin() + offset + n, data);
      expect_at += n;
    });
    EXPECT_EQ(expect_at, total);
    for (size_t s = 0; s < a.slots().size(); ++s) {
      EXPECT_EQ(back.weights(s).A, a.weights(s).A) << a.slots()[s].path;
      EXPECT_EQ(back.weights(s).B, a.weights(s).B) << a.slots()[s].path;
      EXPECT_EQ(back.weights(s).m, a.weights(s).m) << a.slots()[s].path;
    }
  }
}

TEST(LoraArena, StagesWalkTheSlotsInOrder) {
  check_walk(false);
  check_walk(true);
  test::expect_error([&] { lora_arena_put(numbered_adapter(false), 0, [](const float*, int64_t, int64_t) {}); },
                     {"lora_arena_put", "at least one float, got 0"});
}

}  // namespace
}  // namespace qwenq
