// AWQ on the GPU (awq_quantize_model with device Cuda: trainer/awq_model_cuda.cpp) against the CPU, from the module
// API up:
//   - ModuleApiMatchesTheCpuModules: QwenModelCuda::attention_forward / mlp_forward / block_linear_forward against
//     QwenModel::attention_forward / mlp_forward / a fp32 matmul, on every block's real inputs, with the stored
//     weights and with seeded fp32 replacement weights (the CPU swaps LinearWeight::from_fp32 in); after the
//     replacements the stored weights still give the first outputs bit for bit. Models: the tiny preset in F32
//     (D = 16: the naive fp32 attention) and BF16, Qwen2 with q/k/v biases and Qwen3 with q/k norms at D = 64
//     (flash attention), tests/gpu/gpu_test_models.h. Bad arguments are refused with the method's name.
//   - RunnerMatchesTheCpuRunner: the GPU AwqBlockRunner (trainer/awq_runner.h) against the CPU's on the tiny F32
//     model without GQA (so the v -> o group runs too), three chunks: the captured statistics, each group's loss of
//     a fake-quantized candidate, the loss of a scale-grid point (loss_scaled: the GPU's candidates are built on the
//     device, so its loss equals its loss of the CPU-built candidates exactly), the clip search of every clipped
//     Linear folded by scales (down padded by 8 columns): exactly the kernel's CPU replay
//     (tests/support/awq_search_cases.h) and against the CPU runner's up to near ties; the sampled rows.
//   - RunnerBf16MatchesTheCpuBf16Runner: both runners with a bf16 calibration (calib_dtype BF16: the group's
//     Linears rounded to bf16, on the GPU stored in bf16 and multiplied on tensor cores): each group's loss of a
//     candidate within kBf16LossRelTol, the working weights' loss exactly 0 on the GPU, loss_scaled = loss of the
//     CPU-built candidates exactly.
//   - TinyRandomLikeTheCpu, Stories260KLikeTheCpu: whole runs on both devices (saved searches kept): the share of
//     scaling groups whose scales agree, the share of equal dequantized weights, the perplexity of both outputs.
//
// Tolerances:
//   kFp32RelTol       F32 weights and the naive attention: only the order of fp32 sums differs; 1e-4 of the
//                     tensor's max |value| (as tests/gpu/test_model_cuda.cpp and test_gptq_model_cuda.cpp).
//   kBf16RelTol       anything rounded to bf16 on the GPU (cuBLASLt rounds x to a BF16 weight's dtype, flash
//                     attention takes bf16 q/k/v): 2e-2 of max |value|, test_model_cuda.cpp's bound for whole logits
//                     (a module is one of its steps).
//   kMeanRelTol       x̄: both sides average the same |x| (inputs within kFp32RelTol of each other elementwise, ~1e-6
//                     in practice) in double; 1e-4 relative per channel.
//   kLossRelTol       loss = mean((y_cand − y_ref)²): both outputs move by ~1e-6·|y| between the devices but their
//                     difference is the quantization error (~1e-2·|y|), so it moves by ~1e-4 relative, its square
//                     by ~2e-4; 2e-3.
//   kBf16LossRelTol   the bf16 calibration's loss: the GPU also rounds the module's activations to bf16 at each
//                     GEMM (relative 2^-9 each), the same rounded x in candidate and reference, so their difference
//                     x̃·(W_c − W_r) moves by ~2^-9 relative and the loss by ~2^-8 (0.4 %); 2e-2.
//   kScaleMatchRelTol scales of the same α on both devices differ through x̄ (fp32 rounding of the mean, ~1e-7) and
//                     w̄ (identical): 1e-4 relative per channel means "the same α".
//   kAlphaAgreement   share of scaling groups with the same α. α is the argmin over n_grid losses; the two devices'
//                     losses differ by ~kLossRelTol, so α can differ only where two grid points' losses are within
//                     that of each other — a near tie, where either choice is as good. The losses of neighbouring α
//                     differ by a few % on these models, so flips are rare; 0.75 allows 1 in 4 groups (stories260K: 5
//                     of 20) before failing.
//   kWeightAgreement  share of equal dequantized weights: equal α gives equal fake-quantized candidates on the
//                     host, but a flipped α changes every weight of its group (up to ~22 % of the tiny model's
//                     weights for gate/up of one layer) and a clip bound (argmin over 10 shrinks per row and group,
//                     from fp32 inputs ~1e-6 apart) can flip at a tie; the blocks are fed from the unquantized model,
//                     so nothing cascades. 0.7: fails when more than about one large group per model differs.
//   kClipNearTie, kClipFlipShare, kClipFlipFloor  the clip search's bounds, as tests/gpu/test_awq_search_cuda.cpp:
//                     differing bounds (≤ 1 %, at least 2 allowed) only at near ties (the double errors of both
//                     choices within 1e-3 relative).
//   kPplRelTol        perplexity (CPU evaluation) of the GPU-quantized model against the CPU-quantized one: equal up
//                     to the near-ties above; 1 % (the AWQ-vs-RTN gap on stories260K is several %).
// Every test skips without a device; the stories260K test also without the shared data. Agreements, perplexities
// and times are printed.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/files.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "kernels/cuda_check.cuh"
#include "kernels/gemm.h"
#include "quant/awq.h"
#include "quant/awq_search.h"
#include "tests/gpu/awq_device_compare.h"
#include "tests/support/awq_search_cases.h"
#include "tests/gpu/gpu_test.h"
#include "tests/gpu/gpu_test_compare.h"
#include "tests/gpu/gpu_test_models.h"
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

