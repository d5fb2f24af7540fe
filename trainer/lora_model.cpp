#include "trainer/lora_model.h"

#include <algorithm>
#include <cmath>

#include "core/dtype.h"
#include "core/error.h"
#include "core/threads.h"
#include "kernels/act.h"
#include "kernels/attention.h"
#include "kernels/dropout.h"
#include "kernels/dropout_mask.h"
#include "kernels/gemm.h"
#include "kernels/gemm_bf16.h"
#include "kernels/loss.h"
#include "kernels/norm.h"
#include "kernels/rope.h"
#include "lora/lora_linear.h"
#include "trainer/moe_block.h"

namespace qwenq {

namespace {

// A Linear's weight as the CPU products take it: a view of the stored dense tensor; for the bf16 products (`q4`), a
// 4-bit Linear's Q4 form, multiplied without an fp32 copy (qgemm_int4_*_bf16, the same bits); else the dequantized
// values of a packed one (one layer at a time).
struct WeightRef {
  std::vector<float> owned;
  Q4Transient q4;  // has_form(): data is null
  const void* data = nullptr;
  DType dtype = DType::F32;
  WeightRef(const LinearWeight& w, bool q4_form) {
    if (w.is_dense()) {
      data = w.dense.data;
      dtype = w.dense.dtype;
      return;
    }
    if (q4_form) q4 = q4_linear_form(w);
    if (!q4.has_form()) {
      owned = w.dequantize();
      data = owned.data();
    }
  }
};

// The adapter branch's saved state of one Linear in one block.
struct BranchActs {
  std::vector<float> u;     // [T, r]
  std::vector<float> xd;    // dropped-out input [T, K] (empty without dropout; the mask is regenerated from its key)
  // DoRA only (see lora_model.h): z = x̃ Wᵀ [T, N], v = s·u Bᵀ [T, N], the detached row norms n [N].
  std::vector<float> z, v, n;
};

// n[j] = ‖W[j, :] + s·(B A)[j, :]‖₂ for every row j of one adapted Linear, as PEFT's DoraLinearLayer.get_weight_norm
// (W in fp32, (B A) in fp32 then times s and added; the sum of squares in double, rounded to fp32).
// Rows are independent (parallel over j); (B A)[j, :] is r saxpy passes over K contiguous floats.
std::vector<float> dora_row_norms(const WeightRef& W, int64_t N, int64_t K, const LoraWeights& lw, float s) {
  std::vector<float> n(static_cast<size_t>(N));
  const int64_t r = lw.r;
  const size_t esize = dtype_size(W.dtype);
  parallel_for(N, 16, [&](int64_t j0, int64_t j1) {
    std::vector<float> row(static_cast<size_t>(K)), ba(static_cast<size_t>(K));
    for (int64_t j = j0; j < j1; ++j) {
      to_f32(W.dtype, static_cast<const uint8_t*>(W.data) + static_cast<size_t>(j * K) * esize, row.data(), K);
      std::fill(ba.begin(), ba.end(), 0.f);
      for (int64_t i = 0; i < r; ++i) {
        const float b = lw.B[j * r + i];
        const float* a = lw.A.data() + i * K;
        for (int64_t k = 0; k < K; ++k) ba[k] += b * a[k];
      }
      double ss = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double e = row[k] + s * ba[k];
        ss += e * e;
      }
      n[static_cast<size_t>(j)] = static_cast<float>(std::sqrt(ss));
    }
  });
  return n;
}

struct BlockActs {
  std::vector<float> n1, qpre, kpre, q, k, v, a, lse, h1, n2, gate, up, act;
  BranchActs br[7];
  MoeBlockActs moe;  // a mixture-of-experts layer's MLP (trainer/moe_block.h)
};

class Runner {
 public:
  Runner(const QwenModel& model, const LoraAdapter& adapter, const PackedBatch& batch, const LoraStepOptions& opt)
      : m_(model), c_(model.config()), w_(model.weights()), ad_(adapter), b_(batch), opt_(opt), T_(batch.num_tokens()) {
    p_ = opt.train ? static_cast<float>(adapter.config().dropout) : 0.f;
  }

