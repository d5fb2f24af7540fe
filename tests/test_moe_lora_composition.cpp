// The GPU LoRA trainer's mixture-of-experts layer (trainer/lora_model_cuda.cpp: moe_fwd, moe_bwd, lin_fwd, lin_bwd),
// composed on the CPU from its kernels' twins, step for step and buffer for buffer (the same in-place uses: an
// expert's dact over its act, dgate over act and dup over up, the experts' dx rows over their output rows y, the
// shared expert's dx over its dy), against the CPU block with the same adapters (moe_block_forward and
// moe_block_backward with a MoeLora), the oracle (itself checked against PyTorch autograd through transformers' MoE
// module in tests/oracle/test_lora_grad_oracle.py):
//   - the block output (moe_combine fuses each weighted add, the block rounds twice: kOutTol);
//   - dn (the same terms summed in another order: the routing weights' gradient goes through the host's
//     moe_router_backward from the combine order's ∂L/∂w mapped back to the routing order, MoeDispatch::choice);
//   - every expert's and the shared expert's dA, dB (the adapters' gradients, in another order of the same sums);
// on tiny Qwen3-MoE (no shared expert, norm_topk_prob) and Qwen2-MoE (shared expert with its gate) models, with and
// without LoRA dropout (the same counter-based masks, expert_dropout_key), LoRA and DoRA (the trainer's dora_fwd /
// dora_bwd on kernels/dora.h's twins: the row norms, z, v, dm compared too). Mapping ∂L/∂w back in the combine order
// instead, or leaving out the router's or the shared gate's term, fails every case.
// tests/gpu/test_lora_model_cuda.cpp runs the trainer itself on the GPU against the CPU trainer on the same models.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/files.h"
#include "core/rng.h"
#include "kernels/act.h"
#include "kernels/convert.h"
#include "kernels/dora.h"
#include "kernels/dropout.h"
#include "kernels/moe_combine.h"
#include "kernels/moe_combine_backward.h"
#include "lora/lora_adapter.h"
#include "lora/lora_linear.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_random.h"
#include "tests/support/test_training.h"
#include "trainer/lora_model.h"
#include "trainer/moe_block.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

// Relative to the tensor's largest |value|. The output: k + 1 fused multiply-adds against the block's two roundings
// each (a few fp32 ulps). dn and the gradients: the same fp32 sums in another order through a handful of ops (the
// CPU block accumulates dx per expert and adds the adapters' g A at the end, the GPU path adds them per Linear), each
// within some 1e-7 relative; 1e-5 leaves room and still catches any missing or misplaced term (O(1)).
constexpr double kOutTol = 1e-6;
constexpr double kGradTol = 1e-5;

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, static_cast<double>(std::fabs(x)));
  return m;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  const double scale = std::max(max_abs(want), 1e-30);
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - want[i]) / scale;
    if (!(d <= worst)) worst = d, at = i;  // NaN counts as worst
  }
  EXPECT_LE(worst, tol) << what << ": element " << at << " is " << got[at] << ", want " << want[at];
}

// The trainer's Lin and its two passes, on the CPU: lin_fwd and lin_bwd in the same order of operations.
struct Emu {
  const LoraAdapter* a = nullptr;
  LoraAdapter* grads = nullptr;
  int64_t layer = 0;
  float s = 1.f, p = 0.f;
  uint64_t seed = 0;
  std::vector<float> tmp, scratch, g;  // the trainer's tmp (dropout), the accumulate scratch (mtmp), g = s dy B

  // DoRA: each expert Linear's z, v [rows, N] and n [N] from its forward, by (expert, which) (the trainer's DoraZ /
  // DoraV columns and norms array).
  std::map<std::pair<int64_t, int>, std::vector<float>> z, v, n;