using namespace test::awq_tol;  // the tolerances above (tests/gpu/awq_device_compare.h), shared with the MoE tests
constexpr double kBf16RelTol = 2e-2;
constexpr double kBf16LossRelTol = 2e-2;

using test::download;
using test::rel_max_error;

int64_t group_width(const QwenConfig& c, BlockLinear g) {
  return g == BlockLinear::O ? c.q_dim() : g == BlockLinear::Down ? c.intermediate_size : c.hidden_size;
}

struct ModuleCase {
  std::string name;
  std::string dir;
  double tol;
};

// The module API on one model, every layer.
void check_modules(const ModuleCase& mc) {
  SCOPED_TRACE(mc.name);
  QwenModel cpu(mc.dir);
  const QwenConfig& c = cpu.config();
  QwenModelCuda gpu(cpu);
  const CudaStream s = gpu.stream();
  const PackedBatch b = test::random_batch({7, 33, 1, 20}, c.vocab_size, 3);
  const int64_t T = b.num_tokens(), C = c.hidden_size;
  std::vector<float> x;
  cpu.embed_batch(b, &x);
  DeviceMemory din(static_cast<size_t>(T * std::max({C, c.q_dim(), c.intermediate_size})) * sizeof(float), s);
  DeviceMemory dout(static_cast<size_t>(T * std::max(C, c.q_dim())) * sizeof(float), s);  // q's Linear: q_dim
  DeviceMemory dw(static_cast<size_t>(2 * c.intermediate_size * C + c.q_dim() * C + 2 * c.kv_dim() * C) * sizeof(float), s);
  Rng seeds(101);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    std::vector<float> in[4];
    cpu.block_forward(l, b, x.data(), [&](BlockLinear at, const float* p, int64_t rows) {
      in[static_cast<int>(at)].assign(p, p + rows * group_width(c, at));
    });
    const auto upload = [&](const std::vector<float>& h, void* d) {
      QWENQ_CUDA_CHECK(cudaMemcpyAsync(d, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice, s));
      QWENQ_CUDA_CHECK(cudaStreamSynchronize(s));
    };
    // Seeded fp32 replacements for the group's Linears, uploaded back to back into dw; the CPU model gets them as
    // LinearWeight::from_fp32 until restore().
    std::vector<LinearWeight> saved;
    std::vector<std::pair<BlockLinear, int>> swapped;
    const auto replace = [&](BlockLinear which, std::initializer_list<int> idx, std::vector<const void*>* ptrs) {
      float* next = dw.as<float>();
      for (int i : idx) {
        LinearWeight& lw = cpu.linear_weight(l, which, i);
        std::vector<float> W = test::normal_vector(lw.N * lw.K, seeds.next_u64(), 0.08f);
        upload(W, next);
        ptrs->push_back(next);
        next += lw.N * lw.K;
        saved.push_back(lw);
        swapped.push_back({which, i});
        const int64_t N = lw.N, K = lw.K;
        lw = LinearWeight::from_fp32(std::move(W), N, K);
      }
    };
    const auto restore = [&] {
      for (size_t j = 0; j < swapped.size(); ++j) cpu.linear_weight(l, swapped[j].first, swapped[j].second) = saved[j];
      saved.clear();
      swapped.clear();
    };
    std::vector<float> want(static_cast<size_t>(T * C));

    // Attention: stored weights, replaced q/k/v, stored again (bit for bit the first).
    const std::vector<float>& n_attn = in[static_cast<int>(BlockLinear::QKV)];
    upload(n_attn, din.get());
    cpu.attention_forward(l, b, n_attn.data(), want.data());
    gpu.attention_forward(l, b, din.as<float>(), dout.as<float>());
    const std::vector<float> first = download(dout.as<float>(), T * C, s);
    EXPECT_LE(rel_max_error(first, want), mc.tol) << "layer " << l << " attention";
    {
      std::vector<const void*> w;
      replace(BlockLinear::QKV, {0, 1, 2}, &w);
      cpu.attention_forward(l, b, n_attn.data(), want.data());
      gpu.attention_forward(l, b, din.as<float>(), dout.as<float>(), w.data());
      EXPECT_LE(rel_max_error(download(dout.as<float>(), T * C, s), want), mc.tol) << "layer " << l << " attention, replaced";
      restore();
    }
    gpu.attention_forward(l, b, din.as<float>(), dout.as<float>());
    EXPECT_EQ(download(dout.as<float>(), T * C, s), first) << "layer " << l << ": the stored q/k/v changed";
    // out aliasing the input.
    gpu.attention_forward(l, b, din.as<float>(), din.as<float>());
    EXPECT_EQ(download(din.as<float>(), T * C, s), first) << "layer " << l << ": attention in place";

    // MLP.
    const std::vector<float>& n_mlp = in[static_cast<int>(BlockLinear::GateUp)];
    upload(n_mlp, din.get());
    cpu.mlp_forward(l, n_mlp.data(), T, want.data());
    gpu.mlp_forward(l, din.as<float>(), T, dout.as<float>());
    const std::vector<float> mlp_first = download(dout.as<float>(), T * C, s);
    EXPECT_LE(rel_max_error(mlp_first, want), mc.tol) << "layer " << l << " mlp";
    {
      std::vector<const void*> w;
      replace(BlockLinear::GateUp, {0, 1}, &w);
      cpu.mlp_forward(l, n_mlp.data(), T, want.data());
      gpu.mlp_forward(l, din.as<float>(), T, dout.as<float>(), w.data());
      EXPECT_LE(rel_max_error(download(dout.as<float>(), T * C, s), want), mc.tol) << "layer " << l << " mlp, replaced";
      restore();
    }
    gpu.mlp_forward(l, din.as<float>(), T, dout.as<float>());
    EXPECT_EQ(download(dout.as<float>(), T * C, s), mlp_first) << "layer " << l << ": the stored gate/up changed";

    // Single Linears: o and down (AWQ's), q (a bias kept under a replacement).
    for (auto [which, index] : {std::pair<BlockLinear, int>{BlockLinear::O, 0}, {BlockLinear::Down, 0},
                                {BlockLinear::QKV, 0}}) {
      const std::vector<float>& xin = in[static_cast<int>(which)];
      const int64_t K = group_width(c, which);
      const LinearWeight& lw = cpu.linear_weight(l, which, index);
      const int64_t N = lw.N;
      const TensorView bias = which == BlockLinear::QKV ? cpu.weights().layers[l].q_bias : TensorView{};
      const auto cpu_linear = [&](const LinearWeight& w) {
        std::vector<float> y(static_cast<size_t>(T * N));
        const std::vector<float> Wf = w.dequantize();
        linear_forward_ref(xin.data(), T, K, Wf.data(), DType::F32, N, bias.data, bias.dtype, y.data());
        return y;
      };
      upload(xin, din.get());
      gpu.block_linear_forward(l, which, index, din.as<float>(), T, dout.as<float>());
      const std::vector<float> lin_first = download(dout.as<float>(), T * N, s);
      EXPECT_LE(rel_max_error(lin_first, cpu_linear(lw)), mc.tol) << "layer " << l << " Linear " << static_cast<int>(which);
      std::vector<const void*> w;
      replace(which, {index}, &w);
      gpu.block_linear_forward(l, which, index, din.as<float>(), T, dout.as<float>(), w[0]);
      // A replaced Linear is a true fp32 GEMM on both sides.
      EXPECT_LE(rel_max_error(download(dout.as<float>(), T * N, s), cpu_linear(cpu.linear_weight(l, which, index))),
                kFp32RelTol)
          << "layer " << l << " Linear " << static_cast<int>(which) << ", replaced";
      restore();
      gpu.block_linear_forward(l, which, index, din.as<float>(), T, dout.as<float>());
      EXPECT_EQ(download(dout.as<float>(), T * N, s), lin_first) << "layer " << l << ": the stored Linear changed";
    }
  }
  EXPECT_NE(test::error_of([&] { gpu.mlp_forward(c.num_layers, din.as<float>(), T, dout.as<float>()); })
                .find("QwenModelCuda::mlp_forward: layer " + std::to_string(c.num_layers) + " outside"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { gpu.mlp_forward(0, din.as<float>(), 0, dout.as<float>()); })
                .find("QwenModelCuda::mlp_forward: 0 tokens"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { gpu.block_linear_forward(0, BlockLinear::O, 0, din.as<float>(), T, din.as<float>()); })
                .find("null or aliased"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { gpu.attention_forward(0, b, nullptr, dout.as<float>()); }).find("null input"),
            std::string::npos);
}

