// LoRA at inference with the adapter unmerged on the GPU (trainer/lora_inference_cuda.h, QwenModelCuda::attach_adapter)
// against the CPU path, which merges the adapter into the base in memory (trainer/lora_merge.h):
//   - lora_forward_cuda (lora/lora_linear.h) against its twin lora_forward_ref over a sweep of shapes: M 1, 3, 17,
//     127; (K, N) awkward (7, 5) and Qwen2.5-0.5B's q/k/gate/down (896/896, 896/128, 896/4864, 4864/896); r 1, 8, 16;
//     y accumulates onto random values, guard floats after y and u stay untouched; lora_project_cuda (u alone, the
//     trainers' recomputation of a down projection) writes lora_forward_cuda's u bit for bit and nothing past it;
//   - QwenModelCuda forward_logits / next_token_nll with an adapter (all seven targets, r 4, nonzero B; and an rsLoRA
//     one on q, v, down, r 8) on the tiny preset in F32 (D = 16, the fp32 path) and BF16, RTN-quantized to GPTQ v1
//     (group 32) and to NF4, and the D = 64 Qwen2 with q/k/v biases RTN-quantized (flash attention, the bias before the
//     branch), against the CPU's merged model; detach_adapter gives the base again; a refused adapter changes nothing;
//   - QwenDecodeCuda prefill (37 and 100 tokens) and 24 steps with the adapter against the CPU's merged
//     forward_step, including an adapter attached after the decoder was made;
//   - DoRA adapters unmerged (the gains m / ‖W + s·B A‖ computed on the GPU at attach) against the merged DoRA model;
//   - greedy generation (64 tokens on the tiny GPTQ model; 100 on stories260K RTN-quantized with a padded MLP, when
//     the shared data is there): the GPU's tokens are the CPU merged model's up to a tie.
//
// Tolerances (relative to max |value| of the CPU's result, as tests/gpu/test_model_cuda.cpp / test_decode_cuda.cpp):
//   kLoraFp32RelTol 1e-5  lora_forward_cuda vs the ref: both fp32 (cuBLASLt without TF32), only the order of at most
//                     4864 + 16 summed products differs: ~1e-7 of max |y| expected; 1e-5 catches any wrong term.
//   kFp32RelTol 1e-4  nothing rounded to bf16 on the GPU (F32 weights with D = 16; Q4 weights through the fp32 GEMV at
//                     M <= 64 in decoding): the merged CPU Linear x (W + sBA)ᵀ and the GPU's x Wᵀ + s(x Aᵀ)Bᵀ differ
//                     by fp32 reassociation only (tests/test_lora_merge.cpp measured < 1e-6 on whole models), on top
//                     of the ~1e-6 between two fp32 implementations of the model.
//   kBf16RelTol 2e-2  the base's bf16 rounding of x (Q4 in QwenModelCuda's forward, a BF16 base, any 100-row Q4
//                     decode prefill) and flash attention's bf16 q/k/v/P: the same roundings as the adapter-less tests, which measured at
//                     most 5.6e-3; the branch reads the fp32 x and adds fp32 products, so it adds nothing to them.
//   nll               within 2·(observed max |Δlogit|) + kNllRelSlack·(1 + max |logit|) (test_model_cuda.cpp's rule).
//   kMinAdapterEffect every model's merged logits differ from its base's by at least 5x the tolerance (measured on
//                     the CPU: >= 0.3 of max |logit| for the tiny models, 0.83 for the D = 64 one with B ~ 0.3·N(0, 1)),
//                     so each comparison tells "adapter applied" from "adapter missing".
//   greedy tokens     the first position where they differ must be a tie: the CPU's logit of the GPU's token within
//                     kFp32RelTol·max |logit| of the CPU's best (the prompts are short: the fp32 path).
// Every test skips without a device; the stories260K test also without the shared data.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/cuda_check.cuh"
#include "lora/lora_linear.h"
#include "tests/gpu/gpu_test.h"
#include "tests/gpu/gpu_test_models.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_training.h"
#include "trainer/generate.h"
#include "trainer/lora_merge.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_decode_cuda.h"
#include "trainer/qwen_model.h"
#include "trainer/qwen_model_cuda.h"
#include "trainer/quantize_model.h"
#include "trainer/tokenizer.h"

