// The host half of LoRA inference with the adapter unmerged (trainer/lora_inference.h, uploaded by
// trainer/lora_inference_cuda.h): the fp32 arena every adapted Linear reads its A and B from.
//   - Every targeted Linear of every layer has a slot with its shape, 16-byte aligned offsets and exactly its A and
//     B (bit for bit); the Linears the adapter does not target have none; the gaps are zero; the scaling is the
//     adapter's (alpha / r, rsLoRA alpha / √r).
//   - The arena's branch is the merge: for every adapted Linear of a dense and of a GPTQ (RTN, group 32) base,
//     x Wᵀ + lora_forward_ref(x, arena A, arena B, s) equals x W'ᵀ with W' the Linear of the model merged by
//     merge_adapter_in_memory (the CPU path the GPU must match), within kMergeRelTol; untargeted Linears of the merged
//     model are the base's, bit for bit. DoRA adapters (dense and GPTQ bases, a seeded bias on every Linear): the branch, then
//     kernels/dora.h's CPU twins (row norms of the base and the arena's A, B; g = m / n; y = g·y + (1 − g)·b), which
//     the GPU runs at attach and after each adapted Linear, equal the merged DoRA Linear.
//   - Refusals, each naming the adapter (source) and the tensor: dimensions of another model, an A or B of the wrong
//     size, a slot whose N/K/r differ from its Linear, a non-finite value.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/rng.h"
#include "kernels/dora.h"
#include "kernels/gemm.h"
#include "lora/lora_linear.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_training.h"
#include "trainer/lora_inference.h"
#include "trainer/lora_merge.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_model.h"
#include "trainer/random_model.h"

