#include "trainer/kl_divergence.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "core/progress.h"
#include "kernels/loss.h"
#include "trainer/sample_stats.h"

namespace qwenq {

namespace {

double mean_of(const std::vector<double>& x) {
  double s = 0;
  for (double v : x) s += v;
  return s / static_cast<double>(x.size());
}

// Sample standard deviation over √n; 0 for one value.
double stderr_of(const std::vector<double>& x, double mean) {
  const size_t n = x.size();
  if (n < 2) return 0;
  double ss = 0;
  for (double v : x) ss += (v - mean) * (v - mean);
  return std::sqrt(ss / static_cast<double>(n - 1) / static_cast<double>(n));
}

double pearson(const std::vector<double>& a, const std::vector<double>& b) {
  const double ma = mean_of(a), mb = mean_of(b);
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  return saa > 0 && sbb > 0 ? sab / std::sqrt(saa * sbb) : 0.0;
}

// numpy's linear percentile of an ascending sample.
double percentile_of_sorted(const std::vector<double>& x, double p) {
  const double h = static_cast<double>(x.size() - 1) * p / 100.0;
  const size_t i = static_cast<size_t>(std::floor(h));
  if (i + 1 >= x.size()) return x.back();
  return x[i] + (h - static_cast<double>(i)) * (x[i + 1] - x[i]);
}

}  // namespace

KlPosition kl_position_of(const KlRow& row, int32_t target) {
  KlPosition r;
  r.kld = row.kld;
  r.same_top1 = row.top_base == row.top;
  if (target != kIgnoreIndex) {
    r.nll_base = row.nll_base;
    r.nll = row.nll;
    r.p_base = std::exp(-r.nll_base);
    r.p = std::exp(-r.nll);
  }
  return r;
}

KlPosition kl_position(const float* base_logits, const float* logits, int64_t V, int32_t target) {
  KlRow row;
  kl_rows_ref(base_logits, logits, 1, V, &target, &row);
  return kl_position_of(row, target);
}

double percentile_linear(std::vector<double> x, double p) {
  QWENQ_CHECK(!x.empty(), "percentile of an empty sample");
  std::sort(x.begin(), x.end());
  return percentile_of_sorted(x, p);
}

SampleSummary summarize_sample(const std::vector<double>& x) {
  QWENQ_CHECK(!x.empty(), "summary of an empty sample");
  SampleSummary s;
  s.mean = mean_of(x);
  s.stderr_mean = stderr_of(x, s.mean);
  double sq = 0;
  for (double v : x) sq += v * v;
  s.rms = std::sqrt(sq / static_cast<double>(x.size()));
  std::vector<double> sorted = x;
  std::sort(sorted.begin(), sorted.end());
  s.min = sorted.front();
  s.max = sorted.back();
  for (int k = 0; k < kNumKlPercentiles; ++k) s.percentile[k] = percentile_of_sorted(sorted, kKlPercentiles[k]);
  return s;
}

void KlSample::add(const KlPosition& p) {
  kld_.push_back(p.kld);
  kld_sum_ += p.kld;
  dp_.push_back(p.p - p.p_base);
  nll_base_.push_back(p.nll_base);
  nll_.push_back(p.nll);
  same_ += p.same_top1 ? 1 : 0;
}

void KlSample::summarize(KlDivergenceResult* r) const {
  r->kld = summarize_sample(kld_);
  r->delta_p = summarize_sample(dp_);
  const double n = static_cast<double>(kld_.size());
  r->same_top1 = static_cast<double>(same_) / n;
  r->same_top1_stderr = binomial_stderr(r->same_top1, static_cast<int64_t>(n));
  std::vector<double> ln_ratio(nll_.size());
  for (size_t i = 0; i < ln_ratio.size(); ++i) ln_ratio[i] = nll_[i] - nll_base_[i];
  r->ln_ppl_ratio = mean_of(ln_ratio);
  r->ln_ppl_ratio_stderr = stderr_of(ln_ratio, r->ln_ppl_ratio);
  r->nll_correlation = pearson(nll_, nll_base_);
}

KlDivergenceResult evaluate_kl_divergence(LogitsSource& model, LogitsSource& base, const std::vector<int32_t>& tokens,
                                          const PerplexityOptions& opt, int64_t logits_chunk_rows) {
  const int64_t V = model.vocab_size;
  QWENQ_CHECK(base.vocab_size == V, "the base model " << base.name << " has a vocabulary of " << base.vocab_size
                                                      << " tokens, " << model.name << " one of " << V
                                                      << ": KL divergence needs the same vocabulary");
  const int64_t n_tok = static_cast<int64_t>(tokens.size());
  const int64_t windows = perplexity_windows(n_tok, opt);

  KlDivergenceResult r;
  r.model.corpus_tokens = n_tok;
  r.model.windows = windows;
  KlSample sample;
  Progress bar("kl-divergence", windows * opt.seq_len, "tok", opt.quiet);
  double nll_sum = 0, nll_base_sum = 0;
  // Rows per logits chunk: lm_head_nll's (qwen_weights.cpp), so that for a table read in place the NLLs, and the
  // perplexity, are the bits `eval` gives without a base.
  const int64_t chunk_cap = logits_chunk_rows > 0 ? logits_chunk_rows : logits_block_rows(V);
  // Two GPU sources: the per-position statistics on the device (logits_source.h's device_kl_rows), the logits
  // never copied to the host; otherwise on the host from each chunk of both sources' logits.
  const bool on_device = model.device_logits && base.device_logits;  // empty in builds without CUDA
  std::vector<float> lg_q, lg_b;
  for (int64_t w0 = 0; w0 < windows; w0 += opt.windows_per_batch) {
    const int64_t nw = std::min(opt.windows_per_batch, windows - w0);
    const PackedBatch batch = perplexity_window_batch(tokens, opt.seq_len, w0, nw);
    const int64_t T = batch.num_tokens();
    const std::vector<int32_t> targets = next_token_targets(batch);
    model.forward(batch);
    base.forward(batch);
    const int64_t chunk = std::min(chunk_cap, T);
    if (!on_device) {
      lg_q.resize(static_cast<size_t>(chunk * V));
      lg_b.resize(static_cast<size_t>(chunk * V));
    }
    std::vector<float> nll_q_rows(T, 0.f), nll_b_rows(T, 0.f);
    std::vector<KlRow> rows(T);
    if (on_device) {
#ifdef QWENQ_HAVE_CUDA
      // The perplexities from each source's own NLLs (`eval --device cuda`'s bits), the statistics from the device.
      r.model.scored_tokens += model.nll(targets.data(), nll_q_rows.data());
      base.nll(targets.data(), nll_b_rows.data());
      for (int64_t r0 = 0; r0 < T; r0 += chunk) {
        const int64_t n = std::min(chunk, T - r0);
        device_kl_rows(model, base, r0, n, targets.data() + r0, rows.data() + r0);
      }
#endif
    } else {
      for (int64_t r0 = 0; r0 < T; r0 += chunk) {
        const int64_t n = std::min(chunk, T - r0);
        model.logits(r0, n, lg_q.data());
        base.logits(r0, n, lg_b.data());
        const int32_t* tg = targets.data() + r0;
        r.model.scored_tokens += cross_entropy_forward_ref(lg_q.data(), n, V, tg, nll_q_rows.data() + r0);
        cross_entropy_forward_ref(lg_b.data(), n, V, tg, nll_b_rows.data() + r0);
        kl_rows_ref(lg_b.data(), lg_q.data(), n, V, tg, rows.data() + r0);
      }
    }
    for (int64_t t = 0; t < T; ++t) {
      nll_sum += nll_q_rows[t];  // evaluate_perplexity's order: the batch's rows, ignored ones as 0
      nll_base_sum += nll_b_rows[t];
      if (targets[t] != kIgnoreIndex) sample.add(kl_position_of(rows[t], targets[t]));
    }
    char extra[96];
    std::snprintf(extra, sizeof extra, "ppl %.4f kld %.5f", std::exp(nll_sum / r.model.scored_tokens),
                  sample.kld_mean());
    bar.update((w0 + nw) * opt.seq_len, extra);
  }
  r.model.mean_nll = nll_sum / r.model.scored_tokens;
  r.model.perplexity = std::exp(r.model.mean_nll);
  r.base_perplexity = std::exp(nll_base_sum / r.model.scored_tokens);
  r.model.seconds = bar.elapsed_s();
  r.model.tokens_per_s = r.model.seconds > 0 ? windows * opt.seq_len / r.model.seconds : 0;
  sample.summarize(&r);
  char extra[96];
  std::snprintf(extra, sizeof extra, "ppl %.4f kld %.5f", r.model.perplexity, r.kld.mean);
  bar.finish(extra);
  return r;
}

KlDivergenceResult evaluate_kl_divergence(const QwenModel& model, const QwenModel& base,
                                          const std::vector<int32_t>& tokens, const PerplexityOptions& opt,
                                          int64_t logits_chunk_rows) {
  LogitsSource m = cpu_logits_source(model), b = cpu_logits_source(base);
  return evaluate_kl_divergence(m, b, tokens, opt, logits_chunk_rows);
}

namespace {

nlohmann::ordered_json summary_json(const SampleSummary& s) {
  nlohmann::ordered_json j = {{"mean", s.mean}, {"stderr", s.stderr_mean}, {"rms", s.rms}, {"max", s.max}};
  for (int k = 0; k < kNumKlPercentiles; ++k) {
    char key[16];
    std::snprintf(key, sizeof key, "p%g", kKlPercentiles[k]);
    j[key] = s.percentile[k];
  }
  j["min"] = s.min;
  return j;
}

std::string line(const char* f, double a, double b = 0) {
  char buf[160];
  std::snprintf(buf, sizeof buf, f, a, b);
  return buf;
}

// "  99.9% KLD" padded to the value column (29 columns; "Δ" is two bytes, one column).
std::string percentile_label(double p, const std::string& what) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "  %g%% ", p);
  std::string l = buf + what;
  const size_t columns = l.size() - (what == "Δp" ? 1 : 0);
  return l + std::string(columns < 29 ? 29 - columns : 1, ' ');
}

}  // namespace

