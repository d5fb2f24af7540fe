// The GPU LoRA trainer's buffer table (trainer/lora_cuda_buffers.h).
#include "trainer/lora_cuda_buffers.h"

#include <algorithm>

#include "core/env_switch.h"
#include "core/error.h"
#include "kernels/qgemm.h"
#include "trainer/lora_model.h"
#include "trainer/moe_block.h"

namespace qwenq {

int64_t lora_cuda_fold_cols(int64_t rank) { return qgemm_lora_fold_enabled() ? (rank + 7) / 8 * 8 : 0; }

int64_t lora_cuda_logits_chunk_floats() {
  return env_int("QWENQ_LOGITS_CHUNK", kLoraCudaLogitsChunkFloats, 1, int64_t{1} << 30);
}

int64_t lora_cuda_logits_rows(int64_t T, int64_t V, int64_t max_rows) {
  const int64_t rows = max_rows > 0 ? max_rows : lora_cuda_logits_chunk_floats() / V;
  return std::max<int64_t>(1, std::min<int64_t>(T, rows));
}

void lora_arena_put(const LoraAdapter& a, int64_t stage_floats,
                    const std::function<void(const float* data, int64_t offset, int64_t n)>& write) {
  QWENQ_CHECK(stage_floats > 0, "lora_arena_put: the stage must hold at least one float, got " << stage_floats);
  std::vector<float> stage;
  stage.reserve(static_cast<size_t>(stage_floats));
  int64_t at = 0;  // the arena offset of stage[0]
  const auto flush = [&] {
    if (stage.empty()) return;
    write(stage.data(), at, static_cast<int64_t>(stage.size()));
    at += static_cast<int64_t>(stage.size());
    stage.clear();
  };
  for (size_t s = 0; s < a.slots().size(); ++s) {
    for (const std::vector<float>* v : {&a.weights(s).A, &a.weights(s).B, &a.weights(s).m}) {  // m: DoRA only
      for (size_t i = 0; i < v->size();) {
        const size_t n = std::min(v->size() - i, static_cast<size_t>(stage_floats) - stage.size());
        stage.insert(stage.end(), v->begin() + static_cast<std::ptrdiff_t>(i),
                     v->begin() + static_cast<std::ptrdiff_t>(i + n));
        i += n;
        if (static_cast<int64_t>(stage.size()) == stage_floats) flush();
      }
    }
  }
  flush();
}

void lora_arena_get(LoraAdapter* a, int64_t stage_floats,
                    const std::function<void(float* data, int64_t offset, int64_t n)>& read) {
  QWENQ_CHECK(stage_floats > 0, "lora_arena_get: the stage must hold at least one float, got " << stage_floats);
  int64_t total = 0;
  for (size_t s = 0; s < a->slots().size(); ++s) {
    total += static_cast<int64_t>(a->weights(s).A.size() + a->weights(s).B.size() + a->weights(s).m.size());
  }
  std::vector<float> stage;
  int64_t at = 0;  // the arena offset of stage[0]
  size_t next = 0;  // the next float of stage to hand out
  for (size_t s = 0; s < a->slots().size(); ++s) {
    for (std::vector<float>* v : {&a->weights(s).A, &a->weights(s).B, &a->weights(s).m}) {
      for (size_t i = 0; i < v->size();) {
        if (next == stage.size()) {  // the next stage: the floats after this one
          at += static_cast<int64_t>(stage.size());
          stage.resize(static_cast<size_t>(std::min(stage_floats, total - at)));
          read(stage.data(), at, static_cast<int64_t>(stage.size()));
          next = 0;
        }
        const size_t n = std::min(v->size() - i, stage.size() - next);
        std::copy(stage.begin() + static_cast<std::ptrdiff_t>(next),
                  stage.begin() + static_cast<std::ptrdiff_t>(next + n), v->begin() + static_cast<std::ptrdiff_t>(i));
        i += n;
        next += n;
      }
    }
  }
}

LoraCudaDoraShape lora_cuda_dora_shape(const QwenConfig& c, const std::vector<LoraTarget>& dora_targets, LoraTarget t) {
  const LoraDims d = lora_dims_of(c);
  LoraCudaDoraShape out;
  for (const LoraTargetInfo& info : kLoraTargets) {  // table order
    if (std::find(dora_targets.begin(), dora_targets.end(), info.target) == dora_targets.end()) continue;
    const LoraShape sh = lora_target_shape(d, info.target);
    if (info.target == t) {
      out.N = sh.N;
      out.K = sh.K;
      return out;
    }
    out.offset += sh.N;
  }
  QWENQ_FAIL("lora_cuda_dora_shape: " << lora_target_path(t) << " is not one of the DoRA adapter's targets");
}

namespace {

bool is_attention(LoraTarget t) {
  return t == LoraTarget::QProj || t == LoraTarget::KProj || t == LoraTarget::VProj || t == LoraTarget::OProj;
}

// An expert's Linear `which` (0 gate, 1 up, 2 down) of width I: [N, K].
LoraShape expert_shape(const QwenConfig& c, int which, int64_t I) {
  return which == 2 ? LoraShape{c.hidden_size, I} : LoraShape{I, c.hidden_size};
}

}  // namespace

LoraCudaDoraMoe lora_cuda_dora_moe(const QwenConfig& c, const std::vector<LoraTarget>& dora_targets) {
  LoraCudaDoraMoe out;
  const LoraDims d = lora_dims_of(c);
  for (LoraTarget t : dora_targets) {
    if (is_attention(t)) out.words += lora_target_shape(d, t).N;
  }
  const LoraTarget mlp[3] = {LoraTarget::GateProj, LoraTarget::UpProj, LoraTarget::DownProj};
  for (int which = 0; which < 3; ++which) {
    if (std::find(dora_targets.begin(), dora_targets.end(), mlp[which]) == dora_targets.end()) continue;
    out.routed[which] = out.words;
    out.words += c.experts_per_token * expert_shape(c, which, c.moe_intermediate_size).N;
    if (c.shared_expert_intermediate_size <= 0) continue;
    out.shared[which] = out.words;
    out.words += expert_shape(c, which, c.shared_expert_intermediate_size).N;
  }
  return out;
}

int64_t lora_cuda_dora_expert_offset(const LoraCudaDoraMoe& m, int which, int64_t expert, int64_t T, int64_t r0,
                                     int64_t N) {
  QWENQ_CHECK(which >= 0 && which < 3, "lora_cuda_dora_expert_offset: no expert Linear " << which);
  const int64_t col = expert < 0 ? m.shared[which] : m.routed[which];
  QWENQ_CHECK(col >= 0, "lora_cuda_dora_expert_offset: Linear " << which << " of expert " << expert
                                                                << " is not a DoRA target");
  return T * col + (expert < 0 ? 0 : r0 * N);
}

std::vector<LoraCudaBuffer> lora_cuda_batch_buffers(const QwenConfig& c, int64_t layers, int64_t rank, bool flash,
                                                    bool bf16_checkpoints, bool dropout,
                                                    const std::vector<LoraTarget>& dora_targets) {
  const int64_t C = c.hidden_size, Q = c.q_dim(), KV = c.kv_dim(), I = c.intermediate_size, H = c.num_heads,
                r = rank, Im = c.moe_intermediate_size, Is = c.shared_expert_intermediate_size,
                wide = std::max({C, Q, I, Im, Is, c.num_experts}), Idense = c.has_dense_mlp() ? I : 1;
  using Id = LoraCudaBufferId;
  using R = LoraCudaRole;
  const auto b16 = [](int64_t cols) { return (cols + 1) / 2; };  // bf16 values in 4-byte words
  std::vector<LoraCudaBuffer> v;
  if (bf16_checkpoints) {
    v.push_back({Id::Xs, R::Checkpoints, "the bf16 block inputs (activation checkpoints)", b16((layers + 1) * C)});
    v.push_back({Id::Xin, R::Forward, "the block input widened to fp32", C});
  } else {
    v.push_back({Id::Xs, R::Checkpoints, "the fp32 block inputs (activation checkpoints)", (layers + 1) * C});
  }
  const std::vector<LoraCudaBuffer> rest = {
      {Id::N1, R::Forward, "n1 (and the final hidden states)", C},
      {Id::Qpre, R::Forward, "q before its norm", c.qk_norm ? Q : 1},
      {Id::Kpre, R::Forward, "k before its norm", c.qk_norm ? KV : 1},
      {Id::Q, R::Forward, "q", Q},
      {Id::K, R::Forward, "k", KV},
      {Id::V, R::Forward, "v", KV},
      {Id::A, R::Forward, "the attention output", Q},
      {Id::Lse, R::Forward, "the attention lse", H},
      {Id::H1, R::Forward, "h1 (and dhidden)", C},
      {Id::N2, R::Forward, "n2", C},
      {Id::Gate, R::Forward, "gate", Idense},
      {Id::Up, R::Forward, "up (and dup)", Idense},
      {Id::Act, R::Forward, "the SwiGLU output (and dact, dgate)", Idense},
      {Id::U, R::Forward, "the LoRA u = x Aᵀ", 7 * r},
      {Id::D, R::Backward, "the residual gradient", C},
      {Id::Dn2, R::Backward, "dn2 (and dn1, the MLP output)", C},
      {Id::Dh1, R::Backward, "dh1", C},
  };
  v.insert(v.end(), rest.begin(), rest.end());
  if (!flash) {
    v.push_back({Id::Da, R::Backward, "da", Q});
    v.push_back({Id::Dq, R::Backward, "dq", Q});
    v.push_back({Id::Dk, R::Backward, "dk", KV});
    v.push_back({Id::Dv, R::Backward, "dv", KV});
  }
  if (dropout) v.push_back({Id::Tmp, R::Backward, "the dropped LoRA input / base input gradient", wide});
  const std::vector<LoraCudaBuffer> tail = {
      {Id::G, R::Backward, "the LoRA g = s dy B", r},
      {Id::Nll, R::Loss, "the per-token losses", 1},
      {Id::Tokens, R::Forward, "the token ids", 1},
      {Id::Positions, R::Forward, "the positions", 1},
      {Id::Targets, R::Loss, "the targets", 1},
      {Id::Act16, R::Forward, "the bf16 activations of the 4-bit Linears", b16(wide + lora_cuda_fold_cols(r))},
  };
  v.insert(v.end(), tail.begin(), tail.end());
  if (flash) {
    v.push_back({Id::Q16, R::Forward, "bf16 q", b16(Q)});
    v.push_back({Id::K16, R::Forward, "bf16 k", b16(KV)});
    v.push_back({Id::V16, R::Forward, "bf16 v", b16(KV)});
    v.push_back({Id::A16, R::Forward, "bf16 attention output", b16(Q)});
  }
  if (c.is_moe()) {
    const int64_t k = c.experts_per_token, E = c.num_experts, S = std::max<int64_t>(Is, 1), Sc = Is > 0 ? C : 1;
    const std::vector<LoraCudaBuffer> moe = {
        {Id::Mx, R::Forward, "the rows routed to the experts", k * C},
        {Id::My, R::Forward, "the experts' output rows (and their dx)", k * C},
        {Id::Mgate, R::Forward, "the experts' gate rows (and dgate)", k * Im},
        {Id::Mup, R::Forward, "the experts' up rows (and dup)", k * Im},
        {Id::Mact, R::Forward, "the experts' SwiGLU rows (and dact)", k * Im},
        {Id::Mu, R::Forward, "the experts' LoRA u", std::max<int64_t>(3 * k * r, 1)},
        {Id::Mlogits, R::Forward, "the router logits (and their gradient)", E},
        {Id::Mindex, R::Forward, "the experts' gather and combine indices", 2 * k},
        {Id::Mweight, R::Forward, "the routing weights", k + 1},
        {Id::Sgate, R::Forward, "the shared expert's gate (and dgate)", S},
        {Id::Sup, R::Forward, "the shared expert's up (and dup)", S},
        {Id::Sact, R::Forward, "the shared expert's SwiGLU output (and dact)", S},
        {Id::Sy, R::Forward, "the shared expert's output", Sc},
        {Id::Su, R::Forward, "the shared expert's LoRA u", Is > 0 ? std::max<int64_t>(3 * r, 1) : 1},
        {Id::Mg, R::Forward, "the shared expert's gate logit", 1},
        {Id::Mdy, R::Backward, "the experts' output-row gradients", k * C},
        {Id::Mdw, R::Backward, "the routing weights' gradients", k},
        {Id::Ds, R::Backward, "the shared expert's dy and dx", Sc},
        {Id::Dg, R::Backward, "the shared expert's gate-logit gradient", 1},
        {Id::Mtmp, R::Backward, "the base input gradients of an accumulating Linear, the router's, the gate's", C},
    };
    v.insert(v.end(), moe.begin(), moe.end());
  }
  if (!dora_targets.empty()) {
    const LoraDims d = lora_dims_of(c);
    int64_t sum_n = 0, max_n = 0, max_k = 0;
    const auto widest = [&](const LoraShape& sh) {
      max_n = std::max(max_n, sh.N);
      max_k = std::max(max_k, sh.K);
    };
    for (LoraTarget t : dora_targets) {
      const bool attention = is_attention(t);
      if (attention || c.has_dense_mlp()) {  // a dense layer's Linear (a MoE-only model has no dense MLP)
        const LoraShape sh = lora_target_shape(d, t);
        sum_n += sh.N;
        widest(sh);
      }
      if (attention || !c.is_moe()) continue;
      const int which = moe_expert_index(t);
      widest(expert_shape(c, which, c.moe_intermediate_size));
      if (c.shared_expert_intermediate_size > 0) widest(expert_shape(c, which, c.shared_expert_intermediate_size));
    }
    if (c.is_moe()) sum_n = std::max(sum_n, lora_cuda_dora_moe(c, dora_targets).words);
    const std::vector<LoraCudaBuffer> dora = {
        {Id::DoraZ, R::Forward, "DoRA's z = x Wᵀ of the adapted Linears", sum_n},
        {Id::DoraV, R::Forward, "DoRA's v = s·u Bᵀ of the adapted Linears", sum_n},
        {Id::DoraDz, R::Backward, "DoRA's dz of one Linear", max_n},
        {Id::DoraDv, R::Backward, "DoRA's dv of one Linear", max_n},
        {Id::DoraTmp, R::Backward, "DoRA's input gradient of one Linear before it is added", max_k},
    };
    v.insert(v.end(), dora.begin(), dora.end());
  }
  return v;
}

}  // namespace qwenq
