// The preference losses of trainer/dpo.h (formulas there), in double.
#include "trainer/dpo.h"

#include <cmath>

#include "core/error.h"
#include "kernels/loss.h"

namespace qwenq {

namespace {

// log σ(x) = −log(1 + e^(−x)), without overflow for either sign.
double log_sigmoid(double x) { return x >= 0 ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x)); }
double sigmoid(double x) { return x >= 0 ? 1.0 / (1.0 + std::exp(-x)) : std::exp(x) / (1.0 + std::exp(x)); }

}  // namespace

DpoLoss parse_dpo_loss(const std::string& name) {
  for (DpoLoss l : {DpoLoss::kSigmoid, DpoLoss::kHinge, DpoLoss::kIpo, DpoLoss::kSimpo, DpoLoss::kOrpo})
    if (name == dpo_loss_name(l)) return l;
  QWENQ_FAIL("--dpo-loss must be sigmoid, hinge, ipo, simpo or orpo, not \"" << name << "\"");
}

const char* dpo_loss_name(DpoLoss l) {
  switch (l) {
    case DpoLoss::kSigmoid: return "sigmoid";
    case DpoLoss::kHinge: return "hinge";
    case DpoLoss::kIpo: return "ipo";
    case DpoLoss::kSimpo: return "simpo";
    case DpoLoss::kOrpo: return "orpo";
  }
  return "?";
}

void check_dpo_options(const DpoOptions& o) {
  QWENQ_CHECK(std::isfinite(o.beta) && o.beta > 0, "--dpo-beta must be positive, got " << o.beta);
  QWENQ_CHECK(o.label_smoothing >= 0 && o.label_smoothing < 0.5,
              "--dpo-label-smoothing must be in [0, 0.5), got " << o.label_smoothing);
  QWENQ_CHECK(o.label_smoothing == 0 || o.loss == DpoLoss::kSigmoid || o.loss == DpoLoss::kSimpo,
              "--dpo-label-smoothing applies to --dpo-loss sigmoid and simpo (this run: " << dpo_loss_name(o.loss) << ")");
  QWENQ_CHECK(std::isfinite(o.rpo_alpha) && o.rpo_alpha >= 0, "--rpo-alpha must be >= 0, got " << o.rpo_alpha);
  QWENQ_CHECK(o.rpo_alpha == 0 || o.loss != DpoLoss::kOrpo,
              "--rpo-alpha does not apply to --dpo-loss orpo (its NLL term on the chosen completions is part of it)");
  QWENQ_CHECK(std::isfinite(o.simpo_gamma) && o.simpo_gamma >= 0, "--simpo-gamma must be >= 0, got " << o.simpo_gamma);
}

DpoPairTerms dpo_pair_terms(const DpoOptions& o, const DpoPair& p) {
  QWENQ_CHECK(p.n_c > 0 && p.n_r > 0, "a preference pair needs tokens in both completions (chosen " << p.n_c
                                                                                               << ", rejected " << p.n_r << ")");
  const bool free = dpo_reference_free(o.loss), mean = free || o.loss == DpoLoss::kIpo;
  const double nc = mean ? static_cast<double>(p.n_c) : 1.0, nr = mean ? static_cast<double>(p.n_r) : 1.0;
  // Log-ratios of the policy over the reference, or the reference-free losses' log-probabilities; per token for IPO,
  // SimPO and ORPO. dc, dr: their derivatives by S_c, S_r.
  const double lc = ((free ? 0.0 : p.R_c) - p.S_c) / nc, lr = ((free ? 0.0 : p.R_r) - p.S_r) / nr;
  double dc = -1 / nc, dr = -1 / nr;
  double h = lc - lr;
  const double b = o.beta, e = o.label_smoothing;
  DpoPairTerms t;
  double dh = 0;
  switch (o.loss) {
    case DpoLoss::kSigmoid:
      t.loss = -(1 - e) * log_sigmoid(b * h) - e * log_sigmoid(-b * h);
      dh = b * (e * sigmoid(b * h) - (1 - e) * sigmoid(-b * h));
      break;
    case DpoLoss::kHinge:
      t.loss = std::max(0.0, 1 - b * h);
      dh = b * h < 1 ? -b : 0.0;
      break;
    case DpoLoss::kIpo:
      t.loss = (h - 1 / (2 * b)) * (h - 1 / (2 * b));
      dh = 2 * (h - 1 / (2 * b));
      break;
    case DpoLoss::kSimpo: {
      const double z = b * h - o.simpo_gamma;
      t.loss = -(1 - e) * log_sigmoid(z) - e * log_sigmoid(-z);
      dh = b * (e * sigmoid(z) - (1 - e) * sigmoid(-z));
      break;
    }
    case DpoLoss::kOrpo: {
      // log(1 − e^a) = log(−expm1(a)), exact near a = 0 (a completion predicted with certainty).
      h = (lc - std::log(-std::expm1(lc))) - (lr - std::log(-std::expm1(lr)));
      t.loss = -b * log_sigmoid(h);
      dh = -b * sigmoid(-h);
      dc /= -std::expm1(lc);
      dr /= -std::expm1(lr);
      break;
    }
  }
  t.dS_c = dh * dc;
  t.dS_r = -dh * dr;
  t.reward_c = b * lc;
  t.reward_r = b * lr;
  return t;
}

