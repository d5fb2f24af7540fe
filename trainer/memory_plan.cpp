#include "trainer/memory_plan.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/env_switch.h"
#include "core/error.h"
#include "core/files.h"
#include "core/json_file.h"
#include "core/process_group.h"
#include "core/progress.h"
#include "core/strings.h"
#include "lora/lora_adapter.h"
#include "lora/lora_select.h"
#include "kernels/device_allocator.h"
#include "kernels/dora.h"
#include "kernels/qgemm.h"
#include "quant/format/int_pack.h"
#include "quant/format/nf4_pack.h"
#include "quant/format/qgemm_layout.h"
#include "quant/nf4.h"
#include "quant/nf4_checkpoint.h"
#include "trainer/lora_cuda_buffers.h"
#include "trainer/lora_model.h"
#include "trainer/quant_config.h"
#include "trainer/quantize_output.h"
#include "trainer/qwen_weight_arena.h"
#include "trainer/qwen_weights.h"

namespace qwenq {

namespace {

constexpr LoraTarget kAll[kNumLoraTargets] = {LoraTarget::QProj,    LoraTarget::KProj,  LoraTarget::VProj,
                                              LoraTarget::OProj,    LoraTarget::GateProj, LoraTarget::UpProj,
                                              LoraTarget::DownProj};

uint64_t u64(int64_t v) { return static_cast<uint64_t>(v); }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t num_groups(const PlanInput& in, int64_t K) { return in.group_size == -1 ? 1 : ceil_div(K, in.group_size); }

// The per-layer facts every formula needs (a dense layer's Linears; layer_totals sees a MoE layer's experts), for
// one layer or, merged, for the buffers the layers share: each target adapted where some layer adapts it, with the
// largest rank any layer gives it (the CPU trainer grows one set of buffers to the largest of each).
struct LayerShape {
  int64_t C, I, H, qd, kvd, D, V, T;
  LoraShape shape[kNumLoraTargets];
  int64_t rank[kNumLoraTargets];  // the target's LoRA rank (a MoE layer's experts all have the config's), 0: none
  bool adapted[kNumLoraTargets];  // rank > 0
  int64_t max_adapted_n = 0;      // the largest N over adapted Linears
};

// The shape of layer `l` under the adapter `slots` (lora/lora_select.h), or with l = -1 of all layers merged.
LayerShape layer_shape(const PlanInput& in, const std::vector<LoraPlanSlot>& slots, int64_t l) {
  const QwenConfig& c = in.model;
  LayerShape s{};
  s.C = c.hidden_size;
  s.I = c.intermediate_size;
  s.H = c.num_heads;
  s.qd = c.q_dim();
  s.kvd = c.kv_dim();
  s.D = c.head_dim;
  s.V = c.vocab_size;
  s.T = in.batch_size * in.seq_len;
  const LoraDims dims = lora_dims_of(c);
  for (int t = 0; t < kNumLoraTargets; ++t) s.shape[t] = lora_target_shape(dims, kAll[t]);
  for (const LoraPlanSlot& p : slots) {
    if (l >= 0 && p.slot.layer != l) continue;
    const int t = static_cast<int>(p.slot.target);
    s.rank[t] = std::max(s.rank[t], p.r);
  }
  for (int t = 0; t < kNumLoraTargets; ++t) {
    s.adapted[t] = s.rank[t] > 0;
    if (s.adapted[t]) s.max_adapted_n = std::max(s.max_adapted_n, s.shape[t].N);
  }
  return s;
}

// Dense (non-Linear) tensors of one decoder layer, in values: two RMSNorms, q/k/v biases, q/k norms.
int64_t layer_dense_values(const QwenConfig& c) {
  return 2 * c.hidden_size + (c.qkv_bias ? c.q_dim() + 2 * c.kv_dim() : 0) + (c.qk_norm ? 2 * c.head_dim : 0);
}

// The LoRA target (table index 0..6) an entry of layer_linears is adapted by, or -1 for a router (mlp.gate,
// mlp.shared_expert_gate: never adapted, never quantized; kept in the dense dtype).
int linear_target(const LayerLinear& x) {
  if (x.decoder_index >= 0) return x.decoder_index;
  for (int t = 4; t < kNumLoraTargets; ++t) {  // an expert's gate/up/down_proj
    const std::string suffix = lora_target_name(kAll[t]);
    if (has_proper_suffix(x.name, suffix)) return t;
  }
  return -1;
}

// One decoder layer's base weights: a dense layer, or a MoE layer (its attention, router, E experts and the shared
// expert). Every layer of one kind is alike.
struct LayerTotals {
  uint64_t linear_bytes = 0;  // the packed (or bf16) Linears
  uint64_t dense_bytes = 0;   // norms, biases and the routers, in dense_dtype
  int64_t linear_params = 0;  // Σ N·K of the packed Linears (routers not included)
};
LayerTotals layer_totals(const PlanInput& in, int64_t l) {
  const QwenConfig& c = in.model;
  const uint64_t dsz = dtype_size(in.dense_dtype);
  LayerTotals t;
  t.dense_bytes = u64(layer_dense_values(c)) * dsz;
  for (const LayerLinear& x : layer_linears(c, l)) {
    if (linear_target(x) < 0) {
      t.dense_bytes += u64(x.N * x.K) * dsz;
      continue;
    }
    t.linear_bytes += plan_linear_bytes(in, x.N, x.K);
    t.linear_params += x.N * x.K;
  }
  return t;
}

// The adapter's own figures, from its Linears (lora_plan: each with its rank, the layers it selects).
struct AdapterTotals {
  int64_t lora_params = 0;    // Σ r·(N + K) (+ N with DoRA) over the adapted Linears
  int64_t dora_norms = 0;     // DoRA: Σ N over the adapted Linears (the GPU trainer's row norms; 0 without DoRA)
  uint64_t dora_scratch = 0;  // DoRA: the largest scratch of one of its GPU launches (kernels/dora.h): the row
                              // norms of an [N, K] Linear or the split grad of T rows (an expert's rows are <= T)
};
AdapterTotals adapter_totals(const PlanInput& in, const std::vector<LoraPlanSlot>& slots) {
  AdapterTotals a;
  const int64_t T = in.batch_size * in.seq_len;
  for (const LoraPlanSlot& p : slots) {
    const int64_t N = p.shape.N, K = p.shape.K;
    a.lora_params += p.r * (N + K) + (in.lora.use_dora ? N : 0);
    if (!in.lora.use_dora) continue;
    a.dora_norms += N;
    a.dora_scratch = std::max({a.dora_scratch, dora_row_norms_scratch_bytes(N, K), dora_split_grad_scratch_bytes(T, N)});
  }
  return a;
}

// The adapted targets in table order (a DoRA adapter's: they size the GPU trainer's DoRA buffers).
std::vector<LoraTarget> plan_targets(const LayerShape& s) {
  std::vector<LoraTarget> out;
  for (int t = 0; t < kNumLoraTargets; ++t) {
    if (s.adapted[t]) out.push_back(kAll[t]);
  }
  return out;
}

// The first layer of each kind (-1: none): layer_totals of one stands for all of that kind.
struct LayerKinds {
  int64_t dense = -1, moe = -1;
};
LayerKinds layer_kinds(const QwenConfig& c) {
  LayerKinds k;
  for (int64_t l = c.num_layers - 1; l >= 0; --l) (c.is_moe_layer(l) ? k.moe : k.dense) = l;
  return k;
}

// ---- CPU (trainer/lora_model.cpp) -------------------------------------------------------------------------

// fp32 values the BranchActs of the adapted Linears among table entries [t0, t1) keep: u [T, r], with dropout the
// dropped input [T, K], with DoRA z, v [T, N] and n [N].
int64_t cpu_branch_values(const PlanInput& in, const LayerShape& s, int t0, int t1) {
  int64_t v = 0;
  for (int t = t0; t < t1; ++t) {
    if (!s.adapted[t]) continue;
    v += s.T * (s.rank[t] + (in.lora.dropout > 0 ? s.shape[t].K : 0));
    if (in.lora.use_dora) v += (2 * s.T + 1) * s.shape[t].N;
  }
  return v;
}

// fp32 values of one block's BlockActs outside the MLP: the attention half (and its adapters).
int64_t cpu_attn_values(const PlanInput& in, const LayerShape& s) {
  return s.T * (3 * s.C + 2 * s.qd + 2 * s.kvd + s.H + (in.model.qk_norm ? s.qd + s.kvd : 0)) +
         cpu_branch_values(in, s, 0, 4);
}

// fp32 values of a dense layer's MLP in BlockActs: gate, up, act and the adapters of gate/up/down_proj.
int64_t cpu_dense_mlp_values(const PlanInput& in, const LayerShape& s) {
  return s.T * 3 * s.I + cpu_branch_values(in, s, 4, kNumLoraTargets);
}

// kernels/gemm_ref.cpp's per-thread fp32 copy of a 16-bit weight [N, K]: forward nb rows, backward kb columns.
uint64_t widen_bytes(int64_t N, int64_t K) {
  constexpr int64_t kWiden = int64_t{1} << 20;
  const int64_t nb = std::min(N, std::clamp<int64_t>(kWiden / (4 * K), 64, 512));
  const int64_t kb = std::min(K, std::clamp<int64_t>(kWiden / (4 * N), 16, 128));
  return u64(std::max(nb * K, N * kb) * 4);
}

// Where one dense layer's backward peaks: always 3·T·I (dact, dgate, dup) + T·I (linear_bwd's tmp, sized by down_proj
// first and never shrunk) held through the attention half too, plus each phase's buffers (memory_plan.h).
// lora_backward_ref's g, su [T, r] and t [T, K] (DoRA adds dora_bwd's dz, dv [T, N]) of adapted Linear t.
int64_t cpu_lora_bwd_values(const PlanInput& in, const LayerShape& s, LoraTarget target) {
  const int i = static_cast<int>(target);
  if (!s.adapted[i]) return 0;
  return 2 * s.T * s.rank[i] + s.T * s.shape[i].K + (in.lora.use_dora ? 2 * s.T * s.shape[i].N : 0);
}

// The attention half of block_bwd (o_proj, attention, q/k/v) with `base` values held from the MLP half.
int64_t cpu_attn_backward_values(const PlanInput& in, const LayerShape& s, int64_t base) {
  const int64_t T = s.T, C = s.C, qd = s.qd, kvd = s.kvd;
  auto lora = [&](LoraTarget t) { return cpu_lora_bwd_values(in, s, t); };
  const int64_t o = base + 2 * T * C + T * qd + lora(LoraTarget::OProj);
  const int64_t attn = base + 2 * T * C + 2 * T * qd + 2 * T * kvd + T * s.H;
  const int64_t qkv = base + 3 * T * C + 2 * T * qd + 2 * T * kvd +
                      std::max({lora(LoraTarget::QProj), lora(LoraTarget::KProj), lora(LoraTarget::VProj)});
  return std::max({o, attn, qkv});
}

// The largest set of fp32 buffers alive at once inside a dense layer's block_bwd (and its recompute), in values.
int64_t cpu_dense_backward_values(const PlanInput& in, const LayerShape& s) {
  const int64_t T = s.T, C = s.C, I = s.I;
  auto lora = [&](LoraTarget t) { return cpu_lora_bwd_values(in, s, t); };
  const int64_t base = 3 * T * I + T * I;
  const int64_t down = base + lora(LoraTarget::DownProj);
  const int64_t gate_up = base + T * C + std::max(lora(LoraTarget::GateProj), lora(LoraTarget::UpProj));
  const int64_t recompute = in.checkpointing ? 2 * T * C + T * s.max_adapted_n : 0;  // out, mlp, LoRA's t
  return std::max({down, gate_up, cpu_attn_backward_values(in, s, base), recompute});
}

// ---- CPU, a MoE layer's MLP (trainer/moe_block.cpp) ----
// R, the rows of the busiest expert, decides the per-expert temporaries; routing is not known before training, so
// the plan takes its bound R = T (every token choosing one expert). The saved rows are exactly T·k whatever the
// routing (each token picks k distinct experts).
struct MoeShape {
  int64_t T, C, E, k, Im, Is, r, R;
  bool adapted[3];  // the experts' gate, up, down_proj
  bool any;         // some expert Linear adapted: the block keeps n, xs and u for all three
  bool dropout, dora;
};
MoeShape moe_shape(const PlanInput& in, const LayerShape& s) {
  const QwenConfig& c = in.model;
  MoeShape m{};
  m.T = s.T;
  m.C = s.C;
  m.E = c.num_experts;
  m.k = c.experts_per_token;
  m.Im = c.moe_intermediate_size;
  m.Is = c.shared_expert_intermediate_size;
  m.R = s.T;
  for (int j = 0; j < 3; ++j) {
    m.adapted[j] = s.adapted[4 + j];
    m.any = m.any || m.adapted[j];
    m.r = std::max(m.r, s.rank[4 + j]);  // (lora_plan gives experts the config's rank only)
  }
  m.dropout = in.lora.dropout > 0;
  m.dora = in.lora.use_dora;
  return m;
}
// K and N of an expert's Linear j (0 gate, 1 up, 2 down) of width w.
int64_t moe_k(const MoeShape& m, int j, int64_t w) { return j == 2 ? w : m.C; }
int64_t moe_n(const MoeShape& m, int j, int64_t w) { return j == 2 ? m.C : w; }

// Bytes of MoeBlockActs: the routing (probs, weight fp32, chosen and slot int32, token int64, start int64 [E + 1]),
// gate, up, act, y per row, the shared expert's per token, and with adapters on the experts n, xs, u (all three
// Linears'), the dropped inputs, DoRA's z, v per row and n per expert.
uint64_t cpu_moe_block_bytes(const MoeShape& m) {
  const int64_t T = m.T, Tk = m.T * m.k, C = m.C, E = m.E, Im = m.Im, Is = m.Is, sh = m.Is > 0 ? 1 : 0;
  int64_t f = T * E + Tk + Tk * (3 * Im + C) + sh * (3 * T * Is + T * C + T);
  if (m.any) {
    f += T * C + Tk * C + 3 * Tk * m.r + sh * 3 * T * m.r;
    if (m.dropout) f += Tk * (2 * C + Im) + sh * T * (2 * C + Is);
    if (m.dora) f += 2 * Tk * (2 * Im + C) + E * (2 * Im + C) + sh * (2 * T * (2 * Is + C) + 2 * Is + C);
  }
  return u64(f) * 4 + u64(Tk) * (4 + 4 + 8) + u64(E + 1) * 8;
}

// Values of expert_backward's temporaries on `rows` rows of an expert of width w: dact, dgate, dup [rows, w] and tmp
// [rows, C], plus the largest branch_backward (lora_backward_ref's g, su, t; with dropout or DoRA a [rows, K] of its
// own; DoRA's dz, dv [rows, N]).
int64_t cpu_expert_bwd_values(const MoeShape& m, int64_t rows, int64_t w) {
  int64_t branch = 0;
  for (int j = 0; j < 3; ++j) {
    if (!m.adapted[j]) continue;
    const int64_t K = moe_k(m, j, w), N = moe_n(m, j, w);
    branch = std::max(branch, 2 * rows * m.r + rows * K + (m.dropout || m.dora ? rows * K : 0) +
                                  (m.dora ? 2 * rows * N : 0));
  }
  return 3 * rows * w + rows * m.C + branch;
}

// Values at moe_block_backward's peak, with block_bwd's dn2 [T, C]: dw [T·k], dy and dx [R, C] held throughout;
// then either one routed expert's temporaries, or the router's dr [T, E] and tmp [T, C] with the shared expert's
// ds [T, C], dg [T] and its temporaries on all T tokens.
int64_t cpu_moe_backward_values(const MoeShape& m) {
  const int64_t T = m.T, C = m.C;
  const int64_t held = T * C + T * m.k + 2 * m.R * C;
  const int64_t experts = held + cpu_expert_bwd_values(m, m.R, m.Im);
  const int64_t router = held + T * m.E + T * C + (m.Is > 0 ? T * C + T + cpu_expert_bwd_values(m, T, m.Is) : 0);
  return std::max(experts, router);
}

// Values of a MoE block's recompute: run()'s out, block_fwd's mlp, moe_block_forward's result [T, C] and router
// logits [T, E], the gathered rows [R, C] (kept in the acts when adapted), lora_forward_ref's t [rows, N].
int64_t cpu_moe_recompute_values(const MoeShape& m) {
  int64_t t = 0;
  for (int j = 0; j < 3; ++j) {
    if (!m.adapted[j]) continue;
    t = std::max({t, m.R * moe_n(m, j, m.Im), m.Is > 0 ? m.T * moe_n(m, j, m.Is) : int64_t{0}});
  }
  return 3 * m.T * m.C + m.T * m.E + (m.any ? 0 : m.R * m.C) + t;
}

// A MoE layer's block_bwd: the MoE block's peak, then the attention half holding linear_bwd's tmp (T·max(qd, C):
// o_proj sizes it first), and the recompute.
int64_t cpu_moe_layer_backward_values(const PlanInput& in, const LayerShape& s, const MoeShape& m) {
  int64_t attn_n = 0;
  for (int t = 0; t < 4; ++t)
    if (s.adapted[t]) attn_n = std::max(attn_n, s.shape[t].N);
  const int64_t recompute =
      in.checkpointing ? std::max(2 * s.T * s.C + s.T * attn_n, cpu_moe_recompute_values(m)) : 0;
  return std::max({cpu_moe_backward_values(m), cpu_attn_backward_values(in, s, s.T * std::max(s.qd, s.C)), recompute});
}

// apply_linear's fp32 copy of one packed Linear [N, K] and the tables its dequantization builds (memory_plan.h);
// 0 for a bf16 base (read in place).
uint64_t cpu_dequant_bytes(const PlanInput& in, int64_t N, int64_t K) {
  if (in.base == PlanBase::Bf16) return 0;
  uint64_t b = u64(4 * N * K);
  if (in.base == PlanBase::Nf4) {
    b += u64(4 * ceil_div(N * K, in.nf4_blocksize));  // nf4_block_absmax
  } else {
    const int64_t G = num_groups(in, K);  // dequantize_int_linear_into's tables
    b += u64(5 * G * N + 4 * K + (in.bits == 3 && in.base == PlanBase::Gptq ? N * K : 0));
  }
  return b;
}

int64_t logits_rows(const LayerShape& s) { return std::max<int64_t>(1, std::min(s.T, kPlanLogitsPerChunk / s.V)); }

// The CPU device holds every layer: n_dense dense layers and n_moe MoE layers (kinds: a layer of each). `s` is the
// layers' merged shape, `slots` the adapter's Linears (each layer's own shape, when every layer keeps its buffers).
void plan_cpu_device(const PlanInput& in, const LayerShape& s, const std::vector<LoraPlanSlot>& slots,
                     const LayerKinds& kinds, DevicePlan* d) {
  const QwenConfig& c = in.model;
  const int64_t L = c.num_layers, T = s.T, C = s.C;
  const int64_t n_moe = c.num_moe_layers(), n_dense = L - n_moe;
  const MoeShape m = moe_shape(in, s);
  d->act_checkpoints = u64((L + 1) * T * C * 4);
  // Checkpointed, one BlockActs serves every layer, its buffers grown to the largest of each (a dense layer's MLP
  // buffers and a MoE layer's stay side by side); otherwise each layer keeps its own, of its own adapters.
  const auto block_bytes = [&](const LayerShape& ls, bool dense_mlp, bool moe) {
    uint64_t b = u64(cpu_attn_values(in, ls)) * 4;
    if (dense_mlp) b += u64(cpu_dense_mlp_values(in, ls)) * 4;
    if (moe) b += cpu_moe_block_bytes(moe_shape(in, ls));
    return b;
  };
  if (in.checkpointing) {
    d->act_block = block_bytes(s, n_dense > 0, n_moe > 0);
  } else {
    d->act_block = 0;
    for (int64_t l = 0; l < L; ++l) {
      const bool moe = c.is_moe_layer(l);
      d->act_block += block_bytes(layer_shape(in, slots, l), !moe, moe);
    }
  }
  int64_t bwd = n_dense > 0 ? cpu_dense_backward_values(in, s) : 0;
  if (n_moe > 0) bwd = std::max(bwd, cpu_moe_layer_backward_values(in, s, m));
  d->act_backward = u64(bwd) * 4;
  d->act_loss = u64(3 * T * C * 4);
  const int64_t rows = logits_rows(s);
  d->ws_logits = u64((rows * s.V + rows) * 4);
  // Per thread, the widest widening buffer of a 16-bit weight: the lm_head, the routers, and with a bf16 base every
  // Linear. The largest dequantized Linear.
  const bool dense16 = dtype_size(in.dense_dtype) == 2;
  uint64_t widen = dense16 ? widen_bytes(s.V, C) : 0;
  for (const int64_t l : {kinds.dense, kinds.moe}) {
    if (l < 0) continue;
    for (const LayerLinear& x : layer_linears(c, l)) {
      const bool router = linear_target(x) < 0;
      if ((router && dense16) || (!router && in.base == PlanBase::Bf16)) widen = std::max(widen, widen_bytes(x.N, x.K));
      if (!router) d->ws_dequant = std::max(d->ws_dequant, cpu_dequant_bytes(in, x.N, x.K));
    }
  }
  d->ws_threads = u64(in.cpu_threads) * widen;
}

// ---- GPU (trainer/lora_model_cuda.h) ------------------------------------------------------------------------

// One device allocation of `bytes` as the caching allocator holds it (kernels/device_allocator.h).
uint64_t held(uint64_t bytes) { return bytes == 0 ? 0 : u64(static_cast<int64_t>(DeviceAllocator::round_size(bytes))); }

// The flash attention head dims of a default build (CMake's QWENQ_FLASH_HEAD_DIMS): bf16 q/k/v copies.
bool plan_flash(int64_t D) { return D == 64 || D == 128; }

// The pieces of one base Linear [N, K] in its layer's weight arena (trainer/qwen_weight_arena.h): the dense weight
// as stored (dense_dtype: a float32 checkpoint's Linears are fp32), or its Q4 repack (qweight and meta).
void gpu_linear_pieces(const PlanInput& in, int64_t N, int64_t K, WeightArenaLayout* arena) {
  if (in.base == PlanBase::Bf16) {
    arena->add(u64(N * K) * dtype_size(in.dense_dtype));  // as stored
    return;
  }
  plan_linear_bytes(in, N, K);  // the format's own checks first
  QWENQ_CHECK(in.bits == 4, "plan: the GPU trainer reads 4-bit weights only (the Q4 layout of "
                                << "quant/format/qgemm_layout.h), not " << in.bits << "-bit " << plan_base_name(in.base)
                                << " (use --device cpu)");
  const int64_t group = in.base == PlanBase::Nf4 ? q4_nf4_layout_group(K, in.nf4_blocksize)
                                                 : q4_int_layout_group(K, in.group_size);
  QWENQ_CHECK(group % kQ4CodesPerWord == 0,
              "plan: a Linear [" << N << ", " << K << "] has a Q4 layout group of " << group << ", not a multiple of "
                                 << kQ4CodesPerWord << ": the GPU trainer cannot read it (use --device cpu)");
  arena->add(u64(q4_qweight_words(N, K) * 4));
  arena->add(u64(q4_meta_words(N, K, group) * 4));
}

// Device bytes of one decoder layer: its weight arena (trainer/qwen_weight_arena.h), one allocation of the aligned
// pieces, split for the report into the norms and biases (`dense`, their aligned pieces) and the Linears (the
// rest: their pieces and the allocator's rounding of the whole arena). Σ round_up(piece, 256) does not depend on
// the order of the pieces, so the two halves may be laid out apart. A MoE layer's arena has the attention's Linears
// only; its router, experts and shared expert (with its gate) are a second allocation (qwen_moe_arena), counted
// with the Linears: the routers as stored (dense_dtype), every expert Linear as the base's.
struct GpuLayerBytes {
  uint64_t linear = 0, dense = 0;
};
GpuLayerBytes gpu_layer_bytes(const PlanInput& in, const LayerShape& s, bool moe) {
  const QwenConfig& c = in.model;
  const uint64_t dsz = dtype_size(in.dense_dtype);
  WeightArenaLayout dense, linear;
  dense.add(u64(c.hidden_size) * dsz);  // input_layernorm
  dense.add(u64(c.hidden_size) * dsz);  // post_attention_layernorm
  if (c.qk_norm) {
    dense.add(u64(c.head_dim) * dsz);
    dense.add(u64(c.head_dim) * dsz);
  }
  if (c.qkv_bias) {
    dense.add(u64(c.q_dim()) * dsz);
    dense.add(u64(c.kv_dim()) * dsz);
    dense.add(u64(c.kv_dim()) * dsz);
  }
  const int linears = moe ? 4 : kNumLoraTargets;  // a MoE layer: q, k, v, o
  for (int t = 0; t < linears; ++t) gpu_linear_pieces(in, s.shape[t].N, s.shape[t].K, &linear);
  GpuLayerBytes b;
  b.dense = dense.bytes();
  b.linear = held(dense.bytes() + linear.bytes()) - b.dense;
  if (!moe) return b;
  const int64_t C = c.hidden_size, Im = c.moe_intermediate_size, Is = c.shared_expert_intermediate_size;
  WeightArenaLayout experts;
  experts.add(u64(c.num_experts * C) * dsz);  // mlp.gate
  const auto expert = [&](int64_t width) {
    gpu_linear_pieces(in, width, C, &experts);  // gate_proj
    gpu_linear_pieces(in, width, C, &experts);  // up_proj
    gpu_linear_pieces(in, C, width, &experts);  // down_proj
  };
  for (int64_t e = 0; e < c.num_experts; ++e) expert(Im);
  if (Is > 0) {
    expert(Is);
    experts.add(u64(C) * dsz);  // mlp.shared_expert_gate [1, C]
  }
  b.linear += held(experts.bytes());
  return b;
}

// The largest stream-ordered kernel scratch of a step (one launch's; they are freed in stream order, not alive
// together; DoRA's partial sums are LayerTotals::dora_scratch): flash / naive attention's backward δ [T, H] fp32; cuBLASLt's 16-bit copy of fp32 activations for a
// 16-bit weight (kernels/blas_lt.h): the lm_head's dlogits chunk rows·V (its forward input rows·C is smaller), and
// for a 16-bit dense base each Linear's x [T, K] or dy [T, N]; a 4-bit base's bf16 Ŵ (or its two overlap pieces,
// qgemm_dense_scratch_bytes) when its T-row products take the dense path (qgemm_dense_for(T), kernels/qgemm.h: by
// default T >= 512).
uint64_t gpu_scratch_bytes(const PlanInput& in, const LayerShape& s) {
  uint64_t b = u64(s.T * s.H * 4);
  const uint64_t dsz = dtype_size(in.dense_dtype);
  if (dsz == 2) b = std::max(b, u64(lora_cuda_logits_rows(s.T, s.V) * s.V) * dsz);
  if (in.base == PlanBase::Bf16 && dsz == 2) {
    for (const LoraShape& sh : s.shape) b = std::max(b, u64(s.T * std::max(sh.N, sh.K) * 2));
    const QwenConfig& c = in.model;  // an expert's rows are at most T
    if (c.is_moe()) b = std::max(b, u64(s.T * std::max(c.moe_intermediate_size, c.shared_expert_intermediate_size) * 2));
  }
  if (in.base != PlanBase::Bf16 && qgemm_dense_for(s.T)) {  // the dense path's bf16 Ŵ
    // An adapted Linear with QWENQ_LORA_FOLD=1 has the adapter's columns (forward) or rows (input gradient) in its
    // copy (counted for every adapted Linear, act-order ones included, which do not fold).
    for (int t = 0; t < kNumLoraTargets; ++t) {
      const LoraShape& sh = s.shape[t];
      const int64_t ra = s.adapted[t] ? lora_cuda_fold_cols(s.rank[t]) : 0;
      b = std::max(b, u64(qgemm_dense_scratch_bytes(sh.N, q4_padded_k(sh.K), ra)));
    }
    const QwenConfig& c = in.model;  // an expert's gate/up [Ie, C] and down [C, Ie]
    if (c.is_moe()) {
      const int64_t Ie = std::max(c.moe_intermediate_size, c.shared_expert_intermediate_size);
      b = std::max({b, u64(qgemm_dense_scratch_bytes(Ie, q4_padded_k(c.hidden_size))),
                    u64(qgemm_dense_scratch_bytes(c.hidden_size, q4_padded_k(Ie)))});
    }
  }
  return b;
}

// Each data-parallel process with NCCL (QWENQ_DP_NCCL=1) has its buffers on the GPU; the host ring has none there.
bool plan_nccl(const PlanInput& in) { return in.gpus > 1 && env_switch("QWENQ_DP_NCCL") == 1; }

// dora_norms: Σ N over the adapted Linears with DoRA (AdapterTotals::dora_norms), 0 without DoRA; dora_scratch: the
// largest scratch of one DoRA launch (AdapterTotals::dora_scratch).
void plan_gpu_device(const PlanInput& in, const LayerShape& s, int64_t dora_norms, uint64_t dora_scratch,
                     DevicePlan* d) {
  const QwenConfig& c = in.model;
  const int64_t T = s.T;
  const uint64_t dsz = dtype_size(in.dense_dtype);
  // Base weights as uploaded (trainer/qwen_model_cuda.cpp): these replace the file bytes of the caller.
  const LayerKinds kinds = layer_kinds(c);
  const GpuLayerBytes dense_layer = kinds.dense >= 0 ? gpu_layer_bytes(in, s, false) : GpuLayerBytes{};
  const GpuLayerBytes moe_layer = kinds.moe >= 0 ? gpu_layer_bytes(in, s, true) : GpuLayerBytes{};
  d->base_linear = 0;
  d->base_dense = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const GpuLayerBytes& layer = c.is_moe_layer(l) ? moe_layer : dense_layer;
    d->base_linear += layer.linear;
    d->base_dense += layer.dense;
  }
  // The final norm and the lm_head. The input embedding stays on the host (its rows are gathered there) unless it
  // is tied: then the lm_head's one allocation serves both.
  d->base_dense += held(u64(s.C) * dsz) + held(u64(s.V * s.C) * dsz);
  // A/B, gradients, m, v: one fp32 array each of max(P, 1) floats.
  const uint64_t arena = held(u64(std::max<int64_t>(d->lora_params, 1)) * 4);
  d->adapters = arena;
  d->gradients = arena;
  d->optimizer = 2 * arena;
  // DoRA: the row norms ‖W + s·B A‖ of every adapted Linear (each expert's too), one allocation of Σ N floats.
  if (dora_norms > 0) d->adapters += held(u64(dora_norms) * 4);
  // Per-batch buffers (trainer/lora_cuda_buffers.h).
  for (const LoraCudaBuffer& b :
       lora_cuda_batch_buffers(c, c.num_layers, in.lora.r, plan_flash(c.head_dim), in.bf16_checkpoints, in.lora.dropout > 0,
                               in.lora.use_dora ? plan_targets(s) : std::vector<LoraTarget>{})) {
    const uint64_t bytes = held(b.bytes(T));
    switch (b.role) {
      case LoraCudaRole::Checkpoints: d->act_checkpoints += bytes; break;
      case LoraCudaRole::Forward: d->act_block += bytes; break;
      case LoraCudaRole::Backward: d->act_backward += bytes; break;
      case LoraCudaRole::Loss: d->act_loss += bytes; break;
    }
  }
  d->ws_scratch = std::max(gpu_scratch_bytes(in, s), dora_scratch);
  d->ws_logits = held(u64(lora_cuda_logits_rows(T, s.V) * s.V * 4));
  d->ws_reserve = kCudaContextBytes + kCublasLtWorkspaceBytes + kAllocatorSlackBytes + (plan_nccl(in) ? kNcclBytes : 0);
}

void check_input(const PlanInput& in) {
  const QwenConfig& c = in.model;
  QWENQ_CHECK(c.num_layers > 0 && c.hidden_size > 0 && c.intermediate_size > 0 && c.num_heads > 0 &&
                  c.num_kv_heads > 0 && c.head_dim > 0 && c.vocab_size > 0,
              "plan: the model config has a non-positive size (layers "
                  << c.num_layers << ", hidden " << c.hidden_size << ", intermediate " << c.intermediate_size
                  << ", heads " << c.num_heads << "/" << c.num_kv_heads << ", head_dim " << c.head_dim << ", vocab "
                  << c.vocab_size << ")");
  QWENQ_CHECK(in.batch_size > 0 && in.seq_len > 0,
              "plan: batch size and sequence length must be positive, got " << in.batch_size << " and " << in.seq_len);
  QWENQ_CHECK(in.base == PlanBase::Bf16 || in.base == PlanBase::Nf4 || in.group_size == -1 || in.group_size > 0,
              "plan: group size must be positive or -1, got " << in.group_size);
  QWENQ_CHECK(in.base != PlanBase::Nf4 || (in.nf4_blocksize >= 32 && in.nf4_blocksize <= 4096 &&
                                           (in.nf4_blocksize & (in.nf4_blocksize - 1)) == 0),
              "plan: NF4 block size must be a power of two in [32, 4096], got " << in.nf4_blocksize);
  QWENQ_CHECK(in.dense_dtype == DType::F32 || in.dense_dtype == DType::BF16 || in.dense_dtype == DType::F16,
              "plan: dense dtype must be bf16, fp16 or fp32, got " << dtype_name(in.dense_dtype));
  if (in.device == PlanDevice::Cuda) {
    QWENQ_CHECK(in.gpus >= 1, "plan: --gpus must be at least 1, got " << in.gpus);
  } else {
    QWENQ_CHECK(in.cpu_threads >= 1, "plan: CPU threads must be at least 1, got " << in.cpu_threads);
  }
  in.lora.validate();
}

}  // namespace