  // The base products (the frozen Linears and the lm_head): on bf16 operands (kernels/gemm_bf16.h) with
  // opt_.bf16_matmul and an F32/BF16 weight, else the fp32 products of kernels/gemm.h.
  void base_forward(const float* x, int64_t M, int64_t K, const void* w, DType wt, int64_t N, const void* bias,
                    DType bt, float* y) const {
    linear_forward_cpu(opt_.bf16_matmul, x, M, K, w, wt, N, bias, bt, y);
  }
  void base_backward_input(const float* dy, int64_t M, int64_t N, const void* w, DType wt, int64_t K, float* dx) const {
    linear_backward_input_cpu(opt_.bf16_matmul, dy, M, N, w, wt, K, dx);
  }
  // The same with a Linear's WeightRef: its Q4 form where it has one.
  void base_forward(const float* x, int64_t M, const WeightRef& W, int64_t K, int64_t N, const TensorView& bias,
                    float* y) const {
    if (W.q4.has_form()) return qgemm_int4_forward_bf16(W.q4.view, x, M, bias.data, bias.dtype, y);
    base_forward(x, M, K, W.data, W.dtype, N, bias.data, bias.dtype, y);
  }
  void base_backward_input(const float* dy, int64_t M, const WeightRef& W, int64_t N, int64_t K, float* dx) const {
    if (W.q4.has_form()) return qgemm_int4_backward_input_bf16(W.q4.view, dy, M, dx);
    base_backward_input(dy, M, N, W.data, W.dtype, K, dx);
  }
  // Whether Linear t of layer l multiplies a 4-bit weight from its Q4 form: the bf16 products, and not DoRA (whose
  // row norms read the fp32 values).
  bool q4_form(int64_t l, int t) const {
    return opt_.bf16_matmul && (!ad_.has(l, kLoraTargets[t].target) || ad_.at(l, kLoraTargets[t].target).m.empty());
  }

  // y = x Wᵀ + b + s·(drop(x) Aᵀ) Bᵀ. y null: a recomputation that reads no output of this Linear (the dense
  // MLP's down projection, whose output only fed the residual): just what its backward reads, x̃ and
  // u = x̃ Aᵀ (lora_project_ref, the bits lora_forward_ref writes), without the base product; DoRA's backward
  // reads z = x̃ Wᵀ as well, so a DoRA Linear still runs whole into a discarded y.
  void linear_fwd(int64_t l, int t, const float* x, const TensorView& bias, float* y, BranchActs* br) const {
    const LinearWeight& w = layer_linear(w_.layers[l], t);
    const bool adapted = ad_.has(l, kLoraTargets[t].target);
    if (y == nullptr) {
      if (!adapted) return;
      const LoraWeights& lw = ad_.at(l, kLoraTargets[t].target);
      if (!lw.m.empty()) {
        std::vector<float> unread(static_cast<size_t>(T_ * w.N));
        return linear_fwd(l, t, x, bias, unread.data(), br);
      }
      br->u.resize(T_ * lw.r);
      lora_project_ref(branch_input(l, t, x, w.K, br), T_, w.K, lw.A.data(), lw.r, br->u.data());
      return;
    }
    const WeightRef W(w, q4_form(l, t));
    base_forward(x, T_, W, w.K, w.N, bias, y);
    if (!adapted) return;
    const LoraWeights& lw = ad_.at(l, kLoraTargets[t].target);
    const float* xin = branch_input(l, t, x, w.K, br);
    br->u.resize(T_ * lw.r);
    if (lw.m.empty()) {
      lora_forward_ref(xin, T_, w.K, lw.A.data(), lw.B.data(), lw.r, w.N, scale(lw), y, br->u.data());
      return;
    }
    // DoRA: y += (g − 1) ⊙ z + g ⊙ v, g = m / n. z = x̃ Wᵀ: without dropout PEFT takes y − b (base_result).
    const int64_t N = w.N;
    const LoraWeights& nw = opt_.dora_norms_from ? opt_.dora_norms_from->at(l, kLoraTargets[t].target) : lw;
    br->n = dora_row_norms(W, N, w.K, nw, scale(lw));
    br->z.resize(T_ * N);
    if (p_ > 0.f) {
      base_forward(xin, T_, w.K, W.data, W.dtype, N, nullptr, DType::F32, br->z.data());
    } else {
      std::copy(y, y + T_ * N, br->z.begin());
      if (bias.data) {
        std::vector<float> b(static_cast<size_t>(N));
        to_f32(bias.dtype, bias.data, b.data(), N);
        for (int64_t t = 0; t < T_; ++t)
          for (int64_t j = 0; j < N; ++j) br->z[t * N + j] -= b[j];
      }
    }
    br->v.assign(T_ * N, 0.f);
    lora_forward_ref(xin, T_, w.K, lw.A.data(), lw.B.data(), lw.r, N, scale(lw), br->v.data(), br->u.data());
    dora_combine(lw.m.data(), br->n.data(), br->z.data(), br->v.data(), T_, N, y);
  }

  // The branch's s: the Linear's own (rank_pattern / alpha_pattern may give each Linear its r and alpha).
  static float scale(const LoraWeights& lw) { return static_cast<float>(lw.scaling); }

  // The LoRA branch's input x̃ of Linear t: x, or with dropout its dropped copy, kept in br->xd for the backward.
  const float* branch_input(int64_t l, int t, const float* x, int64_t K, BranchActs* br) const {
    if (p_ == 0.f) return x;
    br->xd.resize(T_ * K);
    dropout_forward_ref(x, T_ * K, p_, mask_key(l, t), br->xd.data());
    return br->xd.data();
  }