  struct Lin {
    const LinearWeight* W;
    const LoraWeights* w;  // null: not adapted
    LoraWeights* dw;
    uint64_t key;
    float* u;
    std::pair<int64_t, int> id;
  };
  Lin lin(int64_t e, int which, const LinearWeight& W, float* u) {
    const LoraTarget t = which == 0 ? LoraTarget::GateProj : which == 1 ? LoraTarget::UpProj : LoraTarget::DownProj;
    const bool has = a->has_expert(layer, e, t);
    return Lin{&W, has ? &a->expert_at(layer, e, t) : nullptr, has ? &grads->expert_at(layer, e, t) : nullptr,
               expert_dropout_key(seed, layer, e, which), u, {e, which}};
  }
  // dora_fwd of the trainer: n from the base and A, B; z = x̃ Wᵀ (x Wᵀ itself without dropout, y = z); v = s·u Bᵀ;
  // y += (g − 1) z + g v.
  void dora_fwd(const Lin& f, const float* x, int64_t rows, float* y) {
    const int64_t N = f.w->N, K = f.w->K;
    std::vector<float>& nn = n[f.id];
    std::vector<float>& zz = z[f.id];
    std::vector<float>& vv = v[f.id];
    nn.resize(static_cast<size_t>(N));
    DoraBaseWeight W;
    W.dense = f.W->dense.data;
    W.dtype = f.W->dense.dtype;
    dora_row_norms_ref(W, N, K, f.w->A.data(), f.w->B.data(), f.w->r, s, nn.data());
    zz.resize(static_cast<size_t>(rows * N));
    const float* xin = x;
    if (p > 0.f) {
      apply_linear(*f.W, x, rows, TensorView{}, y);
      xin = dropped(f, x, rows);
      apply_linear(*f.W, xin, rows, TensorView{}, zz.data());
    } else {
      apply_linear(*f.W, x, rows, TensorView{}, zz.data());
      std::copy(zz.begin(), zz.end(), y);
    }
    vv.assign(static_cast<size_t>(rows * N), 0.f);
    lora_forward_ref(xin, rows, K, f.w->A.data(), f.w->B.data(), f.w->r, N, s, vv.data(), f.u);
    dora_combine_ref(f.w->m.data(), nn.data(), zz.data(), vv.data(), rows, N, y);
  }
  const float* dropped(const Lin& f, const float* x, int64_t rows) {
    tmp.resize(static_cast<size_t>(rows * f.w->K));
    dropout_forward_ref(x, rows * f.w->K, p, f.key, tmp.data());
    return tmp.data();
  }
  void fwd(const Lin& f, const float* x, int64_t rows, float* y) {
    if (f.w && !f.w->m.empty()) return dora_fwd(f, x, rows, y);
    apply_linear(*f.W, x, rows, TensorView{}, y);
    if (!f.w) return;
    const float* xin = p > 0.f ? dropped(f, x, rows) : x;
    lora_forward_ref(xin, rows, f.w->K, f.w->A.data(), f.w->B.data(), f.w->r, f.w->N, s, y, f.u);
  }
  void bwd(const Lin& f, const float* dy_in, const float* x, int64_t rows, float* dx, bool accumulate) {
    const int64_t N = f.W->N, K = f.W->K;
    // DoRA (dora_bwd): dm, dz, dv first; the adapter's gradients then take dv where LoRA takes dy, and dz W joins g A.
    const bool dora = f.w && !f.w->m.empty();
    std::vector<float> dz, dv;
    if (dora) {
      dz.resize(static_cast<size_t>(rows * N));
      dv.resize(static_cast<size_t>(rows * N));
      dora_split_grad_ref(f.w->m.data(), n[f.id].data(), z[f.id].data(), v[f.id].data(), dy_in, rows, N,
                          f.dw->m.data(), dz.data(), dv.data());
    }
    const float* dy = dora ? dv.data() : dy_in;  // the adapter's gradient input
    if (f.w) {
      const int64_t r = f.w->r;
      g.assign(static_cast<size_t>(rows * r), 0.f);
      for (int64_t t = 0; t < rows; ++t)  // g = s · dy B
        for (int64_t j = 0; j < r; ++j) {
          float acc = 0.f;
          for (int64_t n = 0; n < N; ++n) acc += dy[t * N + n] * f.w->B[n * r + j];
          g[t * r + j] = s * acc;
        }
      for (int64_t n = 0; n < N; ++n)  // dB += s · dyᵀ u
        for (int64_t j = 0; j < r; ++j) {
          float acc = 0.f;
          for (int64_t t = 0; t < rows; ++t) acc += dy[t * N + n] * f.u[t * r + j];
          f.dw->B[n * r + j] += s * acc;
        }
      const float* xin = p > 0.f ? dropped(f, x, rows) : x;
      for (int64_t j = 0; j < r; ++j)  // dA += gᵀ x̃
        for (int64_t c = 0; c < K; ++c) {
          float acc = 0.f;
          for (int64_t t = 0; t < rows; ++t) acc += g[t * r + j] * xin[t * K + c];
          f.dw->A[j * K + c] += acc;
        }
    }
    if (accumulate) {
      scratch.resize(static_cast<size_t>(rows * K));
      apply_linear_backward_input(*f.W, dy_in, rows, scratch.data());
      for (int64_t i = 0; i < rows * K; ++i) dx[i] += scratch[i];
    } else {
      apply_linear_backward_input(*f.W, dy_in, rows, dx);
    }
    if (!f.w) return;
    const int64_t r = f.w->r;
    std::vector<float> ga(static_cast<size_t>(rows * K), 0.f);  // g A (DoRA: dz W, then + g A)
    if (dora) apply_linear_backward_input(*f.W, dz.data(), rows, ga.data());
    for (int64_t t = 0; t < rows; ++t)
      for (int64_t j = 0; j < r; ++j)
        for (int64_t c = 0; c < K; ++c) ga[t * K + c] += g[t * r + j] * f.w->A[j * K + c];
    if (p > 0.f) {
      dropout_backward_ref(ga.data(), rows * K, p, f.key, dx);
    } else {
      for (int64_t i = 0; i < rows * K; ++i) dx[i] += ga[i];
    }
  }
};

