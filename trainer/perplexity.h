// Perplexity as the GPTQ and AWQ papers measure it: tokenize the whole corpus once, cut it into
// non-overlapping windows of seq_len tokens (the tail shorter than a window is dropped), score each window
// from scratch (no context carried over), and report exp(mean NLL) over all predicted tokens. Every window
// predicts seq_len - 1 tokens, so this equals their exp(mean over windows of the window's mean loss).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "trainer/qwen_model.h"

namespace qwenq {

struct PerplexityOptions {
  int64_t seq_len = 2048;
  int64_t max_windows = 0;       // 0: all
  int64_t windows_per_batch = 1; // windows forwarded together (packed)
  bool quiet = false;            // no progress bar
};

struct PerplexityResult {
  double perplexity = 0;
  double mean_nll = 0;
  int64_t corpus_tokens = 0;  // tokens in the corpus
  int64_t windows = 0;        // windows scored
  int64_t scored_tokens = 0;  // predictions counted
  double seconds = 0;
  double tokens_per_s = 0;    // tokens forwarded per second
};

// What the evaluation needs of a model: QwenModel::next_token_nll's contract (per-token NLL of a packed batch,
// returns the counted positions). The CPU QwenModel and the GPU QwenModelCuda (trainer/qwen_model_cuda.h) both
// provide it.
using NextTokenNllFn = std::function<int64_t(const PackedBatch&, std::vector<float>*)>;

// The windows evaluate_perplexity scores: ⌊n_tokens / seq_len⌋, at most max_windows (when > 0). Checks the options
// (seq_len >= 2, windows_per_batch >= 1); fewer tokens than one window is an error naming --seq-len.
int64_t perplexity_windows(int64_t n_tokens, const PerplexityOptions& opt);
// Windows [w0, w0 + n) of seq_len tokens each, packed as one batch (positions restarting per window).
PackedBatch perplexity_window_batch(const std::vector<int32_t>& tokens, int64_t seq_len, int64_t w0, int64_t n);

PerplexityResult evaluate_perplexity(const NextTokenNllFn& next_token_nll, const std::vector<int32_t>& tokens,
                                     const PerplexityOptions& opt);
// The CPU model: the function above with model.next_token_nll.
PerplexityResult evaluate_perplexity(const QwenModel& model, const std::vector<int32_t>& tokens,
                                     const PerplexityOptions& opt);

}  // namespace qwenq