  // dx += dy W (+ the adapter's input gradient); the adapter's dA, dB accumulate into grads.
  void linear_bwd(int64_t l, int t, const float* dy, const float* x, const BranchActs& br, float* dx,
                  LoraAdapter* grads, std::vector<float>& tmp) const {
    const LinearWeight& w = layer_linear(w_.layers[l], t);
    const WeightRef W(w, q4_form(l, t));
    tmp.resize(T_ * w.K);
    base_backward_input(dy, T_, W, w.N, w.K, tmp.data());
    for (int64_t i = 0; i < T_ * w.K; ++i) dx[i] += tmp[i];
    if (!ad_.has(l, kLoraTargets[t].target)) return;
    const LoraWeights& lw = ad_.at(l, kLoraTargets[t].target);
    LoraWeights& g = grads->at(l, kLoraTargets[t].target);
    if (!lw.m.empty()) {
      dora_bwd(lw, g, w, W, dy, p_ > 0.f ? br.xd.data() : x, br, mask_key(l, t), dx, tmp);
      return;
    }
    if (p_ > 0.f) {
      std::fill(tmp.begin(), tmp.end(), 0.f);
      lora_backward_ref(dy, br.xd.data(), br.u.data(), T_, w.K, w.N, lw.r, lw.A.data(), lw.B.data(), scale(lw), g.A.data(),
                        g.B.data(), tmp.data());
      dropout_backward_ref(tmp.data(), T_ * w.K, p_, mask_key(l, t), dx);
    } else {
      lora_backward_ref(dy, x, br.u.data(), T_, w.K, w.N, lw.r, lw.A.data(), lw.B.data(), scale(lw), g.A.data(), g.B.data(), dx);
    }
  }

  // DoRA's part of linear_bwd (lora_model.h): dm, and dA, dB, dx through z = x̃ Wᵀ and v = s·(x̃ Aᵀ) Bᵀ; the base
  // term's dy W is already in dx. xin is x̃ (the dropped-out input, or x).
  void dora_bwd(const LoraWeights& lw, LoraWeights& g, const LinearWeight& w, const WeightRef& W, const float* dy,
                const float* xin, const BranchActs& br, uint64_t key, float* dx, std::vector<float>& tmp) const {
    const int64_t N = w.N, K = w.K;
    std::vector<float> dz(T_ * N), dv(T_ * N);
    dora_split_grad(lw.m.data(), br.n.data(), br.z.data(), br.v.data(), dy, T_, N, g.m.data(), dz.data(), dv.data());
    tmp.resize(T_ * K);
    base_backward_input(dz.data(), T_, N, W.data, W.dtype, K, tmp.data());  // dx̃ = dz W, then + the branch
    lora_backward_ref(dv.data(), xin, br.u.data(), T_, K, N, lw.r, lw.A.data(), lw.B.data(), scale(lw), g.A.data(),
                      g.B.data(), tmp.data());
    if (p_ > 0.f) {
      dropout_backward_ref(tmp.data(), T_ * K, p_, key, dx);
    } else {
      for (int64_t i = 0; i < T_ * K; ++i) dx[i] += tmp[i];
    }
  }

