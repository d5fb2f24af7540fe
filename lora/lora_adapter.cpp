#include "lora/lora_adapter.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/rng.h"
#include "lora/lora_select.h"

namespace qwenq {

LoraShape lora_target_shape(const LoraDims& d, LoraTarget t) {
  switch (t) {
    case LoraTarget::QProj: return {d.q_dim, d.hidden_size};
    case LoraTarget::KProj:
    case LoraTarget::VProj: return {d.kv_dim, d.hidden_size};
    case LoraTarget::OProj: return {d.hidden_size, d.q_dim};
    case LoraTarget::GateProj:
    case LoraTarget::UpProj: return {d.intermediate_size, d.hidden_size};
    case LoraTarget::DownProj: return {d.hidden_size, d.intermediate_size};
  }
  QWENQ_FAIL("unknown LoRA target " << static_cast<int>(t));
}

LoraAdapter::LoraAdapter(const LoraDims& dims, const LoraConfig& config, const std::string& source)
    : dims_(dims), config_(config) {
  config_.validate();
  QWENQ_CHECK(dims.hidden_size > 0 && dims.intermediate_size > 0 && dims.q_dim > 0 && dims.kv_dim > 0 &&
                  dims.num_layers > 0,
              (source.empty() ? "LoRA adapter" : source) << ": model dimensions must be positive (hidden " << dims.hidden_size << ", intermediate "
                     << dims.intermediate_size << ", q_dim " << dims.q_dim << ", kv_dim " << dims.kv_dim
                     << ", layers " << dims.num_layers << ")");
  const std::vector<LoraPlanSlot> plan = lora_plan(dims, config_, source);
  gpu_refusal_ = lora_plan_gpu_refusal(plan, dims, config_);
  bool used[kNumLoraTargets] = {};
  int64_t layer = 0;
  first_.push_back(0);
  for (const LoraPlanSlot& p : plan) {
    while (layer < p.slot.layer) {  // the layers before this slot's (some may adapt nothing)
      first_.push_back(static_cast<int64_t>(slots_.size()));
      ++layer;
    }
    used[static_cast<int>(p.slot.target)] = true;
    slots_.push_back(p.slot);
    LoraWeights w;
    w.N = p.shape.N;
    w.K = p.shape.K;
    w.r = p.r;
    w.scaling = p.scaling;
    w.A.assign(static_cast<size_t>(p.r * p.shape.K), 0.0f);
    w.B.assign(static_cast<size_t>(p.shape.N * p.r), 0.0f);
    if (config_.use_dora) w.m.assign(static_cast<size_t>(p.shape.N), 0.0f);
    weights_.push_back(std::move(w));
  }
  while (layer < dims.num_layers) {
    first_.push_back(static_cast<int64_t>(slots_.size()));
    ++layer;
  }
  for (const LoraTargetInfo& info : kLoraTargets) {
    if (used[static_cast<int>(info.target)]) targets_.push_back(info.target);
  }
  QWENQ_CHECK(config_.num_labels >= 0, "LoRA adapter: num_labels " << config_.num_labels << " is negative");
  score_.assign(static_cast<size_t>(config_.num_labels * dims.hidden_size), 0.0f);
}

int64_t LoraAdapter::uniform_rank() const {
  for (size_t i = 0; i < weights_.size(); ++i) {
    QWENQ_CHECK(weights_[i].r == config_.r, "the LoRA adapter gives " << lora_module_key(slots_[i]) << " the rank "
                                                << weights_[i].r << " of its own (rank_pattern), where one rank for "
                                                << "every Linear is needed");
  }
  return config_.r;
}

double LoraAdapter::uniform_scaling() const {
  for (size_t i = 0; i < weights_.size(); ++i) {
    QWENQ_CHECK(weights_[i].scaling == config_.scaling(),
                "the LoRA adapter gives " << lora_module_key(slots_[i]) << " the scaling " << weights_[i].scaling
                                          << " of its own (rank_pattern / alpha_pattern), where one scaling for "
                                          << "every Linear is needed");
  }
  return config_.scaling();
}

void LoraAdapter::init_score_head(uint64_t seed, double stddev) {
  QWENQ_CHECK(config_.seq_cls(), "init_score_head: the adapter has no score head (not a SEQ_CLS adapter)");
  Rng rng(seed ^ 0x5c08e5eedULL);
  for (size_t i = 0; i < score_.size(); ++i) {
    // Box-Muller: u1 in (0, 1] so the log is finite.
    const double u1 = 1.0 - static_cast<double>(rng.uniform()), u2 = static_cast<double>(rng.uniform());
    score_[i] = static_cast<float>(stddev * std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
  }
}

void LoraAdapter::init_peft(uint64_t seed) {
  Rng rng(seed);
  for (LoraWeights& w : weights_) {
    const float bound = static_cast<float>(1.0 / std::sqrt(static_cast<double>(w.K)));
    for (float& a : w.A) a = rng.uniform(-bound, bound);
    std::fill(w.B.begin(), w.B.end(), 0.0f);
  }
}

int64_t LoraAdapter::find(int64_t layer, int64_t expert, LoraTarget t) const {
  if (layer < 0 || layer >= dims_.num_layers) return -1;
  for (int64_t i = first_[layer]; i < first_[layer + 1]; ++i) {
    if (slots_[i].target == t && slots_[i].expert == expert) return i;
  }
  return -1;
}

bool LoraAdapter::has(int64_t layer, LoraTarget t) const { return find(layer, kNoExpert, t) >= 0; }

LoraWeights& LoraAdapter::at(int64_t layer, LoraTarget t) {
  return const_cast<LoraWeights&>(static_cast<const LoraAdapter*>(this)->at(layer, t));
}

const LoraWeights& LoraAdapter::at(int64_t layer, LoraTarget t) const {
  const int64_t s = find(layer, kNoExpert, t);
  if (s < 0) {
    std::string names;
    for (LoraTarget x : targets_) names += std::string(names.empty() ? "" : ", ") + lora_target_name(x);
    QWENQ_FAIL("the LoRA adapter has no weights for model.layers." << layer << "." << lora_target_path(t)
                                                                   << " (it has " << dims_.num_layers
                                                                   << " layers and targets " << names << ")");
  }
  return weights_[static_cast<size_t>(s)];
}

bool LoraAdapter::has_expert(int64_t layer, int64_t expert, LoraTarget t) const {
  return expert != kNoExpert && find(layer, expert, t) >= 0;
}

LoraWeights& LoraAdapter::expert_at(int64_t layer, int64_t expert, LoraTarget t) {
  return const_cast<LoraWeights&>(static_cast<const LoraAdapter*>(this)->expert_at(layer, expert, t));
}

const LoraWeights& LoraAdapter::expert_at(int64_t layer, int64_t expert, LoraTarget t) const {
  const int64_t s = expert == kNoExpert ? -1 : find(layer, expert, t);
  QWENQ_CHECK(s >= 0, "the LoRA adapter has no weights for " << lora_target_name(t) << " of expert " << expert
                                                              << " in layer " << layer);
  return weights_[static_cast<size_t>(s)];
}

int64_t LoraAdapter::num_parameters() const {
  int64_t n = 0;
  for (const LoraWeights& w : weights_) n += w.r * (w.N + w.K) + static_cast<int64_t>(w.m.size());
  return n + static_cast<int64_t>(score_.size());
}

}  // namespace qwenq