TEST(AwqModelCuda, ModuleApiMatchesTheCpuModules) {
  QWENQ_REQUIRE_GPU();
  const std::string root = test::scratch_dir();
  std::vector<ModuleCase> cases;
  cases.push_back({"tiny F32 (naive attention)", test::make_tiny_model(root + "/tiny", 17), kFp32RelTol});
  cases.push_back({"tiny BF16", test::make_random_model(root + "/tiny-bf16", "tiny", DType::BF16, 5), kBf16RelTol});
  test::write_gpu_test_model(root + "/qwen2", test::kGpuQwen2Bias, DType::F32, 7);
  cases.push_back({"Qwen2 biases, D = 64 (flash)", root + "/qwen2", kBf16RelTol});
  test::write_gpu_test_model(root + "/qwen3", test::kGpuQwen3, DType::F32, 8);
  cases.push_back({"Qwen3 q/k norm, D = 64 (flash)", root + "/qwen3", kBf16RelTol});
  for (const ModuleCase& mc : cases) check_modules(mc);
}

// Calibration windows from the repository's README (any text: the tiny tokenizer is byte-level).
std::vector<std::vector<int32_t>> readme_windows(const std::string& model_dir, int n, int64_t len) {
  return calibration_windows(test::source_dir() + "/README.md", "text", n, len, 0,
                             Tokenizer::from_dir(model_dir));
}