  // Block l: x [T, C] in, out [T, C] (may alias x), intermediates into s. out null: the backward's recomputation,
  // which skips what no backward reads (a dense MLP's down-projection product and the residual sum).
  void block_fwd(int64_t l, const float* x, float* out, BlockActs& s) const {
    const QwenLayerWeights& L = w_.layers[l];
    const int64_t C = c_.hidden_size, I = c_.intermediate_size, H = c_.num_heads, Hkv = c_.num_kv_heads, D = c_.head_dim;
    const float eps = c_.rms_norm_eps;
    s.n1.resize(T_ * C);
    rmsnorm_forward_ref(x, T_, C, L.input_norm.data, L.input_norm.dtype, eps, s.n1.data());
    s.q.resize(T_ * H * D);
    s.k.resize(T_ * Hkv * D);
    s.v.resize(T_ * Hkv * D);
    linear_fwd(l, 0, s.n1.data(), L.q_bias, s.q.data(), &s.br[0]);
    linear_fwd(l, 1, s.n1.data(), L.k_bias, s.k.data(), &s.br[1]);
    linear_fwd(l, 2, s.n1.data(), L.v_bias, s.v.data(), &s.br[2]);
    if (c_.qk_norm) {
      s.qpre = s.q;
      s.kpre = s.k;
      rmsnorm_forward_ref(s.qpre.data(), T_ * H, D, L.q_norm.data, L.q_norm.dtype, eps, s.q.data());
      rmsnorm_forward_ref(s.kpre.data(), T_ * Hkv, D, L.k_norm.data, L.k_norm.dtype, eps, s.k.data());
    }
    rope_forward_ref(s.q.data(), T_, H, D, b_.positions.data(), c_.rope);
    rope_forward_ref(s.k.data(), T_, Hkv, D, b_.positions.data(), c_.rope);
    s.a.resize(T_ * H * D);
    s.lse.resize(T_ * H);
    attention_forward_ref(s.q.data(), s.k.data(), s.v.data(), b_.cu_seqlens.data(), b_.num_seqs(), H, Hkv, D, s.a.data(),
                          s.lse.data(), opt_.bf16_matmul);
    s.h1.resize(T_ * C);
    linear_fwd(l, 3, s.a.data(), TensorView{}, s.h1.data(), &s.br[3]);
    for (int64_t i = 0; i < T_ * C; ++i) s.h1[i] += x[i];
    s.n2.resize(T_ * C);
    rmsnorm_forward_ref(s.h1.data(), T_, C, L.post_norm.data, L.post_norm.dtype, eps, s.n2.data());
    if (c_.is_moe_layer(l)) {  // MLP targets adapt each expert (LoraAdapter::expert_at)
      std::vector<float> mlp(T_ * C);
      const MoeLora ml = moe_lora(l, nullptr);
      moe_block_forward(c_, L.moe, s.n2.data(), T_, mlp.data(), nullptr, &s.moe, &ml);  // y feeds ∂L/∂w: all run
      if (out != nullptr)
        for (int64_t i = 0; i < T_ * C; ++i) out[i] = s.h1[i] + mlp[i];
      return;
    }
    s.gate.resize(T_ * I);
    s.up.resize(T_ * I);
    s.act.resize(T_ * I);
    linear_fwd(l, 4, s.n2.data(), TensorView{}, s.gate.data(), &s.br[4]);
    linear_fwd(l, 5, s.n2.data(), TensorView{}, s.up.data(), &s.br[5]);
    swiglu_forward_ref(s.gate.data(), s.up.data(), T_ * I, s.act.data());
    if (out == nullptr) return linear_fwd(l, 6, s.act.data(), TensorView{}, nullptr, &s.br[6]);
    std::vector<float> mlp(T_ * C);
    linear_fwd(l, 6, s.act.data(), TensorView{}, mlp.data(), &s.br[6]);
    for (int64_t i = 0; i < T_ * C; ++i) out[i] = s.h1[i] + mlp[i];
  }

  // dx [T, C] = ∂L/∂x of block l given dout (dx may alias dout).
  void block_bwd(int64_t l, const float* x, const BlockActs& s, const float* dout, float* dx, LoraAdapter* grads) const {
    const QwenLayerWeights& L = w_.layers[l];
    const int64_t C = c_.hidden_size, I = c_.intermediate_size, H = c_.num_heads, Hkv = c_.num_kv_heads, D = c_.head_dim;
    const float eps = c_.rms_norm_eps;
    std::vector<float> tmp;
    std::vector<float> dn2(T_ * C, 0.f);
    if (c_.is_moe_layer(l)) {
      const MoeLora ml = moe_lora(l, grads);
      moe_block_backward(c_, L.moe, s.moe, T_, dout, dn2.data(), &ml);
    } else {
      std::vector<float> dact(T_ * I, 0.f), dgate(T_ * I), dup(T_ * I);
      linear_bwd(l, 6, dout, s.act.data(), s.br[6], dact.data(), grads, tmp);
      swiglu_backward_ref(dact.data(), s.gate.data(), s.up.data(), T_ * I, dgate.data(), dup.data());
      linear_bwd(l, 4, dgate.data(), s.n2.data(), s.br[4], dn2.data(), grads, tmp);
      linear_bwd(l, 5, dup.data(), s.n2.data(), s.br[5], dn2.data(), grads, tmp);
    }
    std::vector<float> dh1(T_ * C);
    rmsnorm_backward_ref(dn2.data(), s.h1.data(), T_, C, L.post_norm.data, L.post_norm.dtype, eps, dh1.data());
    for (int64_t i = 0; i < T_ * C; ++i) dh1[i] += dout[i];

    std::vector<float> da(T_ * H * D, 0.f);
    linear_bwd(l, 3, dh1.data(), s.a.data(), s.br[3], da.data(), grads, tmp);
    std::vector<float> dq(T_ * H * D), dk(T_ * Hkv * D), dv(T_ * Hkv * D);
    attention_backward_ref(da.data(), s.q.data(), s.k.data(), s.v.data(), s.a.data(), s.lse.data(), b_.cu_seqlens.data(),
                           b_.num_seqs(), H, Hkv, D, dq.data(), dk.data(), dv.data(), opt_.bf16_matmul);
    rope_backward_ref(dq.data(), T_, H, D, b_.positions.data(), c_.rope);
    rope_backward_ref(dk.data(), T_, Hkv, D, b_.positions.data(), c_.rope);
    if (c_.qk_norm) {
      rmsnorm_backward_ref(dq.data(), s.qpre.data(), T_ * H, D, L.q_norm.data, L.q_norm.dtype, eps, dq.data());
      rmsnorm_backward_ref(dk.data(), s.kpre.data(), T_ * Hkv, D, L.k_norm.data, L.k_norm.dtype, eps, dk.data());
    }
    std::vector<float> dn1(T_ * C, 0.f);
    linear_bwd(l, 0, dq.data(), s.n1.data(), s.br[0], dn1.data(), grads, tmp);
    linear_bwd(l, 1, dk.data(), s.n1.data(), s.br[1], dn1.data(), grads, tmp);
    linear_bwd(l, 2, dv.data(), s.n1.data(), s.br[2], dn1.data(), grads, tmp);
    rmsnorm_backward_ref(dn1.data(), x, T_, C, L.input_norm.data, L.input_norm.dtype, eps, dx);
    for (int64_t i = 0; i < T_ * C; ++i) dx[i] += dh1[i];
  }

