// AWQ of mixture-of-experts models on the GPU (trainer/awq_model_cuda.cpp's MoE half) against the CPU, on the tiny
// Qwen3-MoE (8 experts top 2, a dense layer between two MoE layers) and Qwen2-MoE (6 experts top 2 and a shared
// expert) F32 models of trainer/random_model.h:
//   - MlpForwardReplacesEveryExpert: QwenModelCuda::mlp_forward on each MoE layer against QwenModel::mlp_forward (the
//     MoE block) on the block's real input: the stored weights; every expert's and the shared expert's gate and up
//     replaced by seeded fp32 weights (the CPU swaps LinearWeight::from_fp32 into expert_linear); one expert's up
//     alone (null entries keep the stored weights); the stored weights again give the first output bit for bit, and
//     in place too.
//   - RunnerMatchesTheCpuRunner: the GPU AwqBlockRunner against the CPU's, three chunks: every scaling group's rows
//     (the routing: each expert's row count), x̄, the loss of fake-quantized candidates, loss 0 for the originals,
//     loss_scaled (exactly its own loss of the CPU-built candidates, within kLossRelTol of the CPU's); the clip search
//     of every clipped Linear some token reaches (exactly the kernel's CPU replay on the GPU runner's own sampled
//     rows, the CPU runner's bounds up to near ties); each expert's kept rows (gate/up: the gathered routed rows;
//     down: the compacted down_proj inputs) at steps 1 and 3; a MoE layer's block Down input refused.
//   - TinyMoeLikeTheCpu, UpcycledStories260KLikeTheCpu: whole runs on both devices (tests/gpu/awq_device_compare.h).
//
// Both devices route from their own router logits (fp32, ~1e-6 apart): a token at a near tie between two experts
// may be routed differently, which shows as a row count mismatch in one expert (RunnerMatchesTheCpuRunner) and as
// one changed scaling group in the whole runs. A flip needs two router logits within ~1e-6 of each other (rare on
// these seeds); if a row count differs on a GPU, that is the cause.
//
// Tolerances (test_awq_model_cuda.cpp's, whose header gives the reasons):
//   kFp32RelTol 1e-4 of max |value| (F32 weights, the naive fp32 attention: only the order of sums differs);
//   kMeanRelTol 1e-4 per channel; kLossRelTol 2e-3; kScaleMatchRelTol 1e-4 ("the same α");
//   kAlphaAgreement 0.75, kWeightAgreement 0.7, kPplRelTol 1 % (near ties of α and clip bounds only);
//   kClipNearTie 1e-3, kClipFlipShare 1 %, kClipFlipFloor 2 (differing clip bounds only at near ties).
// Every test skips without a device; the stories260K test also without the shared data.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "core/files.h"
#include "core/rng.h"
#include "kernels/cuda_check.cuh"
#include "quant/awq.h"
#include "quant/awq_search.h"
#include "tests/gpu/awq_device_compare.h"
#include "tests/gpu/gpu_test.h"
#include "tests/gpu/gpu_test_compare.h"
#include "tests/support/awq_search_cases.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_random.h"
#include "trainer/awq_runner.h"
#include "trainer/quantize_model.h"
#include "trainer/quantize_output.h"
#include "trainer/qwen_model.h"
#include "trainer/qwen_model_cuda.h"
#include "trainer/tokenizer.h"

