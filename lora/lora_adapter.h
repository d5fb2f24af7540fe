// The weights of a LoRA adapter for a whole model: for each decoder layer l and each targeted Linear
// (N outputs, K inputs) A [r, K] and B [N, r], fp32 master copies (the optimizer keeps its state elsewhere). In a
// MoE layer an MLP target adapts each expert's Linear (and the shared expert's) with A, B of its own, as PEFT does.
//
// Shapes per target (C hidden, I intermediate, q_dim = H·D, kv_dim = Hkv·D):
//   q_proj [q_dim, C]   k_proj, v_proj [kv_dim, C]   o_proj [C, q_dim]
//   gate_proj, up_proj [I, C]   down_proj [C, I]        (N, K) of the base weight [out, in]
//
// init_peft(seed) follows PEFT's init_lora_weights=True: A ~ kaiming_uniform(a = √5) over fan_in K, i.e.
// U(-1/√K, 1/√K) (gain √(2/(1+5)) = √(1/3), bound = √3·gain/√K), and B = 0, so the adapted model starts equal
// to the base. One Rng(seed) serves the whole adapter; A tensors draw from it in this order: layer 0..L-1,
// within a layer the targets in table order (q, k, v, o, gate, up, down; untargeted ones skipped), within A
// the r·K values row-major, one Rng::uniform(-b, b) each. B draws nothing.
//
// DoRA (config.use_dora): every adapted Linear also holds m [N], PEFT's lora_magnitude_vector. PEFT initialises it
// to ‖W + s·B A‖ per output row, i.e. ‖W‖ row-wise at init (B = 0); that needs the base weights, so the constructor
// leaves m zero and the trainer fills it (init_dora_magnitudes, trainer/lora_model.h) after init_peft.
//
// A sequence classifier's adapter (config.seq_cls(), PEFT's task_type SEQ_CLS: a reward model) also holds the
// classifier head score [num_labels, C], trained whole (PEFT's modules_to_save). The constructor leaves it zero;
// init_score_head draws it as transformers initialises a new head: normal(0, initializer_range), from an Rng of its
// own so A's draws stay init_peft's.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lora/lora_config.h"

namespace qwenq {

// The base model's dimensions that fix adapter shapes (a plain struct so lora/ does not depend on trainer/).
struct LoraDims {
  int64_t hidden_size = 0;        // C
  int64_t intermediate_size = 0;  // I
  int64_t q_dim = 0;              // H·D
  int64_t kv_dim = 0;             // Hkv·D
  int64_t num_layers = 0;
  // A mixture of experts (qwen2_moe / qwen3_moe): the layers whose MLP is a MoE block, their E experts of width
  // moe_intermediate_size and the shared expert's width (0: none). There PEFT's gate_proj / up_proj / down_proj adapt
  // every expert's Linear (mlp.experts.<e>.*, mlp.shared_expert.*), each with its own A and B.
  std::vector<bool> moe_layer = {};  // empty for a dense model
  int64_t num_experts = 0, moe_intermediate_size = 0, shared_expert_intermediate_size = 0;
  bool is_moe_layer(int64_t l) const { return l >= 0 && l < static_cast<int64_t>(moe_layer.size()) && moe_layer[l]; }
};

// (N, K) of a target's base weight [N, K].
struct LoraShape {
  int64_t N = 0, K = 0;
};
LoraShape lora_target_shape(const LoraDims& dims, LoraTarget t);

// Where an adapted Linear sits: layer, target, and for a MoE layer's MLP target the expert (-1: the shared expert;
// kNoExpert: a layer's own Linear); path below "model.layers.<layer>.", e.g. "self_attn.q_proj",
// "mlp.experts.3.up_proj", "mlp.shared_expert.down_proj" (PEFT's module path).
constexpr int64_t kNoExpert = -2;
struct LoraSlot {
  int64_t layer = 0;
  LoraTarget target{};
  int64_t expert = kNoExpert;
  std::string path;
};

// One adapted Linear.
struct LoraWeights {
  int64_t N = 0, K = 0, r = 0;
  double scaling = 0;    // s of this Linear: alpha / r (or alpha / √r) of its own r and alpha (lora/lora_select.h)
  std::vector<float> A;  // [r, K] row-major
  std::vector<float> B;  // [N, r] row-major
  std::vector<float> m;  // [N] DoRA magnitude; empty without DoRA
};

class LoraAdapter {
 public:
  // Zero-filled A and B for every Linear `config` selects (lora/lora_select.h: target_modules on every layer, or
  // PEFT's finer selection), each of its own rank. Throws, naming `source`, when the config is invalid, a dimension is
  // not positive, nothing is selected, or a Linear's r > min(N, K) (naming it); "" adds no prefix.
  LoraAdapter(const LoraDims& dims, const LoraConfig& config, const std::string& source = "");