void DpoStats::add(const DpoStats& o) {
  pairs += o.pairs;
  correct += o.correct;
  loss += o.loss;
  nll_c += o.nll_c;
  tokens_c += o.tokens_c;
  reward_c += o.reward_c;
  reward_r += o.reward_r;
  logp_c += o.logp_c;
  logp_r += o.logp_r;
}

std::vector<double> DpoStats::pack() const {
  return {static_cast<double>(pairs), static_cast<double>(correct), loss, nll_c, static_cast<double>(tokens_c),
          reward_c, reward_r, logp_c, logp_r};
}

DpoStats DpoStats::unpack(const std::vector<double>& v) {
  QWENQ_CHECK(v.size() == 9, "DpoStats::unpack: " << v.size() << " numbers, not 9");
  return DpoStats{static_cast<int64_t>(v[0]), static_cast<int64_t>(v[1]), v[2], v[3], static_cast<int64_t>(v[4]),
                  v[5], v[6], v[7], v[8]};
}

double DpoStats::objective(const DpoOptions& o) const {
  if (pairs == 0) return 0;
  const double w = o.nll_weight();
  return loss / static_cast<double>(pairs) + (w > 0 && tokens_c > 0 ? w * nll_c / static_cast<double>(tokens_c) : 0.0);
}

namespace {

// One pair's share of the statistics.
void add_pair(const DpoPair& p, const DpoPairTerms& t, DpoStats* s) {
  ++s->pairs;
  s->correct += t.reward_c > t.reward_r;
  s->loss += t.loss;
  s->nll_c += p.S_c;
  s->tokens_c += p.n_c;
  s->reward_c += t.reward_c;
  s->reward_r += t.reward_r;
  s->logp_c -= p.S_c;
  s->logp_r -= p.S_r;
}

void check_pairs(const std::vector<double>& policy, const std::vector<double>& ref, const std::vector<int64_t>& counts) {
  QWENQ_CHECK(policy.size() % 2 == 0 && ref.size() == policy.size() && counts.size() == policy.size(),
              "preference batch: " << policy.size() << " policy sums, " << ref.size() << " reference sums and "
                                   << counts.size() << " token counts (need the same even number: chosen, rejected)");
}

DpoPair pair_at(const std::vector<double>& policy, const std::vector<double>& ref, const std::vector<int64_t>& counts,
                size_t i) {
  return DpoPair{policy[2 * i], policy[2 * i + 1], ref[2 * i], ref[2 * i + 1], counts[2 * i], counts[2 * i + 1]};
}

}  // namespace

DpoStats dpo_batch_stats(const DpoOptions& o, const std::vector<double>& policy, const std::vector<double>& ref,
                         const std::vector<int64_t>& counts) {
  check_pairs(policy, ref, counts);
  DpoStats s;
  for (size_t i = 0; i < policy.size() / 2; ++i) {
    const DpoPair p = pair_at(policy, ref, counts, i);
    add_pair(p, dpo_pair_terms(o, p), &s);
  }
  return s;
}

std::function<std::vector<double>(const std::vector<double>&)> dpo_objective(
    const DpoOptions& o, std::vector<double> ref, std::vector<int64_t> counts, int64_t step_pairs,
    int64_t step_chosen_tokens, DpoStats* stats) {
  QWENQ_CHECK(step_pairs > 0 && step_chosen_tokens > 0, "dpo_objective: a step of " << step_pairs << " pairs and "
                                                                                    << step_chosen_tokens << " chosen tokens");
  return [o, ref = std::move(ref), counts = std::move(counts), step_pairs, step_chosen_tokens,
          stats](const std::vector<double>& policy) {
    check_pairs(policy, ref, counts);
    std::vector<double> d(policy.size());
    const double per_pair = 1.0 / static_cast<double>(step_pairs);
    const double rpo = o.nll_weight() / static_cast<double>(step_chosen_tokens);
    DpoStats batch;
    for (size_t i = 0; i < policy.size() / 2; ++i) {
      const DpoPair p = pair_at(policy, ref, counts, i);
      const DpoPairTerms t = dpo_pair_terms(o, p);
      d[2 * i] = per_pair * t.dS_c + rpo;
      d[2 * i + 1] = per_pair * t.dS_r;
      add_pair(p, t, &batch);
    }
    if (stats) stats->add(batch);
    return d;
  };
}

std::vector<int64_t> sequence_target_counts(const PackedBatch& b, const std::vector<int32_t>& targets) {
  QWENQ_CHECK(static_cast<int64_t>(targets.size()) == b.num_tokens(),
              "sequence_target_counts: " << targets.size() << " targets for " << b.num_tokens() << " tokens");
  std::vector<int64_t> n(static_cast<size_t>(b.num_seqs()), 0);
  for (int64_t j = 0; j < b.num_seqs(); ++j)
    for (int32_t t = b.cu_seqlens[j]; t < b.cu_seqlens[j + 1]; ++t) n[static_cast<size_t>(j)] += targets[t] != kIgnoreIndex;
  return n;
}

}  // namespace qwenq