namespace qwenq {
namespace {

using namespace test::awq_tol;  // tests/gpu/awq_device_compare.h

constexpr const char* kPresets[] = {"tiny-moe", "tiny-moe-shared"};

using test::download;
using test::rel_max_error;

void upload(const std::vector<float>& h, float* d, CudaStream s) {
  QWENQ_CUDA_CHECK(cudaMemcpyAsync(d, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice, s));
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(s));
}

void check_moe_mlp(const std::string& preset) {
  SCOPED_TRACE(preset);
  const std::string dir = test::make_random_model(test::scratch_dir() + "/mlp-" + preset, preset, DType::F32, 41);
  QwenModel cpu(dir);
  const QwenConfig& c = cpu.config();
  QwenModelCuda gpu(cpu);
  const CudaStream s = gpu.stream();
  const PackedBatch b = test::random_batch({7, 33, 1, 20}, c.vocab_size, 3);
  const int64_t T = b.num_tokens(), C = c.hidden_size, E = c.num_experts;
  const int64_t S = E + (c.shared_expert_intermediate_size > 0 ? 1 : 0);
  std::vector<float> x;
  cpu.embed_batch(b, &x);
  DeviceMemory din(static_cast<size_t>(T * C) * sizeof(float), s), dout(static_cast<size_t>(T * C) * sizeof(float), s);
  DeviceMemory dw(static_cast<size_t>(2 * (E * c.moe_intermediate_size + c.shared_expert_intermediate_size) * C) *
                      sizeof(float), s);
  Rng seeds(101);
  int64_t moe_layers = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    std::vector<float> n;
    cpu.block_forward(l, b, x.data(), [&](BlockLinear at, const float* p, int64_t rows) {
      if (at == BlockLinear::GateUp) n.assign(p, p + rows * C);
    });
    if (!c.is_moe_layer(l)) continue;
    ++moe_layers;
    SCOPED_TRACE("layer " + std::to_string(l));
    ASSERT_EQ(static_cast<int64_t>(n.size()), T * C);
    upload(n, din.as<float>(), s);
    std::vector<float> want(static_cast<size_t>(T * C));
    cpu.mlp_forward(l, n.data(), T, want.data());
    gpu.mlp_forward(l, din.as<float>(), T, dout.as<float>());
    const std::vector<float> first = download(dout.as<float>(), T * C, s);
    EXPECT_LE(rel_max_error(first, want), kFp32RelTol) << "stored weights";

    // Every expert's gate and up (the shared expert's last), seeded, in mlp_forward's order.
    std::vector<const void*> ptr(static_cast<size_t>(2 * S), nullptr);
    std::vector<std::vector<float>> host(static_cast<size_t>(2 * S));
    std::vector<LinearWeight> saved;
    float* next = dw.as<float>();
    for (int64_t i = 0; i < 2 * S; ++i) {
      const int64_t e = i / 2 < E ? i / 2 : -1;
      LinearWeight& lw = cpu.expert_linear(l, e, static_cast<int>(i % 2));
      host[i] = test::normal_vector(lw.N * lw.K, seeds.next_u64(), 0.08f);
      upload(host[i], next, s);
      ptr[i] = next;
      next += lw.N * lw.K;
      saved.push_back(lw);
    }
    const auto swap_in = [&](const std::vector<bool>& which) {
      for (int64_t i = 0; i < 2 * S; ++i) {
        LinearWeight& lw = cpu.expert_linear(l, i / 2 < E ? i / 2 : -1, static_cast<int>(i % 2));
        lw = which[i] ? LinearWeight::from_fp32(host[i], lw.N, lw.K) : saved[i];
      }
    };
    swap_in(std::vector<bool>(static_cast<size_t>(2 * S), true));
    cpu.mlp_forward(l, n.data(), T, want.data());
    gpu.mlp_forward(l, din.as<float>(), T, dout.as<float>(), ptr.data());
    EXPECT_LE(rel_max_error(download(dout.as<float>(), T * C, s), want), kFp32RelTol) << "every expert replaced";
    // Expert 1's up_proj alone: the null entries keep the stored weights.
    std::vector<bool> one(static_cast<size_t>(2 * S), false);
    one[3] = true;
    std::vector<const void*> ptr_one(ptr.size(), nullptr);
    ptr_one[3] = ptr[3];
    swap_in(one);
    cpu.mlp_forward(l, n.data(), T, want.data());
    gpu.mlp_forward(l, din.as<float>(), T, dout.as<float>(), ptr_one.data());
    const std::vector<float> got_one = download(dout.as<float>(), T * C, s);
    EXPECT_LE(rel_max_error(got_one, want), kFp32RelTol) << "expert 1's up_proj replaced";
    EXPECT_NE(got_one, first);
    swap_in(std::vector<bool>(static_cast<size_t>(2 * S), false));

    gpu.mlp_forward(l, din.as<float>(), T, dout.as<float>());
    EXPECT_EQ(download(dout.as<float>(), T * C, s), first) << "the stored experts changed";
    gpu.mlp_forward(l, din.as<float>(), T, din.as<float>());
    EXPECT_EQ(download(din.as<float>(), T * C, s), first) << "in place";
  }
  EXPECT_GT(moe_layers, 0);
}

TEST(AwqMoeCuda, MlpForwardReplacesEveryExpert) {
  QWENQ_REQUIRE_GPU();
  for (const char* preset : kPresets) check_moe_mlp(preset);
}