namespace qwenq {
namespace {

using test::error_of;

// x (W + sBA)ᵀ against x Wᵀ + s(xAᵀ)Bᵀ: fp32 reassociation of K + r terms per output, ~1e-7 relative; the bound
// is tests/test_lora_merge.cpp's for whole models.
constexpr double kMergeRelTol = 1e-5;
// The adapter must move each adapted Linear's output by far more than the tolerance, or the check proves nothing.
constexpr double kMinBranchEffect = 1e-2;

const char* kSource = "runs/adapter-under-test";

// PEFT's A, then B ~ 0.3·N(0, 1) so that the branch is not zero (alpha 8).
LoraAdapter random_adapter(const QwenConfig& c, std::vector<std::string> targets, bool rslora, int64_t r,
                           uint64_t seed) {
  return test::adapter_with_random_b(c, std::move(targets), r, 8, rslora, seed, 0.3f);
}

TEST(LoraInferenceLayout, EveryAdaptedLinearGetsItsAAndB) {
  const QwenModel model(test::make_tiny_model(test::scratch_dir() + "/m", 3));
  const QwenConfig& c = model.config();
  const LoraAdapter a = random_adapter(c, {"down_proj", "q_proj", "v_proj"}, /*rslora=*/true, 3, 11);
  const LoraInferenceLayout lay = lora_inference_layout(a, c, kSource);
  EXPECT_EQ(lay.rank, 3);
  EXPECT_EQ(lay.num_layers, c.num_layers);
  EXPECT_EQ(lay.scaling, static_cast<float>(8.0 / std::sqrt(3.0)));  // rsLoRA: alpha / √r
  ASSERT_EQ(lay.slots.size(), static_cast<size_t>(3 * c.num_layers));
  std::vector<bool> covered(lay.arena.size(), false);
  int64_t prev_end = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    for (const LoraTargetInfo& info : kLoraTargets) {
      SCOPED_TRACE("layer " + std::to_string(l) + " " + info.name);
      const LoraArenaSlot* sl = lay.find(l, info.target);
      if (!a.config().targets(info.target)) {
        EXPECT_EQ(sl, nullptr) << "an untargeted Linear has a branch";
        continue;
      }
      ASSERT_NE(sl, nullptr);
      const LoraShape shape = lora_target_shape(a.dims(), info.target);
      EXPECT_EQ(sl->N, shape.N);
      EXPECT_EQ(sl->K, shape.K);
      EXPECT_EQ(sl->r, 3);
      EXPECT_EQ(sl->a_off % kLoraArenaAlignFloats, 0);
      EXPECT_EQ(sl->b_off % kLoraArenaAlignFloats, 0);
      EXPECT_GE(sl->a_off, prev_end) << "slots out of order or overlapping";
      EXPECT_GE(sl->b_off, sl->a_off + sl->r * sl->K);
      prev_end = sl->b_off + sl->N * sl->r;
      ASSERT_LE(prev_end, static_cast<int64_t>(lay.arena.size()));
      const LoraWeights& w = a.at(l, info.target);
      EXPECT_TRUE(std::equal(w.A.begin(), w.A.end(), lay.arena.begin() + sl->a_off)) << "A";
      EXPECT_TRUE(std::equal(w.B.begin(), w.B.end(), lay.arena.begin() + sl->b_off)) << "B";
      std::fill(covered.begin() + sl->a_off, covered.begin() + sl->a_off + sl->r * sl->K, true);
      std::fill(covered.begin() + sl->b_off, covered.begin() + sl->b_off + sl->N * sl->r, true);
    }
  }
  EXPECT_LT(static_cast<int64_t>(lay.arena.size()) - prev_end, kLoraArenaAlignFloats);
  for (size_t i = 0; i < covered.size(); ++i) {
    if (!covered[i]) {
      ASSERT_EQ(lay.arena[i], 0.f) << "gap float " << i;
    }
  }
  EXPECT_EQ(lay.bytes(), static_cast<int64_t>(lay.arena.size() * 4));
  // The plain scaling without rsLoRA.
  const LoraAdapter plain = random_adapter(c, {"k_proj"}, false, 4, 12);
  EXPECT_EQ(lora_inference_layout(plain, c, kSource).scaling, 2.f);
}

// A mixture of experts (tiny Qwen2-MoE: 6 experts and a shared expert): the arena holds the adapter's slots in order,
// every expert's and the shared expert's Linear with its own width and exactly its A and B (find by expert), and an
// adapter for other expert widths is refused naming them.
TEST(LoraInferenceLayout, MixtureOfExpertsSlotsEveryExpert) {
  const QwenConfig c = qwen_preset("tiny-moe-shared");
  const LoraAdapter a = random_adapter(c, {"q_proj", "up_proj", "down_proj"}, false, 2, 13);
  const LoraInferenceLayout lay = lora_inference_layout(a, c, kSource);
  ASSERT_EQ(lay.slots.size(), a.slots().size());
  int64_t experts = 0;
  for (size_t i = 0; i < a.slots().size(); ++i) {
    const LoraSlot& ls = a.slots()[i];
    const LoraArenaSlot& sl = lay.slots[i];
    SCOPED_TRACE(ls.path);
    EXPECT_EQ(sl.layer, ls.layer);
    EXPECT_EQ(sl.target, ls.target);
    EXPECT_EQ(sl.expert, ls.expert);
    EXPECT_EQ(lay.find(ls.layer, ls.target, ls.expert), &sl);
    const LoraWeights& w = a.weights(i);
    EXPECT_EQ(sl.N, w.N);
    EXPECT_EQ(sl.K, w.K);
    if (ls.expert != kNoExpert) {
      ++experts;
      const int64_t width = ls.expert < 0 ? c.shared_expert_intermediate_size : c.moe_intermediate_size;
      EXPECT_EQ(ls.target == LoraTarget::DownProj ? sl.K : sl.N, width);
    }
    EXPECT_TRUE(std::equal(w.A.begin(), w.A.end(), lay.arena.begin() + sl.a_off)) << "A";
    EXPECT_TRUE(std::equal(w.B.begin(), w.B.end(), lay.arena.begin() + sl.b_off)) << "B";
  }
  EXPECT_EQ(experts, 2 * (c.num_experts + 1) * c.num_moe_layers());  // up and down of every expert and the shared one
  EXPECT_EQ(lay.find(0, LoraTarget::UpProj), nullptr) << "a MoE layer's up_proj is its experts'";
  QwenConfig other = c;
  other.moe_intermediate_size = 48;
  EXPECT_NE(error_of([&] { lora_inference_layout(a, other, kSource); })
                .find(std::string(kSource) + ": the LoRA adapter was made for another base model (6 experts of width 32"),
            std::string::npos);
}

// For every Linear of `model`: the arena's branch on top of the base equals the merged model's Linear.
void expect_branch_is_the_merge(const std::string& dir, const LoraAdapter& a, const std::string& what) {
  SCOPED_TRACE(what);
  QwenModel base(dir);
  QwenModel merged(dir);
  merge_adapter_in_memory(merged, a);
  const LoraInferenceLayout lay = lora_inference_layout(a, base.config(), kSource);
  constexpr int64_t M = 5;
  Rng rng(99);
  int checked = 0, dora_checked = 0;
  for (int64_t l = 0; l < base.config().num_layers; ++l) {
    for (const LoraTargetInfo& info : kLoraTargets) {
      SCOPED_TRACE("layer " + std::to_string(l) + " " + info.name);
      const LoraTargetSlot where = lora_target_slot(info.target);
      const LinearWeight& wb = base.linear_weight(l, where.group, where.index);
      const LinearWeight& wm = merged.linear_weight(l, where.group, where.index);
      const std::vector<float> Wb = wb.dequantize(), Wm = wm.dequantize();
      const LoraArenaSlot* sl = lay.find(l, info.target);
      if (sl == nullptr) {
        EXPECT_EQ(Wb, Wm) << "the merge changed an untargeted Linear";
        continue;
      }
      const int64_t N = wb.N, K = wb.K;
      std::vector<float> x(static_cast<size_t>(M * K)), y(static_cast<size_t>(M * N)), want(y.size()),
          u(static_cast<size_t>(M * sl->r));
      for (float& v : x) v = static_cast<float>(rng.normal());
      // A seeded bias on every Linear (the random bases' q/k/v biases are zero): DoRA's scaling must leave it out.
      std::vector<float> b(static_cast<size_t>(N));
      for (float& v : b) v = static_cast<float>(rng.normal());
      struct {
        const void* data;
        DType dtype;
      } const bias{b.data(), DType::F32};
      linear_forward_ref(x.data(), M, K, Wb.data(), DType::F32, N, bias.data, bias.dtype, y.data());
      const std::vector<float> y_base = y;
      lora_forward_ref(x.data(), M, K, lay.arena.data() + sl->a_off, lay.arena.data() + sl->b_off, sl->r, N,
                       lay.scaling, y.data(), u.data());
      if (sl->m_off >= 0) {  // DoRA: the GPU's gains from the base as stored (kernels/dora.h's CPU twins)
        DoraBaseWeight W;
        W.dense = Wb.data();  // the Q4 decoding of a packed base is kernels/dora.h's own test
        std::vector<float> n(static_cast<size_t>(N)), g(static_cast<size_t>(N));
        dora_row_norms_ref(W, N, K, lay.arena.data() + sl->a_off, lay.arena.data() + sl->b_off, sl->r, lay.scaling,
                           n.data());
        dora_gain_ref(lay.arena.data() + sl->m_off, n.data(), N, g.data());
        dora_scale_rows_ref(y.data(), M, N, g.data(), bias.data, bias.dtype);
        ++dora_checked;
      }
      linear_forward_ref(x.data(), M, K, Wm.data(), DType::F32, N, bias.data, bias.dtype, want.data());
      double mx = 0, err = 0, effect = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        mx = std::max(mx, static_cast<double>(std::fabs(want[i])));
        err = std::max(err, std::fabs(static_cast<double>(y[i]) - want[i]));
        effect = std::max(effect, std::fabs(static_cast<double>(y_base[i]) - want[i]));
      }
      EXPECT_LE(err, kMergeRelTol * mx) << "branch vs merged Linear";
      EXPECT_GE(effect, kMinBranchEffect * mx) << "the adapter hardly changes this Linear";
      ++checked;
    }
  }
  EXPECT_EQ(checked, static_cast<int>(lay.slots.size()));
  EXPECT_EQ(dora_checked, a.use_dora() ? checked : 0);
}

