// GRPO's advantages, loss weights and prompts (trainer/grpo.h).
#include "trainer/grpo.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "kernels/dropout_mask.h"

namespace qwenq {

namespace {

using Json = nlohmann::ordered_json;

}  // namespace

std::pair<double, double> grpo_mean_std(const double* v, size_t n) {
  double sum = 0;
  size_t count = 0;
  for (size_t i = 0; i < n; ++i)
    if (!std::isnan(v[i])) sum += v[i], ++count;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (count == 0) return {nan, nan};
  const double mean = sum / static_cast<double>(count);
  double ss = 0;
  for (size_t i = 0; i < n; ++i)
    if (!std::isnan(v[i])) ss += (v[i] - mean) * (v[i] - mean);
  return {mean, count > 1 ? std::sqrt(ss / static_cast<double>(count - 1)) : nan};
}

GrpoLoss parse_grpo_loss(const std::string& name) {
  if (name == "grpo") return GrpoLoss::kGrpo;
  if (name == "bnpo") return GrpoLoss::kBnpo;
  if (name == "dr_grpo") return GrpoLoss::kDrGrpo;
  if (name == "dapo") return GrpoLoss::kDapo;
  QWENQ_FAIL("--grpo-loss: '" << name << "' is not a GRPO loss; use dapo, grpo, bnpo or dr_grpo");
}

const char* grpo_loss_name(GrpoLoss l) {
  switch (l) {
    case GrpoLoss::kGrpo: return "grpo";
    case GrpoLoss::kBnpo: return "bnpo";
    case GrpoLoss::kDrGrpo: return "dr_grpo";
    case GrpoLoss::kDapo: return "dapo";
  }
  return "?";
}

GrpoScale parse_grpo_scale(const std::string& name) {
  if (name == "group") return GrpoScale::kGroup;
  if (name == "batch") return GrpoScale::kBatch;
  if (name == "none") return GrpoScale::kNone;
  QWENQ_FAIL("--scale-rewards: '" << name << "' is not a scaling; use group, batch or none");
}

const char* grpo_scale_name(GrpoScale s) {
  return s == GrpoScale::kGroup ? "group" : s == GrpoScale::kBatch ? "batch" : "none";
}

GrpoImportance parse_grpo_importance(const std::string& name) {
  if (name == "token") return GrpoImportance::kToken;
  if (name == "sequence") return GrpoImportance::kSequence;
  QWENQ_FAIL("--importance-sampling-level: '" << name << "' is not a level; use token or sequence (GSPO)");
}

const char* grpo_importance_name(GrpoImportance l) { return l == GrpoImportance::kToken ? "token" : "sequence"; }

void check_grpo_options(const GrpoOptions& o) {
  QWENQ_CHECK(o.num_generations >= 2, "--num-generations must be >= 2 (the advantages compare a prompt's completions "
                                      "with each other), got " << o.num_generations);
  QWENQ_CHECK(o.max_completion_len >= 1, "--max-completion-len must be >= 1, got " << o.max_completion_len);
  QWENQ_CHECK(std::isfinite(o.temperature) && o.temperature > 0.f,
              "--temperature must be > 0 for GRPO (it samples its completions), got " << o.temperature);
  QWENQ_CHECK(!o.rewards.empty(), "--objective grpo needs at least one --reward");
  QWENQ_CHECK(o.reward_weights.empty() || o.reward_weights.size() == o.rewards.size(),
              "--reward-weights gives " << o.reward_weights.size() << " weights for " << o.rewards.size()
                                        << " rewards");
  for (double w : o.reward_weights) QWENQ_CHECK(std::isfinite(w), "--reward-weights: " << w << " is not finite");
  QWENQ_CHECK(std::isfinite(o.beta) && o.beta >= 0, "--grpo-beta must be >= 0, got " << o.beta);
  QWENQ_CHECK(o.num_iterations >= 1, "--num-iterations must be >= 1, got " << o.num_iterations);
  QWENQ_CHECK(o.log_completions >= 0, "--log-completions must be >= 0, got " << o.log_completions);
  QWENQ_CHECK(std::isfinite(o.epsilon) && o.epsilon > 0 && o.epsilon < 1,
              "--epsilon must be in (0, 1) (the ratio is clipped to [1 - epsilon, 1 + epsilon-high]), got " << o.epsilon);
  QWENQ_CHECK(std::isfinite(o.epsilon_high) && o.epsilon_high >= 0,
              "--epsilon-high must be > 0 (or 0: --epsilon), got " << o.epsilon_high);
  QWENQ_CHECK(std::isfinite(o.delta) && (o.delta == 0 || o.delta > 1),
              "--delta must be > 1 (TRL recommends more than 1 + --epsilon-high; 0: off), got " << o.delta);
}

std::vector<double> grpo_combined_rewards(const std::vector<double>& per_func, int64_t F,
                                          const std::vector<double>& weights) {
  QWENQ_CHECK(F >= 1 && per_func.size() % static_cast<size_t>(F) == 0 && weights.size() == static_cast<size_t>(F),
              "grpo_combined_rewards: " << per_func.size() << " values for " << F << " functions, " << weights.size()
                                        << " weights");
  std::vector<double> r(per_func.size() / static_cast<size_t>(F), 0.0);
  for (size_t j = 0; j < r.size(); ++j)
    for (size_t f = 0; f < static_cast<size_t>(F); ++f) {
      const double v = per_func[j * static_cast<size_t>(F) + f];
      if (!std::isnan(v)) r[j] += weights[f] * v;
    }
  return r;
}

std::vector<double> grpo_advantages(const std::vector<double>& rewards, int64_t G, GrpoScale scale,
                                    std::vector<double>* group_std) {
  QWENQ_CHECK(G >= 2 && rewards.size() % static_cast<size_t>(G) == 0,
              "grpo_advantages: " << rewards.size() << " rewards in groups of " << G);
  const size_t g = static_cast<size_t>(G);
  std::vector<double> adv(rewards.size()), stds(rewards.size());
  const double batch_std = scale == GrpoScale::kBatch && rewards.size() >= 2 ? grpo_mean_std(rewards.data(), rewards.size()).second : 0.0;
  for (size_t from = 0; from < rewards.size(); from += g) {
    const auto [mean, sd] = grpo_mean_std(rewards.data() + from, g);
    for (size_t j = from; j < from + g; ++j) {
      stds[j] = sd;
      adv[j] = rewards[j] - mean;
      if (scale == GrpoScale::kGroup) adv[j] /= sd + 1e-4;
      if (scale == GrpoScale::kBatch) adv[j] /= batch_std + 1e-4;
    }
  }
  if (group_std) *group_std = std::move(stds);
  return adv;
}

std::vector<double> grpo_normalizers(GrpoLoss loss, const std::vector<int64_t>& lengths,
                                     const std::vector<int64_t>& micro_of, int64_t micro_batches,
                                     int64_t max_completion_len) {
  const size_t n = lengths.size();
  QWENQ_CHECK(micro_of.size() == n && micro_batches >= 1,
              "grpo_normalizers: " << n << " lengths, " << micro_of.size() << " micro-batch indices");
  std::vector<double> micro_tokens(static_cast<size_t>(micro_batches), 0.0);
  double tokens = 0;
  for (size_t j = 0; j < n; ++j) {
    QWENQ_CHECK(micro_of[j] >= 0 && micro_of[j] < micro_batches, "grpo_normalizers: micro-batch " << micro_of[j]);
    micro_tokens[static_cast<size_t>(micro_of[j])] += static_cast<double>(lengths[j]);
    tokens += static_cast<double>(lengths[j]);
  }
  const double N = static_cast<double>(n), M = static_cast<double>(micro_batches);
  std::vector<double> c(n, 0.0);
  for (size_t j = 0; j < n; ++j) {
    if (lengths[j] <= 0) continue;
    switch (loss) {
      case GrpoLoss::kGrpo: c[j] = 1.0 / (static_cast<double>(lengths[j]) * N); break;
      case GrpoLoss::kBnpo: c[j] = 1.0 / (std::max(1.0, micro_tokens[static_cast<size_t>(micro_of[j])]) * M); break;
      case GrpoLoss::kDrGrpo: c[j] = 1.0 / (N * static_cast<double>(max_completion_len)); break;
      case GrpoLoss::kDapo: c[j] = 1.0 / std::max(1.0, tokens); break;
    }
  }
  return c;
}

double grpo_loss_value(const std::vector<double>& c, const std::vector<double>& advantages,
                       const std::vector<int64_t>& lengths) {
  double loss = 0;
  for (size_t j = 0; j < c.size(); ++j) loss -= c[j] * advantages[j] * static_cast<double>(lengths[j]);
  return loss;
}

std::vector<double> grpo_token_weights(const GrpoOptions& o, const std::vector<double>& c,
                                       const std::vector<double>& advantages, const std::vector<int64_t>& lengths,
                                       const std::vector<float>& nll, const std::vector<float>* old_nll,
                                       const std::vector<float>* ref_nll, GrpoTokenTerms* terms) {
  size_t rows = 0;
  for (int64_t n : lengths) rows += static_cast<size_t>(n);
  QWENQ_CHECK(c.size() == lengths.size() && advantages.size() == lengths.size() && nll.size() == rows &&
                  (!ref_nll || ref_nll->size() == rows) && (!old_nll || old_nll->size() == rows),
              "grpo_token_weights: " << lengths.size() << " completions of " << rows << " tokens, " << nll.size()
                                     << " policy, " << (ref_nll ? ref_nll->size() : 0) << " reference and "
                                     << (old_nll ? old_nll->size() : 0) << " old values");
  const double lo = 1.0 - o.epsilon, hi = 1.0 + o.eps_high();
  std::vector<double> d(rows);
  size_t i = 0;
  for (size_t j = 0; j < lengths.size(); ++j) {
    const double A = advantages[j];
    double seq_ratio = 1.0;  // GSPO's s_j
    if (old_nll && o.importance == GrpoImportance::kSequence && lengths[j] > 0) {
      double sum = 0;  // Σ_t (lp_t − old_t)
      for (int64_t t = 0; t < lengths[j]; ++t) sum += static_cast<double>((*old_nll)[i + t]) - static_cast<double>(nll[i + t]);
      seq_ratio = std::exp(sum / static_cast<double>(lengths[j]));
    }
    for (int64_t t = 0; t < lengths[j]; ++t, ++i) {
      double rho = 1.0;
      if (old_nll) {
        rho = o.importance == GrpoImportance::kSequence
                  ? seq_ratio
                  : std::exp(static_cast<double>((*old_nll)[i]) - static_cast<double>(nll[i]));
      }
      // min(u·A, v·A) with u = min(ρ, δ) (two-sided clipping; u = ρ without δ) and v = clip(ρ): the branch the min
      // takes carries the gradient ρ·A·dlp when its ρ is live (not held at a bound), none otherwise.
      const bool capped = o.delta > 0 && rho > o.delta;
      const double u = capped ? o.delta : rho, v = std::min(std::max(rho, lo), hi);
      const bool take_u = A >= 0 ? u <= v : u >= v;
      const double kept = take_u ? u : v;
      const bool live = take_u ? !capped : (rho >= lo && rho <= hi);
      double w = live ? A * rho : 0.0;
      terms->policy -= c[j] * kept * A;
      terms->tokens += 1;
      terms->clipped_low += old_nll && A < 0 && u < lo;  // TRL's counts, on the (δ-capped) ratio
      terms->clipped_high += old_nll && A > 0 && u > hi;
      if (ref_nll) {
        const double x = static_cast<double>(nll[i]) - static_cast<double>((*ref_nll)[i]);  // ref_t − lp_t
        const double kl = std::exp(x) - x - 1.0;
        w += o.beta * (std::exp(x) - 1.0);
        terms->weighted_kl += c[j] * kl;
        terms->kl_sum += kl;
      }
      d[i] = c[j] * w;
    }
  }
  return d;
}

uint64_t grpo_rollout_seed(uint64_t run_seed, int64_t step, int64_t micro) {
  constexpr uint64_t kSalt = 0x6a09e667f3bcc909ull;  // apart from the dropout seeds of the same (seed, step, micro)
  return micro_batch_dropout_seed(run_seed + kSalt, step, micro);
}

uint64_t grpo_eval_seed(uint64_t run_seed) { return dropout_mix64(run_seed + 0xbb67ae8584caa73bull); }

SftDataset load_grpo_dataset(const std::string& path, const Tokenizer& tok, const SftDataOptions& opt,
                             int64_t max_completion_len) {
  QWENQ_CHECK(opt.max_len > max_completion_len,
              "--objective grpo: --seq-len (or --max-len) " << opt.max_len << " leaves no room for a prompt beside "
                                                            << "--max-completion-len " << max_completion_len);
  QWENQ_CHECK(opt.format == SftFormat::kAuto || opt.format == SftFormat::kPromptCompletion,
              "GRPO reads prompt records ({\"prompt\": ...}; --format auto), not --format " << sft_format_name(opt.format));
  SftDataset ds;
  SftDataStats& st = ds.stats;
  std::vector<SftExample> examples;
  std::vector<std::string> records;
  for_each_json_record(path, opt.skip_bad, &st, [&](const Json& j, const std::string& where) -> std::string {
    if (!j.is_object()) return std::string("expected a JSON object, got ") + j.type_name();
    const char* key = j.contains("prompt") ? "prompt" : j.contains("question") ? "question" : nullptr;
    if (key == nullptr) return "expected a \"prompt\" (a string or a message list) or GSM8K's \"question\"";
    const Json& p = j[key];
    if (!p.is_string() && !p.is_array()) return std::string("\"") + key + "\" must be a string or a message list";
    if (p.is_string() && p.get<std::string>().empty()) return std::string("\"") + key + "\" is empty";
    // The prompt as SFT renders a prompt-completion record with an empty completion; the prompt is what precedes
    // the completion's first scored token (the generation prompt of a conversation).
    Json pc = {{"prompt", p}, {"completion", p.is_string() ? Json("") : Json::array({Json{{"role", "assistant"}, {"content", ""}}})}};
    if (j.contains("tools")) pc["tools"] = j["tools"];
    SftRecord rec;
    const std::string why = sft_record_from_json(pc, SftFormat::kPromptCompletion, &rec);
    if (!why.empty()) return why;
    rec.where = where;
    SftExample ex;
    SftDataStats scratch;
    prepare_sft_example(rec, tok, opt.templ, 0, &ex, &scratch);
    st.prompts_cut += scratch.prompts_cut;
    st.prompt_cut_tokens += scratch.prompt_cut_tokens;
    size_t f = 0;
    while (f < ex.loss_mask.size() && !ex.loss_mask[f]) ++f;
    if (f == 0) return "the prompt renders to no tokens";
    ex.tokens.resize(f);
    st.longest = std::max<int64_t>(st.longest, static_cast<int64_t>(f));
    if (static_cast<int64_t>(f) + max_completion_len > opt.max_len) {
      ++st.dropped_long_prompts;
      return "";
    }
    ex.loss_mask.assign(f, 1);
    ex.loss_mask[0] = 0;
    ++st.records;
    st.tokens += static_cast<int64_t>(f);
    Json rec_json = j;
    if (key != std::string("prompt")) rec_json["prompt"] = p;  // the reward functions see it as "prompt"
    records.push_back(rec_json.dump());
    examples.push_back(std::move(ex));
    return "";
  });
  st.format = SftFormat::kPromptCompletion;
  QWENQ_CHECK(!examples.empty(), path << ": no prompt leaves room for --max-completion-len " << max_completion_len
                                      << " tokens in --seq-len " << opt.max_len << " (" << st.dropped_long_prompts
                                      << " dropped; give --max-prompt-len, or raise --seq-len)");
  std::vector<int64_t> train, eval;
  split_sft_indices(static_cast<int64_t>(examples.size()), opt.seed, opt.eval_fraction, opt.eval_count, &train, &eval);
  for (const auto& [ids, out, recs] : {std::tuple{&train, &ds.train, &ds.train_records},
                                       std::tuple{&eval, &ds.eval, &ds.eval_records}}) {
    for (int64_t i : *ids) {
      out->push_back(examples[static_cast<size_t>(i)]);
      recs->push_back(records[static_cast<size_t>(i)]);
    }
  }
  st.train_examples = static_cast<int64_t>(train.size());
  st.eval_examples = static_cast<int64_t>(eval.size());
  return ds;
}

}  // namespace qwenq