namespace qwenq {
namespace {

using test::error_of;
using test::quantized;

constexpr double kLoraFp32RelTol = 1e-5;
constexpr double kFp32RelTol = 1e-4;
constexpr double kBf16RelTol = 2e-2;
constexpr double kNllRelSlack = 1e-5;
constexpr double kMinAdapterEffect = 5;  // x the tolerance
constexpr int kSteps = 24;
constexpr int kGuard = 8;
constexpr float kGuardValue = -12345.f;

const std::vector<std::string> kAllTargets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"};

// max |got - want| / max |want| (NaN counts as infinite).
double rel_err(const float* got, const float* want, size_t n) {
  double mx = 0, err = 0;
  for (size_t i = 0; i < n; ++i) {
    mx = std::max(mx, static_cast<double>(std::fabs(want[i])));
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    err = std::isnan(e) ? INFINITY : std::max(err, e);
  }
  return err / (mx > 0 ? mx : 1);
}
double rel_err(const std::vector<float>& got, const std::vector<float>& want) {
  EXPECT_EQ(got.size(), want.size());
  return rel_err(got.data(), want.data(), std::min(got.size(), want.size()));
}

std::vector<float> normal(size_t n, Rng& rng, float scale) {
  std::vector<float> v(n);
  for (float& x : v) x = scale * static_cast<float>(rng.normal());
  return v;
}

// ---- lora_forward_cuda vs lora_forward_ref ----

TEST(LoraForwardCuda, IsTheRefOverAShapeSweep) {
  QWENQ_REQUIRE_GPU();
  struct KN {
    int64_t K, N;
  };
  const KN kns[] = {{7, 5}, {64, 64}, {896, 896}, {896, 128}, {896, 4864}, {4864, 896}};
  const float s = 0.37f;
  double worst_y = 0, worst_u = 0;
  int cases = 0;
  for (const KN& kn : kns) {
    for (int64_t r : {1, 8, 16}) {
      if (r > std::min(kn.K, kn.N)) continue;
      for (int64_t M : {1, 3, 17, 127}) {
        SCOPED_TRACE("M=" + std::to_string(M) + " K=" + std::to_string(kn.K) + " N=" + std::to_string(kn.N) +
                     " r=" + std::to_string(r));
        Rng rng(static_cast<uint64_t>(1000 * M + 10 * r + kn.K + 7 * kn.N));
        const std::vector<float> x = normal(static_cast<size_t>(M * kn.K), rng, 1.f);
        const std::vector<float> A = normal(static_cast<size_t>(r * kn.K), rng, 1.f / std::sqrt(float(kn.K)));
        const std::vector<float> B = normal(static_cast<size_t>(kn.N * r), rng, 0.1f);
        const std::vector<float> y0 = normal(static_cast<size_t>(M * kn.N), rng, 1.f);
        std::vector<float> y_want = y0, u_want(static_cast<size_t>(M * r));
        lora_forward_ref(x.data(), M, kn.K, A.data(), B.data(), r, kn.N, s, y_want.data(), u_want.data());
        std::vector<float> y_host = y0, u_host(u_want.size(), kGuardValue);
        y_host.insert(y_host.end(), kGuard, kGuardValue);
        u_host.insert(u_host.end(), kGuard, kGuardValue);
        test::DeviceBuffer<float> dx(x), dA(A), dB(B), dy(y_host), du(u_host);
        lora_forward_cuda(dx.get(), M, kn.K, dA.get(), dB.get(), r, kn.N, s, dy.get(), du.get(), nullptr);
        test::DeviceBuffer<float> du_alone(u_host);
        lora_project_cuda(dx.get(), M, kn.K, dA.get(), r, du_alone.get(), nullptr);
        QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
        const std::vector<float> y_got = dy.download(), u_got = du.download();
        EXPECT_EQ(du_alone.download(), u_got) << "lora_project_cuda's u (and guards) against lora_forward_cuda's";
        const double ey = rel_err(y_got.data(), y_want.data(), y_want.size());
        const double eu = rel_err(u_got.data(), u_want.data(), u_want.size());
        EXPECT_LE(ey, kLoraFp32RelTol) << "y";
        EXPECT_LE(eu, kLoraFp32RelTol) << "u";
        for (int g = 0; g < kGuard; ++g) {
          EXPECT_EQ(y_got[y_want.size() + g], kGuardValue) << "write past y";
          EXPECT_EQ(u_got[u_want.size() + g], kGuardValue) << "write past u";
        }
        worst_y = std::max(worst_y, ey);
        worst_u = std::max(worst_u, eu);
        ++cases;
      }
    }
  }
  std::printf("[ lora_forward_cuda ] %d shapes: max rel error y %.3g, u %.3g (tolerance %.0e)\n", cases, worst_y,
              worst_u, kLoraFp32RelTol);
}

TEST(LoraForwardCuda, RefusesBadArguments) {
  QWENQ_REQUIRE_GPU();
  test::DeviceBuffer<float> buf(64);
  float* p = buf.get();
  std::string e = error_of([&] { lora_forward_cuda(p, 2, 4, p, p, 0, 4, 1.f, p + 16, p + 32, nullptr); });
  EXPECT_NE(e.find("lora_forward_cuda: bad shape M=2 K=4 N=4 r=0"), std::string::npos) << e;
  e = error_of([&] { lora_forward_cuda(p, 2, 4, p, p, 2, 4, 1.f, p + 16, p + 2, nullptr); });  // u inside x
  EXPECT_NE(e.find("the scratch u [2, 2] overlaps x or y"), std::string::npos) << e;
  lora_forward_cuda(p, 0, 4, p, p, 2, 4, 1.f, p + 16, p + 32, nullptr);  // M = 0: nothing queued, no error
}

// ---- models ----

// PEFT's A, then B ~ 0.05·N(0, 1) (tests/gpu/test_lora_model_cuda.cpp's adapter) so that the adapter matters;
// alpha 2r.
LoraAdapter test_adapter(const QwenConfig& c, std::vector<std::string> targets, int64_t r, bool rslora,
                         uint64_t seed, float b_scale = 0.05f) {
  return test::adapter_with_random_b(c, std::move(targets), r, 2.0 * r, rslora, seed, b_scale);
}

// The CPU's merged model of `dir` + `a`.
std::unique_ptr<QwenModel> merged_model(const std::string& dir, const LoraAdapter& a) {
  auto m = std::make_unique<QwenModel>(dir);
  merge_adapter_in_memory(*m, a);
  return m;
}

// GPU (base of `dir` uploaded, `a` attached unmerged) vs the CPU's merged model on two batches (41 tokens: the
// small-M paths; 165: the tensor-core W4A16 path): logits and per-token NLL. Then detach_adapter: the base's logits.
void expect_forward_matches_merged(const std::string& dir, const LoraAdapter& a, double tol, const std::string& what) {
  SCOPED_TRACE(what);
  const QwenModel base(dir);
  const auto merged = merged_model(dir, a);
  QwenModelCuda gpu(base);
  gpu.attach_adapter(a, "adapter of " + what);
  ASSERT_NE(gpu.adapter(), nullptr);
  EXPECT_EQ(gpu.adapter()->rank(), a.uniform_rank());
  EXPECT_EQ(gpu.adapter()->num_linears(), static_cast<int64_t>(a.slots().size()));  // a MoE layer's experts each
  const int64_t V = base.config().vocab_size;
  const std::vector<std::vector<int64_t>> batches = {{1, 7, 33}, {100, 65}};
  for (size_t bi = 0; bi < batches.size(); ++bi) {
    const PackedBatch b = test::random_batch(batches[bi], V, 300 + bi);
    const std::vector<float> want = merged->forward_logits(b), got = gpu.forward_logits(b);
    const std::vector<float> plain = base.forward_logits(b);
    double max_logit = 0, max_err = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      max_logit = std::max(max_logit, static_cast<double>(std::fabs(want[i])));
      const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
      max_err = std::isnan(e) ? INFINITY : std::max(max_err, e);
    }
    const double effect = rel_err(plain, want);
    EXPECT_LE(max_err, tol * max_logit) << "batch " << bi << " logits, T=" << b.num_tokens();
    EXPECT_GE(effect, kMinAdapterEffect * tol) << "the adapter hardly changes the logits: the test would prove nothing";
    std::vector<float> nll_cpu, nll_gpu;
    EXPECT_EQ(gpu.next_token_nll(b, &nll_gpu), merged->next_token_nll(b, &nll_cpu));
    ASSERT_EQ(nll_gpu.size(), nll_cpu.size());
    double max_nll_err = 0;
    for (size_t t = 0; t < nll_cpu.size(); ++t) {
      const double e = std::fabs(static_cast<double>(nll_gpu[t]) - nll_cpu[t]);
      max_nll_err = std::isnan(e) ? INFINITY : std::max(max_nll_err, e);
    }
    EXPECT_LE(max_nll_err, 2 * max_err + kNllRelSlack * (1 + max_logit)) << "batch " << bi << " per-token NLL";
    std::printf("[ %s ] T=%lld: unmerged GPU vs merged CPU max |dlogit| / max |logit| %.3g (tolerance %.0e); adapter "
                "effect %.3g; max |dnll| %.3g\n",
                what.c_str(), static_cast<long long>(b.num_tokens()), max_err / max_logit, tol, effect, max_nll_err);
  }
  gpu.detach_adapter();
  EXPECT_EQ(gpu.adapter(), nullptr);
  const PackedBatch b = test::random_batch({1, 7, 33}, V, 300);
  EXPECT_LE(rel_err(gpu.forward_logits(b), base.forward_logits(b)), tol) << "after detach_adapter: the base";
}

TEST(LoraInferenceCuda, DenseBasesUnmergedAreTheMergedModel) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string dir = test::make_random_model(tmp + "/f32", "tiny", DType::F32, 5);
  const QwenConfig c = QwenModel(dir).config();
  expect_forward_matches_merged(dir, test_adapter(c, kAllTargets, 4, false, 7), kFp32RelTol, "tiny F32, all targets");
  expect_forward_matches_merged(dir, test_adapter(c, {"q_proj", "v_proj", "down_proj"}, 8, true, 8), kFp32RelTol,
                                "tiny F32, q/v/down rsLoRA r 8");
  // A BF16 base: cuBLASLt rounds x to bf16 for the base product (the merged CPU Linears are fp32).
  const std::string bf16 = test::make_random_model(tmp + "/bf16", "tiny", DType::BF16, 5);
  expect_forward_matches_merged(bf16, test_adapter(c, kAllTargets, 4, false, 7), kBf16RelTol, "tiny BF16, all targets");
}