  LoraStepResult run(const std::vector<int32_t>& targets, LoraAdapter* grads, std::vector<float>* logits_out) {
    const int64_t C = c_.hidden_size, V = c_.vocab_size, Lc = c_.num_layers;
    QWENQ_CHECK(static_cast<int64_t>(targets.size()) == T_ || logits_out,
                "lora_loss_and_grad: " << targets.size() << " targets for " << T_ << " tokens");
    // Forward: block inputs kept (checkpointing) or every block's intermediates.
    std::vector<std::vector<float>> xs(Lc + 1);
    m_.embed_batch(b_, &xs[0]);
    if (opt_.train && opt_.neftune_half_width > 0.f)
      uniform_noise_add_ref(xs[0].data(), T_ * C, opt_.neftune_half_width, noise_key(opt_.dropout_seed));
    round_checkpoint(&xs[0]);
    std::vector<BlockActs> kept(opt_.checkpointing ? 0 : Lc);
    BlockActs scratch;
    for (int64_t l = 0; l < Lc; ++l) {
      xs[l + 1].resize(T_ * C);
      block_fwd(l, xs[l].data(), xs[l + 1].data(), opt_.checkpointing ? scratch : kept[l]);
      round_checkpoint(&xs[l + 1]);
      if (opt_.checkpointing && l + 1 < Lc && !grads) xs[l].clear();  // inference: only the current input is needed
    }
    std::vector<float> hidden(T_ * C);
    rmsnorm_forward_ref(xs[Lc].data(), T_, C, w_.final_norm.data, w_.final_norm.dtype, c_.rms_norm_eps, hidden.data());
    if (logits_out) {
      logits_out->resize(T_ * V);
      lm_head_forward(w_, hidden.data(), T_, logits_out->data());
      return {};
    }
    if (!opt_.score_rows.empty()) return score_head(hidden, xs, kept, scratch, grads);
    LoraStepResult res;
    // Only the rows whose target counts reach the lm_head: an SFT batch's masked prompt tokens and each sequence's
    // last token have no loss, so no logits. Their hidden rows are gathered (R of T), and dhidden gets the R rows'
    // gradients back, zero elsewhere. Each row's logits are its own, so the loss and the gradients are the full
    // head's up to the GEMM's summation order.
    cross_entropy_count_targets("lora_loss_and_grad", T_, V, targets.data());  // names a bad target's batch row
    std::vector<int64_t> scored;
    for (int64_t t = 0; t < T_; ++t)
      if (targets[t] != kIgnoreIndex) scored.push_back(t);
    const int64_t R = static_cast<int64_t>(scored.size());
    std::vector<float> hk(static_cast<size_t>(R * C));
    std::vector<int32_t> tk(static_cast<size_t>(R));
    for (int64_t i = 0; i < R; ++i) {
      std::copy_n(hidden.data() + scored[i] * C, C, hk.data() + i * C);
      tk[i] = targets[scored[i]];
    }
    const float head_scale = static_cast<float>(opt_.logit_scale);
    if (head_scale != 1.f)
      for (float& v : hk) v *= head_scale;  // (c·h) Wᵀ = c·z
    std::vector<float> row_scale;  // a sequence objective's per-row weights
    QWENQ_CHECK(!(opt_.sequence_objective && opt_.token_objective), "lora_loss_and_grad: a sequence and a token objective");
    if (!grads || opt_.sequence_objective || opt_.token_objective) {  // the loss alone (lm_head_nll: a GGUF table
                                                                      // dequantized once)
      std::vector<float> nll(static_cast<size_t>(R));
      res.counted = lm_head_nll(w_, hk.data(), R, tk.data(), nll.data());
      for (float v : nll) res.nll_sum += v;
      QWENQ_CHECK(std::isfinite(res.nll_sum), "lora_loss_and_grad: the loss is not finite");
      res.seq_nll = sequence_nll_sums(nll.data(), b_.cu_seqlens, scored);
      res.row_nll = std::move(nll);
      if (!grads) return res;
      if (opt_.token_objective) {
        const std::vector<double> d = opt_.token_objective(res.row_nll);
        QWENQ_CHECK(d.size() == res.row_nll.size(), "token objective: " << d.size() << " derivatives for "
                                                                        << res.row_nll.size() << " counted targets");
        row_scale.resize(d.size());
        for (size_t i = 0; i < d.size(); ++i) {
          QWENQ_CHECK(std::isfinite(d[i]), "token objective: the derivative of counted target " << i << " is " << d[i]);
          row_scale[i] = static_cast<float>(d[i]);
        }
      } else {
        row_scale = sequence_row_scales(opt_.sequence_objective(res.seq_nll), b_.cu_seqlens, scored);
      }
    }
    // Loss over chunks of the scored rows; each chunk's dlogits goes into their dhidden at once.
    std::vector<float> dk(static_cast<size_t>(R * C), 0.f);
    const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(R, logits_block_rows(V)));
    std::vector<float> lg(chunk * V), nll(static_cast<size_t>(R));
    for (int64_t r0 = 0; r0 < R; r0 += chunk) {
      const int64_t rows = std::min(chunk, R - r0);
      if (w_.lm_head_q) {  // a GGUF table
        lm_head_forward(w_, hk.data() + r0 * C, rows, lg.data());
      } else {
        base_forward(hk.data() + r0 * C, rows, C, w_.lm_head.data, w_.lm_head.dtype, V, nullptr, DType::F32, lg.data());
      }
      const int64_t counted = cross_entropy_fused_ref(lg.data(), rows, V, tk.data() + r0,
                                                      static_cast<float>(opt_.grad_scale), nll.data() + r0,
                                                      row_scale.empty() ? nullptr : row_scale.data() + r0);
      if (row_scale.empty()) {  // else the first pass counted
        res.counted += counted;
        for (int64_t i = 0; i < rows; ++i) res.nll_sum += nll[r0 + i];
      }
      base_backward_input(lg.data(), rows, V, w_.lm_head.data, w_.lm_head.dtype, C, dk.data() + r0 * C);
    }
    QWENQ_CHECK(std::isfinite(res.nll_sum), "lora_loss_and_grad: the loss is not finite");
    if (row_scale.empty()) {
      res.seq_nll = sequence_nll_sums(nll.data(), b_.cu_seqlens, scored);
      res.row_nll = std::move(nll);
    }
    if (head_scale != 1.f)
      for (float& v : dk) v *= head_scale;  // ∂(c·h)/∂h = c
    std::vector<float> dhidden(T_ * C, 0.f);
    for (int64_t i = 0; i < R; ++i) std::copy_n(dk.data() + i * C, C, dhidden.data() + scored[i] * C);
    backward_from(dhidden, xs, kept, scratch, grads);
    return res;
  }

