// lora_inference_layout (trainer/lora_inference.h): the checks, then the arena filled slot by slot.
#include "trainer/lora_inference.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "lora/peft_io.h"
#include "trainer/lora_model.h"

namespace qwenq {

namespace {

int64_t align_up(int64_t n) { return (n + kLoraArenaAlignFloats - 1) / kLoraArenaAlignFloats * kLoraArenaAlignFloats; }

// Refuses a tensor of `got` floats where `rows`·`cols` are due, or holding a value that is not finite.
void check_tensor(const std::vector<float>& v, int64_t rows, int64_t cols, int64_t layer, LoraTarget t, bool is_b,
                  const std::string& source) {
  const std::string name = peft_tensor_name(layer, t, is_b);
  QWENQ_CHECK(static_cast<int64_t>(v.size()) == rows * cols,
              source << ": the LoRA tensor " << name << " holds " << v.size() << " values, but its Linear calls for ["
                     << rows << ", " << cols << "] (" << rows * cols << "): an adapter for a different base model");
  for (size_t i = 0; i < v.size(); ++i) {
    QWENQ_CHECK(std::isfinite(v[i]), source << ": the LoRA tensor " << name << " [" << rows << ", " << cols
                                            << "] has the non-finite value " << v[i] << " at row " << i / cols
                                            << ", column " << i % cols);
  }
}

}  // namespace

const LoraArenaSlot* LoraInferenceLayout::find(int64_t layer, LoraTarget t) const {
  for (const LoraArenaSlot& s : slots) {
    if (s.layer == layer && s.target == t) return &s;
  }
  return nullptr;
}

LoraInferenceLayout lora_inference_layout(const LoraAdapter& adapter, const QwenConfig& cfg,
                                          const std::string& source) {
  refuse_dora_on_gpu(adapter, source);
  const LoraDims want = lora_dims_of(cfg), d = adapter.dims();
  QWENQ_CHECK(d.hidden_size == want.hidden_size && d.intermediate_size == want.intermediate_size &&
                  d.q_dim == want.q_dim && d.kv_dim == want.kv_dim && d.num_layers == want.num_layers,
              source << ": the LoRA adapter was made for another base model (hidden " << d.hidden_size
                     << ", intermediate " << d.intermediate_size << ", q_dim " << d.q_dim << ", kv_dim " << d.kv_dim
                     << ", " << d.num_layers << " layers; the model has " << want.hidden_size << ", "
                     << want.intermediate_size << ", " << want.q_dim << ", " << want.kv_dim << ", "
                     << want.num_layers << ")");
  const double s = adapter.scaling();
  QWENQ_CHECK(std::isfinite(s), source << ": the LoRA scaling " << s << " is not finite");
  LoraInferenceLayout out;
  out.scaling = static_cast<float>(s);
  out.rank = adapter.rank();
  out.num_layers = d.num_layers;
  int64_t total = 0;
  for (int64_t l = 0; l < d.num_layers; ++l) {
    for (const LoraTargetInfo& info : kLoraTargets) {  // table order, whatever order targets() lists
      if (!adapter.has(l, info.target)) continue;
      const LoraWeights& w = adapter.at(l, info.target);
      const LoraShape shape = lora_target_shape(d, info.target);
      const std::string name = peft_tensor_name(l, info.target, false);
      QWENQ_CHECK(w.N == shape.N && w.K == shape.K && w.r == out.rank,
                  source << ": the LoRA pair " << name << " / lora_B has r " << w.r << ", N " << w.N << ", K " << w.K
                         << "; the Linear is [" << shape.N << ", " << shape.K << "] and the adapter's r is "
                         << out.rank);
      check_tensor(w.A, w.r, w.K, l, info.target, false, source);
      check_tensor(w.B, w.N, w.r, l, info.target, true, source);
      LoraArenaSlot sl;
      sl.layer = l;
      sl.target = info.target;
      sl.N = w.N, sl.K = w.K, sl.r = w.r;
      sl.a_off = total;
      sl.b_off = align_up(total + w.r * w.K);
      total = align_up(sl.b_off + w.N * w.r);
      out.slots.push_back(sl);
    }
  }
  out.arena.assign(static_cast<size_t>(total), 0.f);
  for (const LoraArenaSlot& sl : out.slots) {
    const LoraWeights& w = adapter.at(sl.layer, sl.target);
    std::copy(w.A.begin(), w.A.end(), out.arena.begin() + sl.a_off);
    std::copy(w.B.begin(), w.B.end(), out.arena.begin() + sl.b_off);
  }
  return out;
}

}  // namespace qwenq
