// QwenDecodeCuda and generate_cuda (trainer/qwen_decode_cuda.h) against the CPU's incremental decoding
// (QwenModel::forward_step with a KvCache, trainer/generate.h's generate) on the same checkpoints:
//   - logits after a prefill of 1, 37 and 100 tokens and after each of 24 steps fed the same tokens, for the tiny
//     random Qwen2 preset (D = 16: naive attention in the prefill) in F32 and BF16, that preset quantized by RTN
//     into GPTQ v1 (group 32) and into NF4 (the Q4 weights: the fp32 GEMV qgemm_int4_decode_cuda at M <= 64, the
//     bf16 tensor-core kernel for the 100-token prefill), and the Qwen2.5-0.5B shape cut to 2 layers in BF16
//     (H/Hkv/D = 14/2/64: flash attention in the prefill, GQA 7:1, a 151936-token vocabulary);
//   - D = 64 models with every tensor non-trivial (tests/gpu/gpu_test_models.h): Qwen2 with q/k/v biases in F32 and
//     RTN-quantized to GPTQ (the bias added after the Q4 GEMV), Qwen3 (q/k norm applied to the cache row) in BF16;
//     a one-token prompt keeps the whole run on the fp32 path (no flash prefill), a 37-token one goes through flash;
//   - mixture-of-experts presets in F32 (tiny-moe: Qwen3-MoE; tiny-moe-shared: Qwen2-MoE with the shared expert), the
//     MoE MLPs through QwenModelCuda::moe_forward;
//   - greedy generation of 200 tokens on the real stories260K imported from llama2.c: the GPU's tokens are the CPU's.
//   - the bf16 KV cache (KvCacheDType::BF16) against the CPU's forward_step with a BF16 KvCache (the same rounding
//     of every k/v row): tiny F32 (naive prefill, fp32 steps: the prefill's widened copies and
//     attention_decode_bf16_cuda), GPTQ and NF4 (the Q4 GEMV), the 0.5B shape and Qwen2 biases / Qwen3 q/k norm at
//     D = 64 (flash reading the bf16 cache in place); cache_bytes halves; greedy stories260K tokens vs the CPU's with
//     a BF16 cache.
//
// Tolerances (relative to max |logit| of the CPU at that position), as tests/gpu/test_model_cuda.cpp:
//   kFp32RelTol 1e-4  nothing rounded to bf16 on the GPU: F32 weights, D not 64/128, and Q4 weights at M <= 64 (the
//                     GEMV takes fp32 activations and computes the exact fp32 ŵ the CPU dequantizes to): only the
//                     order of the sums and expf differ (~1e-6 observed between fp32 implementations of this model).
//   kBf16RelTol 2e-2  any bf16 rounding (BF16 weights round x for cuBLASLt; the 100-token Q4 prefill rounds x and ŵ;
//                     flash attention rounds q, k, v and P). The steps after a flash prefill attend over the fp32
//                     cache with the fp32 decode kernel, so only the prefill's roundings carry over.
//   kBf16CacheRelTol 5e-4  a BF16 cache on the fp32 path: both sides round their own k/v to bf16, and the GPU's
//                     fp32 k/v differ from the CPU's by ~1e-7 relative, so now and then one element rounds to the
//                     neighbouring bf16 (2^-8 relative apart); one such element moves one score by ~1e-3 and the
//                     logits by ~1e-5..1e-4. Rounding every element (GPU vs the CPU's F32 cache) moves them by
//                     2e-4..8e-4 (tests/test_kv_cache_bf16.cpp), so on this path the test also requires the GPU to be
//                     closer to the CPU's BF16 cache than to its F32 cache at 3/4 of the positions (it does round).
// Greedy tokens: stories260K is F32 with D = 8, the fp32 path. The first position where the tokens differ must be a
// tie: the CPU's logit of the GPU's token within kFp32RelTol·max |logit| of the CPU's best. N = 200 tokens are
// compared; the test prints how many agree (all of them unless a tie occurs).
// Every test skips without a device; the stories260K test also without the shared data.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/env_switch.h"
#include "core/error.h"
#include "core/rng.h"
#include "tests/gpu/gpu_test.h"
#include "tests/gpu/gpu_test_models.h"
#include "tests/support/test_models.h"
#include "tests/support/scoped_env.h"
#include "tests/support/test_paths.h"
#include "trainer/generate.h"
#include "trainer/qwen_decode_cuda.h"
#include "trainer/qwen_model.h"
#include "trainer/qwen_model_cuda.h"
#include "trainer/quantize_model.h"
#include "trainer/tokenizer.h"

