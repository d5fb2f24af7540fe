// Reward models (trainer/reward_model.h) and GRPO's `--reward model=DIR`: a sequence classifier made from a tiny
// random model (its lm_head dropped for a two-label score head), scored against the causal LM's own final hidden
// states times the head's first row at transformers' pooled position; the texts TRL builds; the refusals of a
// classifier used as a language model and of a language model used as a classifier; and a GRPO run rewarded by it.
// tests/oracle/test_reward_model_oracle.py checks the scores against transformers' Qwen2ForSequenceClassification.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "core/rng.h"
#include "trainer/grpo_reward.h"
#include "trainer/quantize_model.h"
#include "trainer/reward_model.h"
#include "trainer/train_loop.h"
#include "tests/support/safetensors_edit.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_training.h"

namespace qwenq {
namespace {

using Json = nlohmann::ordered_json;
using test::error_of;

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// fp32 on both sides; the reward sums the head's product in double, the reference in the same order.
constexpr double kRewardRelTol = 1e-6;

// The score head the tests write: [2, C], seeded, so that label 1 differs from the reward's label 0.
std::vector<float> score_head(int64_t C) {
  Rng rng(17);
  std::vector<float> s(static_cast<size_t>(2 * C));
  for (float& v : s) v = static_cast<float>(rng.normal() / std::sqrt(static_cast<double>(C)));
  return s;
}

// The tiny random model at dir/lm and a sequence classifier of the same decoder at dir/rm (score.weight [2, C]
// added, no lm_head; config.json's pad_token_id = pad). Returns dir/rm.
std::string make_reward_model(const std::string& dir, int32_t pad) {
  const std::string lm = test::make_tiny_model(dir + "/lm", /*seed=*/5), rm = dir + "/rm";
  make_dirs(rm);
  for (const char* f : {"config.json", "vocab.json", "merges.txt", "tokenizer_config.json", "model.safetensors"}) {
    write_file_atomic(path_join(rm, f), read_file(path_join(lm, f)));
  }
  const int64_t C = QwenModel(lm).config().hidden_size;
  test::rewrite_safetensors(path_join(rm, "model.safetensors"), [&](const std::string& name, const TensorView& v,
                                                                     std::vector<uint8_t> bytes, SafetensorsWriter& w) {
    if (name == "lm_head.weight") return;  // (the tiny preset ties its head: none to drop)
    w.add_owned(name, v.dtype, v.shape, std::move(bytes));
    if (name == "model.norm.weight") w.add_owned("score.weight", DType::F32, {2, C}, bytes_of(score_head(C)));
  });
  Json cfg = Json::parse(read_file(path_join(rm, "config.json")));
  cfg["architectures"] = Json::array({"Qwen2ForSequenceClassification"});
  cfg["pad_token_id"] = pad;
  write_file_atomic(path_join(rm, "config.json"), cfg.dump(2));
  return rm;
}

// What the reward model must give for one sequence: the LM's final hidden state at `pos` times score row 0.
double reference_reward(const QwenModel& lm, const std::vector<int32_t>& seq, int64_t pos) {
  std::vector<float> hidden;
  lm.forward_hidden(PackedBatch::from_sequences({seq}), &hidden);
  const int64_t C = lm.config().hidden_size;
  const std::vector<float> head = score_head(C);
  double s = 0;
  for (int64_t c = 0; c < C; ++c) s += static_cast<double>(hidden[static_cast<size_t>(pos * C + c)]) * head[c];
  return s;
}

TEST(RewardModel, ScoresThePooledHiddenStateWithTheFirstLabel) {
  const std::string root = test::scratch_dir();
  const int32_t pad = 300;
  const RewardModel rm(make_reward_model(root, pad));
  const QwenModel lm(root + "/lm");
  EXPECT_EQ(rm.num_labels(), 2);
  EXPECT_EQ(rm.pad_token_id(), pad);
  // Three lengths packed together; the last ends in two pad tokens (pooled before them, as transformers does).
  const std::vector<std::vector<int32_t>> seqs = {{5, 9, 40, 41}, {7}, {12, 13, 14, 15, 16, pad, pad}};
  const std::vector<double> got = rm.score(seqs);
  ASSERT_EQ(got.size(), 3u);
  const std::vector<int64_t> pooled = {3, 0, 4};
  double scale = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    EXPECT_EQ(rm.pooled_position(seqs[i]), pooled[i]) << i;
    scale = std::max(scale, std::fabs(reference_reward(lm, seqs[i], pooled[i])));
  }
  for (size_t i = 0; i < seqs.size(); ++i) {
    EXPECT_NEAR(got[i], reference_reward(lm, seqs[i], pooled[i]), kRewardRelTol * scale) << i;
  }
  EXPECT_NE(got[0], got[1]);
  // transformers' rule at the edges: every token a pad -> position 0; a pad inside the text is skipped over only at
  // the end.
  EXPECT_EQ(rm.pooled_position({pad, pad}), 0);
  EXPECT_EQ(rm.pooled_position({pad, 4, pad, 6}), 3);
  EXPECT_TRUE(contains(error_of([&] { rm.score({{1, 2}, {}}); }), "sequence 1 has no tokens"));
}

TEST(RewardModel, WithoutAPadIdTheLastTokenIsPooled) {
  const std::string root = test::scratch_dir();
  const std::string dir = make_reward_model(root, 0);
  Json cfg = Json::parse(read_file(path_join(dir, "config.json")));
  cfg["pad_token_id"] = nullptr;
  write_file_atomic(path_join(dir, "config.json"), cfg.dump(2));
  const RewardModel rm(dir);
  EXPECT_EQ(rm.pad_token_id(), -1);
  EXPECT_EQ(rm.pooled_position({0, 0, 0}), 2);
}

TEST(RewardModel, TextsAreTrlsPromptPlusCompletionOrItsChatTemplate) {
  const std::string root = test::scratch_dir();
  const RewardModel rm(make_reward_model(root, 300));
  EXPECT_EQ(rm.text(Json("Once upon a time"), " there was a dog."), "Once upon a time there was a dog.");
  const Json prompt = Json::array({Json{{"role", "user"}, {"content", "Name a pet."}}});
  const std::string chat = rm.text(prompt, "A dog.");
  const std::string want = rm.tokenizer().apply_chat_template({{"user", "Name a pet."}, {"assistant", "A dog."}}, false);
  EXPECT_EQ(chat, want);
  EXPECT_TRUE(contains(chat, "<|im_start|>assistant\nA dog.<|im_end|>")) << chat;
  // Special tokens written in the text are read as theirs; no BOS is added.
  const std::vector<int32_t> ids = rm.tokens(chat);
  EXPECT_EQ(ids.front(), rm.tokenizer().token_id("<|im_start|>"));
  EXPECT_TRUE(contains(error_of([&] { rm.text(Json::array({Json{{"role", "bot"}, {"content", "x"}}}), "y"); }),
                       "is not system, user, assistant or tool"));
}

TEST(RewardModel, ClassifiersAndLanguageModelsAreNotMistakenForEachOther) {
  const std::string root = test::scratch_dir();
  const std::string rm = make_reward_model(root, 300);
  std::string e = error_of([&] { QwenModel m(rm); });
  EXPECT_TRUE(contains(e, "a sequence classifier (score.weight and no lm_head.weight")) << e;
  EXPECT_TRUE(contains(e, "--reward model=" + rm)) << e;
  e = error_of([&] { RewardModel m(root + "/lm"); });  // the tiny model ties its head: neither tensor
  EXPECT_TRUE(contains(e, "has no score.weight, so it is a causal language model")) << e;
  // An untied language model names its lm_head.
  test::rewrite_safetensors(path_join(root + "/lm", "model.safetensors"), [&](const std::string& name,
                                                                              const TensorView& v,
                                                                              std::vector<uint8_t> bytes,
                                                                              SafetensorsWriter& w) {
    w.add_owned(name, v.dtype, v.shape, bytes);
    if (name == "model.embed_tokens.weight") w.add_owned("lm_head.weight", v.dtype, v.shape, std::move(bytes));
  });
  Json cfg = Json::parse(read_file(path_join(root + "/lm", "config.json")));
  cfg["tie_word_embeddings"] = false;
  write_file_atomic(path_join(root + "/lm", "config.json"), cfg.dump(2));
  e = error_of([&] { RewardModel m(root + "/lm"); });
  EXPECT_TRUE(contains(e, "holds lm_head.weight, so it is a causal language model")) << e;
  // A score head of the wrong width is refused; one label and a stray bias (transformers' score Linear has none, so
  // it is not read) load.
  const auto reshape_score = [&](std::vector<int64_t> shape, bool bias) {
    test::rewrite_safetensors(path_join(rm, "model.safetensors"), [&](const std::string& name, const TensorView& v,
                                                                      std::vector<uint8_t> bytes,
                                                                      SafetensorsWriter& w) {
      if (name == "score.bias") return;
      if (name == "score.weight") {
        bytes.resize(static_cast<size_t>(shape[0] * shape[1]) * 4);
        w.add_owned(name, v.dtype, shape, std::move(bytes));
        if (bias) w.add_owned("score.bias", v.dtype, {shape[0]}, bytes_of(std::vector<float>(shape[0], 1.f)));
        return;
      }
      w.add_owned(name, v.dtype, v.shape, std::move(bytes));
    });
  };
  const int64_t C = QwenModel(root + "/lm").config().hidden_size;
  reshape_score({4, C / 2}, false);
  e = error_of([&] { RewardModel m(rm); });
  EXPECT_TRUE(contains(e, "the score head has shape [4, " + std::to_string(C / 2) + "]")) << e;
  reshape_score({1, C}, true);
  EXPECT_EQ(RewardModel(rm).num_labels(), 1);
}

// fp32 sums of the same dequantized values in another order: the packed NF4 decoder against its dense twin.
constexpr double kPackedRewardRelTol = 1e-5;

TEST(RewardModel, AnNf4RewardModelScoresAsItsDequantizedTwin) {
  const std::string root = test::scratch_dir();
  const std::string rm = make_reward_model(root, 300);
  QuantizeOptions q;
  q.method = QuantizeOptions::Method::Nf4;
  q.model_dir = rm;
  q.out_dir = root + "/rm_nf4";
  q.quiet = true;
  quantize_model(q);  // calibration-free: the score head passes through
  DequantizeOptions d;
  d.model_dir = q.out_dir;
  d.out_dir = root + "/rm_deq";
  d.dtype = DType::F32;
  d.quiet = true;
  dequantize_model(d);
  const RewardModel packed(q.out_dir), dense(d.out_dir), original(rm);
  ASSERT_TRUE(packed.model().weights().layers[0].q.nf4 != nullptr);
  const std::vector<std::vector<int32_t>> seqs = {{5, 9, 40, 41, 42}, {7, 8}, {12, 13, 14, 15, 16, 17, 18}};
  const std::vector<double> a = packed.score(seqs), b = dense.score(seqs), c = original.score(seqs);
  double scale = 0;
  for (double v : b) scale = std::max(scale, std::fabs(v));
  for (size_t i = 0; i < seqs.size(); ++i) EXPECT_NEAR(a[i], b[i], kPackedRewardRelTol * scale) << i;
  EXPECT_NE(a, c);  // quantization moved the rewards
}

TEST(RewardModel, GrpoRewardFunctionScoresRenderedCompletions) {
  const std::string root = test::scratch_dir();
  const std::string dir = make_reward_model(root, 300);
  auto f = make_reward_functions({"model=" + dir}, 16);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0]->name(), "model");
  const Json plain = {{"prompt", "Once upon a time"}};
  const Json chat = {{"prompt", Json::array({Json{{"role", "user"}, {"content", "Name a pet."}}})}};
  std::vector<RewardSample> s(3);
  s[0].record = &plain, s[0].completion = " a dog.";
  s[1].record = &plain, s[1].completion = " a cat.";
  s[2].record = &chat, s[2].completion = "A dog.", s[2].conversational = true;
  const std::vector<double> got = f[0]->score(s);
  const RewardModel rm(dir);
  const std::vector<double> want =
      rm.score({rm.tokens("Once upon a time a dog."), rm.tokens("Once upon a time a cat."),
                rm.tokens(rm.text(chat["prompt"], "A dog."))});
  EXPECT_EQ(got, want);
  EXPECT_EQ(f[0]->check_record(chat), "");
  const std::string e = error_of([&] { make_reward_functions({"model=" + root + "/lm"}, 16); });
  EXPECT_TRUE(contains(e, "--reward model=" + root + "/lm: ")) << e;
  EXPECT_TRUE(contains(e, "not a sequence classifier")) << e;
  EXPECT_TRUE(contains(error_of([] { make_reward_functions({"model"}, 16); }), "model takes a value"));
}

TEST(RewardModel, GrpoTrainsAgainstAModelReward) {
  const std::string root = test::scratch_dir();
  const std::string rm = make_reward_model(root, 300);
  write_file_atomic(root + "/p.jsonl", "{\"prompt\": \"Ann is\"}\n{\"prompt\": \"Bob was\"}\n{\"prompt\": \"Cid\"}\n");
  TrainOptions o = test::small_grpo_options(root + "/lm", root + "/p.jsonl", root + "/run", 2);
  o.grpo_options.num_generations = 3;
  o.grpo_options.max_completion_len = 8;
  o.grpo_options.rewards = {"model=" + rm};
  train_lora(o);
  const std::vector<double> mean = test::step_metric(o.out_dir + "/metrics.jsonl", "rewards_model_mean");
  const std::vector<double> sd = test::step_metric(o.out_dir + "/metrics.jsonl", "rewards_model_std");
  ASSERT_EQ(mean.size(), 2u);
  for (size_t i = 0; i < mean.size(); ++i) {
    EXPECT_TRUE(std::isfinite(mean[i])) << i;
    EXPECT_GT(sd[i], 0.0) << i;  // a continuous reward: the sampled completions score differently
  }
}

}  // namespace
}  // namespace qwenq
