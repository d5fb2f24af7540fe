#include "trainer/perplexity.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/progress.h"

namespace qwenq {

PerplexityResult evaluate_perplexity(const QwenModel& model, const std::vector<int32_t>& tokens,
                                     const PerplexityOptions& opt) {
  return evaluate_perplexity(
      [&model](const PackedBatch& b, std::vector<float>* nll) { return model.next_token_nll(b, nll); }, tokens, opt);
}

int64_t perplexity_windows(int64_t n_tok, const PerplexityOptions& opt) {
  QWENQ_CHECK(opt.seq_len >= 2, "--seq-len must be at least 2, got " << opt.seq_len);
  QWENQ_CHECK(opt.windows_per_batch >= 1, "--batch must be at least 1, got " << opt.windows_per_batch);
  int64_t windows = n_tok / opt.seq_len;
  QWENQ_CHECK(windows >= 1, "the text has " << n_tok << " tokens, fewer than one window of --seq-len "
                                            << opt.seq_len << "; give more text or a smaller --seq-len");
  if (opt.max_windows > 0) windows = std::min(windows, opt.max_windows);
  return windows;
}

PackedBatch perplexity_window_batch(const std::vector<int32_t>& tokens, int64_t seq_len, int64_t w0, int64_t n) {
  std::vector<std::vector<int32_t>> seqs;
  for (int64_t w = w0; w < w0 + n; ++w) {
    seqs.emplace_back(tokens.begin() + w * seq_len, tokens.begin() + (w + 1) * seq_len);
  }
  return PackedBatch::from_sequences(seqs);
}

PerplexityResult evaluate_perplexity(const NextTokenNllFn& next_token_nll, const std::vector<int32_t>& tokens,
                                     const PerplexityOptions& opt) {
  const int64_t n_tok = static_cast<int64_t>(tokens.size());
  const int64_t windows = perplexity_windows(n_tok, opt);

  PerplexityResult r;
  r.corpus_tokens = n_tok;
  r.windows = windows;
  Progress bar("perplexity", windows * opt.seq_len, "tok", opt.quiet);
  double nll_sum = 0;
  for (int64_t w0 = 0; w0 < windows; w0 += opt.windows_per_batch) {
    const int64_t nw = std::min(opt.windows_per_batch, windows - w0);
    std::vector<float> nll;
    r.scored_tokens += next_token_nll(perplexity_window_batch(tokens, opt.seq_len, w0, nw), &nll);
    for (float v : nll) nll_sum += v;
    char extra[64];
    std::snprintf(extra, sizeof extra, "ppl %.4f", std::exp(nll_sum / r.scored_tokens));
    bar.update((w0 + nw) * opt.seq_len, extra);
  }
  r.mean_nll = nll_sum / r.scored_tokens;
  r.perplexity = std::exp(r.mean_nll);
  r.seconds = bar.elapsed_s();
  r.tokens_per_s = r.seconds > 0 ? windows * opt.seq_len / r.seconds : 0;
  char extra[64];
  std::snprintf(extra, sizeof extra, "ppl %.4f", r.perplexity);
  bar.finish(extra);
  return r;
}

}  // namespace qwenq