namespace qwenq {
namespace {

using test::error_of;
using test::quantized;

constexpr double kFp32RelTol = 1e-4;
constexpr double kBf16RelTol = 2e-2;
constexpr double kBf16CacheRelTol = 5e-4;
constexpr int kSteps = 24;
constexpr int kGreedyTokens = 200;

std::string random_model(const std::string& dir, const std::string& preset, DType dtype, int64_t layers = 0) {
  return test::make_random_model(dir, preset, dtype, /*seed=*/9, layers);
}

// max |got - want| / max |want|.
double rel_err(const std::vector<float>& got, const std::vector<float>& want) {
  double mx = 0, err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    mx = std::max(mx, static_cast<double>(std::fabs(want[i])));
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    err = std::isnan(e) ? INFINITY : std::max(err, e);
  }
  return err / (mx > 0 ? mx : 1);
}

// Prefill of `prompt_len` random tokens, then kSteps steps of random tokens, on both, with a cache of `kv` on both;
// every position's logits within prefill_tol (the prefill) and step_tol (the steps) of the CPU's. With
// `must_round` (a BF16 cache on the fp32 path) the GPU's logits must also be closer to the CPU's with the BF16 cache
// than to the CPU's with an F32 cache at 3/4 of the positions or more.
void expect_decode_matches_cpu(const std::string& dir, int prompt_len, double prefill_tol, double step_tol,
                               const std::string& what, KvCacheDType kv = KvCacheDType::F32,
                               bool must_round = false, bool bf16_activations = false) {
  SCOPED_TRACE(what + ", prompt of " + std::to_string(prompt_len) + ", " + kv_cache_dtype_name(kv) + " cache");
  const QwenModel cpu(dir);
  const QwenModelCuda gpu(cpu);
  const int64_t V = cpu.config().vocab_size, capacity = prompt_len + kSteps;
  Rng rng(1000 + prompt_len);
  std::vector<int32_t> prompt(static_cast<size_t>(prompt_len));
  for (auto& t : prompt) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(V)));
  KvCache cache = cpu.make_cache(capacity, kv), f32_cache = cpu.make_cache(capacity);
  QwenDecodeCuda dec(gpu, capacity, kv, bf16_activations);
  EXPECT_EQ(dec.kv_cache_dtype(), kv);
  const int64_t elem = kv == KvCacheDType::BF16 ? 2 : 4;
  EXPECT_EQ(dec.cache_bytes(), 2 * cpu.config().num_layers * capacity * cpu.config().kv_dim() * elem);
  EXPECT_EQ(dec.cache_bytes(), cache.bytes());
  int closer = 0, positions = 0;
  double worst_f32 = 0;
  const auto versus_f32 = [&](const std::vector<float>& got, double e, const std::vector<float>& want_f32) {
    if (!must_round) return;
    const double ef = rel_err(got, want_f32);
    worst_f32 = std::max(worst_f32, ef);
    closer += e < ef;
    ++positions;
  };
  std::vector<float> want = cpu.forward_step(prompt, &cache), got = dec.prefill(prompt);
  ASSERT_EQ(got.size(), static_cast<size_t>(V));
  double worst_step = 0;
  const double e0 = rel_err(got, want);
  EXPECT_LE(e0, prefill_tol) << "prefill logits";
  if (must_round) versus_f32(got, e0, cpu.forward_step(prompt, &f32_cache));
  for (int s = 0; s < kSteps; ++s) {
    const int32_t tok = static_cast<int32_t>(rng.below(static_cast<uint64_t>(V)));
    want = cpu.forward_step({tok}, &cache);
    got = dec.step(tok);
    const double e = rel_err(got, want);
    worst_step = std::max(worst_step, e);
    EXPECT_LE(e, step_tol) << "logits after step " << s << " (position " << prompt_len + s << ")";
    if (must_round) versus_f32(got, e, cpu.forward_step({tok}, &f32_cache));
  }
  EXPECT_EQ(dec.length(), capacity);
  if (env_switch("QWENQ_DECODE_GRAPH") == 1 && cpu.config().num_moe_layers() == 0) {
    EXPECT_EQ(dec.graph_captures(), 1) << "QWENQ_DECODE_GRAPH=1: the steps were not replayed from one graph";
  }
  std::printf("[ %s, prompt %d, %s cache ] max |dlogit| / max |logit|: prefill %.3g (tolerance %.0e), steps %.3g "
              "(%.0e)",
              what.c_str(), prompt_len, kv_cache_dtype_name(kv), e0, prefill_tol, worst_step, step_tol);
  if (must_round) {
    EXPECT_GE(4 * closer, 3 * positions) << "the GPU's bf16-cache logits are closer to the CPU's F32 cache than to "
                                            "its BF16 cache at "
                                         << positions - closer << " of " << positions << " positions";
    std::printf("; vs the CPU's F32 cache up to %.3g, closer to the BF16 cache at %d of %d positions", worst_f32,
                closer, positions);
  }
  std::printf("\n");
}