TEST(AwqModelCuda, RunnerMatchesTheCpuRunner) {
  QWENQ_REQUIRE_GPU();
  const std::string dir = test::make_tiny_model(test::scratch_dir() + "/tiny-mha", 23, /*kv_heads=*/4);
  QwenModel cpu_model(dir), gpu_model(dir);
  const QwenConfig& c = cpu_model.config();
  ASSERT_EQ(c.q_dim(), c.kv_dim());
  const auto windows = readme_windows(dir, 10, 48);
  auto cpu = make_awq_cpu_runner(cpu_model, windows, 4 * 48);
  auto gpu = make_awq_cuda_runner(gpu_model, windows, 4 * 48);  // chunks of 4, 4 and 2 windows
  ASSERT_EQ(gpu->tokens(), cpu->tokens());
  const int64_t G = 32;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    cpu->capture(l);
    gpu->capture(l);
    std::vector<float> W[7];
    for (int i = 0; i < 7; ++i) W[i] = cpu_model.linear_weight(l, kDecoderLinears[i].group, kDecoderLinears[i].index).dequantize();
    for (const AwqScaleGroup& grp : kAwqGroups) {
      SCOPED_TRACE("layer " + std::to_string(l) + " group " + grp.prev);
      const std::vector<float> mc = cpu->input_mean(grp.input), mg = gpu->input_mean(grp.input);
      ASSERT_EQ(mg.size(), mc.size());
      for (size_t k = 0; k < mc.size(); ++k) EXPECT_NEAR(mg[k], mc[k], kMeanRelTol * mc[k]) << "x̄ channel " << k;
      std::vector<float> cand[3];
      for (size_t j = 0; j < grp.slots.size(); ++j) {
        const int sl = grp.slots[j];
        const LinearWeight& lw = cpu_model.linear_weight(l, kDecoderLinears[sl].group, kDecoderLinears[sl].index);
        cand[j] = awq_fake_quantize(W[sl].data(), lw.N, lw.K, 4, G);
      }
      cpu->set_reference(l, grp, W);
      gpu->set_reference(l, grp, W);
      const double lc = cpu->loss(l, grp, cand), lg = gpu->loss(l, grp, cand);
      EXPECT_GT(lc, 0.0);
      EXPECT_NEAR(lg, lc, kLossRelTol * lc);
      // The original weights as the candidate: the reference itself, loss 0 (the same GEMMs on the same inputs).
      std::vector<float> originals[3];
      for (size_t j = 0; j < grp.slots.size(); ++j) originals[j] = W[grp.slots[j]];
      EXPECT_EQ(gpu->loss(l, grp, originals), 0.0);
      // A scale-grid point: candidates Q(W·s)/s built by each runner (the GPU's on the device, bit for bit the twin's).
      const std::vector<float> s = awq_candidate_scales(mc, mc, 0.5, /*duo_scaling=*/false);
      AwqSearchOptions so;
      so.group_size = G;
      std::vector<float> scand[3];
      for (size_t j = 0; j < grp.slots.size(); ++j) {
        const int sl = grp.slots[j];
        const int64_t K = static_cast<int64_t>(s.size()), N = static_cast<int64_t>(W[sl].size()) / K;
        scand[j].resize(W[sl].size());
        awq_candidate_ref(W[sl].data(), N, K, s.data(), 4, G, scand[j].data());
      }
      const double sc = cpu->loss_scaled(l, grp, W, s, so), sg = gpu->loss_scaled(l, grp, W, s, so);
      EXPECT_EQ(sc, cpu->loss(l, grp, scand));
      EXPECT_EQ(sg, gpu->loss(l, grp, scand));
      EXPECT_GT(sc, 0.0);
      EXPECT_NEAR(sg, sc, kLossRelTol * sc);
    }
    // The clip search of every clipped Linear (v, o, gate, up, down), folded by scales; down's input padded.
    for (int slot = kAwqV; slot < 7; ++slot) {
      SCOPED_TRACE("layer " + std::to_string(l) + " clip " + kDecoderLinears[slot].name);
      const BlockLinear at = kDecoderLinears[slot].group;
      const int64_t K = group_width(c, at), N = static_cast<int64_t>(W[slot].size()) / K;
      const int64_t K2 = K + (at == BlockLinear::Down ? 8 : 0);
      const std::vector<float> mean = cpu->input_mean(at);
      const std::vector<float> s = awq_candidate_scales(mean, mean, 0.5, /*duo_scaling=*/false);
      std::vector<float> folded(static_cast<size_t>(N * K2), 0.f);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) folded[n * K2 + k] = W[slot][n * K + k] * s[k];
      AwqSearchOptions so;
      so.group_size = G;
      so.n_sample_tokens = 100;  // 480 tokens: every 4th
      const int64_t step = awq_clip_token_step(cpu->tokens(), so), S = awq_clip_rows(cpu->tokens(), step);
      ASSERT_EQ(step, 4);
      const std::vector<float> bc = cpu->search_clip(at, s, folded.data(), N, K2, so);
      const std::vector<float> bg = gpu->search_clip(at, s, folded.data(), N, K2, so);
      ASSERT_EQ(bg.size(), bc.size());
      std::vector<float> x(static_cast<size_t>(S * K2));
      awq_clip_inputs_ref(cpu->sampled_rows(at, 1).data(), cpu->tokens(), K, step, s.data(), K2, x.data());
      std::vector<float> replay(bc.size());  // the kernel's arithmetic on the CPU: its exact bounds
      test::awq_clip_search_replay(folded.data(), N, K2, x.data(), S, so, replay.data());
      EXPECT_EQ(bg, replay);
      const test::AwqClipAgreement a = test::awq_compare_clips(bg, bc, folded.data(), N, K2, x.data(), S, 4, G);
      EXPECT_LE(a.differing, std::max<int64_t>(kClipFlipFloor, static_cast<int64_t>(kClipFlipShare * a.total)));
      EXPECT_LE(a.worst_excess, kClipNearTie) << a.differing << " of " << a.total << " bounds differ";
    }
    for (int g = 0; g < 4; ++g) {
      const BlockLinear at = static_cast<BlockLinear>(g);
      for (int64_t step : {1, 3, 7}) {
        const std::vector<float> rc = cpu->sampled_rows(at, step), rg = gpu->sampled_rows(at, step);
        EXPECT_EQ(static_cast<int64_t>(rc.size()), (cpu->tokens() + step - 1) / step * group_width(c, at));
        EXPECT_LE(rel_max_error(rg, rc), kFp32RelTol) << "layer " << l << " group " << g << " step " << step;
      }
    }
  }
}