  // The backward from ∂L/∂hidden (the final norm's output) through the final norm and every block.
  void backward_from(const std::vector<float>& dhidden, std::vector<std::vector<float>>& xs, std::vector<BlockActs>& kept,
                     BlockActs& scratch, LoraAdapter* grads) {
    const int64_t C = c_.hidden_size, Lc = c_.num_layers;
    std::vector<float> d(T_ * C);
    rmsnorm_backward_ref(dhidden.data(), xs[Lc].data(), T_, C, w_.final_norm.data, w_.final_norm.dtype, c_.rms_norm_eps,
                         d.data());
    for (int64_t l = Lc - 1; l >= 0; --l) {
      const BlockActs* acts = opt_.checkpointing ? nullptr : &kept[l];
      if (opt_.checkpointing) {
        block_fwd(l, xs[l].data(), nullptr, scratch);  // recompute the intermediates
        acts = &scratch;
      }
      block_bwd(l, xs[l].data(), *acts, d.data(), d.data(), grads);
      xs[l + 1].clear();
    }
  }

  // A sequence classifier's head (LoraStepOptions::score_rows), W = score [Cl, H] (Cl labels: 1 for a reward model):
  // z_jc = h[row_j] · W[c] (sums in double), scores row-major [sequence, label]; then ∂L/∂h[row_j] = Σ_c ∂L/∂z_jc ·
  // W[c] and ∂L/∂W[c] += Σ_j ∂L/∂z_jc · h[row_j].
  LoraStepResult score_head(const std::vector<float>& hidden, std::vector<std::vector<float>>& xs,
                            std::vector<BlockActs>& kept, BlockActs& scratch, LoraAdapter* grads) {
    const int64_t C = c_.hidden_size;
    QWENQ_CHECK(ad_.config().seq_cls(), "lora_loss_and_grad: score rows given for an adapter without a score head");
    QWENQ_CHECK(static_cast<int64_t>(opt_.score_rows.size()) == b_.num_seqs(),
                "lora_loss_and_grad: " << opt_.score_rows.size() << " score rows for " << b_.num_seqs() << " sequences");
    const int64_t labels = ad_.config().num_labels;
    const float* w = ad_.score().data();
    LoraStepResult res;
    for (size_t j = 0; j < opt_.score_rows.size(); ++j) {
      const int64_t row = opt_.score_rows[j];
      QWENQ_CHECK(row >= b_.cu_seqlens[j] && row < b_.cu_seqlens[j + 1],
                  "lora_loss_and_grad: score row " << row << " is outside sequence " << j);
      for (int64_t c = 0; c < labels; ++c) {
        double r = 0;
        for (int64_t k = 0; k < C; ++k) r += static_cast<double>(hidden[row * C + k]) * w[c * C + k];
        res.scores.push_back(r);
      }
    }
    if (!grads) return res;
    QWENQ_CHECK(opt_.score_objective, "lora_loss_and_grad: score rows without a score objective");
    const std::vector<double> d = opt_.score_objective(res.scores);
    QWENQ_CHECK(d.size() == res.scores.size(), "score objective: " << d.size() << " derivatives for " << res.scores.size()
                                                                   << " scores");
    std::vector<float> dhidden(T_ * C, 0.f);
    float* dw = grads->score().data();
    for (size_t j = 0; j < opt_.score_rows.size(); ++j) {
      const int64_t row = opt_.score_rows[j];
      for (int64_t c = 0; c < labels; ++c) {
        const double djc = d[j * static_cast<size_t>(labels) + static_cast<size_t>(c)];
        QWENQ_CHECK(std::isfinite(djc), "score objective: the derivative of sequence " << j << "'s score " << c
                                                                                      << " is " << djc);
        const float dj = static_cast<float>(djc);
        for (int64_t k = 0; k < C; ++k) {
          dhidden[row * C + k] += dj * w[c * C + k];
          dw[c * C + k] += dj * hidden[row * C + k];
        }
      }
    }
    backward_from(dhidden, xs, kept, scratch, grads);
    return res;
  }