TEST(QwenDecodeCuda, TinyF32IsTheCpuForwardStep) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string dir = random_model(tmp + "/f32", "tiny", DType::F32);
  for (int len : {1, 37, 100}) expect_decode_matches_cpu(dir, len, kFp32RelTol, kFp32RelTol, "tiny F32");
}

// Mixture-of-experts layers in the prompt and the steps (QwenModelCuda::moe_forward: routing on the host from the
// device's router logits, the experts on their rows, moe_combine), F32 so that only the order of sums differs.
TEST(QwenDecodeCuda, MixtureOfExpertsF32IsTheCpuForwardStep) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  for (const char* preset : {"tiny-moe", "tiny-moe-shared"}) {
    const std::string dir = random_model(tmp + "/" + preset, preset, DType::F32);
    for (int len : {1, 37}) expect_decode_matches_cpu(dir, len, kFp32RelTol, kFp32RelTol, preset);
  }
}

TEST(QwenDecodeCuda, TinyBf16) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string dir = random_model(tmp + "/bf16", "tiny", DType::BF16);
  for (int len : {1, 37}) expect_decode_matches_cpu(dir, len, kBf16RelTol, kBf16RelTol, "tiny BF16");
}

TEST(QwenDecodeCuda, QuantizedTinyThroughTheQ4Gemv) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string src = random_model(tmp + "/src", "tiny", DType::F32);
  const std::string gptq = quantized(src, QuantizeOptions::Method::Rtn, tmp + "/gptq");
  const std::string nf4 = quantized(src, QuantizeOptions::Method::Nf4, tmp + "/nf4");
  ASSERT_FALSE(QwenModel(gptq).weights().layers[0].q.is_dense());
  for (const auto& [dir, name] : {std::pair{gptq, "rtn-gptq g32"}, std::pair{nf4, "nf4"}}) {
    expect_decode_matches_cpu(dir, 37, kFp32RelTol, kFp32RelTol, name);
    // 100 prompt rows: the tensor-core W4A16 (bf16 x and ŵ) in the prefill, then the fp32 GEMV steps over a cache
    // written by that prefill.
    expect_decode_matches_cpu(dir, 100, kBf16RelTol, kBf16RelTol, name);
  }
}

