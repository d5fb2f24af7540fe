// The reward functions of `qwen-qlora train --objective grpo` (trainer/grpo.h), named on the command line by
// `--reward SPEC` (repeatable; `--reward-weights` weighs them):
//
//   accuracy          1 when the completion's final answer equals the record's "solution", "answer" or
//                     "ground_truth" (the first present), else 0. Both sides reduced as lm-eval's gsm8k task scores
//                     (trainer/gsm8k.h): the reference to what follows its last "#### " (GSM8K) or to its last
//                     \boxed{...}; the completion to its last \boxed{...}, else its first "#### N", else its last
//                     number (flexible-extract); then equal after lm-eval's normalisation (",", "$", a final "."
//                     removed, lower case), or equal as numbers. Not math_verify's symbolic equivalence (TRL's
//                     accuracy_reward): "1/2" and "0.5" differ here.
//   think_format      TRL's think_format_reward: 1 when the completion starts with "<think>", holds no second
//                     "<think>" and closes it with "</think>", else 0.
//   regex=PATTERN     1 when PATTERN (ECMAScript syntax, std::regex) matches somewhere in the completion (Python's
//                     re.search; anchor with ^ and $; "." does not cross a line break, [\s\S] does), else 0.
//   contains=TEXT     1 when the completion contains TEXT, else 0.
//   soft_overlong=C   DAPO's soft overlong punishment (TRL's get_soft_overlong_punishment with max_completion_len
//                     L and cache C): 0 for |o| <= L − C, (L − C − |o|)/C up to L, −1 beyond.
//   model=DIR         a reward model (trainer/reward_model.h): a Qwen2/Qwen3ForSequenceClassification directory or
//                     Hugging Face repo id (offline cache), or a SEQ_CLS adapter directory (`train --objective
//                     reward`'s run) on the base it names, its score of the prompt and completion as TRL's
//                     GRPOTrainer computes it with a reward model among its reward functions (its own tokenizer and
//                     chat template); loaded once, run on the CPU.
//   cmd=COMMAND       an external scorer, started once (`/bin/sh -c COMMAND`) and kept for the run: for each batch
//                     of completions it reads one JSON line per completion on stdin — the prompt's record with
//                     "completion" (the text; for a conversational prompt [{"role": "assistant", "content": text}]
//                     as TRL hands it), "completion_ids" and "truncated" added — and writes one line per completion:
//                     a number, or null / nan when the reward does not apply, each as soon as its line is read
//                     (the input stays open for the next batch). Python reward functions (and reward models
//                     of other architectures) plug in this way (examples in tools/README.md).
// A reward function's name in the metrics is its kind ("accuracy", "regex", "cmd", ...), a second of the same kind
// "<kind>_2" and so on.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace qwenq {

// One completion to score.
struct RewardSample {
  const nlohmann::ordered_json* record = nullptr;  // the prompt's record (an object with its "prompt")
  std::string completion;                          // decoded without special tokens
  std::vector<int32_t> ids;                        // the completion's tokens (a stop id included)
  bool conversational = false;                     // the record's prompt is a message list
  bool truncated = false;                          // ended without a stop id
};

class RewardFunction {
 public:
  virtual ~RewardFunction() = default;
  const std::string& name() const { return name_; }
  void set_name(std::string n) { name_ = std::move(n); }
  // "" or why this function cannot score prompts of `record` (accuracy without a reference answer): checked for
  // every record when the data loads, so a run never stops on it midway.
  virtual std::string check_record(const nlohmann::ordered_json& record) const;
  // One value per sample (NaN: does not apply).
  virtual std::vector<double> score(const std::vector<RewardSample>& samples) = 0;

 private:
  std::string name_;
};

// The functions of `specs` (as above; an unknown kind or a bad pattern throws naming the spec), named.
// max_completion_len: soft_overlong's L.
std::vector<std::unique_ptr<RewardFunction>> make_reward_functions(const std::vector<std::string>& specs,
                                                                   int64_t max_completion_len);

// accuracy's pieces: the final answer of a completion, of a reference, and whether they agree.
std::string completion_final_answer(const std::string& completion);
std::string reference_final_answer(const std::string& reference);
bool answers_agree(const std::string& predicted, const std::string& reference);

}  // namespace qwenq