TEST(LoraInferenceCuda, PackedGptqAndNf4BasesStayPacked) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string src = test::make_random_model(tmp + "/src", "tiny", DType::F32, 5);
  const std::string gptq = quantized(src, QuantizeOptions::Method::Rtn, tmp + "/gptq");
  const std::string nf4 = quantized(src, QuantizeOptions::Method::Nf4, tmp + "/nf4");
  const QwenConfig c = QwenModel(src).config();
  for (const auto& [dir, name] : {std::pair{gptq, "rtn-gptq g32"}, std::pair{nf4, "nf4"}}) {
    const QwenModel base(dir);
    ASSERT_FALSE(base.weights().layers[0].q.is_dense());
    const int64_t bytes_before = QwenModelCuda(base).weight_bytes();
    QwenModelCuda gpu(base);
    gpu.attach_adapter(test_adapter(c, kAllTargets, 4, false, 9), "a");
    EXPECT_EQ(gpu.weight_bytes(), bytes_before) << "the base must stay as uploaded (Q4)";
    ASSERT_TRUE(gpu.device_layer(0).q.q4.has_value());
    EXPECT_EQ(gpu.device_layer(0).q.lora.r, 4);
    expect_forward_matches_merged(dir, test_adapter(c, kAllTargets, 4, false, 9), kBf16RelTol,
                                  std::string(name) + ", all targets");
    expect_forward_matches_merged(dir, test_adapter(c, {"k_proj", "o_proj", "up_proj"}, 8, true, 10), kBf16RelTol,
                                  std::string(name) + ", k/o/up rsLoRA r 8");
  }
}