const char* plan_base_name(PlanBase b) {
  switch (b) {
    case PlanBase::Bf16: return "bf16";
    case PlanBase::Gptq: return "gptq";
    case PlanBase::Awq: return "awq";
    default: return "nf4";
  }
}

bool plan_base_from_name(const std::string& name, PlanBase* out) {
  for (PlanBase b : {PlanBase::Bf16, PlanBase::Gptq, PlanBase::Awq, PlanBase::Nf4}) {
    if (name == plan_base_name(b)) {
      *out = b;
      return true;
    }
  }
  return false;
}

uint64_t plan_linear_bytes(const PlanInput& in, int64_t N, int64_t K) {
  QWENQ_CHECK(N > 0 && K > 0, "plan: Linear shape [" << N << ", " << K << "] must be positive");
  switch (in.base) {
    case PlanBase::Bf16: return u64(2 * N * K);
    case PlanBase::Gptq: {
      QWENQ_CHECK(gptq_bits_supported(in.bits), "plan: GPTQ holds 2, 3, 4 or 8-bit codes, not " << in.bits);
      const int pm = gptq_pack_multiple(in.bits);
      QWENQ_CHECK(K % pm == 0 && N % pm == 0, "plan: a Linear [" << N << ", " << K << "] does not pack into "
                                                                 << in.bits << "-bit GPTQ words (K and N must be "
                                                                 << "multiples of " << pm << ")");
      const int64_t G = num_groups(in, K);
      return u64(4 * (K * in.bits / 32) * N + 4 * G * (N * in.bits / 32) + 2 * G * N + 4 * K);
    }
    case PlanBase::Awq: {
      QWENQ_CHECK(in.bits == 4, "plan: the AWQ GEMM layout holds 4-bit codes only, not " << in.bits);
      QWENQ_CHECK(in.group_size > 0, "plan: AWQ needs a positive group size, got " << in.group_size);
      QWENQ_CHECK(N % 8 == 0, "plan: a Linear [" << N << ", " << K << "] does not pack into AWQ words (N must be a "
                                                 << "multiple of 8)");
      const int64_t G = num_groups(in, K);
      return u64(4 * K * (N / 8) + 4 * G * (N / 8) + 2 * G * N);
    }
    default: {
      Nf4Tensor t;  // only the fields the quant_state JSON reads
      t.n = N * K;
      t.blocksize = in.nf4_blocksize;
      t.double_quant = in.double_quant;
      t.nested_offset = kPlanNestedOffset;
      const int64_t nb = t.num_blocks();
      uint64_t b = u64(ceil_div(t.n, 2)) + 4 * 16;  // codes, quant_map
      b += in.double_quant ? u64(nb + 4 * t.num_nested_blocks() + 4 * kDynamicMapSize) : u64(4 * nb);
      b += nf4_quant_state_json(t, {N, K}, torch_dtype_name(in.dense_dtype)).size();
      return b;
    }
  }
}

