// `qwen-quant gsm8k`: grade-school math word problems scored as lm-evaluation-harness's `gsm8k` task (version 3)
// scores them, so a quantized or fine-tuned model's generation accuracy can be set beside its perplexity.
//
//   item (GSM8K's JSONL: {"question", "answer"}, the answer ending "#### <number>")
//   prompt  = Σ over the few-shot examples (text + " " + answer + "\n\n") + text,   text = "Question: " + q + "\nAnswer:"
//             the examples: random.Random(seed).sample(few-shot records, n), one draw per item in order (lm-eval's
//             sampler; seed 1234 as lm-eval's default); tokens without special tokens, the oldest cut when the prompt
//             and the new tokens exceed the context (lm-eval keeps the last max_length − max_gen_toks)
//   output  = greedy tokens up to max_new_tokens, EOS, or a stop string; decoded and cut before the first occurrence
//             of each stop string ("Question:", "</s>", "<|im_end|>")
//   strict-match      the first "#### (-?[0-9.,]+)" of the output, its group; else "[invalid]"
//   flexible-extract  the last match of "(-?[$0-9.,]{2,})|(-?[0-9]+)", its non-empty group; else "[invalid]"
//   exact_match       both answer and extraction with, in order, every ",", every "$", everything up to the last
//                     "#### ", and one "." before the end removed (lm-eval's regexes_to_ignore), then lower-cased:
//                     equal or not; the mean over items with its error √(p(1 − p)/(n − 1)).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "trainer/generate.h"
#include "trainer/qwen_model.h"
#include "trainer/tokenizer.h"

namespace qwenq {

struct Gsm8kItem {
  std::string question, answer;
};
// GSM8K's JSONL (the Hugging Face dataset's records): {"question": str, "answer": str}, other keys ignored. Errors name
// "path:line"; an empty file is an error.
std::vector<Gsm8kItem> read_gsm8k(const std::string& path);

std::string gsm8k_text(const Gsm8kItem& item);  // "Question: q\nAnswer:"
std::string gsm8k_prompt(const std::vector<const Gsm8kItem*>& shots, const Gsm8kItem& item);
// s cut before the first occurrence of each stop string in turn (Python's s.split(stop)[0] for each).
std::string cut_at_stops(std::string s, const std::vector<std::string>& stops);
std::string gsm8k_strict_match(const std::string& output);
std::string gsm8k_flexible_extract(const std::string& output);
std::string gsm8k_normalize(std::string s);  // regexes_to_ignore, then lower case (ASCII)
inline bool gsm8k_exact_match(const std::string& extracted, const std::string& answer) {
  return gsm8k_normalize(extracted) == gsm8k_normalize(answer);
}

struct Gsm8kOptions {
  int64_t fewshot = 0;            // examples per prompt, drawn from fewshot_items
  uint64_t fewshot_seed = 1234;
  int64_t max_new_tokens = 256;   // lm-eval's max_gen_toks
  std::vector<std::string> stops = {"Question:", "</s>", "<|im_end|>"};
  int64_t limit = 0;              // 0: every item
  bool quiet = false;
  // Greedy decoding as lm-eval's hf backend runs it: model.generate(do_sample=False) on top of the model's
  // generation_config.json, whose repetition_penalty (Qwen2.5-Instruct: 1.05) and eos ids then apply too
  // (qwen-quant gsm8k fills these from the file; trainer/sampling.h's penalty).
  float repetition_penalty = 1.f;
  std::vector<int32_t> stop_ids;  // besides the tokenizer's and config.json's eos
};

struct Gsm8kItemResult {
  std::string prompt, output, strict, flexible;
  bool strict_ok = false, flexible_ok = false;
  int64_t prompt_tokens = 0, new_tokens = 0;
};

struct Gsm8kResult {
  std::vector<Gsm8kItemResult> items;
  double strict = 0, strict_stderr = 0, flexible = 0, flexible_stderr = 0;
  int64_t new_tokens = 0;
  double seconds = 0;
};

// One generation: prompt ids in, new ids out, with generate's contract (trainer/generate.h) for the options given.
using Gsm8kGenerateFn =
    std::function<std::vector<int32_t>(const std::vector<int32_t>& prompt, const SamplingOptions& opt)>;

// Every item (at most opt.limit) through `gen` greedily; config's EOS (and the tokenizer's) ends generation too, its
// max_position_embeddings bounds prompt + new tokens. The GPU passes generate_cuda (qwen-quant gsm8k --device cuda).
Gsm8kResult evaluate_gsm8k(const Gsm8kGenerateFn& gen, const QwenConfig& config, const Tokenizer& tok,
                           const std::vector<Gsm8kItem>& items, const std::vector<Gsm8kItem>& fewshot_items,
                           const Gsm8kOptions& opt);
// The CPU model: the function above with generate(model, ...).
Gsm8kResult evaluate_gsm8k(const QwenModel& model, const Tokenizer& tok, const std::vector<Gsm8kItem>& items,
                           const std::vector<Gsm8kItem>& fewshot_items, const Gsm8kOptions& opt);

}  // namespace qwenq