TEST(AwqModelCuda, RunnerBf16MatchesTheCpuBf16Runner) {
  QWENQ_REQUIRE_GPU();
  const std::string dir = test::make_tiny_model(test::scratch_dir() + "/tiny-mha", 29, /*kv_heads=*/4);
  QwenModel cpu_model(dir), gpu_model(dir);
  const auto windows = readme_windows(dir, 10, 48);
  auto cpu = make_awq_cpu_runner(cpu_model, windows, 4 * 48, DType::BF16);
  auto gpu = make_awq_cuda_runner(gpu_model, windows, 4 * 48, DType::BF16);
  const int64_t G = 32;
  AwqSearchOptions so;
  so.group_size = G;
  for (int64_t l = 0; l < cpu_model.config().num_layers; ++l) {
    cpu->capture(l);
    gpu->capture(l);
    std::vector<float> W[7];
    for (int i = 0; i < 7; ++i) W[i] = cpu_model.linear_weight(l, kDecoderLinears[i].group, kDecoderLinears[i].index).dequantize();
    for (const AwqScaleGroup& grp : kAwqGroups) {
      SCOPED_TRACE("layer " + std::to_string(l) + " group " + grp.prev);
      cpu->set_reference(l, grp, W);
      gpu->set_reference(l, grp, W);
      const std::vector<float> mean = cpu->input_mean(grp.input);
      const std::vector<float> s = awq_candidate_scales(mean, mean, 0.5, /*duo_scaling=*/false);
      const int64_t K = static_cast<int64_t>(s.size());
      std::vector<float> cand[3], originals[3];
      for (size_t j = 0; j < grp.slots.size(); ++j) {
        const std::vector<float>& w = W[grp.slots[j]];
        cand[j].resize(w.size());
        awq_candidate_ref(w.data(), static_cast<int64_t>(w.size()) / K, K, s.data(), 4, G, cand[j].data());
        originals[j] = w;
      }
      const double lc = cpu->loss(l, grp, cand), lg = gpu->loss(l, grp, cand);
      EXPECT_GT(lc, 0.0);
      EXPECT_NEAR(lg, lc, kBf16LossRelTol * lc);
      EXPECT_EQ(gpu->loss(l, grp, originals), 0.0);  // the reference's own bf16 weights, the same GEMMs
      EXPECT_EQ(gpu->loss_scaled(l, grp, W, s, so), lg);  // built on the device, rounded alike
    }
  }
}