PlanResult plan_memory(const PlanInput& in) {
  check_input(in);
  const QwenConfig& c = in.model;
  const LoraDims dims = lora_dims_of(c);
  const std::vector<LoraPlanSlot> slots = lora_plan(dims, in.lora, "plan");
  if (in.device == PlanDevice::Cuda) {
    const std::string why = lora_plan_gpu_refusal(slots, dims, in.lora);
    QWENQ_CHECK(why.empty(), "plan: " << why << " (plan it with --device cpu)");
  }
  const LayerShape s = layer_shape(in, slots, -1);
  const AdapterTotals adapter = adapter_totals(in, slots);
  const int64_t L = c.num_layers;
  const uint64_t dsz = dtype_size(in.dense_dtype);
  const LayerKinds kinds = layer_kinds(c);
  const LayerTotals dense_layer = kinds.dense >= 0 ? layer_totals(in, kinds.dense) : LayerTotals{};
  const LayerTotals moe_layer = kinds.moe >= 0 ? layer_totals(in, kinds.moe) : LayerTotals{};
  // Σ of one LayerTotals field over the layers.
  auto sum = [&](auto field) {
    decltype(field(dense_layer)) total = 0;
    for (int64_t l = 0; l < L; ++l) total += field(c.is_moe_layer(l) ? moe_layer : dense_layer);
    return total;
  };

  PlanResult res;
  res.input = in;
  res.tokens = s.T;
  res.linear_params = sum([](const LayerTotals& t) { return t.linear_params; });
  const uint64_t embed = u64(c.vocab_size * c.hidden_size) * dsz, final_norm = u64(c.hidden_size) * dsz;
  res.lora_params = adapter.lora_params;
  res.adapted_linears = static_cast<int64_t>(slots.size());
  res.base_linear_bytes = sum([](const LayerTotals& t) { return t.linear_bytes; });
  res.base_dense_bytes =
      sum([](const LayerTotals& t) { return t.dense_bytes; }) + embed + final_norm + (c.tie_word_embeddings ? 0 : embed);
  res.base_weight_bytes = res.base_linear_bytes + res.base_dense_bytes;

  // The CPU, or the GPU of each data-parallel process: every one holds the whole model, its own micro-batches'
  // buffers and a copy of the adapter and its state, the same bytes on each.
  DevicePlan& d = res.device;
  d.name = in.device == PlanDevice::Cpu ? "cpu" : in.gpus == 1 ? "cuda:0" : "cuda:0-" + std::to_string(in.gpus - 1) + " each";
  d.base_linear = res.base_linear_bytes;
  d.base_dense = res.base_dense_bytes;
  d.lora_params = res.lora_params;
  d.adapters = u64(d.lora_params) * 4;
  d.gradients = u64(d.lora_params) * 4;
  d.optimizer = u64(d.lora_params) * 8;
  if (in.device == PlanDevice::Cpu)
    plan_cpu_device(in, s, slots, kinds, &d);
  else
    plan_gpu_device(in, s, adapter.dora_norms, adapter.dora_scratch, &d);
  d.base_weights = d.base_linear + d.base_dense;
  d.activations = d.act_checkpoints + d.act_block + d.act_backward + d.act_loss;
  d.workspace = d.ws_dequant + d.ws_scratch + d.ws_logits + d.ws_threads + d.ws_reserve;
  d.total = d.base_weights + d.adapters + d.gradients + d.optimizer + d.activations + d.workspace;
  d.capacity = in.device_bytes;
  d.headroom = static_cast<int64_t>(d.capacity) - static_cast<int64_t>(d.total);
  d.fits = d.total <= d.capacity;
  // A bf16 base that does not fit a GPU: what the same step needs with an NF4 base (double quant, block 64), when
  // the GPU trainer can hold one (Q4 needs 8-row groups).
  if (!d.fits && in.device == PlanDevice::Cuda && in.base == PlanBase::Bf16) {
    PlanInput q = in;
    q.base = PlanBase::Nf4;
    q.nf4_blocksize = 64;
    q.double_quant = true;
    try {
      res.nf4_total = plan_memory(q).device.total;
    } catch (const Error&) {
      res.nf4_total = 0;
    }
  }
  return res;
}

