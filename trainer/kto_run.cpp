// The unpaired preference objective's pieces of a training run (trainer/kto.h): a micro-batch's reference point and
// objective, the held-out statistics, the metrics and the class balance line.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "trainer/kto.h"

namespace qwenq {

void kto_report_balance(const std::vector<uint8_t>& desirable, const KtoOptions& o) {
  int64_t nd = 0;
  for (uint8_t d : desirable) nd += d != 0;
  const int64_t nu = static_cast<int64_t>(desirable.size()) - nd;
  std::fprintf(stderr, "kto: %lld desirable and %lld undesirable training examples\n", (long long)nd, (long long)nu);
  if (nd == nu || nd == 0 || nu == 0) return;
  // The weights that put w_d·n_d / (w_u·n_u) in [1, 4/3] with the other weight as given (rounded as TRL prints them).
  const auto r2 = [](double x) { return std::round(x * 100) / 100; };
  const double d_lo = r2(nu * o.undesirable_weight / nd), d_hi = r2(nu * o.undesirable_weight / nd * 1.33);
  const double u_lo = r2(nd * o.desirable_weight / nu / 1.33), u_hi = r2(nd * o.desirable_weight / nu);
  const bool d_ok = d_lo <= o.desirable_weight && o.desirable_weight <= d_hi;
  const bool u_ok = u_lo <= o.undesirable_weight && o.undesirable_weight <= u_hi;
  if (d_ok || u_ok) return;
  std::fprintf(stderr,
               "kto: the classes are unbalanced and the weights are outside the range the KTO paper recommends: give "
               "--kto-desirable-weight in [%.2f, %.2f] or --kto-undesirable-weight in [%.2f, %.2f] (not both)\n",
               d_lo, d_hi, u_lo, u_hi);
}

std::function<std::vector<double>(const std::vector<double>&)> kto_step_objective(
    const KtoOptions& o, const SftBatch& micro, const std::vector<int64_t>& order, const std::vector<double>& ref_train,
    const std::vector<uint8_t>& desirable, int64_t step_examples, KtoStats* stats,
    const std::function<LoraStepResult(const SftBatch&)>& forward) {
  QWENQ_CHECK(micro.num_examples % 2 == 0, "kto: a micro-batch of " << micro.num_examples
                                           << " sequences (units of an example and its KL sequence)");
  const size_t units = static_cast<size_t>(micro.num_examples / 2);
  std::vector<double> ref(units), ref_kl(units);
  std::vector<uint8_t> labels(units);
  for (size_t k = 0; k < units; ++k) {
    const size_t ex = static_cast<size_t>(order.at(static_cast<size_t>(micro.first_index) + 2 * k));
    QWENQ_CHECK(ex % 2 == 0, "kto: sequence " << ex << " opens a unit (units are [example, KL sequence])");
    ref[k] = ref_train.at(ex);
    ref_kl[k] = ref_train.at(ex + 1);
    labels[k] = desirable.at(ex / 2);
  }
  double z = 0;
  if (o.uses_kl()) {
    const LoraStepResult r = forward(select_batch_sequences(micro, 2, 1));
    QWENQ_CHECK(r.seq_nll.size() == units, "kto: " << r.seq_nll.size() << " KL sums for " << units << " examples");
    z = kto_reference_point(r.seq_nll, ref_kl);
  }
  return kto_objective(o, std::move(ref), std::move(labels), z, step_examples, stats);
}

KtoStats kto_eval_stats(const KtoOptions& o, const std::vector<double>& policy, const std::vector<double>& ref,
                        const std::vector<uint8_t>& desirable, int64_t batch_size) {
  QWENQ_CHECK(policy.size() % 2 == 0 && policy.size() <= ref.size() && ref.size() == 2 * desirable.size() &&
                  batch_size >= 1,
              "kto_eval_stats: " << policy.size() << " policy sums, " << ref.size() << " reference sums, "
                                 << desirable.size() << " labels");
  KtoStats s;
  const size_t units = policy.size() / 2, per = static_cast<size_t>(batch_size);
  for (size_t start = 0; start < units; start += per) {
    const size_t end = std::min(units, start + per);
    std::vector<double> S, R, S_kl, R_kl;
    std::vector<uint8_t> d;
    for (size_t k = start; k < end; ++k) {
      S.push_back(policy[2 * k]);
      R.push_back(ref[2 * k]);
      S_kl.push_back(policy[2 * k + 1]);
      R_kl.push_back(ref[2 * k + 1]);
      d.push_back(desirable[k]);
    }
    const double z = o.uses_kl() ? kto_reference_point(S_kl, R_kl) : 0.0;
    s.add(kto_batch_stats(o, S, R, d, z));
  }
  return s;
}

void add_kto_rewards(const KtoStats& s, const std::string& prefix, nlohmann::json* record) {
  nlohmann::json& r = *record;
  if (s.desirable > 0) {
    r[prefix + "rewards_chosen"] = s.reward_d / static_cast<double>(s.desirable);
    r[prefix + "logps_chosen"] = s.logp_d / static_cast<double>(s.desirable);
  }
  if (s.undesirable > 0) {
    r[prefix + "rewards_rejected"] = s.reward_u / static_cast<double>(s.undesirable);
    r[prefix + "logps_rejected"] = s.logp_u / static_cast<double>(s.undesirable);
  }
  r[prefix + "rewards_margin"] = s.margin();
  r[prefix + "desirable"] = s.desirable;
  r[prefix + "undesirable"] = s.undesirable;
}

}  // namespace qwenq
