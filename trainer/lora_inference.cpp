// lora_inference_layout (trainer/lora_inference.h): the checks, then the arena filled slot by slot.
#include "trainer/lora_inference.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/dora.h"
#include "lora/lora_linear.h"
#include "lora/peft_io.h"
#include "trainer/lora_model.h"

namespace qwenq {

namespace {

// Refuses a tensor of `got` floats where `rows`·`cols` are due, or holding a value that is not finite.
void check_tensor(const std::vector<float>& v, int64_t rows, int64_t cols, const LoraSlot& slot, bool is_b,
                  const std::string& source) {
  const std::string name = peft_tensor_name(slot, is_b);
  QWENQ_CHECK(static_cast<int64_t>(v.size()) == rows * cols,
              source << ": the LoRA tensor " << name << " holds " << v.size() << " values, but its Linear calls for ["
                     << rows << ", " << cols << "] (" << rows * cols << "): an adapter for a different base model");
  for (size_t i = 0; i < v.size(); ++i) {
    QWENQ_CHECK(std::isfinite(v[i]), source << ": the LoRA tensor " << name << " [" << rows << ", " << cols
                                            << "] has the non-finite value " << v[i] << " at row " << i / cols
                                            << ", column " << i % cols);
  }
}

// Refuses a DoRA magnitude that is not [N] or holds a value that is not finite (as the CPU's merge takes any other).
void check_magnitude(const std::vector<float>& m, int64_t N, const LoraSlot& slot, const std::string& source) {
  const std::string name = peft_magnitude_name(slot);
  QWENQ_CHECK(static_cast<int64_t>(m.size()) == N, source << ": the DoRA magnitude " << name << " holds " << m.size()
                                                          << " values, but its Linear has " << N << " output rows");
  for (size_t j = 0; j < m.size(); ++j) {
    QWENQ_CHECK(std::isfinite(m[j]), source << ": the DoRA magnitude " << name << " [" << N << "] has the non-finite "
                                            << "value " << m[j] << " at row " << j);
  }
}

}  // namespace

const LoraArenaSlot* LoraInferenceLayout::find(int64_t layer, LoraTarget t, int64_t expert) const {
  for (const LoraArenaSlot& s : slots) {
    if (s.layer == layer && s.target == t && s.expert == expert) return &s;
  }
  return nullptr;
}

LoraInferenceLayout lora_inference_layout(const LoraAdapter& adapter, const QwenConfig& cfg,
                                          const std::string& source) {
  const LoraDims want = lora_dims_of(cfg), d = adapter.dims();
  QWENQ_CHECK(d.hidden_size == want.hidden_size && d.intermediate_size == want.intermediate_size &&
                  d.q_dim == want.q_dim && d.kv_dim == want.kv_dim && d.num_layers == want.num_layers,
              source << ": the LoRA adapter was made for another base model (hidden " << d.hidden_size
                     << ", intermediate " << d.intermediate_size << ", q_dim " << d.q_dim << ", kv_dim " << d.kv_dim
                     << ", " << d.num_layers << " layers; the model has " << want.hidden_size << ", "
                     << want.intermediate_size << ", " << want.q_dim << ", " << want.kv_dim << ", "
                     << want.num_layers << ")");
  QWENQ_CHECK(d.moe_layer == want.moe_layer && d.num_experts == want.num_experts &&
                  d.moe_intermediate_size == want.moe_intermediate_size &&
                  d.shared_expert_intermediate_size == want.shared_expert_intermediate_size,
              source << ": the LoRA adapter was made for another base model (" << d.num_experts << " experts of width "
                     << d.moe_intermediate_size << ", shared expert " << d.shared_expert_intermediate_size
                     << "; the model has " << want.num_experts << ", " << want.moe_intermediate_size << ", "
                     << want.shared_expert_intermediate_size << ")");
  LoraInferenceLayout out;
  out.scaling = static_cast<float>(adapter.config().scaling());
  out.rank = adapter.config().r;
  out.gpu_refusal = adapter.gpu_refusal();
  out.num_layers = d.num_layers;
  int64_t total = 0;
  // The adapter's slots: layer by layer, targets in table order (whatever order targets() lists), a MoE layer's MLP
  // target expert by expert then the shared expert.
  for (size_t i = 0; i < adapter.slots().size(); ++i) {
    const LoraSlot& ls = adapter.slots()[i];
    const LoraWeights& w = adapter.weights(i);
    LoraShape shape = lora_target_shape(d, ls.target);
    if (ls.expert != kNoExpert) {  // an expert's Linear: its own width
      const int64_t width = ls.expert < 0 ? d.shared_expert_intermediate_size : d.moe_intermediate_size;
      shape = ls.target == LoraTarget::DownProj ? LoraShape{d.hidden_size, width} : LoraShape{width, d.hidden_size};
    }
    const std::string name = peft_tensor_name(ls, false);
    QWENQ_CHECK(w.N == shape.N && w.K == shape.K && w.r >= 1,
                source << ": the LoRA pair " << name << " / lora_B has r " << w.r << ", N " << w.N << ", K " << w.K
                       << "; the Linear is [" << shape.N << ", " << shape.K << "]");
    QWENQ_CHECK(std::isfinite(w.scaling), source << ": the LoRA scaling " << w.scaling << " of " << name
                                                 << " is not finite");
    check_tensor(w.A, w.r, w.K, ls, false, source);
    check_tensor(w.B, w.N, w.r, ls, true, source);
    if (adapter.use_dora()) check_magnitude(w.m, w.N, ls, source);
    LoraArenaSlot sl;
    sl.layer = ls.layer;
    sl.target = ls.target;
    sl.expert = ls.expert;
    sl.N = w.N, sl.K = w.K, sl.r = w.r;
    sl.s = static_cast<float>(w.scaling);
    sl.a_off = total;
    sl.b_off = lora_arena_align_up(total + w.r * w.K);
    total = lora_arena_align_up(sl.b_off + w.N * w.r);
    if (adapter.use_dora()) {
      sl.m_off = total;
      total = lora_arena_align_up(total + w.N);
    }
    out.slots.push_back(sl);
  }
  out.arena.assign(static_cast<size_t>(total), 0.f);
  for (size_t i = 0; i < out.slots.size(); ++i) {
    const LoraWeights& w = adapter.weights(i);
    std::copy(w.A.begin(), w.A.end(), out.arena.begin() + out.slots[i].a_off);
    std::copy(w.B.begin(), w.B.end(), out.arena.begin() + out.slots[i].b_off);
    if (out.slots[i].m_off >= 0) std::copy(w.m.begin(), w.m.end(), out.arena.begin() + out.slots[i].m_off);
  }
  return out;
}

void lora_branch_forward(const LoraBranch& b, const float* x, int64_t rows, const TensorView& bias, float* y, float* u) {
  lora_forward_ref(x, rows, b.K, b.A, b.B, b.r, b.N, b.s, y, u);
  if (b.gain) dora_scale_rows_ref(y, rows, b.N, b.gain, bias.data, bias.dtype);
}

}  // namespace qwenq