 private:
  // A block input as kept: rounded to bf16 in place (the values stay fp32, now exactly representable in bf16),
  // bit for bit what the GPU's f32_to_bf16_cuda stores; nothing with bf16_checkpoints off.
  void round_checkpoint(std::vector<float>* x) const {
    if (!opt_.bf16_checkpoints) return;
    bf16_round_inplace(x->data(), x->size());
  }
  // The dropout mask of Linear t (table order) of layer l in this step (kernels/dropout_mask.h); the GPU trainer
  // uses the same keys.
  uint64_t mask_key(int64_t l, int t) const { return dropout_key(opt_.dropout_seed, l, t); }
  // The experts' adapters of MoE layer l (their masks: expert_dropout_key of the same seed).
  MoeLora moe_lora(int64_t l, LoraAdapter* grads) const {
    return MoeLora{&ad_, l, p_, opt_.dropout_seed, grads, opt_.dora_norms_from};
  }
  const QwenModel& m_;
  const QwenConfig& c_;
  const QwenWeights& w_;
  const LoraAdapter& ad_;
  const PackedBatch& b_;
  LoraStepOptions opt_;
  int64_t T_;
  float p_ = 0.f;  // the branch's dropout (each Linear's scaling is its LoraWeights::scaling)
};

}  // namespace

uint64_t micro_batch_dropout_seed(uint64_t run_seed, int64_t step, int64_t micro) {
  return dropout_mix64(dropout_mix64(dropout_mix64(run_seed) + static_cast<uint64_t>(step)) + static_cast<uint64_t>(micro));
}

std::vector<double> sequence_nll_sums(const float* nll, const std::vector<int32_t>& cu_seqlens,
                                      const std::vector<int64_t>& rows) {
  const size_t n = cu_seqlens.empty() ? 0 : cu_seqlens.size() - 1;
  std::vector<double> sums(n, 0.0);
  size_t j = 0;
  for (size_t i = 0; i < rows.size(); ++i) {  // rows ascend, so the sequence index only grows
    while (j + 1 < n && rows[i] >= cu_seqlens[j + 1]) ++j;
    sums[j] += nll[i];
  }
  return sums;
}

std::vector<float> sequence_row_scales(const std::vector<double>& dS, const std::vector<int32_t>& cu_seqlens,
                                       const std::vector<int64_t>& rows) {
  const size_t n = cu_seqlens.empty() ? 0 : cu_seqlens.size() - 1;
  QWENQ_CHECK(dS.size() == n, "sequence objective: " << dS.size() << " derivatives for a batch of " << n
                                                     << " sequences");
  for (size_t j = 0; j < n; ++j)
    QWENQ_CHECK(std::isfinite(dS[j]), "sequence objective: the derivative of sequence " << j << " is " << dS[j]);
  std::vector<float> scale(rows.size());
  size_t j = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    while (j + 1 < n && rows[i] >= cu_seqlens[j + 1]) ++j;
    scale[i] = static_cast<float>(dS[j]);
  }
  return scale;
}