// bf16_activations (generate's --bf16-activations): the Q4 products of the steps (and of the prefill up to 64 rows)
// take x rounded to bf16 through qgemm_int4_cuda's tensor-core decode kernel. The logits stay within the bf16 bound
// of the CPU's fp32 ones, and they are not the fp32 GEMV's (the rounding is applied).
TEST(QwenDecodeCuda, Bf16ActivationsTakeTheTensorCoreProduct) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string src = random_model(tmp + "/src", "tiny", DType::F32);
  const std::string gptq = quantized(src, QuantizeOptions::Method::Rtn, tmp + "/gptq");
  const std::string nf4 = quantized(src, QuantizeOptions::Method::Nf4, tmp + "/nf4");
  for (const auto& [dir, name] : {std::pair{gptq, "rtn-gptq g32"}, std::pair{nf4, "nf4"}}) {
    expect_decode_matches_cpu(dir, 37, kBf16RelTol, kBf16RelTol, std::string(name) + ", bf16 activations",
                              KvCacheDType::F32, false, /*bf16_activations=*/true);
    const QwenModel cpu(dir);
    const QwenModelCuda gpu(cpu);
    QwenDecodeCuda exact(gpu, 8), rounded(gpu, 8, KvCacheDType::F32, /*bf16_activations=*/true);
    const std::vector<int32_t> prompt = {3, 1, 4, 1, 5};
    EXPECT_NE(exact.prefill(prompt), rounded.prefill(prompt)) << name << ": bf16 activations changed nothing";
    EXPECT_NE(exact.step(9), rounded.step(9)) << name;
  }
}

// QWENQ_DECODE_MMA_F32=1: the Q4 products of the steps and of a prefill up to 64 rows take the fp32 x split into
// three bf16 pieces through the tensor-core decode kernel: still the fp32 product, so the CPU's logits within the
// fp32 bound, with and without a graph; they are not the bf16-activation logits, and not the FMA kernel's bits (the
// switch took effect: the environment is read at each product).
TEST(QwenDecodeCuda, ExactStepsOnTensorCoresAreTheCpuForwardStep) {
  QWENQ_REQUIRE_GPU();
  const test::ScopedEnv mma("QWENQ_DECODE_MMA", nullptr);  // the F32 split needs the decode product on
  const test::ScopedEnv f32("QWENQ_DECODE_MMA_F32", "1");
  const std::string tmp = test::scratch_dir();
  const std::string src = random_model(tmp + "/src", "tiny", DType::F32);
  const std::string gptq = quantized(src, QuantizeOptions::Method::Rtn, tmp + "/gptq");
  const std::string nf4 = quantized(src, QuantizeOptions::Method::Nf4, tmp + "/nf4");
  for (const auto& [dir, name] : {std::pair{gptq, "rtn-gptq g32, F32 split"}, std::pair{nf4, "nf4, F32 split"}}) {
    expect_decode_matches_cpu(dir, 37, kFp32RelTol, kFp32RelTol, name);
    {
      const test::ScopedEnv graph("QWENQ_DECODE_GRAPH", "1");
      expect_decode_matches_cpu(dir, 5, kFp32RelTol, kFp32RelTol, std::string(name) + ", graph steps");
    }
    const QwenModel cpu(dir);
    const QwenModelCuda gpu(cpu);
    QwenDecodeCuda exact(gpu, 8), rounded(gpu, 8, KvCacheDType::F32, /*bf16_activations=*/true);
    const std::vector<int32_t> prompt = {3, 1, 4, 1, 5};
    const std::vector<float> split = exact.prefill(prompt);
    EXPECT_NE(split, rounded.prefill(prompt)) << name << ": the split rounded x to bf16";
    const test::ScopedEnv off("QWENQ_DECODE_MMA_F32", nullptr);
    QwenDecodeCuda fma(gpu, 8);
    EXPECT_NE(split, fma.prefill(prompt)) << name << ": the FMA kernel's bits: the switch did not take the split";
  }
}