TEST(AwqModelCuda, TinyRandomLikeTheCpu) {
  QWENQ_REQUIRE_GPU();
  const std::string root = test::scratch_dir();
  const std::string src = test::make_tiny_model(root + "/tiny", 29, /*kv_heads=*/4);  // v -> o scaled too
  test::expect_awq_devices_agree(test::tiny_awq_options(src, root + "/awq"), test::tiny_awq_eval_tokens(src), 128,
                                 "tiny");
}

TEST(AwqModelCuda, Stories260KLikeTheCpu) {
  QWENQ_REQUIRE_GPU();
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string data = test::shared_data_dir();
  const std::string root = test::scratch_dir();
  const std::string fp32 = test::import_stories260k(root + "/fp32");
  // The grid of tests/test_quant_awq.cpp's BeatsRtnOnStories260K (4-bit, g64, padded MLP), calibrated on TinyStories.
  AwqModelOptions a;
  a.out.model_dir = fp32;
  a.out.out_dir = root + "/awq";
  a.out.group_size = 64;
  a.out.layout = IntLayout::AwqGemm;
  a.out.pad_intermediate = true;
  a.out.quiet = true;
  a.calib_path = data + "/tinystories/tinystories_val.txt";
  a.calib_samples = 32;
  a.calib_seq_len = 128;
  a.chunk_tokens = 1024;  // four chunks of 8 windows
  std::vector<int32_t> ids = test::tinystories_tokens(fp32);
  ASSERT_GE(ids.size(), 32u * 256u);
  ids.resize(32 * 256);
  test::expect_awq_devices_agree(a, ids, 256, "stories260K");
}

}  // namespace
}  // namespace qwenq