TEST(LoraInferenceCuda, Qwen2BiasesAtD64OnAGptqBase) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  test::write_gpu_test_model(tmp + "/qwen2", test::kGpuQwen2Bias, DType::F32, 21);
  const std::string gptq = quantized(tmp + "/qwen2", QuantizeOptions::Method::Rtn, tmp + "/qwen2-gptq");
  const QwenConfig c = QwenModel(gptq).config();
  expect_forward_matches_merged(gptq, test_adapter(c, kAllTargets, 4, false, 11, 0.3f), kBf16RelTol,
                                "qwen2 biases D=64 rtn-gptq");
}

TEST(LoraInferenceCuda, RefusedAdapterChangesNothing) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string dir = test::make_random_model(tmp + "/f32", "tiny", DType::F32, 5);
  const QwenModel base(dir);
  const QwenConfig c = base.config();
  QwenModelCuda gpu(base);
  const LoraAdapter good = test_adapter(c, kAllTargets, 4, false, 12);
  gpu.attach_adapter(good, "good");
  const PackedBatch b = test::random_batch({9, 20}, c.vocab_size, 5);
  const std::vector<float> before = gpu.forward_logits(b);
  QwenConfig other = c;
  other.num_layers += 1;
  std::string e = error_of([&] { gpu.attach_adapter(test_adapter(other, kAllTargets, 4, false, 13), "runs/other"); });
  EXPECT_NE(e.find("runs/other: the LoRA adapter was made for another base model"), std::string::npos) << e;
  LoraAdapter bad_b = test_adapter(c, kAllTargets, 4, false, 14);
  bad_b.at(1, LoraTarget::GateProj).B.resize(3);
  e = error_of([&] { gpu.attach_adapter(bad_b, "runs/bad"); });
  EXPECT_NE(e.find("runs/bad: the LoRA tensor base_model.model.model.layers.1.mlp.gate_proj.lora_B.weight"),
            std::string::npos)
      << e;
  EXPECT_EQ(gpu.adapter()->rank(), 4);
  // The attached adapter moves these logits by >= 0.3 of max |logit| (kMinAdapterEffect's measurement); a refused
  // one that replaced or cleared it would too.
  EXPECT_LE(rel_err(gpu.forward_logits(b), before), kFp32RelTol) << "a refused adapter must leave the attached one";
}

