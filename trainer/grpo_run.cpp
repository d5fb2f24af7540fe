// GRPO's rollouts, training batches and logged statistics (trainer/grpo.h).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <type_traits>

#include "core/error.h"
#include "core/process_group.h"
#include "kernels/dropout_mask.h"
#include "kernels/loss.h"
#include "lora/lora_adapter.h"
#include "trainer/generate.h"
#include "trainer/generation_config.h"
#include "trainer/grpo.h"
#include "trainer/grpo_reward.h"
#include "trainer/lora_inference.h"
#include "trainer/qwen_model.h"

namespace qwenq {

namespace {

using Json = nlohmann::json;            // the metrics records
using Record = nlohmann::ordered_json;  // a prompt's record, as read

// NaN as JSON null (nlohmann writes NaN as null anyway; said here for the reader), in either JSON type.
template <class J = Json>
J number_or_null(double v) {
  return std::isfinite(v) ? J(v) : J(nullptr);
}

}  // namespace

struct GrpoRun::Generation {
  std::vector<size_t> row0;                      // micro-batch i's completions are rows [row0[i], row0[i + 1])
  std::vector<std::vector<GrpoSample>> samples;  // per micro-batch (this rank's)
  std::vector<std::vector<float>> old_nll;       // per micro-batch (this rank's, num_iterations > 1): the sampling
                                                 // policy's nll of its counted completion tokens, as the
                                                 // generation's first step computed them
  std::vector<double> adv, c;                    // per completion: A_j, c_j
  std::vector<int64_t> len;                      // |o_j|
  StepResult base;                               // tokens, targets and the generation's stats
};

AttachedAdapter::AttachedAdapter(QwenModel& model, const LoraAdapter& adapter)
    : model_(model),
      layout_(std::make_unique<LoraInferenceLayout>(
          lora_inference_layout(adapter, model.config(), "the adapter being trained"))) {
  model_.attach_adapter(layout_.get());
}

AttachedAdapter::~AttachedAdapter() { model_.attach_adapter(nullptr); }

SamplingOptions grpo_sampling(const GrpoOptions& o, const QwenModel& model, const Tokenizer& tok) {
  SamplingOptions s;
  s.max_new_tokens = o.max_completion_len;
  s.temperature = o.temperature;
  s.top_k = o.top_k;
  s.top_p = o.top_p;
  s.min_p = o.min_p;
  s.repetition_penalty = o.repetition_penalty;
  if (tok.eos_id() >= 0) s.stop_ids.push_back(tok.eos_id());
  for (int32_t id : load_generation_config(model.dir()).eos_token_ids)
    if (std::find(s.stop_ids.begin(), s.stop_ids.end(), id) == s.stop_ids.end()) s.stop_ids.push_back(id);
  if (s.stop_ids.empty() && model.config().eos_token_id >= 0) s.stop_ids.push_back(model.config().eos_token_id);
  check_sampling_options(s);
  return s;
}

void GrpoScores::sum_over(ProcessGroup* group) {
  if (group == nullptr) return;
  for (std::vector<double>* v : {&per_func, &length, &truncated}) group->all_reduce_sum(v->data(), static_cast<int64_t>(v->size()));
}

void GrpoScores::resize(size_t n, int64_t functions) {
  F = functions;
  per_func.assign(n * static_cast<size_t>(F), 0.0);
  length.assign(n, 0.0);
  truncated.assign(n, 0.0);
}

std::vector<GrpoSample> grpo_rollouts(const QwenModel& model, const Tokenizer& tok,
                                      const std::vector<SftExample>& examples, const std::vector<std::string>& records,
                                      const std::vector<int64_t>& prompts, int64_t G, const SamplingOptions& sampling,
                                      uint64_t seed, std::vector<std::unique_ptr<RewardFunction>>& rewards,
                                      GrpoScores* scores, size_t row0) {
  std::vector<std::vector<int32_t>> inputs;
  std::vector<uint64_t> seeds;
  std::vector<GrpoSample> samples;
  for (int64_t p : prompts) {
    for (int64_t g = 0; g < G; ++g) {
      inputs.push_back(examples[static_cast<size_t>(p)].tokens);
      seeds.push_back(dropout_mix64(seed + static_cast<uint64_t>(seeds.size())));
      samples.emplace_back();
      samples.back().prompt = p;
    }
  }
  const std::vector<std::vector<int32_t>> outs =
      generate_batch(model, inputs, sampling, std::min<int64_t>(kMaxDecodeBatch, static_cast<int64_t>(inputs.size())),
                     nullptr, &seeds);
  std::vector<Record> parsed(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) parsed[i] = Record::parse(records[static_cast<size_t>(prompts[i])]);
  std::vector<RewardSample> rs(samples.size());
  for (size_t k = 0; k < samples.size(); ++k) {
    GrpoSample& s = samples[k];
    s.completion = outs[k];
    s.truncated = s.completion.empty() ||
                  std::find(sampling.stop_ids.begin(), sampling.stop_ids.end(), s.completion.back()) == sampling.stop_ids.end();
    RewardSample& r = rs[k];
    r.record = &parsed[k / static_cast<size_t>(G)];
    r.completion = tok.decode(s.completion, /*skip_special=*/true);
    r.ids = s.completion;
    r.conversational = (*r.record)["prompt"].is_array();
    r.truncated = s.truncated;
  }
  const size_t F = rewards.size();
  QWENQ_CHECK(scores->F == static_cast<int64_t>(F) && row0 + samples.size() <= scores->size(),
              "grpo_rollouts: rows " << row0 << " + " << samples.size() << " of " << scores->size());
  for (size_t f = 0; f < F; ++f) {
    const std::vector<double> v = rewards[f]->score(rs);
    QWENQ_CHECK(v.size() == rs.size(), "reward " << rewards[f]->name() << ": " << v.size() << " values for "
                                                 << rs.size() << " completions");
    for (size_t k = 0; k < v.size(); ++k) scores->per_func[(row0 + k) * F + f] = v[k];
  }
  for (size_t k = 0; k < samples.size(); ++k) {
    scores->length[row0 + k] = static_cast<double>(samples[k].completion.size());
    scores->truncated[row0 + k] = samples[k].truncated ? 1.0 : 0.0;
  }
  return samples;
}

SftBatch grpo_batch(const std::vector<SftExample>& examples, const std::vector<GrpoSample>& samples,
                    bool mask_truncated) {
  SftBatch b;
  b.packed.cu_seqlens.push_back(0);
  b.cu_rows.push_back(0);
  for (const GrpoSample& s : samples) {
    const std::vector<int32_t>& prompt = examples[static_cast<size_t>(s.prompt)].tokens;
    const bool counted = !(mask_truncated && s.truncated);
    const size_t P = prompt.size(), C = s.completion.size();
    for (size_t t = 0; t < P + C; ++t) {
      b.packed.tokens.push_back(t < P ? prompt[t] : s.completion[t - P]);
      b.packed.positions.push_back(static_cast<int32_t>(t));
      // position t predicts token t + 1: a target from the last prompt token to the second-to-last completion one
      const bool target = counted && t + 1 >= P && t + 1 < P + C;
      b.targets.push_back(target ? s.completion[t + 1 - P] : kIgnoreIndex);
      b.num_targets += target;
    }
    b.packed.cu_seqlens.push_back(static_cast<int32_t>(b.packed.tokens.size()));
    b.cu_rows.push_back(static_cast<int32_t>(b.packed.tokens.size()));
    b.padded_len = std::max<int64_t>(b.padded_len, static_cast<int64_t>(P + C));
    ++b.num_examples;
  }
  return b;
}

std::vector<int64_t> grpo_lengths(const GrpoScores& s, bool mask_truncated) {
  std::vector<int64_t> n(s.size());
  for (size_t j = 0; j < n.size(); ++j)
    n[j] = mask_truncated && s.truncated[j] != 0.0 ? 0 : static_cast<int64_t>(s.length[j]);
  return n;
}

Json grpo_metrics(const GrpoScores& s, int64_t G, const std::vector<double>& weights,
                  const std::vector<std::unique_ptr<RewardFunction>>& rewards, const std::string& prefix) {
  Json out = Json::object();
  const size_t n = s.size(), F = static_cast<size_t>(s.F);
  if (n == 0) return out;
  const std::vector<double> r = grpo_combined_rewards(s.per_func, s.F, weights);
  std::vector<double> group_std;
  grpo_advantages(r, G, GrpoScale::kNone, &group_std);
  double mean = 0, std_mean = 0;
  int64_t zero_std = 0;
  for (size_t j = 0; j < n; ++j) mean += r[j];
  for (size_t j = 0; j < n; j += static_cast<size_t>(G)) {
    std_mean += group_std[j];
    zero_std += std::fabs(group_std[j]) < 1e-8;
  }
  const double groups = static_cast<double>(n / static_cast<size_t>(G));
  out[prefix + "reward"] = mean / static_cast<double>(n);
  out[prefix + "reward_std"] = std_mean / groups;
  for (size_t f = 0; f < F; ++f) {
    std::vector<double> col(n);
    for (size_t j = 0; j < n; ++j) col[j] = s.per_func[j * F + f];
    const auto [m, sd] = grpo_mean_std(col.data(), col.size());
    out[prefix + "rewards_" + rewards[f]->name() + "_mean"] = number_or_null(m);
    out[prefix + "rewards_" + rewards[f]->name() + "_std"] = number_or_null(sd);
  }
  out[prefix + "frac_reward_zero_std"] = static_cast<double>(zero_std) / groups;
  double len = 0, lo = 1e300, hi = 0, term = 0;
  int64_t clipped = 0;
  for (size_t j = 0; j < n; ++j) {
    len += s.length[j];
    lo = std::min(lo, s.length[j]);
    hi = std::max(hi, s.length[j]);
    if (s.truncated[j] != 0.0) ++clipped;
    else term += s.length[j];
  }
  out[prefix + "completions_mean_length"] = len / static_cast<double>(n);
  out[prefix + "completions_min_length"] = lo;
  out[prefix + "completions_max_length"] = hi;
  out[prefix + "completions_clipped_ratio"] = static_cast<double>(clipped) / static_cast<double>(n);
  const int64_t ended = static_cast<int64_t>(n) - clipped;
  out[prefix + "completions_mean_terminated_length"] = ended > 0 ? term / static_cast<double>(ended) : 0.0;
  return out;
}

GrpoRun::GrpoRun(const GrpoOptions& o, const QwenModel& model, const Tokenizer& tok, const LoraAdapter& adapter)
    : o_(o), tok_(tok), sampling_(grpo_sampling(o, model, tok)),
      rewards_(make_reward_functions(o.rewards, o.max_completion_len)), weights_(o.reward_weights) {
  check_grpo_options(o_);
  if (weights_.empty()) weights_.assign(rewards_.size(), 1.0);
  if (o_.beta > 0) {  // A = B = 0: the branch adds 0 (not DoRA, whose zero magnitudes would zero the Linears)
    LoraConfig plain = adapter.config();
    plain.use_dora = false;
    reference_ = std::make_unique<LoraAdapter>(adapter.dims(), plain);
  }
}

GrpoRun::~GrpoRun() = default;

void GrpoRun::check_records(const std::vector<std::string>& records, const std::string& file) const {
  for (const std::string& text : records) {
    const Record j = Record::parse(text);
    for (const auto& f : rewards_) {
      const std::string why = f->check_record(j);
      QWENQ_CHECK(why.empty(), file << ": the prompt " << j["prompt"].dump().substr(0, 80) << ": " << why);
    }
  }
}

std::unique_ptr<GrpoRun::Generation> GrpoRun::sample(QwenModel& model, const LoraAdapter& adapter,
                                                     const std::vector<SftExample>& examples,
                                                     const std::vector<std::string>& records,
                                                     const std::vector<std::vector<int64_t>>& prompts, int64_t step,
                                                     uint64_t run_seed, ProcessGroup* group) {
  const int rank = group ? group->rank() : 0, world = group ? group->world() : 1;
  const int64_t G = o_.num_generations;
  const size_t M = prompts.size();
  auto g = std::make_unique<Generation>();
  g->row0.assign(M + 1, 0);
  for (size_t i = 0; i < M; ++i) g->row0[i + 1] = g->row0[i] + prompts[i].size() * static_cast<size_t>(G);
  GrpoScores scores;
  scores.resize(g->row0.back(), static_cast<int64_t>(rewards_.size()));
  g->samples.resize(M);
  const auto t0 = std::chrono::steady_clock::now();
  {
    AttachedAdapter attached(model, adapter);
    for (size_t i = static_cast<size_t>(rank); i < M; i += static_cast<size_t>(world)) {
      g->samples[i] = grpo_rollouts(model, tok_, examples, records, prompts[i], G, sampling_,
                                    grpo_rollout_seed(run_seed, step, static_cast<int64_t>(i)), rewards_, &scores,
                                    g->row0[i]);
    }
  }
  const double rollout_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  scores.sum_over(group);
  g->adv = grpo_advantages(grpo_combined_rewards(scores.per_func, scores.F, weights_), G, o_.scale_rewards);
  g->len = grpo_lengths(scores, o_.mask_truncated);
  std::vector<int64_t> micro_of(g->row0.back());
  for (size_t i = 0; i < M; ++i) {
    std::fill(micro_of.begin() + static_cast<std::ptrdiff_t>(g->row0[i]),
              micro_of.begin() + static_cast<std::ptrdiff_t>(g->row0[i + 1]), static_cast<int64_t>(i));
    for (int64_t p : prompts[i])
      g->base.tokens += G * static_cast<int64_t>(examples[static_cast<size_t>(p)].tokens.size());
  }
  g->c = grpo_normalizers(o_.loss, g->len, micro_of, static_cast<int64_t>(M), o_.max_completion_len);
  for (size_t j = 0; j < g->len.size(); ++j) {
    g->base.targets += g->len[j];
    g->base.tokens += static_cast<int64_t>(scores.length[j]);
  }
  g->base.stats = grpo_metrics(scores, G, weights_, rewards_, "");
  g->base.stats["rollout_s"] = rollout_s;
  if (o_.log_completions > 0) {  // this rank's first completions, as TRL's log_completions shows them
    const std::vector<double> r = grpo_combined_rewards(scores.per_func, scores.F, weights_);
    for (size_t i = static_cast<size_t>(rank); i < M; i += static_cast<size_t>(world)) {
      for (size_t k = 0; k < g->samples[i].size(); ++k) {
        if (static_cast<int64_t>(g->base.completions.size()) >= o_.log_completions) break;
        const GrpoSample& smp = g->samples[i][k];
        const size_t row = g->row0[i] + k;
        Record rec;
        rec["prompt"] = Record::parse(records[static_cast<size_t>(smp.prompt)])["prompt"];
        rec["completion"] = tok_.decode(smp.completion, /*skip_special=*/true);
        Record per = Record::object();
        for (size_t f = 0; f < rewards_.size(); ++f) {
          // null: the reward did not apply
          per[rewards_[f]->name()] = number_or_null<Record>(scores.per_func[row * rewards_.size() + f]);
        }
        rec["rewards"] = per;
        rec["reward"] = r[row];
        rec["advantage"] = g->adv[row];
        rec["length"] = smp.completion.size();
        rec["truncated"] = smp.truncated;
        g->base.completions.push_back(std::move(rec));
      }
    }
  }
  g->old_nll.resize(M);  // filled by the generation's first step (num_iterations > 1)
  return g;
}

GrpoRun::StepResult GrpoRun::step(QwenModel& model, const LoraAdapter& adapter, LoraAdapter* grads,
                                  const std::vector<SftExample>& examples, const std::vector<std::string>& records,
                                  const std::vector<std::vector<int64_t>>& prompts, int64_t step, uint64_t run_seed,
                                  const LoraStepOptions& so, const LoraStepOptions& eval_so, ProcessGroup* group) {
  const int rank = group ? group->rank() : 0, world = group ? group->world() : 1;
  const int64_t mu = o_.num_iterations;
  LoraStepOptions gso = so, ref_so = eval_so;
  gso.logit_scale = ref_so.logit_scale = 1.0 / static_cast<double>(o_.temperature);
  const bool fresh = gen_ == nullptr || mu == 1 || step % mu == 0;
  if (fresh) {
    gen_.reset();  // (the last generation's memory goes before the next one's)
    gen_ = sample(model, adapter, examples, records, prompts, step, run_seed, group);
  }
  Generation& g = *gen_;
  QWENQ_CHECK(g.row0.size() == prompts.size() + 1, "grpo step " << step << ": " << prompts.size()
                                                   << " micro-batches, the kept generation has " << g.row0.size() - 1);
  StepResult res = g.base;
  if (!fresh) {
    res.stats["rollout_s"] = 0.0;
    res.completions.clear();  // logged with the step that sampled them
  }
  GrpoTokenTerms terms;
  const auto slice = [&](const auto& v, size_t i) {
    return std::decay_t<decltype(v)>(v.begin() + static_cast<std::ptrdiff_t>(g.row0[i]),
                                     v.begin() + static_cast<std::ptrdiff_t>(g.row0[i + 1]));
  };
  for (size_t i = static_cast<size_t>(rank); i < prompts.size(); i += static_cast<size_t>(world)) {
    const SftBatch b = grpo_batch(examples, g.samples[i], o_.mask_truncated);
    if (b.num_targets == 0) continue;  // every completion masked (truncated): nothing to learn from
    const std::vector<double> ci = slice(g.c, i), ai = slice(g.adv, i);
    const std::vector<int64_t> li = slice(g.len, i);
    // Off-policy steps (num_iterations > 1, not the generation's first): the ratio to the policy that sampled, whose
    // log-probabilities the first step's own forward kept (the adapter as it sampled; ρ = 1 there, as TRL's detached
    // log-probabilities).
    std::vector<float>* keep_old = mu > 1 && fresh ? &g.old_nll[i] : nullptr;
    const std::vector<float>* old = mu > 1 && !fresh ? &g.old_nll[i] : nullptr;
    if (o_.beta > 0 || mu > 1) {  // token by token: the ratio to the sampling policy, the KL term to the base
      std::vector<float> ref;  // the reference's log-probabilities: the base alone (the adapter's branch zero)
      if (o_.beta > 0) ref = lora_loss_and_grad(model, *reference_, b.packed, b.targets, nullptr, ref_so).row_nll;
      gso.token_objective = [&, ref = std::move(ref), old, keep_old](const std::vector<float>& nll) {
        if (keep_old) *keep_old = nll;
        return grpo_token_weights(o_, ci, ai, li, nll, old, o_.beta > 0 ? &ref : nullptr, &terms);
      };
    } else {
      std::vector<double> dS(ci.size());
      for (size_t j = 0; j < dS.size(); ++j) dS[j] = ci[j] * ai[j];
      gso.sequence_objective = [dS](const std::vector<double>&) { return dS; };
    }
    gso.dropout_seed = micro_batch_dropout_seed(run_seed, step, static_cast<int64_t>(i));
    try {
      lora_loss_and_grad(model, adapter, b.packed, b.targets, grads, gso);
    } catch (const Error& e) {
      QWENQ_FAIL("micro-batch " << i + 1 << ": " << e.what());
    }
  }
  double t[6] = {terms.policy, terms.weighted_kl, terms.kl_sum, terms.tokens, terms.clipped_low, terms.clipped_high};
  if (group && (o_.beta > 0 || mu > 1)) group->all_reduce_sum(t, 6);
  // On-policy the policy term is −Σ c_j·A_j·|o_j| (every rank has the step's c, A, |o|); off it, the ranks' sums.
  res.loss = mu > 1 ? t[0] : grpo_loss_value(g.c, g.adv, g.len);
  if (o_.beta > 0) {
    res.stats["kl"] = res.targets > 0 ? t[2] / static_cast<double>(res.targets) : 0.0;
    res.loss += o_.beta * t[1];
  }
  if (mu > 1) {
    const double n = std::max(1.0, t[3]);
    res.stats["clip_ratio_low_mean"] = t[4] / n;
    res.stats["clip_ratio_high_mean"] = t[5] / n;
    res.stats["clip_ratio_region_mean"] = (t[4] + t[5]) / n;
  }
  return res;
}

Json GrpoRun::evaluate(QwenModel& model, const LoraAdapter& adapter, const std::vector<SftExample>& examples,
                       const std::vector<std::string>& records, int64_t batch_size, int64_t max_batches,
                       uint64_t run_seed, ProcessGroup* group) {
  const int64_t n_prompts =
      max_batches > 0 ? std::min<int64_t>(static_cast<int64_t>(examples.size()), max_batches * batch_size)
                      : static_cast<int64_t>(examples.size());
  const int rank = group ? group->rank() : 0, world = group ? group->world() : 1;
  const int64_t G = o_.num_generations;
  const uint64_t seed = grpo_eval_seed(run_seed);
  GrpoScores scores;
  scores.resize(static_cast<size_t>(n_prompts * G), static_cast<int64_t>(rewards_.size()));
  {
    AttachedAdapter attached(model, adapter);
    // Prompt p's completions get the seeds of its place in the whole set, so a rank's share changes nothing.
    for (int64_t p = rank; p < n_prompts; p += world) {
      grpo_rollouts(model, tok_, examples, records, {p}, G, sampling_, seed + static_cast<uint64_t>(p * G), rewards_,
                    &scores, static_cast<size_t>(p * G));
    }
  }
  scores.sum_over(group);
  Json m = grpo_metrics(scores, G, weights_, rewards_, "eval_");
  m["eval_prompts"] = n_prompts;
  return m;
}

}  // namespace qwenq
