// How far a quantized (or otherwise changed) model's next-token distributions are from the original's, position by
// position, on the perplexity windows (trainer/perplexity.h: non-overlapping windows of seq_len tokens, each
// position predicting the next token of its window). For one position with base logits b and model logits q over the
// vocabulary V, and the true next token t:
//
//   log P = b − logsumexp(b),   log Q = q − logsumexp(q)                 (log-softmax, in double)
//   KLD   = Σ_v P_v (log P_v − log Q_v)                                   = KL(P ‖ Q), nats, ≥ 0
//   Δp    = Q_t − P_t                                                     (the true token's probability change)
//   top-1 agreement = [argmax_v b_v = argmax_v q_v]                       (first index on ties, as torch.argmax)
//   nll_base = −log P_t,  nll = −log Q_t                                  (each model's perplexity from the same pass)
//
// Over all scored positions: the mean with its standard error s/√n (s the sample deviation), percentiles as numpy's
// default (linear interpolation between the sorted values: x[i] + (h − i)(x[i+1] − x[i]), h = (n − 1)·p/100), RMS Δp,
// the fraction of agreeing top-1 tokens with its binomial standard error √(f(1 − f)/(n − 1)), the mean of
// ln(PPL(Q)/PPL(base)) per token (nll − nll_base) with its error, and the Pearson correlation of the two models'
// per-token NLLs. These are the statistics llama.cpp's `llama-perplexity --kl-divergence` prints (its chunks and
// scoring positions differ: it scores the second half of each context; these are the GPTQ/AWQ windows), computed
// in one process from both models' exact logits instead of a 16-bit logits file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/kl_rows.h"
#include "trainer/logits_source.h"
#include "trainer/perplexity.h"
#include "trainer/qwen_model.h"

namespace qwenq {

// One position: the quantities above from its two logit rows (V values each). target may be kIgnoreIndex (no Δp,
// no NLLs: those stay 0).
struct KlPosition {
  double kld = 0;
  double p_base = 0, p = 0;        // P_t, Q_t
  double nll_base = 0, nll = 0;    // −log P_t, −log Q_t
  bool same_top1 = false;
};
// kl_rows_ref (kernels/kl_rows.h) on one row; kl_position_of turns a KlRow of either twin into a KlPosition.
KlPosition kl_position(const float* base_logits, const float* logits, int64_t V, int32_t target);
KlPosition kl_position_of(const KlRow& row, int32_t target);

// A sample summarised: mean ± standard error, RMS, extremes and percentiles at kKlPercentiles.
constexpr double kKlPercentiles[] = {99.9, 99.0, 95.0, 90.0, 50.0, 10.0, 5.0, 1.0, 0.1};
constexpr int kNumKlPercentiles = static_cast<int>(sizeof kKlPercentiles / sizeof kKlPercentiles[0]);
struct SampleSummary {
  double mean = 0, stderr_mean = 0, rms = 0, min = 0, max = 0;
  double percentile[kNumKlPercentiles] = {};
};
// numpy.percentile(x, p) with its default linear method; x need not be sorted. Throws on an empty sample.
double percentile_linear(std::vector<double> x, double p);
SampleSummary summarize_sample(const std::vector<double>& x);

struct KlDivergenceResult {
  PerplexityResult model;             // the evaluated model's perplexity on the windows
  double base_perplexity = 0;         // the base's on the same windows
  SampleSummary kld;                  // nats
  SampleSummary delta_p;              // Q_t − P_t, a probability (not %)
  double same_top1 = 0;               // fraction of positions
  double same_top1_stderr = 0;
  double ln_ppl_ratio = 0;            // mean of nll − nll_base = ln(PPL(Q)/PPL(base))
  double ln_ppl_ratio_stderr = 0;
  double nll_correlation = 0;         // Pearson, per-token NLLs of the two models
};

// The scored positions of an evaluation summarised into a KlDivergenceResult: its kld, delta_p, same_top1,
// ln_ppl_ratio and nll_correlation with their errors (the perplexities and counts are the caller's).
class KlSample {
 public:
  void add(const KlPosition& p);
  int64_t size() const { return static_cast<int64_t>(kld_.size()); }
  double kld_mean() const { return kld_.empty() ? 0.0 : kld_sum_ / static_cast<double>(kld_.size()); }
  void summarize(KlDivergenceResult* r) const;

 private:
  std::vector<double> kld_, dp_, nll_base_, nll_;
  int64_t same_ = 0;
  double kld_sum_ = 0;
};

// Both models over the same windows (opt as evaluate_perplexity's, seq_len checked the same way), each window's
// hidden states from both, logits a chunk of rows at a time (about 2^24 values per model), never the whole window's.
// The models must share the vocabulary size (the tokens are the caller's: one tokenization for both).
// logits_chunk_rows > 0 overrides the chunk (tests: chunks that straddle windows).
// Any two LogitsSources (trainer/logits_source.h: the CPU or the GPU forward; the per-position statistics on the host
// by kl_rows_ref, or on the device by kl_rows_cuda when both are GPU sources, the summaries on the host); the
// QwenModel overload runs both on the CPU.
KlDivergenceResult evaluate_kl_divergence(LogitsSource& model, LogitsSource& base, const std::vector<int32_t>& tokens,
                                          const PerplexityOptions& opt, int64_t logits_chunk_rows = 0);
KlDivergenceResult evaluate_kl_divergence(const QwenModel& model, const QwenModel& base,
                                          const std::vector<int32_t>& tokens, const PerplexityOptions& opt,
                                          int64_t logits_chunk_rows = 0);

// The statistics as JSON (`eval --kl-base --json`: the "kl_divergence" object; `compare --kld` reads "mean" and
// "same_top1") and as the lines `eval` prints (named as llama-perplexity's).
nlohmann::ordered_json kl_divergence_json(const KlDivergenceResult& r, const std::string& base);
std::string kl_divergence_text(const KlDivergenceResult& r, const std::string& base);

}  // namespace qwenq