// ---- decoding ----

// Prefill of `prompt_len` random tokens then kSteps steps on the GPU with the adapter attached (after the decoder was
// made when `attach_late`), against the CPU's merged forward_step.
void expect_decode_matches_merged(const std::string& dir, const LoraAdapter& a, int prompt_len, double prefill_tol,
                                  double step_tol, bool attach_late, const std::string& what) {
  SCOPED_TRACE(what + ", prompt of " + std::to_string(prompt_len));
  const QwenModel base(dir);
  const auto merged = merged_model(dir, a);
  QwenModelCuda gpu(base);
  const int64_t V = base.config().vocab_size, capacity = prompt_len + kSteps;
  Rng rng(2000 + prompt_len);
  std::vector<int32_t> prompt(static_cast<size_t>(prompt_len));
  for (auto& t : prompt) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(V)));
  if (!attach_late) gpu.attach_adapter(a, "a");
  QwenDecodeCuda dec(gpu, capacity);
  if (attach_late) {
    const std::vector<float> plain = dec.prefill(prompt);  // without the adapter: the base
    KvCache bc = base.make_cache(capacity);
    EXPECT_LE(rel_err(plain, base.forward_step(prompt, &bc)), prefill_tol) << "base prefill before attach_adapter";
    gpu.attach_adapter(a, "a");
  }
  KvCache cache = merged->make_cache(capacity);
  std::vector<float> want = merged->forward_step(prompt, &cache), got = dec.prefill(prompt);
  const double e0 = rel_err(got, want);
  EXPECT_LE(e0, prefill_tol) << "prefill logits";
  double worst = 0;
  for (int s = 0; s < kSteps; ++s) {
    const int32_t tok = static_cast<int32_t>(rng.below(static_cast<uint64_t>(V)));
    want = merged->forward_step({tok}, &cache);
    got = dec.step(tok);
    const double e = rel_err(got, want);
    worst = std::max(worst, e);
    EXPECT_LE(e, step_tol) << "logits after step " << s;
  }
  std::printf("[ %s, prompt %d ] unmerged GPU vs merged CPU: prefill %.3g (tolerance %.0e), steps %.3g (%.0e)\n",
              what.c_str(), prompt_len, e0, prefill_tol, worst, step_tol);
}