// QWENQ_DECODE_GRAPH=1: every step after the first replays one CUDA graph (k/v rows stored at the device's position,
// the decode attention sized for the whole cache): the CPU's logits within the same bounds, both cache dtypes, a
// dense and a 4-bit model; and the steps really ran as a graph.
TEST(QwenDecodeCuda, GraphStepsAreTheCpuForwardStep) {
  QWENQ_REQUIRE_GPU();
  const test::ScopedEnv graph("QWENQ_DECODE_GRAPH", "1");
  const std::string tmp = test::scratch_dir();
  const std::string dense = random_model(tmp + "/f32", "tiny", DType::F32);
  const std::string gptq = quantized(dense, QuantizeOptions::Method::Rtn, tmp + "/gptq");
  for (const auto& [dir, name] : {std::pair{dense, "tiny F32, graph steps"}, std::pair{gptq, "rtn-gptq, graph steps"}}) {
    expect_decode_matches_cpu(dir, 37, kFp32RelTol, kFp32RelTol, name);  // asserts one capture
    expect_decode_matches_cpu(dir, 1, kBf16CacheRelTol, kBf16CacheRelTol, name, KvCacheDType::BF16);
    const QwenModel cpu(dir);
    const QwenModelCuda gpu(cpu);
    QwenDecodeCuda dec(gpu, 16);
    dec.prefill({1, 2, 3});
    EXPECT_EQ(dec.graph_captures(), 0) << name << ": a prefill of 3 tokens is not a step";
    dec.step(4);
    dec.step(5);
    EXPECT_EQ(dec.graph_captures(), 1) << name << ": two steps, one capture";
    // A longer prompt reallocates the buffers the graph points into: the next step captures again, and its
    // logits are those of a decoder that never captured (launched one by one, within the order of sums).
    const std::vector<int32_t> longer = {6, 7, 8, 9, 10, 11, 12, 13};
    dec.prefill(longer);
    std::vector<float> got = dec.step(14);
    EXPECT_EQ(dec.graph_captures(), 2) << name;
    {
      const test::ScopedEnv off("QWENQ_DECODE_GRAPH", "0");
      QwenDecodeCuda eager(gpu, 16);
      eager.prefill(longer);
      const std::vector<float> want = eager.step(14);
      EXPECT_EQ(eager.graph_captures(), 0);
      EXPECT_LE(rel_err(got, want), kFp32RelTol) << name << ": graph step vs launched step";
    }
  }
}

TEST(QwenDecodeCuda, Qwen25HalfBShapeOnFlashPrefill) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string dir = random_model(tmp + "/q05", "qwen2.5-0.5b", DType::BF16, 2);
  const QwenConfig c = QwenModel(dir).config();
  ASSERT_EQ(c.head_dim, 64);
  ASSERT_EQ(c.num_heads / c.num_kv_heads, 7);
  expect_decode_matches_cpu(dir, 37, kBf16RelTol, kBf16RelTol, "qwen2.5-0.5b x2 layers BF16");
}

// The shared D = 64 models (a Qwen2 config has no head_dim: its heads x 64 must be the hidden size).
const test::GpuTestArch& kQwen2Bias = test::kGpuQwen2Bias;
const test::GpuTestArch& kQwen3 = test::kGpuQwen3;

TEST(QwenDecodeCuda, Qwen2BiasesAndQwen3QkNormAtD64) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string qwen2 = tmp + "/qwen2";
  test::write_gpu_test_model(qwen2, kQwen2Bias, DType::F32, 21);
  expect_decode_matches_cpu(qwen2, 1, kFp32RelTol, kFp32RelTol, "qwen2 biases D=64 F32");
  expect_decode_matches_cpu(qwen2, 37, kBf16RelTol, kBf16RelTol, "qwen2 biases D=64 F32");
  const std::string gptq = quantized(qwen2, QuantizeOptions::Method::Rtn, tmp + "/qwen2-gptq");
  expect_decode_matches_cpu(gptq, 1, kFp32RelTol, kFp32RelTol, "qwen2 biases D=64 rtn-gptq");
  expect_decode_matches_cpu(gptq, 37, kBf16RelTol, kBf16RelTol, "qwen2 biases D=64 rtn-gptq");
  const std::string qwen3 = tmp + "/qwen3";
  test::write_gpu_test_model(qwen3, kQwen3, DType::BF16, 33);
  ASSERT_TRUE(QwenModel(qwen3).config().qk_norm);
  expect_decode_matches_cpu(qwen3, 1, kBf16RelTol, kBf16RelTol, "qwen3 D=64 BF16");
  expect_decode_matches_cpu(qwen3, 37, kBf16RelTol, kBf16RelTol, "qwen3 D=64 BF16");
}