LoraDims lora_dims_of(const QwenConfig& c) {
  LoraDims d;
  d.moe_layer = c.moe_layer;
  d.num_experts = c.num_experts;
  d.moe_intermediate_size = c.moe_intermediate_size;
  d.shared_expert_intermediate_size = c.shared_expert_intermediate_size;
  d.hidden_size = c.hidden_size;
  d.intermediate_size = c.intermediate_size;
  d.q_dim = c.q_dim();
  d.kv_dim = c.kv_dim();
  d.num_layers = c.num_layers;
  return d;
}

const LinearWeight& slot_linear(const QwenWeights& w, const LoraSlot& sl) {
  const QwenLayerWeights& L = w.layers.at(static_cast<size_t>(sl.layer));
  if (sl.expert == kNoExpert) return layer_linear(L, static_cast<int>(sl.target));
  return expert_member(sl.expert < 0 ? L.moe.shared : L.moe.experts.at(static_cast<size_t>(sl.expert)),
                       moe_expert_index(sl.target));
}

std::vector<float> dora_row_norms(const LinearWeight& w, const LoraWeights& lw, float s) {
  return dora_row_norms(WeightRef(w, false), w.N, w.K, lw, s);
}

void dora_combine(const float* m, const float* n, const float* z, const float* v, int64_t rows, int64_t N, float* y) {
  std::vector<float> g(static_cast<size_t>(N));
  for (int64_t j = 0; j < N; ++j) g[j] = m[j] / n[j];
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t j = 0; j < N; ++j) y[t * N + j] += (g[j] - 1.f) * z[t * N + j] + g[j] * v[t * N + j];
  }
}

void dora_split_grad(const float* m, const float* n, const float* z, const float* v, const float* dy, int64_t rows,
                     int64_t N, float* dm, float* dz, float* dv) {
  std::vector<float> g(static_cast<size_t>(N));
  std::vector<double> sum(static_cast<size_t>(N), 0.0);  // Σ_t dy·(z + v), t ascending
  for (int64_t j = 0; j < N; ++j) g[j] = m[j] / n[j];
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t j = 0; j < N; ++j) {
      const int64_t i = t * N + j;
      sum[j] += static_cast<double>(dy[i]) * (z[i] + v[i]);
      dz[i] = (g[j] - 1.f) * dy[i];
      dv[i] = g[j] * dy[i];
    }
  }
  for (int64_t j = 0; j < N; ++j) dm[j] += static_cast<float>(sum[j] / n[j]);
}

void init_dora_magnitudes(const QwenModel& model, LoraAdapter* adapter) {
  QWENQ_CHECK(adapter->use_dora(), "init_dora_magnitudes: the adapter does not use DoRA");
  for (size_t i = 0; i < adapter->slots().size(); ++i) {  // every slot, each expert's of a MoE layer too
    LoraWeights& lw = adapter->weights(i);
    lw.m = dora_row_norms(slot_linear(model.weights(), adapter->slots()[i]), lw, static_cast<float>(lw.scaling));
  }
}

LoraStepResult lora_loss_and_grad(const QwenModel& model, const LoraAdapter& adapter, const PackedBatch& batch,
                                  const std::vector<int32_t>& targets, LoraAdapter* grads, const LoraStepOptions& opt) {
  const QwenConfig& c = model.config();
  const LoraDims& d = adapter.dims();
  QWENQ_CHECK(d.hidden_size == c.hidden_size && d.intermediate_size == c.intermediate_size && d.q_dim == c.q_dim() &&
                  d.kv_dim == c.kv_dim() && d.num_layers == c.num_layers,
              "the adapter was made for another base model (hidden " << d.hidden_size << ", intermediate "
                  << d.intermediate_size << ", " << d.num_layers << " layers; the model has " << c.hidden_size << ", "
                  << c.intermediate_size << ", " << c.num_layers << ")");
  QWENQ_CHECK(batch.num_tokens() > 0, "lora_loss_and_grad: empty batch");
  if (grads) require_dense_tables(model.weights(), "LoRA training");  // the backward reads the lm_head in place
  return Runner(model, adapter, batch, opt).run(targets, grads, nullptr);
}

std::vector<float> lora_forward_logits(const QwenModel& model, const LoraAdapter& adapter, const PackedBatch& batch) {
  LoraStepOptions opt;
  opt.train = false;
  opt.bf16_checkpoints = false;  // the adapted model itself (what a merged model or PEFT computes)
  std::vector<float> logits;
  Runner(model, adapter, batch, opt).run({}, nullptr, &logits);
  return logits;
}

}  // namespace qwenq