TEST(LoraInferenceCuda, DecodeStepsOnDenseAndPackedBases) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string f32 = test::make_random_model(tmp + "/f32", "tiny", DType::F32, 9);
  const std::string gptq = quantized(f32, QuantizeOptions::Method::Rtn, tmp + "/gptq");
  const std::string nf4 = quantized(f32, QuantizeOptions::Method::Nf4, tmp + "/nf4");
  const QwenConfig c = QwenModel(f32).config();
  const LoraAdapter all = test_adapter(c, kAllTargets, 4, false, 15);
  const LoraAdapter some = test_adapter(c, {"q_proj", "v_proj", "down_proj"}, 8, true, 16);
  expect_decode_matches_merged(f32, all, 37, kFp32RelTol, kFp32RelTol, false, "tiny F32");
  const std::string bf16 = test::make_random_model(tmp + "/bf16", "tiny", DType::BF16, 9);
  expect_decode_matches_merged(bf16, all, 37, kBf16RelTol, kBf16RelTol, false, "tiny BF16");
  for (const auto& [dir, name] : {std::pair{gptq, "rtn-gptq g32"}, std::pair{nf4, "nf4"}}) {
    // 37 rows: the fp32 GEMV for the base in the prefill and the steps, so nothing is rounded to bf16.
    expect_decode_matches_merged(dir, all, 37, kFp32RelTol, kFp32RelTol, false, name);
    expect_decode_matches_merged(dir, some, 1, kFp32RelTol, kFp32RelTol, false, std::string(name) + " rsLoRA");
    // 100 rows: the tensor-core W4A16 (bf16 x and ŵ) in the prefill.
    expect_decode_matches_merged(dir, all, 100, kBf16RelTol, kBf16RelTol, false, name);
    expect_decode_matches_merged(dir, some, 37, kFp32RelTol, kFp32RelTol, true, std::string(name) + " attached late");
  }
  test::write_gpu_test_model(tmp + "/qwen2", test::kGpuQwen2Bias, DType::F32, 21);
  const std::string qwen2 = quantized(tmp + "/qwen2", QuantizeOptions::Method::Rtn, tmp + "/qwen2-gptq");
  const LoraAdapter q2 = test_adapter(QwenModel(qwen2).config(), kAllTargets, 4, false, 17);
  expect_decode_matches_merged(qwen2, q2, 1, kFp32RelTol, kFp32RelTol, false, "qwen2 biases D=64 rtn-gptq");
  expect_decode_matches_merged(qwen2, q2, 37, kBf16RelTol, kBf16RelTol, false, "qwen2 biases D=64 rtn-gptq (flash)");
}

// Mixtures of experts (tiny Qwen3-MoE with a dense layer among its MoE layers, tiny Qwen2-MoE with the shared
// expert; F32: the fp32 path): every expert's and the shared expert's Linear adapted (the MLP targets), unmerged on
// the GPU (the branch after each expert Linear in the MoE MLP) against the CPU's merged model, in the forward and in
// decoding (prefill and steps through moe_forward). The routing is recomputed from each side's router logits.
TEST(LoraInferenceCuda, MixtureOfExpertsUnmergedAreTheMergedModel) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  for (const char* preset : {"tiny-moe", "tiny-moe-shared"}) {
    const std::string dir = test::make_random_model(tmp + "/" + preset, preset, DType::F32, 23);
    const QwenConfig c = QwenModel(dir).config();
    ASSERT_TRUE(c.is_moe());
    const LoraAdapter all = test_adapter(c, kAllTargets, 4, false, 24, 0.3f);
    expect_forward_matches_merged(dir, all, kFp32RelTol, std::string(preset) + " F32, all targets");
    expect_decode_matches_merged(dir, all, 37, kFp32RelTol, kFp32RelTol, false, std::string(preset) + " F32");
    const LoraAdapter mlp = test_adapter(c, {"up_proj", "down_proj"}, 8, true, 25, 0.3f);
    expect_decode_matches_merged(dir, mlp, 5, kFp32RelTol, kFp32RelTol, true,
                                 std::string(preset) + " F32, experts' up/down rsLoRA, attached late");
  }
}