// ---- output ---------------------------------------------------------------------------------------------

namespace {

std::string signed_bytes(int64_t v) { return v < 0 ? "-" + format_bytes(u64(-v)) : format_bytes(u64(v)); }

std::string base_description(const PlanInput& in) {
  std::ostringstream os;
  switch (in.base) {
    case PlanBase::Bf16: os << "bf16"; break;
    case PlanBase::Gptq:
    case PlanBase::Awq:
      os << plan_base_name(in.base) << " " << in.bits << "-bit, group " << in.group_size;
      break;
    default:
      os << "nf4, block " << in.nf4_blocksize << (in.double_quant ? ", double quant" : ", no double quant");
  }
  return os.str();
}

// ", 48 MoE layers: 128 experts x 768, top-8, shared 5632" (empty for a dense model).
std::string moe_description(const QwenConfig& c) {
  if (!c.is_moe()) return "";
  const int64_t n = c.num_moe_layers();
  std::ostringstream os;
  os << ", " << n << " MoE layer" << (n == 1 ? "" : "s") << ": " << c.num_experts << " experts x "
     << c.moe_intermediate_size << ", top-" << c.experts_per_token;
  if (c.shared_expert_intermediate_size > 0) os << ", shared " << c.shared_expert_intermediate_size;
  return os.str();
}

void row(std::ostringstream& os, const std::vector<std::string>& cells) {
  os << "|";
  for (const auto& c : cells) os << " " << c << " |";
  os << "\n";
}

}  // namespace