struct Composed {
  std::vector<float> out, dn;
};

// moe_fwd then moe_bwd of trainer/lora_model_cuda.cpp, buffer for buffer, from the CPU twins. map_choice = false
// hands moe_router_backward ∂L/∂w in the combine order (the mistake the choice map exists to avoid).
Composed compose(const QwenConfig& c, const MoeWeights& m, Emu& emu, const std::vector<float>& n,
                 const std::vector<float>& dout, int64_t T, bool map_choice = true) {
  const int64_t C = c.hidden_size, E = c.num_experts, k = c.experts_per_token, R = T * k,
                Im = c.moe_intermediate_size, r = emu.a->uniform_rank();
  const bool shared = m.shared.gate.N > 0;
  const int64_t Is = shared ? m.shared.gate.N : 0;
  // moe_fwd
  std::vector<float> lg(T * E), gl(shared ? T : 0);
  apply_linear(m.router, n.data(), T, TensorView{}, lg.data());
  if (shared) apply_linear(m.shared_gate, n.data(), T, TensorView{}, gl.data());
  const MoeDispatch d = moe_dispatch(c, lg.data(), shared ? gl.data() : nullptr, T, true);
  std::vector<float> mx(R * C), my(R * C), mgate(R * Im), mup(R * Im), mact(R * Im), mu(3 * R * r);
  std::vector<float> sgate(T * Is), sup(T * Is), sact(T * Is), sy(shared ? T * C : 0), su(3 * T * r);
  embedding_gather_ref(n.data(), DType::F32, T, C, d.gather.data(), R, mx.data());
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = d.start[e], rows = d.start[e + 1] - r0;
    if (rows == 0) continue;
    const MoeExpertWeights& X = m.experts[e];
    float* xe = mx.data() + r0 * C;
    float *ge = mgate.data() + r0 * Im, *ue = mup.data() + r0 * Im, *ae = mact.data() + r0 * Im;
    emu.fwd(emu.lin(e, 0, X.gate, mu.data() + r0 * r), xe, rows, ge);
    emu.fwd(emu.lin(e, 1, X.up, mu.data() + (R + r0) * r), xe, rows, ue);
    swiglu_forward_ref(ge, ue, rows * Im, ae);
    emu.fwd(emu.lin(e, 2, X.down, mu.data() + (2 * R + r0) * r), ae, rows, my.data() + r0 * C);
  }
  if (shared) {
    emu.fwd(emu.lin(-1, 0, m.shared.gate, su.data()), n.data(), T, sgate.data());
    emu.fwd(emu.lin(-1, 1, m.shared.up, su.data() + T * r), n.data(), T, sup.data());
    swiglu_forward_ref(sgate.data(), sup.data(), T * Is, sact.data());
    emu.fwd(emu.lin(-1, 2, m.shared.down, su.data() + 2 * T * r), sact.data(), T, sy.data());
  }
  const int32_t* combine = d.combine.data();
  const float* sw = shared ? d.shared_gate.data() : nullptr;
  Composed res;
  res.out.resize(T * C);
  moe_combine_ref(my.data(), R, C, combine, d.weight.data(), T, k, shared ? sy.data() : nullptr, sw, res.out.data());
  // moe_bwd
  std::vector<float> mdy(R * C), mdw(R), ds(shared ? T * C : 0), dg(shared ? T : 0);
  moe_combine_backward_ref(dout.data(), my.data(), R, C, combine, d.weight.data(), T, k, shared ? sy.data() : nullptr,
                           sw, mdy.data(), mdw.data(), shared ? ds.data() : nullptr, shared ? dg.data() : nullptr);
  std::vector<float> dw(R), dr(T * E);
  for (int64_t i = 0; i < R; ++i) dw[map_choice ? d.choice[i] : i] = mdw[i];
  moe_router_backward(c, d.probs.data(), d.chosen.data(), d.routed.data(), dw.data(), T, dr.data());
  res.dn.assign(T * C, 0.f);
  float* dx = my.data();  // over y
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = d.start[e], rows = d.start[e + 1] - r0;
    if (rows == 0) continue;
    const MoeExpertWeights& X = m.experts[e];
    const float* xe = mx.data() + r0 * C;
    float *ge = mgate.data() + r0 * Im, *ue = mup.data() + r0 * Im, *ae = mact.data() + r0 * Im;
    emu.bwd(emu.lin(e, 2, X.down, mu.data() + (2 * R + r0) * r), mdy.data() + r0 * C, ae, rows, ae, false);
    swiglu_backward_ref(ae, ge, ue, rows * Im, ae, ue);
    emu.bwd(emu.lin(e, 0, X.gate, mu.data() + r0 * r), ae, xe, rows, dx + r0 * C, false);
    emu.bwd(emu.lin(e, 1, X.up, mu.data() + (R + r0) * r), ue, xe, rows, dx + r0 * C, true);
  }
  moe_scatter_add_ref(dx, R, C, combine, T, k, res.dn.data());
  std::vector<float> tmp(T * C);
  apply_linear_backward_input(m.router, dr.data(), T, tmp.data());
  for (int64_t i = 0; i < T * C; ++i) res.dn[i] += tmp[i];
  if (!shared) return res;
  emu.bwd(emu.lin(-1, 2, m.shared.down, su.data() + 2 * T * r), ds.data(), sact.data(), T, sact.data(), false);
  swiglu_backward_ref(sact.data(), sgate.data(), sup.data(), T * Is, sact.data(), sup.data());
  float* sdx = ds.data();  // over ds
  emu.bwd(emu.lin(-1, 0, m.shared.gate, su.data()), sact.data(), n.data(), T, sdx, false);
  emu.bwd(emu.lin(-1, 1, m.shared.up, su.data() + T * r), sup.data(), n.data(), T, sdx, true);
  for (int64_t i = 0; i < T * C; ++i) res.dn[i] += sdx[i];
  apply_linear_backward_input(m.shared_gate, dg.data(), T, tmp.data());
  for (int64_t i = 0; i < T * C; ++i) res.dn[i] += tmp[i];
  return res;
}

