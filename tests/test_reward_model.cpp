// Reward models (trainer/reward_model.h) and GRPO's `--reward model=DIR`: a sequence classifier made from a tiny
// random model (its lm_head dropped for a two-label score head), scored against the causal LM's own final hidden
// states times the head's first row at transformers' pooled position; the texts TRL builds; the refusals of a
// classifier used as a language model and of a language model used as a classifier; a SEQ_CLS adapter directory as a
// reward model (on a language model, and on a reward model it trains further); GPTQ and AWQ of a reward model against
// its language model twin's; and a GRPO run rewarded by it.
// tests/oracle/test_reward_model_oracle.py checks the scores against transformers' Qwen2ForSequenceClassification.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "core/rng.h"
#include "lora/peft_io.h"
#include "trainer/grpo_reward.h"
#include "trainer/lora_merge.h"
#include "trainer/lora_model.h"
#include "trainer/quantize_model.h"
#include "trainer/reward.h"
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

// What the reward model must give for one sequence: the LM's final hidden state at `pos` times row 0 of `head`
// (empty: the score head make_reward_model writes).
double reference_reward(const QwenModel& lm, const std::vector<int32_t>& seq, int64_t pos,
                        std::vector<float> head = {}) {
  std::vector<float> hidden;
  lm.forward_hidden(PackedBatch::from_sequences({seq}), &hidden);
  const int64_t C = lm.config().hidden_size;
  if (head.empty()) head = score_head(C);
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

// Without config.json's pad_token_id the tokenizer's pad token is pooled over, else its EOS (reward_pad_id: where
// training pooled, and what TRL's GRPOTrainer sets).
TEST(RewardModel, WithoutAConfigPadIdTheTokenizersPadOrEosIsSkipped) {
  const std::string root = test::scratch_dir();
  const std::string dir = make_reward_model(root, 0);
  Json cfg = Json::parse(read_file(path_join(dir, "config.json")));
  cfg["pad_token_id"] = nullptr;
  write_file_atomic(path_join(dir, "config.json"), cfg.dump(2));
  const RewardModel rm(dir);
  const Tokenizer tok = Tokenizer::from_dir(dir);
  const int32_t want = tok.pad_id() >= 0 ? tok.pad_id() : tok.eos_id();
  ASSERT_GE(want, 0);
  EXPECT_EQ(rm.pad_token_id(), want);
  EXPECT_EQ(rm.pooled_position({0, 1, 2, want}), 2);
  EXPECT_EQ(rm.pad_token_id(), reward_pad_id(dir, tok));
}

// A SEQ_CLS adapter directory (train --objective reward's output) on the language model it names: its LoRA unmerged
// beside the base, its own head; the scores those of the base with the adapter merged in memory times the adapter's
// head (fp32 sums of the same terms in another order). A reward model directory as the base keeps its decoder and
// takes the adapter's head instead of its own. GRPO's model=ADAPTER_DIR scores with it; a CAUSAL_LM adapter, an
// adapter without a base or with one that is not there, are refused by name.
constexpr double kAdapterRewardRelTol = 1e-5;

LoraAdapter seq_cls_adapter(const QwenModel& base, uint64_t seed) {
  LoraConfig c;
  c.r = 4;
  c.alpha = 8;
  c.target_modules = {"q_proj", "v_proj", "down_proj"};
  c.num_labels = 1;
  c.base_model = base.dir();
  LoraAdapter a(lora_dims_of(base.config()), c);
  a.init_peft(seed);
  Rng rng(seed + 1);
  for (size_t i = 0; i < a.slots().size(); ++i)
    for (float& b : a.weights(i).B) b = 0.2f * static_cast<float>(rng.normal());
  a.init_score_head(seed + 2, 0.5);
  return a;
}

std::vector<double> merged_rewards(const std::string& base_dir, const LoraAdapter& a,
                                   const std::vector<std::vector<int32_t>>& seqs, int32_t pad) {
  QwenModel m(base_dir);
  merge_adapter_in_memory(m, a);
  std::vector<double> out;
  for (const auto& seq : seqs)
    out.push_back(reference_reward(m, seq, last_non_pad(seq.data(), static_cast<int64_t>(seq.size()), pad), a.score()));
  return out;
}

TEST(RewardModel, AnAdapterDirectoryScoresAsItsMergedModel) {
  const std::string root = test::scratch_dir();
  make_reward_model(root, 300);
  const std::string lm = root + "/lm";
  const LoraAdapter a = seq_cls_adapter(QwenModel(lm), 31);
  save_peft_adapter(root + "/rm_adapter", a);
  const RewardModel rm(root + "/rm_adapter");
  EXPECT_TRUE(rm.is_adapter());
  EXPECT_EQ(rm.base_dir(), lm);
  EXPECT_EQ(rm.num_labels(), 1);
  const std::vector<std::vector<int32_t>> seqs = {{5, 9, 40, 41, 42}, {7, 8}, {12, 13, 14, 15, 16, 17, 18}};
  const std::vector<double> got = rm.score(seqs);
  const std::vector<double> want = merged_rewards(lm, a, seqs, rm.pad_token_id());
  double scale = 0;
  for (double v : want) scale = std::max(scale, std::fabs(v));
  for (size_t i = 0; i < seqs.size(); ++i) EXPECT_NEAR(got[i], want[i], kAdapterRewardRelTol * scale) << i;
  // The base alone (B = 0, the same head) scores otherwise: the adapter is applied.
  LoraAdapter zero = a;
  for (size_t i = 0; i < zero.slots().size(); ++i) std::fill(zero.weights(i).B.begin(), zero.weights(i).B.end(), 0.f);
  EXPECT_NE(merged_rewards(lm, zero, seqs, rm.pad_token_id()), want);

  // GRPO's --reward model=ADAPTER_DIR.
  auto f = make_reward_functions({"model=" + root + "/rm_adapter"}, 16);
  const Json plain = {{"prompt", "Once upon a time"}};
  std::vector<RewardSample> s(1);
  s[0].record = &plain, s[0].completion = " a dog.";
  EXPECT_EQ(f[0]->score(s), rm.score({rm.tokens("Once upon a time a dog.")}));

  // Refusals: a CAUSAL_LM adapter; no base named; a base that is not there.
  const LoraDims dims = lora_dims_of(QwenModel(lm).config());
  LoraAdapter lm_adapter(dims, [&] {
    LoraConfig c = a.config();
    c.num_labels = 0;
    return c;
  }());
  lm_adapter.init_peft(3);
  save_peft_adapter(root + "/lm_adapter", lm_adapter);
  std::string e = error_of([&] { RewardModel m(root + "/lm_adapter"); });
  EXPECT_TRUE(contains(e, "cannot score with the LoRA adapter " + root + "/lm_adapter")) << e;
  for (const auto& [dir, base, what] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {root + "/nobase", "", "names no base model"}, {root + "/gone", root + "/gone_base", "is not a model here"}}) {
    LoraConfig c = a.config();
    c.base_model = base;
    LoraAdapter b(dims, c);
    b.init_peft(3);
    b.init_score_head(4, 0.5);
    save_peft_adapter(dir, b);
    e = error_of([&] { RewardModel m(dir); });
    EXPECT_TRUE(contains(e, "reward model " + dir + ": ") && contains(e, what)) << e;
  }
}