std::string format_plan_table(const PlanResult& p) {
  const PlanInput& in = p.input;
  const QwenConfig& c = in.model;
  std::ostringstream os;
  char buf[256];
  os << "qwen-qlora plan: " << in.model_name << " (" << c.num_layers << " layers, hidden " << c.hidden_size;
  if (c.has_dense_mlp()) os << ", intermediate " << c.intermediate_size;  // every layer's MLP but a MoE block's
  os << ", heads " << c.num_heads << "/" << c.num_kv_heads << " x "
     << c.head_dim << ", vocab " << c.vocab_size << (c.tie_word_embeddings ? ", tied" : "") << moe_description(c)
     << ")\n";
  const double lp = static_cast<double>(p.linear_params);
  std::snprintf(buf, sizeof buf, lp >= 1e9 ? "%.3f B" : "%.3f M", lp >= 1e9 ? lp / 1e9 : lp / 1e6);
  os << "base: " << base_description(in) << "; " << format_bytes(p.base_weight_bytes) << " for the whole model ("
     << buf << " Linear params in " << format_bytes(p.base_linear_bytes) << ", embeddings/lm_head/norms/biases"
     << (c.is_moe() ? "/routers " : " ") << dtype_name(in.dense_dtype) << " " << format_bytes(p.base_dense_bytes) << ")\n";
  std::snprintf(buf, sizeof buf, "%.2f M", static_cast<double>(p.lora_params) / 1e6);
  os << "LoRA: r=" << in.lora.r << " on " << lora_selection_str(in.lora) << " (" << p.adapted_linears << " Linears); "
     << buf
     << " params, fp32 master + fp32 grad + AdamW m, v fp32 = 16 B/param"
     << (in.lora.dropout <= 0                 ? ""
         : in.device == PlanDevice::Cpu ? "; dropout keeps the dropped input (masks are regenerated)"
                                        : "; dropout adds one [T, max(C, q_dim, I)] scratch (masks are regenerated)")
     << "\n";
  os << "step: micro-batch " << in.batch_size << " x " << in.seq_len << " = " << p.tokens
     << " tokens, activation checkpointing "
     << (in.device == PlanDevice::Cuda ? "on (always, on the GPU)" : in.checkpointing ? "on" : "off") << "\n";
  if (in.device == PlanDevice::Cpu) {
    std::snprintf(buf, sizeof buf, "%.1f GB = ", static_cast<double>(in.device_bytes) / 1e9);
    os << "device: cpu (the trainer in trainer/lora_model.cpp, fp32), " << buf << format_bytes(in.device_bytes)
       << " of RAM, " << in.cpu_threads << " threads\n";
  } else {
    std::snprintf(buf, sizeof buf, "%.1f GB = ", static_cast<double>(in.device_bytes) / 1e9);
    os << "device: " << in.gpus << " x cuda, " << buf << format_bytes(in.device_bytes)
       << " each (the GPU trainer, trainer/lora_model_cuda.h: fp32 activations, "
       << (in.bf16_checkpoints ? "bf16" : "fp32") << " block inputs, 4-bit Linears as Q4, always checkpointed; "
       << (c.tie_word_embeddings ? "the tied embedding is the lm_head"
                                 : "the input embedding stays on the host, its rows gathered per step")
       << "; base weights and buffers as the caching allocator holds them)\n";
    if (in.gpus > 1) {
      os << "data parallel (train --nproc " << in.gpus << "): every GPU holds the whole model and the adapter, and "
         << "computes its share of each step's micro-batches (" << in.gpus << " x " << p.tokens
         << " tokens at a time); gradients summed "
         << (plan_nccl(in) ? std::string("by NCCL (QWENQ_DP_NCCL=1)")
                           : "through host memory (a shared segment of " +
                                 format_bytes(u64(in.gpus + 1) * ProcessGroup::kSharedPieceBytes) + " in /dev/shm)")
         << "\n";
      if (in.base != PlanBase::Bf16) {
        os << "host memory: each process keeps its own copy of the packed Linears, " << format_bytes(p.base_linear_bytes)
           << " (" << format_bytes(u64(in.gpus) * p.base_linear_bytes) << " for " << in.gpus
           << "); the 16-bit tensors are read from the page cache, which the processes share\n";
      }
    }
  }
  os << "\n";
  const DevicePlan& d = p.device;
  row(os, {"device", "base weights", "adapters", "gradients", "optimizer", "activations", "workspace", "total",
           "capacity", "headroom", "fits"});
  row(os, {"---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---"});
  row(os, {d.name, format_bytes(d.base_weights), format_bytes(d.adapters), format_bytes(d.gradients),
           format_bytes(d.optimizer), format_bytes(d.activations), format_bytes(d.workspace), format_bytes(d.total),
           format_bytes(d.capacity), signed_bytes(d.headroom), d.fits ? "yes" : "NO"});
  os << "\nactivations and workspace in detail (formulas: trainer/memory_plan.h):\n\n";
  const bool cpu = in.device == PlanDevice::Cpu;
  row(os, {"device", "checkpoints", cpu ? "block" : "forward", "backward", "loss", cpu ? "dequant" : "kernel scratch",
           "logits chunk", "thread buffers", "reserve"});
  row(os, {"---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:"});
  row(os, {d.name, format_bytes(d.act_checkpoints), format_bytes(d.act_block), format_bytes(d.act_backward),
           format_bytes(d.act_loss), format_bytes(cpu ? d.ws_dequant : d.ws_scratch), format_bytes(d.ws_logits),
           format_bytes(d.ws_threads), format_bytes(d.ws_reserve)});
  os << "\n";
  if (d.fits) {
    os << "fits: yes; " << d.name << " needs " << format_bytes(d.total) << " of " << format_bytes(d.capacity)
       << "; headroom " << signed_bytes(d.headroom) << "\n";
  } else {
    os << "fits: NO; " << d.name << " needs " << format_bytes(d.total) << " but has " << format_bytes(d.capacity)
       << " (short by " << format_bytes(u64(-std::min<int64_t>(d.headroom, 0))) << ")\n";
    if (p.nf4_total > 0) {
      os << "  with a 4-bit base (qwen-quant nf4, or gptq/awq --bits 4, about as large): " << format_bytes(p.nf4_total)
         << (p.nf4_total <= d.capacity ? ", which fits" : ", which does not fit either") << "\n";
    }
  }
  os << "(predictions from formulas, not measurements)\n";
  return os.str();
}