TEST(LoraInferenceLayout, TheBranchIsTheMergedLinearOnDenseAndGptqBases) {
  const std::string tmp = test::scratch_dir();
  const std::string dense = test::make_tiny_model(tmp + "/dense", 5), gptq = test::rtn_gptq_model(dense, tmp + "/gptq");
  const QwenConfig c = QwenModel(dense).config();
  ASSERT_FALSE(QwenModel(gptq).weights().layers[0].q.is_dense());
  const std::vector<std::string> all = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  expect_branch_is_the_merge(dense, random_adapter(c, all, false, 4, 21), "dense, all targets");
  expect_branch_is_the_merge(gptq, random_adapter(c, all, true, 8, 22), "gptq, all targets, rsLoRA r 8");
  expect_branch_is_the_merge(gptq, random_adapter(c, {"o_proj", "up_proj"}, false, 2, 23), "gptq, o and up");
  // DoRA: the branch, then y = g·y + (1 − g)·b with the gains the GPU computes at attach, is the merged DoRA Linear
  // (W' = g ⊙ (W + s·B A), bias kept).
  expect_branch_is_the_merge(dense, test::dora_with_random_b(QwenModel(dense), all, 4, 8, 24, 0.3f), "dense, DoRA");
  expect_branch_is_the_merge(gptq, test::dora_with_random_b(QwenModel(gptq), {"q_proj", "v_proj", "down_proj"}, 8,
                                                                 16, 25, 0.3f),
                             "gptq, DoRA on q, v, down");
}

