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
    if (!config_.targets(info.target)) continue;
    QWENQ_CHECK(!dims.mlp_is_moe || std::string(info.parent) != "mlp",
                "LoRA target " << info.name << " on a mixture-of-experts model: PEFT would adapt it in every expert, "
                               "which is not supported yet; target the attention projections (q_proj, k_proj, v_proj, "
                               "o_proj)");
    targets_.push_back(info.target);
  }
  const int64_t r = config_.r;
  for (LoraTarget t : targets_) {
    const LoraShape s = lora_target_shape(dims, t);
    QWENQ_CHECK(r <= std::min(s.N, s.K), "LoRA rank r=" << r << " exceeds min(N, K) = " << std::min(s.N, s.K)
                                                        << " of model.layers.*." << lora_target_path(t) << " ["
                                                        << s.N << ", " << s.K << "]; choose r <= "
                                                        << std::min(s.N, s.K));
  }
  weights_.resize(static_cast<size_t>(dims.num_layers) * targets_.size());
  for (int64_t l = 0; l < dims.num_layers; ++l) {
    for (LoraTarget t : targets_) {
      const LoraShape s = lora_target_shape(dims, t);
      LoraWeights& w = weights_[static_cast<size_t>(slot(l, t))];
      w.N = s.N;
      w.K = s.K;
      w.r = r;
      w.A.assign(static_cast<size_t>(r * s.K), 0.0f);
      w.B.assign(static_cast<size_t>(s.N * r), 0.0f);
      if (config_.use_dora) w.m.assign(static_cast<size_t>(s.N), 0.0f);
    }
  }
}

void LoraAdapter::init_peft(uint64_t seed) {
  Rng rng(seed);
  for (int64_t l = 0; l < dims_.num_layers; ++l) {
    for (LoraTarget t : targets_) {
      LoraWeights& w = at(l, t);
      const float bound = static_cast<float>(1.0 / std::sqrt(static_cast<double>(w.K)));
      for (float& a : w.A) a = rng.uniform(-bound, bound);
      std::fill(w.B.begin(), w.B.end(), 0.0f);
    }
  }
}

int64_t LoraAdapter::slot(int64_t layer, LoraTarget t) const {
  if (layer < 0 || layer >= dims_.num_layers) return -1;
  const auto it = std::find(targets_.begin(), targets_.end(), t);
  if (it == targets_.end()) return -1;
  return layer * static_cast<int64_t>(targets_.size()) + (it - targets_.begin());
}

bool LoraAdapter::has(int64_t layer, LoraTarget t) const { return slot(layer, t) >= 0; }

LoraWeights& LoraAdapter::at(int64_t layer, LoraTarget t) {
  return const_cast<LoraWeights&>(static_cast<const LoraAdapter*>(this)->at(layer, t));
}

const LoraWeights& LoraAdapter::at(int64_t layer, LoraTarget t) const {
  const int64_t s = slot(layer, t);
  if (s < 0) {
    std::string names;
    for (LoraTarget x : targets_) names += std::string(names.empty() ? "" : ", ") + lora_target_name(x);
    QWENQ_FAIL("the LoRA adapter has no weights for model.layers." << layer << "." << lora_target_path(t)
                                                                   << " (it has " << dims_.num_layers
                                                                   << " layers and targets " << names << ")");
  }
  return weights_[static_cast<size_t>(s)];
}

int64_t LoraAdapter::num_parameters() const {
  int64_t n = 0;
  for (const LoraWeights& w : weights_) n += w.r * (w.N + w.K) + static_cast<int64_t>(w.m.size());
  return n;
}

void refuse_dora_on_gpu(const LoraAdapter& adapter, const std::string& what) {
  QWENQ_CHECK(!adapter.use_dora(), what << ": DoRA adapters run on the CPU only for now (--device cpu)");
}

}  // namespace qwenq