// rope_scaling in the prefill and in every step (positions past the llama3 model's 64-token context).
TEST(QwenDecodeCuda, RopeScalingAtD64) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string yarn = tmp + "/qwen2_yarn", llama3 = tmp + "/qwen3_llama3";
  test::write_gpu_test_model(yarn, test::kGpuQwen2Yarn, DType::F32, 21);
  test::write_gpu_test_model(llama3, test::kGpuQwen3Llama3, DType::BF16, 33);
  ASSERT_EQ(QwenModel(yarn).config().rope.type, RopeType::Yarn);
  expect_decode_matches_cpu(yarn, 1, kFp32RelTol, kFp32RelTol, "qwen2 yarn D=64 F32");
  expect_decode_matches_cpu(yarn, 70, kBf16RelTol, kBf16RelTol, "qwen2 yarn D=64 F32");
  expect_decode_matches_cpu(llama3, 70, kBf16RelTol, kBf16RelTol, "qwen3 llama3 D=64 BF16");
}

TEST(QwenDecodeCuda, Bf16CacheIsTheCpuBf16Cache) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const KvCacheDType bf16 = KvCacheDType::BF16;
  // The fp32 path (D = 16): the naive prefill over widened copies, attention_decode_bf16_cuda in the steps.
  const std::string tiny = random_model(tmp + "/f32", "tiny", DType::F32);
  for (int len : {1, 37, 100})
    expect_decode_matches_cpu(tiny, len, kBf16CacheRelTol, kBf16CacheRelTol, "tiny F32", bf16, /*must_round=*/true);
  const std::string gptq = quantized(tiny, QuantizeOptions::Method::Rtn, tmp + "/gptq");
  const std::string nf4 = quantized(tiny, QuantizeOptions::Method::Nf4, tmp + "/nf4");
  expect_decode_matches_cpu(gptq, 37, kBf16CacheRelTol, kBf16CacheRelTol, "rtn-gptq g32", bf16, true);
  expect_decode_matches_cpu(nf4, 37, kBf16CacheRelTol, kBf16CacheRelTol, "nf4", bf16, true);
  // Flash in the prefill reads the bf16 cache in place (D = 64): bf16 roundings of q and P on top.
  const std::string q05 = random_model(tmp + "/q05", "qwen2.5-0.5b", DType::BF16, 2);
  expect_decode_matches_cpu(q05, 37, kBf16RelTol, kBf16RelTol, "qwen2.5-0.5b x2 layers BF16", bf16);
  const std::string qwen2 = tmp + "/qwen2";
  test::write_gpu_test_model(qwen2, kQwen2Bias, DType::F32, 21);
  expect_decode_matches_cpu(qwen2, 1, kBf16CacheRelTol, kBf16CacheRelTol, "qwen2 biases D=64 F32", bf16, true);
  expect_decode_matches_cpu(qwen2, 37, kBf16RelTol, kBf16RelTol, "qwen2 biases D=64 F32", bf16);
  const std::string qwen3 = tmp + "/qwen3";
  test::write_gpu_test_model(qwen3, kQwen3, DType::BF16, 33);
  expect_decode_matches_cpu(qwen3, 1, kBf16RelTol, kBf16RelTol, "qwen3 D=64 BF16", bf16);
  expect_decode_matches_cpu(qwen3, 37, kBf16RelTol, kBf16RelTol, "qwen3 D=64 BF16", bf16);
}