// DoRA adapters (use_dora; magnitudes PEFT's start times seeded factors in [0.8, 1.2], B ~ 0.3·N(0, 1)) unmerged on
// the GPU — the branch, then y = g·y + (1 − g)·b with g = m / ‖W + s·B A‖ computed at attach from the weights as
// uploaded (kernels/dora.h) — against the CPU's merged DoRA model (W' = g ⊙ (W + s·B A)): tiny F32 (every target, the
// fp32 path), RTN-GPTQ and NF4 bases (the row norms from the Q4 codes), the D = 64 Qwen2 with q/k/v biases (the bias
// kept out of the scaling), a tiny Qwen2-MoE (every expert's Linear a DoRA layer), in the forward and in decoding;
// a magnitude of the wrong size is refused and leaves the attached adapter.
TEST(LoraInferenceCuda, DoraUnmergedIsTheMergedModel) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string f32 = test::make_random_model(tmp + "/f32", "tiny", DType::F32, 31);
  const QwenModel fm(f32);
  const LoraAdapter all = test::dora_with_random_b(fm, kAllTargets, 4, 8, 32, 0.3f);
  expect_forward_matches_merged(f32, all, kFp32RelTol, "tiny F32, DoRA all targets");
  expect_decode_matches_merged(f32, all, 37, kFp32RelTol, kFp32RelTol, false, "tiny F32, DoRA");
  for (const auto& [method, name] : {std::pair{QuantizeOptions::Method::Rtn, "rtn-gptq g32"},
                                     std::pair{QuantizeOptions::Method::Nf4, "nf4"}}) {
    const std::string dir = quantized(f32, method, tmp + (method == QuantizeOptions::Method::Rtn ? "/gptq" : "/nf4"));
    const LoraAdapter a = test::dora_with_random_b(QwenModel(dir), {"q_proj", "o_proj", "up_proj", "down_proj"}, 8,
                                                   16, 33, 0.3f);
    expect_forward_matches_merged(dir, a, kBf16RelTol, std::string(name) + ", DoRA q/o/up/down r 8");
    expect_decode_matches_merged(dir, a, 37, kFp32RelTol, kFp32RelTol, false, std::string(name) + ", DoRA");
  }
  test::write_gpu_test_model(tmp + "/qwen2", test::kGpuQwen2Bias, DType::F32, 34);
  const std::string qwen2 = quantized(tmp + "/qwen2", QuantizeOptions::Method::Rtn, tmp + "/qwen2-gptq");
  expect_forward_matches_merged(qwen2, test::dora_with_random_b(QwenModel(qwen2), kAllTargets, 4, 8, 35, 0.3f),
                                kBf16RelTol, "qwen2 biases D=64 rtn-gptq, DoRA");
  const std::string moe = test::make_random_model(tmp + "/moe", "tiny-moe-shared", DType::F32, 36);
  const LoraAdapter ma = test::dora_with_random_b(QwenModel(moe), kAllTargets, 4, 8, 37, 0.3f);
  expect_forward_matches_merged(moe, ma, kFp32RelTol, "tiny-moe-shared F32, DoRA on every expert");
  expect_decode_matches_merged(moe, ma, 5, kFp32RelTol, kFp32RelTol, true, "tiny-moe-shared F32, DoRA attached late");

  QwenModelCuda gpu(fm);
  gpu.attach_adapter(all, "good");
  const PackedBatch b = test::random_batch({9, 20}, fm.config().vocab_size, 5);
  const std::vector<float> before = gpu.forward_logits(b);
  LoraAdapter bad = all;
  bad.at(1, LoraTarget::KProj).m.resize(2);
  const std::string e = error_of([&] { gpu.attach_adapter(bad, "runs/bad-dora"); });
  EXPECT_NE(e.find("runs/bad-dora: the DoRA magnitude base_model.model.model.layers.1.self_attn.k_proj."
                   "lora_magnitude_vector holds 2 values"),
            std::string::npos)
      << e;
  EXPECT_EQ(gpu.forward_logits(b), before) << "a refused DoRA adapter must leave the attached one";
}