nlohmann::ordered_json kl_divergence_json(const KlDivergenceResult& r, const std::string& base) {
  nlohmann::ordered_json j = {{"base", base},
                              {"base_perplexity", r.base_perplexity},
                              {"positions", static_cast<int64_t>(r.model.scored_tokens)},
                              {"ln_ppl_ratio", r.ln_ppl_ratio},
                              {"ln_ppl_ratio_stderr", r.ln_ppl_ratio_stderr},
                              {"nll_correlation", r.nll_correlation},
                              {"same_top1", r.same_top1},
                              {"same_top1_stderr", r.same_top1_stderr}};
  j["kld"] = summary_json(r.kld);
  j["delta_p"] = summary_json(r.delta_p);
  return j;
}

std::string kl_divergence_text(const KlDivergenceResult& r, const std::string& base) {
  std::string s = "KL divergence from " + base + " over " + std::to_string(r.model.scored_tokens) + " positions:\n";
  s += line("  PPL(base)                  %10.4f\n", r.base_perplexity);
  s += line("  PPL(Q)                     %10.4f\n", r.model.perplexity);
  s += line("  ln(PPL(Q)/PPL(base))       %10.6f ± %.6f\n", r.ln_ppl_ratio, r.ln_ppl_ratio_stderr);
  s += line("  PPL(Q)/PPL(base)           %10.6f\n", std::exp(r.ln_ppl_ratio));
  s += line("  Cor(NLL(Q), NLL(base))     %9.3f %%\n", 100 * r.nll_correlation);
  s += line("  Mean KLD                   %10.6f ± %.6f\n", r.kld.mean, r.kld.stderr_mean);
  s += line("  Maximum KLD                %10.6f\n", r.kld.max);
  for (int k = 0; k < kNumKlPercentiles; ++k) {
    s += percentile_label(kKlPercentiles[k], "KLD") + line("%10.6f\n", r.kld.percentile[k]);
  }
  s += line("  Minimum KLD                %10.6f\n", r.kld.min);
  s += line("  Mean Δp                    %9.3f ± %.3f %%\n", 100 * r.delta_p.mean, 100 * r.delta_p.stderr_mean);
  s += line("  Maximum Δp                 %9.3f %%\n", 100 * r.delta_p.max);
  for (int k = 0; k < kNumKlPercentiles; ++k) {
    s += percentile_label(kKlPercentiles[k], "Δp") + line("%9.3f %%\n", 100 * r.delta_p.percentile[k]);
  }
  s += line("  Minimum Δp                 %9.3f %%\n", 100 * r.delta_p.min);
  s += line("  RMS Δp                     %9.3f %%\n", 100 * r.delta_p.rms);
  s += line("  Same top-1 token           %9.3f ± %.3f %%\n", 100 * r.same_top1, 100 * r.same_top1_stderr);
  return s;
}

}  // namespace qwenq
