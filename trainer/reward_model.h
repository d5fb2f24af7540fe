// A reward model: a sequence classifier's checkpoint (Qwen2ForSequenceClassification / Qwen3ForSequenceClassification,
// as TRL's RewardTrainer and most published reward models leave it: the causal LM's decoder and a score head
// [L, C] without bias, no lm_head), scoring text as TRL's GRPOTrainer scores completions with a reward model given
// as a reward function:
//
//   text    standard prompt:        prompt + completion
//           conversational prompt:  the reward model's own chat template over the prompt's messages followed by
//                                   {"role": "assistant", "content": completion}, no generation prompt
//   tokens  the reward model's tokenizer on the text, add_special_tokens = False (special tokens written in the text,
//           such as "<|im_start|>", are read as theirs)
//   reward  h_i · score[0], with h the final hidden states (after model.norm) and i the position transformers'
//           Qwen2ForSequenceClassification pools: the last token that is not config.json's pad_token_id (0 when
//           every token is one); without a pad_token_id, the last token
//
// Only the first label's logit is the reward (TRL takes logits[:, 0]; a one-label regression head is the usual
// reward model). Sequences are scored packed, several to a forward (up to kRewardPackTokens tokens), each with its
// own causal attention, on the CPU.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/qwen_model.h"
#include "trainer/tokenizer.h"

namespace qwenq {

constexpr int64_t kRewardPackTokens = 8192;

class RewardModel {
 public:
  // A model directory (resolved); refuses a causal LM's (naming what it holds) or a GGUF file.
  explicit RewardModel(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const QwenModel& model() const { return *model_; }
  const Tokenizer& tokenizer() const { return tok_; }
  int64_t num_labels() const;
  int32_t pad_token_id() const { return pad_id_; }  // -1: none in config.json

  // The text of a prompt and its completion as described at the top; `prompt` is a string or a message list (throws
  // naming the problem for a malformed list, or when a message list meets a tokenizer without a chat template).
  std::string text(const nlohmann::ordered_json& prompt, const std::string& completion) const;
  std::vector<int32_t> tokens(const std::string& text) const;
  // The reward of each token sequence (each non-empty; throws naming an empty one).
  std::vector<double> score(const std::vector<std::vector<int32_t>>& sequences) const;
  // The position pooled in a sequence (top of this file).
  int64_t pooled_position(const std::vector<int32_t>& sequence) const;

 private:
  std::string dir_;
  std::unique_ptr<QwenModel> model_;
  Tokenizer tok_;
  int32_t pad_id_ = -1;
};

}  // namespace qwenq