// The runners on one model, every layer.
void check_runner(const std::string& preset) {
  SCOPED_TRACE(preset);
  const std::string dir = test::make_random_model(test::scratch_dir() + "/runner-" + preset, preset, DType::F32, 23);
  QwenModel cpu_model(dir), gpu_model(dir);
  const QwenConfig& c = cpu_model.config();
  const auto windows = calibration_windows(test::source_dir() + "/README.md", "text", 10, 48, 0,
                                           Tokenizer::from_dir(dir));
  auto cpu = make_awq_cpu_runner(cpu_model, windows, 4 * 48);
  auto gpu = make_awq_cuda_runner(gpu_model, windows, 4 * 48);  // chunks of 4, 4 and 2 windows
  ASSERT_EQ(gpu->tokens(), cpu->tokens());
  const int64_t G = 32;
  int64_t expert_groups = 0, clipped = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    cpu->capture(l);
    gpu->capture(l);
    const std::vector<AwqLinear> lin = awq_layer_linears(c, l);
    std::vector<std::vector<float>> W(lin.size());
    for (size_t i = 0; i < lin.size(); ++i) W[i] = awq_linear_weight(cpu_model, l, lin[i]).dequantize();
    for (const AwqScaleGroup& grp : awq_layer_groups(c, l)) {
      SCOPED_TRACE("layer " + std::to_string(l) + " group " + grp.prev);
      const int64_t R = cpu->rows(grp.input);
      ASSERT_EQ(gpu->rows(grp.input), R) << "the routing differs";
      if (R == 0) continue;
      expert_groups += !grp.input.is_block();
      const std::vector<float> mc = cpu->input_mean(grp.input), mg = gpu->input_mean(grp.input);
      ASSERT_EQ(mg.size(), mc.size());
      for (size_t k = 0; k < mc.size(); ++k) EXPECT_NEAR(mg[k], mc[k], kMeanRelTol * mc[k]) << "x̄ channel " << k;
      std::vector<std::vector<float>> cand, originals;
      for (int sl : grp.slots) {
        cand.push_back(awq_fake_quantize(W[sl].data(), lin[sl].N, lin[sl].K, 4, G));
        originals.push_back(W[sl]);
      }
      cpu->set_reference(l, grp, W.data());
      gpu->set_reference(l, grp, W.data());
      const double lc = cpu->loss(l, grp, cand.data()), lg = gpu->loss(l, grp, cand.data());
      EXPECT_GT(lc, 0.0);
      EXPECT_NEAR(lg, lc, kLossRelTol * lc);
      EXPECT_EQ(gpu->loss(l, grp, originals.data()), 0.0) << "the reference is the originals' output";
      const std::vector<float> s = awq_candidate_scales(mc, mc, 0.5, /*duo_scaling=*/false);
      AwqSearchOptions so;
      so.group_size = G;
      std::vector<std::vector<float>> scand;
      for (int sl : grp.slots) {
        scand.emplace_back(W[sl].size());
        awq_candidate_ref(W[sl].data(), lin[sl].N, lin[sl].K, s.data(), 4, G, scand.back().data());
      }
      const double sc = cpu->loss_scaled(l, grp, W.data(), s, so), sg = gpu->loss_scaled(l, grp, W.data(), s, so);
      EXPECT_EQ(sc, cpu->loss(l, grp, scand.data()));
      EXPECT_EQ(sg, gpu->loss(l, grp, scand.data()));
      EXPECT_GT(sc, 0.0);
      EXPECT_NEAR(sg, sc, kLossRelTol * sc);
    }
    // The clip search of every clipped Linear some token reaches, its input folded by scales.
    for (size_t i = 0; i < lin.size(); ++i) {
      const AwqLinear& a = lin[i];
      if (!a.clipped) continue;
      SCOPED_TRACE("layer " + std::to_string(l) + " clip " + a.name);
      const int64_t R = cpu->rows(a.input);
      ASSERT_EQ(gpu->rows(a.input), R);
      if (R == 0) continue;
      ++clipped;
      const std::vector<float> mean = cpu->input_mean(a.input);
      const std::vector<float> s = awq_candidate_scales(mean, mean, 0.5, /*duo_scaling=*/false);
      std::vector<float> folded(W[i]);
      for (int64_t n = 0; n < a.N; ++n)
        for (int64_t k = 0; k < a.K; ++k) folded[n * a.K + k] *= s[k];
      AwqSearchOptions so;
      so.group_size = G;
      so.n_sample_tokens = 40;
      const int64_t step = awq_clip_token_step(R, so), S = awq_clip_rows(R, step);
      const std::vector<float> bc = cpu->search_clip(a.input, s, folded.data(), a.N, a.K, so);
      const std::vector<float> bg = gpu->search_clip(a.input, s, folded.data(), a.N, a.K, so);
      ASSERT_EQ(bg.size(), bc.size());
      std::vector<float> x(static_cast<size_t>(S * a.K));
      awq_clip_inputs_ref(gpu->sampled_rows(a.input, 1).data(), R, a.K, step, s.data(), a.K, x.data());
      std::vector<float> replay(bc.size());  // the kernel's arithmetic on the CPU over the GPU's own rows
      test::awq_clip_search_replay(folded.data(), a.N, a.K, x.data(), S, so, replay.data());
      EXPECT_EQ(bg, replay);
      const test::AwqClipAgreement ag = test::awq_compare_clips(bg, bc, folded.data(), a.N, a.K, x.data(), S, 4, G);
      EXPECT_LE(ag.differing, std::max<int64_t>(kClipFlipFloor, static_cast<int64_t>(kClipFlipShare * ag.total)));
      EXPECT_LE(ag.worst_excess, kClipNearTie) << ag.differing << " of " << ag.total << " bounds differ";
    }
    if (!c.is_moe_layer(l)) continue;
    // Each expert's kept rows: gathered gate/up inputs, compacted down_proj inputs.
    const int64_t shared = c.shared_expert_intermediate_size > 0 ? 1 : 0;
    for (int64_t e = -shared; e < c.num_experts; ++e) {
      for (BlockLinear at : {BlockLinear::GateUp, BlockLinear::Down}) {
        const AwqInput in(at, e);
        if (cpu->rows(in) == 0) continue;
        for (int64_t step : {1, 3}) {
          EXPECT_LE(rel_max_error(gpu->sampled_rows(in, step), cpu->sampled_rows(in, step)), kFp32RelTol)
              << "layer " << l << " expert " << e << " group " << static_cast<int>(at) << " step " << step;
        }
      }
    }
    test::expect_error([&] { gpu->rows(AwqInput(BlockLinear::Down)); }, "its down_proj inputs are its experts'");
  }
  EXPECT_GT(expert_groups, 0);
  EXPECT_GT(clipped, 0);
  std::printf("[ %s ] %lld expert groups and %lld clip searches compared\n", preset.c_str(),
              (long long)expert_groups, (long long)clipped);
}