  // PEFT's default initialisation (see the top of this file).
  void init_peft(uint64_t seed);

  const LoraConfig& config() const { return config_; }
  const LoraDims& dims() const { return dims_; }
  // The rank and scaling every Linear has; throws when the config gives some their own (rank_pattern, alpha_pattern):
  // for the callers that lay out one rank (the GPU paths, the PiSSA/LoftQ initialisations of uniform adapters).
  int64_t uniform_rank() const;
  double uniform_scaling() const;
  // "" when the GPU paths can lay this adapter out (lora_plan_gpu_refusal), else why not.
  const std::string& gpu_refusal() const { return gpu_refusal_; }
  // The targets adapted in at least one layer, in table order.
  const std::vector<LoraTarget>& targets() const { return targets_; }
  // A layer's own Linear (not an expert's): false for an MLP target on a MoE layer, whose experts hold the weights.
  bool has(int64_t layer, LoraTarget t) const;
  // Throws naming the layer and target when absent.
  LoraWeights& at(int64_t layer, LoraTarget t);
  const LoraWeights& at(int64_t layer, LoraTarget t) const;
  // Expert `expert` (-1: shared) of MoE layer `layer`, MLP target t.
  bool has_expert(int64_t layer, int64_t expert, LoraTarget t) const;
  LoraWeights& expert_at(int64_t layer, int64_t expert, LoraTarget t);
  const LoraWeights& expert_at(int64_t layer, int64_t expert, LoraTarget t) const;
  // Every adapted Linear, layer by layer, within a layer in table order, an MLP target of a MoE layer expert by expert
  // (then the shared expert): the order of init_peft, of the PEFT file and of the optimizer's state.
  const std::vector<LoraSlot>& slots() const { return slots_; }
  LoraWeights& weights(size_t i) { return weights_[i]; }
  const LoraWeights& weights(size_t i) const { return weights_[i]; }
  bool use_dora() const { return config_.use_dora; }
  // A sequence classifier's head [num_labels, C] row-major (config().seq_cls()); empty otherwise.
  std::vector<float>& score() { return score_; }
  const std::vector<float>& score() const { return score_; }
  // score ~ normal(0, stddev), Box-Muller over Rng(seed) (see the top). Throws without a score head.
  void init_score_head(uint64_t seed, double stddev);
  // Number of trainable values (Σ r·(N + K), plus Σ N with DoRA, plus the score head's).
  int64_t num_parameters() const;

 private:
  int64_t find(int64_t layer, int64_t expert, LoraTarget t) const;  // index into slots_, -1 when absent
  LoraDims dims_;
  LoraConfig config_;
  std::vector<LoraTarget> targets_;
  std::vector<LoraSlot> slots_;
  std::vector<LoraWeights> weights_;  // one per slot
  std::vector<int64_t> first_;        // per layer: the index of its first slot (num_layers + 1 entries)
  std::vector<float> score_;          // a sequence classifier's head [num_labels, C]
  std::string gpu_refusal_;
};

}  // namespace qwenq