std::string plan_to_json(const PlanResult& p) {
  const PlanInput& in = p.input;
  const QwenConfig& c = in.model;
  nlohmann::ordered_json j;
  j["model"] = in.model_name;
  j["config"] = {{"layers", c.num_layers}, {"hidden_size", c.hidden_size},
                 {"intermediate_size", c.intermediate_size}, {"heads", c.num_heads},
                 {"kv_heads", c.num_kv_heads}, {"head_dim", c.head_dim},
                 {"vocab_size", c.vocab_size}, {"tied", c.tie_word_embeddings}};
  if (c.is_moe()) {
    j["config"]["moe"] = {{"layers", c.num_moe_layers()},
                          {"experts", c.num_experts},
                          {"experts_per_token", c.experts_per_token},
                          {"moe_intermediate_size", c.moe_intermediate_size},
                          {"shared_expert_intermediate_size", c.shared_expert_intermediate_size}};
  }
  j["base"] = {{"format", plan_base_name(in.base)},
               {"bits", in.base == PlanBase::Bf16 ? 16 : in.bits},
               {"group_size", in.group_size},
               {"double_quant", in.double_quant},
               {"nf4_blocksize", in.nf4_blocksize},
               {"dense_dtype", dtype_name(in.dense_dtype)}};
  j["lora"] = {{"r", in.lora.r},
               {"targets", in.lora.target_modules},
               {"dropout", in.lora.dropout},
               {"adapted_linears", p.adapted_linears}};
  if (in.lora.selects_finely()) j["lora"]["selection"] = lora_selection_str(in.lora);
  if (in.lora.use_dora) j["lora"]["dora"] = true;
  j["batch_size"] = in.batch_size;
  j["seq_len"] = in.seq_len;
  j["tokens"] = p.tokens;
  j["checkpointing"] = in.checkpointing;
  if (in.device == PlanDevice::Cuda) j["bf16_checkpoints"] = in.bf16_checkpoints;
  j["device"] = in.device == PlanDevice::Cpu ? "cpu" : "cuda";
  j["gpus"] = in.device == PlanDevice::Cpu ? 0 : in.gpus;  // data-parallel processes, each planned as "device"
  j["device_bytes"] = in.device_bytes;
  if (in.device == PlanDevice::Cpu) j["cpu_threads"] = in.cpu_threads;
  j["linear_params"] = p.linear_params;
  j["lora_params"] = p.lora_params;
  j["base_linear_bytes"] = p.base_linear_bytes;
  j["base_dense_bytes"] = p.base_dense_bytes;
  j["base_weight_bytes"] = p.base_weight_bytes;
  const DevicePlan& d = p.device;
  j["per_device"] = {{"name", d.name},
                     {"base_linear", d.base_linear},
                     {"base_dense", d.base_dense},
                     {"base_weights", d.base_weights},
                     {"lora_params", d.lora_params},
                     {"adapters", d.adapters},
                     {"gradients", d.gradients},
                     {"optimizer", d.optimizer},
                     {"act_checkpoints", d.act_checkpoints},
                     {"act_block", d.act_block},
                     {"act_backward", d.act_backward},
                     {"act_loss", d.act_loss},
                     {"activations", d.activations},
                     {"ws_dequant", d.ws_dequant},
                     {"ws_scratch", d.ws_scratch},
                     {"ws_logits", d.ws_logits},
                     {"ws_threads", d.ws_threads},
                     {"ws_reserve", d.ws_reserve},
                     {"workspace", d.workspace},
                     {"total", d.total},
                     {"capacity", d.capacity},
                     {"headroom", d.headroom},
                     {"fits", d.fits}};
  j["fits"] = d.fits;
  if (p.nf4_total > 0) j["nf4_total"] = p.nf4_total;
  j["note"] = "predictions from the formulas in trainer/memory_plan.h, not measurements";
  return j.dump(2) + "\n";
}

