#include "trainer/perplexity.h"

#include <cmath>

#include "core/error.h"
#include "core/progress.h"

namespace qwenq {

PerplexityResult evaluate_perplexity(const QwenModel& model, const std::vector<int32_t>& tokens,
                                     const PerplexityOptions& opt) {
  return evaluate_perplexity(
      [&model](const PackedBatch& b, std::vector<float>* nll) { return model.next_token_nll(b, nll); }, tokens, opt);
}

PerplexityResult evaluate_perplexity(const NextTokenNllFn& next_token_nll, const std::vector<int32_t>& tokens,
                                     const PerplexityOptions& opt) {
  QWENQ_CHECK(opt.seq_len >= 2, "--seq-len must be at least 2, got " << opt.seq_len);
  QWENQ_CHECK(opt.windows_per_batch >= 1, "--batch must be at least 1, got " << opt.windows_per_batch);
  const int64_t n_tok = static_cast<int64_t>(tokens.size());
  int64_t windows = n_tok / opt.seq_len;
  QWENQ_CHECK(windows >= 1, "the text has " << n_tok << " tokens, fewer than one window of --seq-len "
                                            << opt.seq_len << "; give more text or a smaller --seq-len");
  if (opt.max_windows > 0) windows = std::min(windows, opt.max_windows);

  PerplexityResult r;
  r.corpus_tokens = n_tok;
  r.windows = windows;
  Progress bar("perplexity", windows * opt.seq_len, "tok", opt.quiet);
  double nll_sum = 0;
  for (int64_t w0 = 0; w0 < windows; w0 += opt.windows_per_batch) {
    const int64_t nw = std::min(opt.windows_per_batch, windows - w0);
    std::vector<std::vector<int32_t>> seqs;
    for (int64_t w = w0; w < w0 + nw; ++w) {
      seqs.emplace_back(tokens.begin() + w * opt.seq_len, tokens.begin() + (w + 1) * opt.seq_len);
    }
    std::vector<float> nll;
    r.scored_tokens += next_token_nll(PackedBatch::from_sequences(seqs), &nll);
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
