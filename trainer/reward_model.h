// A reward model: a sequence classifier's checkpoint (Qwen2ForSequenceClassification / Qwen3ForSequenceClassification,
// as TRL's RewardTrainer and most published reward models leave it: the causal LM's decoder and a score head
// [L, C] without bias, no lm_head), or a PEFT SEQ_CLS adapter directory (`train --objective reward`'s run directory,
// or PEFT's own) on the base its adapter_config.json names (base_model_name_or_path: a model directory or Hugging
// Face repo id in the offline cache; transformers' AutoModelForSequenceClassification.from_pretrained loads an
// adapter directory that way too) whose LoRA runs unmerged beside the base (QwenModel::attach_adapter, a 4-bit base
// kept packed) and whose saved head is the score head. It scores text as TRL's GRPOTrainer scores completions with a
// reward model given as a reward function:
//
//   text    standard prompt:        prompt + completion
//           conversational prompt:  the reward model's own chat template over the prompt's messages followed by
//                                   {"role": "assistant", "content": completion}, no generation prompt
//   tokens  the reward model's tokenizer on the text, add_special_tokens = False (special tokens written in the text,
//           such as "<|im_start|>", are read as theirs)
//   reward  h_i · score[0], with h the final hidden states (after model.norm) and i the position transformers'
//           Qwen2ForSequenceClassification pools: the last token that is not the pad id (0 when every token is one)
//   pad id  config.json's pad_token_id, else the tokenizer's pad token, else its EOS (trainer/reward.h's
//           reward_pad_id: the id training pooled at). TRL's GRPOTrainer sets the reward model's pad_token_id to its
//           tokenizer's pad (EOS without one) over config.json's: the two differ only for a config.json whose
//           pad_token_id is not the tokenizer's pad.
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

#include "lora/lora_adapter.h"
#include "trainer/lora_inference.h"
#include "trainer/qwen_model.h"
#include "trainer/tokenizer.h"

namespace qwenq {

constexpr int64_t kRewardPackTokens = 8192;

// Whether `dir` is an adapter directory rather than a model's: adapter_config.json and no config.json.
bool is_adapter_dir(const std::string& dir);

class RewardModel {
 public:
  // A model directory or SEQ_CLS adapter directory (above). Refuses a causal LM's directory or a CAUSAL_LM adapter
  // (naming what it holds), a GGUF file, and an adapter whose base cannot be found or does not fit it (naming both).
  explicit RewardModel(const std::string& dir);
  ~RewardModel();

  const std::string& dir() const { return dir_; }
  // The model directory the decoder comes from: dir() itself, or the adapter's base.
  const std::string& base_dir() const { return base_dir_; }
  bool is_adapter() const { return adapter_ != nullptr; }
  const QwenModel& model() const { return *model_; }
  const Tokenizer& tokenizer() const { return *tok_; }
  int64_t num_labels() const;
  int32_t pad_token_id() const { return pad_id_; }  // -1: none (the last token is pooled)

  // The text of a prompt and its completion as described at the top; `prompt` is a string or a message list (throws
  // naming the problem for a malformed list, or when a message list meets a tokenizer without a chat template).
  std::string text(const nlohmann::ordered_json& prompt, const std::string& completion) const;
  std::vector<int32_t> tokens(const std::string& text) const;
  // The reward of each token sequence (each non-empty; throws naming an empty one).
  std::vector<double> score(const std::vector<std::vector<int32_t>>& sequences) const;
  // The position pooled in a sequence (top of this file).
  int64_t pooled_position(const std::vector<int32_t>& sequence) const;

 private:
  std::string dir_, base_dir_;
  std::unique_ptr<QwenModel> model_;
  std::unique_ptr<LoraAdapter> adapter_;           // an adapter directory's LoRA ...
  std::unique_ptr<LoraInferenceLayout> layout_;    // ... attached to model_ (outlives the attachment)
  std::vector<float> head_;                        // the score head [num_labels, C], fp32
  std::unique_ptr<Tokenizer> tok_;
  int32_t pad_id_ = -1;
};

}  // namespace qwenq