// dora: every adapted Linear a DoRA layer, its magnitudes PEFT's start times factors in [0.8, 1.2].
LoraAdapter expert_adapter(const QwenModel& model, double dropout, bool dora) {
  LoraConfig lc;
  lc.r = 4;
  lc.alpha = 16;
  lc.dropout = dropout;
  lc.use_dora = dora;
  lc.target_modules = {"q_proj", "gate_proj", "up_proj", "down_proj"};
  LoraAdapter a(lora_dims_of(model.config()), lc);
  a.init_peft(3);
  Rng rng(4);
  for (size_t i = 0; i < a.slots().size(); ++i) {
    for (float& b : a.weights(i).B) b = 0.3f * static_cast<float>(rng.normal());  // every gradient flows
  }
  if (dora) test::perturbed_dora_magnitudes(model, &a, 5);
  return a;
}

TEST(MoeLoraComposition, GpuTrainerStepsAreTheCpuBlock) {
  for (const char* preset : {"tiny-moe", "tiny-moe-shared"}) {
    const std::string dir =
        test::make_random_model(path_join(test::scratch_dir(), preset), preset, DType::F32, 41);
    const QwenModel model(dir);
    const QwenConfig& c = model.config();
    int64_t layer = -1;
    for (int64_t l = 0; l < c.num_layers && layer < 0; ++l)
      if (c.is_moe_layer(l)) layer = l;
    ASSERT_GE(layer, 0) << preset;
    const MoeWeights& m = model.weights().layers[static_cast<size_t>(layer)].moe;
    const int64_t T = 29, C = c.hidden_size;
    const std::vector<float> n = test::normal_vector(T * C, 42), dout = test::normal_vector(T * C, 43);
    for (int variant = 0; variant < 4; ++variant) {
      const double p = variant % 2 ? 0.1 : 0.0;
      const bool dora = variant >= 2;
      SCOPED_TRACE(::testing::Message() << preset << " layer " << layer << " dropout " << p << (dora ? " DoRA" : ""));
      const LoraAdapter a = expert_adapter(model, p, dora);
      // The oracle: the CPU block with the adapters.
      LoraAdapter want_g = test::zeros_like(a);
      MoeLora ml;
      ml.adapter = &a;
      ml.layer = layer;
      ml.dropout = static_cast<float>(p);
      ml.dropout_seed = 77;
      ml.grads = &want_g;
      MoeBlockActs acts;
      std::vector<float> want_out(T * C), want_dn(T * C, 0.f);
      moe_block_forward(c, m, n.data(), T, want_out.data(), nullptr, &acts, &ml);
      moe_block_backward(c, m, acts, T, dout.data(), want_dn.data(), &ml);
      // The GPU trainer's composition.
      LoraAdapter got_g = test::zeros_like(a);
      Emu emu;
      emu.a = &a;
      emu.grads = &got_g;
      emu.layer = layer;
      emu.s = static_cast<float>(a.uniform_scaling());
      emu.p = static_cast<float>(p);
      emu.seed = 77;
      const Composed got = compose(c, m, emu, n, dout, T);
      expect_close(got.out, want_out, kOutTol, "out");
      expect_close(got.dn, want_dn, kGradTol, "dn");
      int checked = 0;
      for (size_t i = 0; i < a.slots().size(); ++i) {
        if (a.slots()[i].expert == kNoExpert) continue;  // the attention's are not this layer's business
        if (a.slots()[i].layer != layer) continue;
        expect_close(got_g.weights(i).A, want_g.weights(i).A, kGradTol, a.slots()[i].path + " dA");
        expect_close(got_g.weights(i).B, want_g.weights(i).B, kGradTol, a.slots()[i].path + " dB");
        if (dora) expect_close(got_g.weights(i).m, want_g.weights(i).m, kGradTol, a.slots()[i].path + " dm");
        ++checked;
      }
      EXPECT_EQ(checked, 3 * (c.num_experts + (m.shared.gate.N > 0 ? 1 : 0)));
      // The choice map matters: ∂L/∂w handed over in the combine order moves dn (k > 1 in both presets).
      LoraAdapter wrong_g = test::zeros_like(a);
      emu.grads = &wrong_g;
      const Composed wrong = compose(c, m, emu, n, dout, T, /*map_choice=*/false);
      double worst = 0;
      for (int64_t i = 0; i < T * C; ++i) worst = std::max(worst, std::fabs(double(wrong.dn[i]) - want_dn[i]));
      EXPECT_GT(worst / max_abs(want_dn), 100 * kGradTol) << "the choice map changed nothing";
    }
  }
}

}  // namespace
}  // namespace qwenq