TEST(RewardModel, AnAdapterOnARewardModelTakesTheAdaptersHead) {
  const std::string root = test::scratch_dir();
  const std::string rm_dir = make_reward_model(root, 300);
  const LoraAdapter a = seq_cls_adapter(QwenModel(rm_dir, ModelHead::kSequenceScore), 41);
  save_peft_adapter(root + "/more", a);
  const RewardModel rm(root + "/more");
  EXPECT_EQ(rm.base_dir(), rm_dir);
  EXPECT_EQ(rm.num_labels(), 1);  // the adapter's head [1, C], not the base's [2, C]
  const std::vector<std::vector<int32_t>> seqs = {{5, 9, 40, 41, 42, 300}, {7, 8}};
  // The classifier's decoder is the language model's (make_reward_model copies it), so the reference merges into lm.
  const std::vector<double> got = rm.score(seqs), want = merged_rewards(root + "/lm", a, seqs, 300);
  double scale = 0;
  for (double v : want) scale = std::max(scale, std::fabs(v));
  for (size_t i = 0; i < seqs.size(); ++i) EXPECT_NEAR(got[i], want[i], kAdapterRewardRelTol * scale) << i;
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

// GPTQ and AWQ calibrate a reward model through its decoder alone: its Linears come out as those of its language model
// twin quantized the same way (the same tensors, byte for byte), the score head passes through unquantized, the
// output is still a sequence classifier, and it scores as that twin's decoder times the head.
TEST(RewardModel, GptqAndAwqQuantizeItsDecoderAsTheLanguageModelsAndKeepTheHead) {
  const std::string root = test::scratch_dir();
  const std::string rm = make_reward_model(root, 300), lm = root + "/lm";
  const std::string calib = test::write_random_words(root + "/calib.txt", 30000, 7);
  const auto same_decoder = [&](const std::string& from_lm, const std::string& from_rm, const std::string& what) {
    const Checkpoint a(from_lm), b(from_rm), src(rm);
    for (const std::string& name : a.names()) {
      ASSERT_TRUE(b.has(name)) << what << ": " << name;
      const TensorView x = a.get(name), y = b.get(name);
      ASSERT_EQ(x.shape, y.shape) << what << ": " << name;
      EXPECT_EQ(std::memcmp(x.data, y.data, x.nbytes()), 0) << what << ": " << name << " differs";
    }
    ASSERT_TRUE(b.has("score.weight") && !b.has("lm_head.weight")) << what;
    const TensorView h = b.get("score.weight"), h0 = src.get("score.weight");
    EXPECT_TRUE(h.dtype == h0.dtype && std::memcmp(h.data, h0.data, h0.nbytes()) == 0) << what << ": the head changed";
    EXPECT_TRUE(contains(read_file(path_join(from_rm, "config.json")), "ForSequenceClassification")) << what;
    const RewardModel q(from_rm);
    const QwenModel twin(from_lm);
    const std::vector<std::vector<int32_t>> seqs = {{5, 9, 40, 41, 300}, {7, 8, 9}};
    const std::vector<double> got = q.score(seqs);
    for (size_t i = 0; i < seqs.size(); ++i) {
      const double want = reference_reward(twin, seqs[i], q.pooled_position(seqs[i]));
      EXPECT_NEAR(got[i], want, kRewardRelTol * std::max(1.0, std::fabs(want))) << what << " " << i;
    }
  };
  GptqModelOptions g = test::tiny_gptq_options(lm, calib, /*seed=*/2, root + "/lm_gptq");
  gptq_quantize_model(g);
  g.out.model_dir = rm;
  g.out.out_dir = root + "/rm_gptq";
  gptq_quantize_model(g);
  same_decoder(root + "/lm_gptq", root + "/rm_gptq", "gptq");
  AwqModelOptions a = test::awq_test_options(lm, root + "/lm_awq", calib);
  awq_quantize_model(a);
  a.out.model_dir = rm;
  a.out.out_dir = root + "/rm_awq";
  awq_quantize_model(a);
  same_decoder(root + "/lm_awq", root + "/rm_awq", "awq");
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
