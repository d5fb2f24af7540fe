#include "lora/lora_adapter.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/rng.h"

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

LoraAdapter::LoraAdapter(const LoraDims& dims, const LoraConfig& config) : dims_(dims), config_(config) {
  config_.validate();
  QWENQ_CHECK(dims.hidden_size > 0 && dims.intermediate_size > 0 && dims.q_dim > 0 && dims.kv_dim > 0 &&
                  dims.num_layers > 0,
              "LoRA adapter: model dimensions must be positive (hidden " << dims.hidden_size << ", intermediate "
                  << dims.intermediate_size << ", q_dim " << dims.q_dim << ", kv_dim " << dims.kv_dim
                  << ", layers " << dims.num_layers << ")");
  for (const LoraTargetInfo& info : kLoraTargets) {
    if (config_.targets(info.target)) targets_.push_back(info.target);
  }
  const int64_t r = config_.r;
  auto add = [&](int64_t l, LoraTarget t, int64_t expert, std::string path, LoraShape s) {
    QWENQ_CHECK(r <= std::min(s.N, s.K), "LoRA rank r=" << r << " exceeds min(N, K) = " << std::min(s.N, s.K)
                                                        << " of model.layers." << l << "." << path << " [" << s.N
                                                        << ", " << s.K << "]; choose r <= " << std::min(s.N, s.K));
    slots_.push_back({l, t, expert, std::move(path)});
    LoraWeights w;
    w.N = s.N;
    w.K = s.K;
    w.r = r;
    w.A.assign(static_cast<size_t>(r * s.K), 0.0f);
    w.B.assign(static_cast<size_t>(s.N * r), 0.0f);
    if (config_.use_dora) w.m.assign(static_cast<size_t>(s.N), 0.0f);
    weights_.push_back(std::move(w));
  };
  for (int64_t l = 0; l < dims.num_layers; ++l) {
    first_.push_back(static_cast<int64_t>(slots_.size()));
    for (LoraTarget t : targets_) {
      const LoraShape s = lora_target_shape(dims, t);
      if (!dims.is_moe_layer(l) || std::string(kLoraTargets[static_cast<int>(t)].parent) != "mlp") {
        add(l, t, kNoExpert, lora_target_path(t), s);
        continue;
      }
      // An expert's Linear: the MLP shape at the expert's width.
      auto expert_shape = [&](int64_t width) {
        return t == LoraTarget::DownProj ? LoraShape{dims.hidden_size, width} : LoraShape{width, dims.hidden_size};
      };
      for (int64_t e = 0; e < dims.num_experts; ++e) {
        add(l, t, e, "mlp.experts." + std::to_string(e) + "." + lora_target_name(t), expert_shape(dims.moe_intermediate_size));
      }
      if (dims.shared_expert_intermediate_size > 0) {
        add(l, t, -1, std::string("mlp.shared_expert.") + lora_target_name(t),
            expert_shape(dims.shared_expert_intermediate_size));
      }
    }
  }
  first_.push_back(static_cast<int64_t>(slots_.size()));
  QWENQ_CHECK(config_.num_labels >= 0, "LoRA adapter: num_labels " << config_.num_labels << " is negative");
  score_.assign(static_cast<size_t>(config_.num_labels * dims.hidden_size), 0.0f);
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