// Greedy tokens of the GPU (base + adapter unmerged) and of the CPU's merged model: equal up to a tie.
void expect_greedy_matches_merged(const std::string& dir, const LoraAdapter& a, const std::vector<int32_t>& prompt,
                                  int n, const std::string& what) {
  const QwenModel base(dir);
  const auto merged = merged_model(dir, a);
  QwenModelCuda gpu(base);
  gpu.attach_adapter(a, "a");
  SamplingOptions opt;
  opt.max_new_tokens = n;  // no stop ids
  const std::vector<int32_t> want = generate(*merged, prompt, opt), got = generate_cuda(gpu, prompt, opt);
  const std::vector<int32_t> plain = generate(base, prompt, opt);
  EXPECT_NE(plain, want) << what << ": the adapter does not change the greedy tokens; the test would prove nothing";
  ASSERT_EQ(want.size(), static_cast<size_t>(n));
  ASSERT_EQ(got.size(), want.size());
  size_t same = 0;
  while (same < want.size() && got[same] == want[same]) ++same;
  if (same < want.size()) {
    std::vector<int32_t> prefix = prompt;
    prefix.insert(prefix.end(), want.begin(), want.begin() + static_cast<std::ptrdiff_t>(same));
    const std::vector<float> lg = merged->forward_logits(PackedBatch::from_sequences({prefix}));
    const float* last = lg.data() + (prefix.size() - 1) * merged->config().vocab_size;
    double mx = 0;
    for (int64_t v = 0; v < merged->config().vocab_size; ++v) mx = std::max(mx, double(std::fabs(last[v])));
    EXPECT_LE(last[want[same]] - last[got[same]], kFp32RelTol * mx)
        << what << " token " << same << ": CPU " << want[same] << ", GPU " << got[same] << ": not a tie";
  }
  std::printf("[ %s greedy ] %zu of %d tokens identical to the CPU merged model's\n", what.c_str(), same, n);
}

TEST(LoraInferenceCuda, GreedyTokensOnTinyGptq) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string gptq =
      quantized(test::make_random_model(tmp + "/f32", "tiny", DType::F32, 9), QuantizeOptions::Method::Rtn, tmp + "/g");
  const QwenConfig c = QwenModel(gptq).config();
  expect_greedy_matches_merged(gptq, test_adapter(c, kAllTargets, 4, false, 18, 0.3f), {1, 17, 42, 99, 7}, 64,
                               "tiny rtn-gptq");
}

TEST(LoraInferenceCuda, GreedyStories260KOnAGptqBase) {
  QWENQ_REQUIRE_GPU();
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string tmp = test::scratch_dir();
  const std::string stories = test::import_stories260k(tmp + "/stories");
  // intermediate 172 does not pack into int32 words: --pad-intermediate (exact zero padding to 192).
  const std::string gptq = quantized(stories, QuantizeOptions::Method::Rtn, tmp + "/gptq", /*pad=*/true);
  const QwenConfig c = QwenModel(gptq).config();
  ASSERT_EQ(c.intermediate_size, 192);
  const std::vector<int32_t> prompt = Tokenizer::from_dir(stories).encode("Once upon a time", true);
  // B ~ 0.05·N(0, 1): the text stays English and leaves the base's greedy path at token 15 (measured on the CPU).
  expect_greedy_matches_merged(gptq, test_adapter(c, kAllTargets, 4, false, 19), prompt, 100,
                               "stories260K rtn-gptq");
}

}  // namespace
}  // namespace qwenq
