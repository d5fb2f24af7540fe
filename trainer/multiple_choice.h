// Multiple-choice accuracy as lm-evaluation-harness scores its loglikelihood tasks (ARC, HellaSwag, PIQA, ...): each
// choice is a continuation of the item's context, scored by the model's summed log-probability of its tokens, and the
// prediction is the best choice. For one item with context c and choices x_1..x_k:
//
//   (c', x_i') = (c without its trailing whitespace, that whitespace + d + x_i)  (lm-eval's _encode_pair; d the
//                                                                                 task's delimiter)
//   whole = encode(c' + x_i'),  ctx = encode(c'),  cont = whole[len(ctx):]        (no special tokens added; an empty
//   ctx is the EOS token, lm-eval's prefix token)
//   ll_i  = Σ_{t in cont} log P(t | everything before it)                        (the input is ctx + cont without
//                                                                                 its last token, which is only
//                                                                                 predicted; longer than the model's
//                                                                                 context, its last tokens that fit)
//   acc      = [argmax_i ll_i = label],   acc_norm = [argmax_i ll_i / chars(x_i) = label]   (chars: code points of
//                                                                                 the choice as given; first index on
//                                                                                 ties)
//
// reported as means over the items with the standard error √(p(1 − p)/(n − 1)). Records (JSONL, one item per line):
//   {"context": C, "choices": [X_1, ...], "label": i}          choices are continuations as given (their own
//                                                               leading space); label an index (or its string)
//   {"question": Q, "choices": {"text": [...], "label": [...]}, "answerKey": K}   ARC as Hugging Face publishes it,
//                                                               rendered as lm-eval's arc tasks do: context
//                                                               "Question: Q\nAnswer:", delimiter " ", choices
//                                                               the texts
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "trainer/logits_source.h"
#include "trainer/qwen_model.h"
#include "trainer/tokenizer.h"

namespace qwenq {

struct ChoiceItem {
  std::string where;  // "file:line"
  std::string context;
  std::string delimiter;             // written between the context and each choice ("" generic, " " ARC)
  std::vector<std::string> choices;  // acc_norm divides by their code points (without the delimiter, as lm-eval)
  int64_t label = 0;
};

// Reads every record; a malformed one is an error naming file:line and the problem.
std::vector<ChoiceItem> read_choice_items(const std::string& path);

// The token ids of one choice: the context's and the continuation's (lm-eval's encoding rule above).
struct ChoiceTokens {
  std::vector<int32_t> context, continuation;
};
ChoiceTokens encode_choice(const Tokenizer& tok, const std::string& context, const std::string& choice);

struct ChoiceItemResult {
  std::vector<double> loglik;  // per choice
  int64_t pred = 0, pred_norm = 0;
};

struct ChoiceResult {
  std::vector<ChoiceItemResult> items;
  double acc = 0, acc_stderr = 0, acc_norm = 0, acc_norm_stderr = 0;
  int64_t tokens = 0;  // forwarded (each choice's context and continuation but its last token)
  double seconds = 0;
};

// Every item's choices through the model, batch_tokens tokens (whole choices) per forward: any LogitsSource
// (trainer/logits_source.h: the CPU or the GPU forward), or the CPU model.
ChoiceResult evaluate_choices(LogitsSource& model, const Tokenizer& tok, const std::vector<ChoiceItem>& items,
                              int64_t batch_tokens = 4096, bool quiet = false);
ChoiceResult evaluate_choices(const QwenModel& model, const Tokenizer& tok, const std::vector<ChoiceItem>& items,
                              int64_t batch_tokens = 4096, bool quiet = false);

}  // namespace qwenq
