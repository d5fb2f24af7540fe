// The unpaired preference losses of trainer/kto.h (formulas there), in double.
#include "trainer/kto.h"

#include <cmath>

#include "core/error.h"

namespace qwenq {

namespace {

double sigmoid(double x) { return x >= 0 ? 1.0 / (1.0 + std::exp(-x)) : std::exp(x) / (1.0 + std::exp(x)); }

}  // namespace

KtoLoss parse_kto_loss(const std::string& name) {
  for (KtoLoss l : {KtoLoss::kKto, KtoLoss::kApoZeroUnpaired})
    if (name == kto_loss_name(l)) return l;
  QWENQ_FAIL("--kto-loss must be kto or apo_zero_unpaired, not \"" << name << "\"");
}

const char* kto_loss_name(KtoLoss l) { return l == KtoLoss::kKto ? "kto" : "apo_zero_unpaired"; }

void check_kto_options(const KtoOptions& o) {
  QWENQ_CHECK(std::isfinite(o.beta) && o.beta > 0, "--dpo-beta (KTO's beta) must be positive, got " << o.beta);
  QWENQ_CHECK(std::isfinite(o.desirable_weight) && o.desirable_weight > 0,
              "--kto-desirable-weight must be positive, got " << o.desirable_weight);
  QWENQ_CHECK(std::isfinite(o.undesirable_weight) && o.undesirable_weight > 0,
              "--kto-undesirable-weight must be positive, got " << o.undesirable_weight);
}

KtoTerms kto_example_terms(const KtoOptions& o, double S, double R, double z, bool desirable) {
  const double b = o.beta, r = R - S;
  const double zz = o.uses_kl() ? z : 0.0;
  KtoTerms t;
  t.reward = b * r;
  // x: the argument of σ whose complement is the loss (desirable: β(r − z); undesirable kto: β(z − r)).
  if (desirable || o.loss == KtoLoss::kKto) {
    const double x = desirable ? b * (r - zz) : b * (zz - r);
    const double s = sigmoid(x);
    t.loss = 1 - s;                                  // σ(−x), kept as 1 − σ(x) to be TRL's value
    t.dS = (desirable ? b : -b) * s * (1 - s);
  } else {  // apo_zero_unpaired, undesirable: σ(βr)
    const double s = sigmoid(b * r);
    t.loss = s;
    t.dS = -b * s * (1 - s);
  }
  return t;
}

double kto_reference_point(const std::vector<double>& policy_kl, const std::vector<double>& ref_kl) {
  QWENQ_CHECK(policy_kl.size() == ref_kl.size(), "kto_reference_point: " << policy_kl.size() << " policy and "
                                                                           << ref_kl.size() << " reference KL sums");
  if (policy_kl.empty()) return 0;
  double sum = 0;
  for (size_t k = 0; k < policy_kl.size(); ++k) sum += ref_kl[k] - policy_kl[k];
  return std::max(0.0, sum / static_cast<double>(policy_kl.size()));
}

void KtoStats::add(const KtoStats& o) {
  desirable += o.desirable;
  undesirable += o.undesirable;
  loss += o.loss;
  reward_d += o.reward_d;
  reward_u += o.reward_u;
  logp_d += o.logp_d;
  logp_u += o.logp_u;
  kl += o.kl;
  batches += o.batches;
}

double KtoStats::margin() const {
  return (desirable > 0 ? reward_d / static_cast<double>(desirable) : 0.0) -
         (undesirable > 0 ? reward_u / static_cast<double>(undesirable) : 0.0);
}

std::vector<double> KtoStats::pack() const {
  return {static_cast<double>(desirable), static_cast<double>(undesirable), loss, reward_d, reward_u, logp_d, logp_u,
          kl, static_cast<double>(batches)};
}

KtoStats KtoStats::unpack(const std::vector<double>& v) {
  QWENQ_CHECK(v.size() == 9, "KtoStats::unpack: " << v.size() << " numbers, not 9");
  KtoStats s;
  s.desirable = static_cast<int64_t>(v[0]);
  s.undesirable = static_cast<int64_t>(v[1]);
  s.loss = v[2];
  s.reward_d = v[3];
  s.reward_u = v[4];
  s.logp_d = v[5];
  s.logp_u = v[6];
  s.kl = v[7];
  s.batches = static_cast<int64_t>(v[8]);
  return s;
}

namespace {

void check_examples(const std::vector<double>& policy, const std::vector<double>& ref,
                    const std::vector<uint8_t>& desirable) {
  QWENQ_CHECK(ref.size() == policy.size() && desirable.size() == policy.size(),
              "unpaired preference batch: " << policy.size() << " policy sums, " << ref.size()
                                            << " reference sums and " << desirable.size() << " labels");
}

// Example i's share of the statistics and its weighted derivative.
double add_example(const KtoOptions& o, double S, double R, double z, bool desirable, KtoStats* s) {
  const KtoTerms t = kto_example_terms(o, S, R, z, desirable);
  const double w = desirable ? o.desirable_weight : o.undesirable_weight;
  s->loss += w * t.loss;
  if (desirable) {
    ++s->desirable;
    s->reward_d += t.reward;
    s->logp_d -= S;
  } else {
    ++s->undesirable;
    s->reward_u += t.reward;
    s->logp_u -= S;
  }
  return w * t.dS;
}

}  // namespace

KtoStats kto_batch_stats(const KtoOptions& o, const std::vector<double>& policy, const std::vector<double>& ref,
                         const std::vector<uint8_t>& desirable, double z) {
  check_examples(policy, ref, desirable);
  KtoStats s;
  for (size_t i = 0; i < policy.size(); ++i) add_example(o, policy[i], ref[i], z, desirable[i] != 0, &s);
  s.kl = z;
  s.batches = 1;
  return s;
}

std::function<std::vector<double>(const std::vector<double>&)> kto_objective(
    const KtoOptions& o, std::vector<double> ref, std::vector<uint8_t> desirable, double z, int64_t step_examples,
    KtoStats* stats) {
  QWENQ_CHECK(step_examples > 0, "kto_objective: a step of " << step_examples << " examples");
  QWENQ_CHECK(std::isfinite(z) && z >= 0,
              "kto_objective: the reference point z = " << z << " is not a finite KL estimate");
  return [o, ref = std::move(ref), desirable = std::move(desirable), z, step_examples,
          stats](const std::vector<double>& policy) {
    check_examples(policy, ref, desirable);
    std::vector<double> d(policy.size());
    KtoStats batch;
    for (size_t i = 0; i < policy.size(); ++i)
      d[i] = add_example(o, policy[i], ref[i], z, desirable[i] != 0, &batch) / static_cast<double>(step_examples);
    batch.kl = z;
    batch.batches = 1;
    if (stats) stats->add(batch);
    return d;
  };
}

}  // namespace qwenq
