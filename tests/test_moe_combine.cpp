// The GPU's mixture-of-experts evaluation, composed on the CPU from its kernels' twins: routing into index arrays
// (moe_dispatch), the routed rows gathered (embedding_gather_ref over the normalized activations), each expert's
// three Linears on its slice, the shared expert on every token, and moe_combine_ref. It must equal the CPU block
// (moe_block_forward), the oracle, on tiny Qwen3-MoE (no shared expert) and Qwen2-MoE (shared expert with its gate)
// models; the two differ only where the block multiplies and adds in two roundings and the combine fuses them
// (kCombineTol). Also moe_combine_ref against its formula written out, and its refusals.
// On the GPU: tests/gpu/test_moe_combine_cuda.cpp (moe_combine_cuda bit for bit), tests/gpu/test_model_cuda.cpp (whole
// MoE forwards).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/act.h"
#include "kernels/convert.h"
#include "kernels/moe_combine.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_random.h"
#include "trainer/moe_block.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

// Relative to the largest output: k + 1 terms each rounded once instead of twice (a few fp32 ulps).
constexpr double kCombineTol = 1e-6;

TEST(MoeCombine, RefIsTheFormula) {
  const int64_t R = 7, C = 5, T = 3, k = 2;
  const std::vector<float> y = test::normal_vector(R * C, 1), s = test::normal_vector(T * C, 2);
  const std::vector<int32_t> rows = {0, 4, 6, 1, 2, 5};
  const std::vector<float> w = {0.7f, 0.3f, 0.5f, 0.5f, 0.9f, 0.1f}, sw = {0.25f, 0.5f, 0.75f};
  std::vector<float> out(T * C), plain(T * C);
  moe_combine_ref(y.data(), R, C, rows.data(), w.data(), T, k, s.data(), sw.data(), out.data());
  moe_combine_ref(y.data(), R, C, rows.data(), w.data(), T, k, nullptr, nullptr, plain.data());
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t c = 0; c < C; ++c) {
      const float a = std::fma(w[t * k + 1], y[rows[t * k + 1] * C + c], std::fma(w[t * k], y[rows[t * k] * C + c], 0.f));
      EXPECT_EQ(plain[t * C + c], a) << t << " " << c;
      EXPECT_EQ(out[t * C + c], std::fma(sw[t], s[t * C + c], a)) << t << " " << c;
    }
  }
  const std::vector<int32_t> bad = {0, 4, 6, 7, 2, 5};
  test::expect_error([&] { moe_combine_ref(y.data(), R, C, bad.data(), w.data(), T, k, nullptr, nullptr, out.data()); },
                     {"moe_combine_ref", "row 7 of choice 1 of token 1", "the experts' 7 rows"});
  test::expect_error([&] { moe_combine_ref(y.data(), R, C, rows.data(), w.data(), T, k, s.data(), nullptr, out.data()); },
                     {"moe_combine_ref", "go together"});
  test::expect_error([&] { moe_combine_ref(y.data(), R, 0, rows.data(), w.data(), T, k, nullptr, nullptr, out.data()); },
                     {"moe_combine_ref", "bad shape"});
}

// out [T, C] of MoE layer l for n [T, C] as the GPU computes it, from the CPU twins.
std::vector<float> gpu_composition(const QwenConfig& c, const MoeWeights& m, const std::vector<float>& n, int64_t T) {
  const int64_t C = c.hidden_size, E = c.num_experts, k = c.experts_per_token, R = T * k;
  const bool shared = m.shared.gate.N > 0;
  std::vector<float> logits(T * E), g(shared ? T : 0);
  apply_linear(m.router, n.data(), T, TensorView{}, logits.data());
  if (shared) apply_linear(m.shared_gate, n.data(), T, TensorView{}, g.data());
  const MoeDispatch d = moe_dispatch(c, logits.data(), shared ? g.data() : nullptr, T);
  std::vector<float> xs(R * C), ys(R * C);
  embedding_gather_ref(n.data(), DType::F32, T, C, d.gather.data(), R, xs.data());
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = d.start[e], rows = d.start[e + 1] - r0;
    if (rows == 0) continue;
    const MoeExpertWeights& X = m.experts[e];
    std::vector<float> gate(rows * X.gate.N), up(rows * X.gate.N);
    apply_linear(X.gate, xs.data() + r0 * C, rows, TensorView{}, gate.data());
    apply_linear(X.up, xs.data() + r0 * C, rows, TensorView{}, up.data());
    swiglu_forward_ref(gate.data(), up.data(), rows * X.gate.N, gate.data());
    apply_linear(X.down, gate.data(), rows, TensorView{}, ys.data() + r0 * C);
  }
  std::vector<float> sy;
  if (shared) {
    const int64_t Is = m.shared.gate.N;
    std::vector<float> gate(T * Is), up(T * Is);
    sy.resize(T * C);
    apply_linear(m.shared.gate, n.data(), T, TensorView{}, gate.data());
    apply_linear(m.shared.up, n.data(), T, TensorView{}, up.data());
    swiglu_forward_ref(gate.data(), up.data(), T * Is, gate.data());
    apply_linear(m.shared.down, gate.data(), T, TensorView{}, sy.data());
  }
  std::vector<float> out(T * C);
  moe_combine_ref(ys.data(), R, C, d.combine.data(), d.weight.data(), T, k, shared ? sy.data() : nullptr,
                  shared ? d.shared_gate.data() : nullptr, out.data());
  return out;
}

TEST(MoeCombine, GpuCompositionIsTheCpuBlock) {
  for (const char* preset : {"tiny-moe", "tiny-moe-shared"}) {
    SCOPED_TRACE(preset);
    const std::string dir = test::make_random_model(test::scratch_dir() + "/moe-" + preset, preset, DType::F32, 9);
    const QwenModel model(dir);
    const QwenConfig& c = model.config();
    int checked = 0;
    for (int64_t l = 0; l < c.num_layers; ++l) {
      if (!c.is_moe_layer(l)) continue;
      const MoeWeights& m = model.weights().layers[l].moe;
      const int64_t T = 37;  // fewer tokens than experts x k would need for every expert to be chosen: some idle
      const std::vector<float> n = test::normal_vector(T * c.hidden_size, 100 + l);
      std::vector<float> want(T * c.hidden_size);
      moe_block_forward(c, m, n.data(), T, want.data());
      const std::vector<float> got = gpu_composition(c, m, n, T);
      double worst = 0, scale = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        worst = std::max(worst, std::fabs(double(got[i]) - want[i]));
        scale = std::max(scale, std::fabs(double(want[i])));
      }
      EXPECT_LE(worst, kCombineTol * scale) << "layer " << l << " (max |out| " << scale << ")";
      ++checked;
    }
    EXPECT_GT(checked, 0);
    EXPECT_EQ(c.shared_expert_intermediate_size > 0, std::string(preset) == "tiny-moe-shared");
  }
}

}  // namespace
}  // namespace qwenq