TEST(AwqMoeCuda, RunnerMatchesTheCpuRunner) {
  QWENQ_REQUIRE_GPU();
  for (const char* preset : kPresets) check_runner(preset);
}

TEST(AwqMoeCuda, TinyMoeLikeTheCpu) {
  QWENQ_REQUIRE_GPU();
  const std::string root = test::scratch_dir();
  for (const char* preset : kPresets) {
    SCOPED_TRACE(preset);
    const std::string src = test::make_random_model(root + "/" + preset, preset, DType::F32, 29);
    AwqModelOptions a = test::tiny_awq_options(src, root + "/awq-" + preset);
    // tiny-moe in GPTQ v2 (tests/test_awq_moe.cpp: AutoAWQ's layout cannot keep its routers dense).
    a.out.layout = std::string(preset) == "tiny-moe" ? IntLayout::GptqV2 : IntLayout::AwqGemm;
    test::expect_awq_devices_agree(a, test::tiny_awq_eval_tokens(src), 128, preset);
  }
}

// A trained mixture of experts: stories260K upcycled to 4 experts top 2 (tests/test_awq_moe.cpp's acceptance model
// and options), calibrated on C4, TinyStories perplexity.
TEST(AwqMoeCuda, UpcycledStories260KLikeTheCpu) {
  QWENQ_REQUIRE_GPU();
  QWENQ_REQUIRE_SHARED_DATA();
  const test::UpcycledAwq u = test::upcycled_stories260k_awq(test::scratch_dir());
  AwqModelOptions a = u.options;
  a.chunk_tokens = 1024;  // four chunks of 8 windows
  std::vector<int32_t> ids = test::tinystories_tokens(u.dense);
  ASSERT_GE(ids.size(), 32u * 256u);
  ids.resize(32 * 256);
  test::expect_awq_devices_agree(a, ids, 256, "upcycled stories260K");
}

}  // namespace
}  // namespace qwenq