TEST(LoraInferenceLayout, RefusesAnAdapterThatDoesNotFitNamingFileAndTensor) {
  const std::string tmp = test::scratch_dir();
  const QwenConfig c = QwenModel(test::make_tiny_model(tmp + "/m", 3)).config();
  const std::vector<std::string> targets = {"k_proj", "o_proj", "up_proj"};
  {  // another model's dimensions
    QwenConfig other = c;
    other.num_layers = c.num_layers + 1;
    const LoraAdapter a = random_adapter(other, targets, false, 2, 1);
    const std::string e = error_of([&] { lora_inference_layout(a, c, kSource); });
    EXPECT_NE(e.find(std::string(kSource) + ": the LoRA adapter was made for another base model"), std::string::npos)
        << e;
    EXPECT_NE(e.find(std::to_string(c.num_layers + 1) + " layers; the model has"), std::string::npos) << e;
  }
  {  // a B of the wrong size
    LoraAdapter a = random_adapter(c, targets, false, 2, 2);
    a.at(1, LoraTarget::UpProj).B.pop_back();
    const std::string e = error_of([&] { lora_inference_layout(a, c, kSource); });
    EXPECT_NE(e.find(std::string(kSource) + ": the LoRA tensor base_model.model.model.layers.1.mlp.up_proj.lora_B."
                                            "weight holds"),
              std::string::npos)
        << e;
    EXPECT_NE(e.find("a different base model"), std::string::npos) << e;
  }
  {  // a slot whose N is not its Linear's
    LoraAdapter a = random_adapter(c, targets, false, 2, 3);
    a.at(0, LoraTarget::KProj).N += 1;
    const std::string e = error_of([&] { lora_inference_layout(a, c, kSource); });
    EXPECT_NE(e.find("base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight / lora_B has r 2, N " +
                     std::to_string(c.kv_dim() + 1)),
              std::string::npos)
        << e;
  }
  {  // a non-finite value
    LoraAdapter a = random_adapter(c, targets, false, 2, 4);
    a.at(1, LoraTarget::OProj).A[5] = std::numeric_limits<float>::quiet_NaN();
    const std::string e = error_of([&] { lora_inference_layout(a, c, kSource); });
    EXPECT_NE(e.find(std::string(kSource) + ": the LoRA tensor base_model.model.model.layers.1.self_attn.o_proj."
                                            "lora_A.weight [2, " +
                     std::to_string(c.q_dim()) + "] has the non-finite value nan at row 0, column 5"),
              std::string::npos)
        << e;
  }
}

}  // namespace
}  // namespace qwenq