void plan_base_from_model_dir(const std::string& dir, PlanInput* in) {
  const QuantConfig q = load_quant_config(dir);
  switch (q.method) {
    case QuantConfig::Method::None: in->base = PlanBase::Bf16; return;
    case QuantConfig::Method::Gptq: in->base = PlanBase::Gptq; break;
    case QuantConfig::Method::Awq: in->base = PlanBase::Awq; break;
    case QuantConfig::Method::Fp8:
      QWENQ_FAIL(dir << ": an FP8 checkpoint; plan the model it becomes (`qwen-quant dequantize` to bf16, or its 4-bit "
                        "quantization: qwen-quant rtn/nf4/gptq/awq read FP8 models)");
      return;
    case QuantConfig::Method::CompressedTensors: {
      // Planned as the GPTQ v2 Linears its integer weights load into, when one scheme covers them all.
      const bool one_int = q.ct_schemes.size() == 1 && !q.ct_schemes[0].weights.is_float &&
                           q.ct_schemes[0].weights.strategy != CtStrategy::Tensor;
      QWENQ_CHECK(one_int, dir << ": a compressed-tensors checkpoint with "
                               << (q.ct_has_int() ? "several weight schemes" : "float8 weights")
                               << "; plan the model it becomes (`qwen-quant dequantize` to bf16, or its 4-bit "
                                  "quantization: qwen-quant rtn/nf4/gptq/awq read float8 models)");
      in->base = PlanBase::Gptq;
      break;
    }
    case QuantConfig::Method::Bnb4: {
      in->base = PlanBase::Nf4;  // fp4 packs the same way
      const auto cfg = read_json_file(path_join(dir, "config.json"));
      const auto& qc = cfg.at("quantization_config");
      in->double_quant = qc.value("bnb_4bit_use_double_quant", false);
      return;
    }
  }
  QWENQ_CHECK(!q.gptq_mixed(), dir << ": a GPTQ checkpoint whose \"dynamic\" rules give some modules their own bits "
                                     "or group size; the plan counts one setting for every Linear");
  in->bits = q.bits;
  in->group_size = q.group_size;
}

DType plan_dense_dtype(const std::string& torch_dtype) {
  if (torch_dtype == "float32") return DType::F32;
  if (torch_dtype == "float16") return DType::F16;
  return DType::BF16;
}

}  // namespace qwenq