TEST(QwenDecodeCuda, ClearErrors) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const QwenModel cpu(random_model(tmp + "/m", "tiny", DType::F32));
  const QwenModelCuda gpu(cpu);
  QwenDecodeCuda dec(gpu, 4);
  std::string e = error_of([&] { dec.step(1); });
  EXPECT_NE(e.find("prefill a prompt first"), std::string::npos) << e;
  e = error_of([&] { dec.prefill({1, 2, 3, 4, 5}); });
  EXPECT_NE(e.find("sequence of 5 tokens exceeds the KV cache capacity of 4"), std::string::npos) << e;
  e = error_of([&] { dec.prefill({1, 2, 400}); });
  EXPECT_NE(e.find("token id 400 at position 2 is outside the vocabulary [0, 320)"), std::string::npos) << e;
  dec.prefill({1, 2, 3});
  e = error_of([&] { dec.step(-1); });
  EXPECT_NE(e.find("token id -1 at position 3"), std::string::npos) << e;
  dec.step(4);
  e = error_of([&] { dec.step(5); });
  EXPECT_NE(e.find("sequence of 5 tokens exceeds the KV cache capacity of 4"), std::string::npos) << e;
  e = error_of([&] { QwenDecodeCuda bad(gpu, 0); });
  EXPECT_NE(e.find("capacity must be at least 1 token"), std::string::npos) << e;
}

// Greedy tokens of the GPU vs the CPU with the same KV cache dtype; the first difference must be a tie (within
// tie_tol · max |logit|) at the CPU's logits of that position (the packed forward with k, v rounded as the cache).
void expect_greedy_stories_is_the_cpus(KvCacheDType kv, double tie_tol) {
  const std::string stories = test::import_stories260k(test::scratch_dir() + "/stories");
  const QwenModel cpu(stories);
  const QwenModelCuda gpu(cpu);
  const std::vector<int32_t> prompt = Tokenizer::from_dir(stories).encode("Once upon a time", true);
  SamplingOptions opt;
  opt.max_new_tokens = kGreedyTokens;  // no stop ids: all 200 tokens
  opt.kv_cache = kv;
  const std::vector<int32_t> want = generate(cpu, prompt, opt), got = generate_cuda(gpu, prompt, opt);
  ASSERT_EQ(want.size(), static_cast<size_t>(kGreedyTokens));
  ASSERT_EQ(got.size(), want.size());
  size_t same = 0;
  while (same < want.size() && got[same] == want[same]) ++same;
  if (same < want.size()) {  // must be a tie at the CPU's logits of that position
    std::vector<int32_t> prefix = prompt;
    prefix.insert(prefix.end(), want.begin(), want.begin() + static_cast<std::ptrdiff_t>(same));
    const std::vector<float> lg = cpu.forward_logits(PackedBatch::from_sequences({prefix}), kv);
    const float* last = lg.data() + (prefix.size() - 1) * cpu.config().vocab_size;
    double mx = 0;
    for (int64_t v = 0; v < cpu.config().vocab_size; ++v) mx = std::max(mx, static_cast<double>(std::fabs(last[v])));
    EXPECT_LE(last[want[same]] - last[got[same]], tie_tol * mx)
        << "token " << same << ": CPU " << want[same] << " (logit " << last[want[same]] << "), GPU " << got[same]
        << " (CPU logit " << last[got[same]] << "): not a tie";
  }
  std::printf("[ stories260K greedy, %s cache ] %zu of %d tokens identical to the CPU's\n", kv_cache_dtype_name(kv),
              same, kGreedyTokens);
}

TEST(QwenDecodeCuda, GreedyStories260KIsTheCpus) {
  QWENQ_REQUIRE_GPU();
  QWENQ_REQUIRE_SHARED_DATA();
  expect_greedy_stories_is_the_cpus(KvCacheDType::F32, kFp32RelTol);
}

TEST(QwenDecodeCuda, GreedyStories260KWithBf16CacheIsTheCpus) {
  QWENQ_REQUIRE_GPU();
  QWENQ_REQUIRE_SHARED_DATA();
  expect_greedy_stories_is_the_cpus(KvCacheDType::BF16, kBf16CacheRelTol);
}

}  // namespace
}  // namespace qwenq
