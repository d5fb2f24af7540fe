// LoraModelCuda (trainer/lora_model_cuda.h), the LoRA/QLoRA training step on the GPU, against the CPU trainer
// (lora_loss_and_grad, clip_grad_norm_ref, adamw_step_ref, train_lora) on the same checkpoints, adapters and
// batches:
//   - the tiny random preset (D = 16: the naive fp32 attention forward and backward) in F32: a pure-fp32 path;
//   - Qwen2 with random biases and norm weights and Qwen3 (q/k norm), D = 64 so flash attention runs, in F32 and
//     BF16, and the Qwen2 one quantized by round-to-nearest into GPTQ v1 (group 32: the Q4 dequant-matmul forward
//     and its transpose for dx);
//   - lora_dropout 0.1 on the tiny F32, D = 64 BF16 and 4-bit models: the masks are the CPU's (counter-based,
//     kernels/dropout_mask.h), so the same tolerances apply; evaluation has no dropout; these steps also add
//     NEFTune's embedding noise (LoraStepOptions::neftune_half_width, the same generator);
//   - three training runs of 50 steps (tiny F32 with and without dropout, and the 4-bit D = 64 model) with
//     use_cuda against the CPU's;
//   - stories260K (D = 8, the naive kernels on a real model) when the shared data is there;
//   - both checkpoint dtypes (LoraStepOptions::bf16_checkpoints, the same on both sides): the pure-fp32 comparisons
//     (kFp32RelTol) run with fp32 checkpoints, and again with bf16 ones at the bf16 tolerances; the other models
//     with the default bf16 ones. The untied Qwen3 model gathers its embeddings on the host.
// With bf16 checkpoints the GPU rounds its own fp32 block outputs, which differ from the CPU's in the last bits: an
// output within that distance of a bf16 rounding boundary rounds the other way on the other side (one bf16 ulp,
// 2^-8 relative, on that element), so the pure-fp32 path is compared at the bf16 tolerances then.
// The adapter has all seven targets, r = 4, and a seeded nonzero B (PEFT's B = 0 would leave dA = 0 and hide
// half of the backward). Batches pack several sequences (1, 7, 33 tokens: the small-M GEMM paths; 100 + 65: the
// tensor-core W4A16 path), with ignored targets at each sequence's end.
//
// Tolerances:
//   kFp32RelTol   F32 weights, naive attention: every op is fp32 on both sides (cuBLASLt without TF32), only the
//                 order of sums and expf differ, ~1e-6 relative per op; the loss (relative) and each gradient
//                 (relative to its tensor's max |value|) within 1e-4 leaves ~100x room.
//   kBf16LossRelTol  anything rounded to bf16 on the GPU (flash attention's q, k, v, P and output; x for a BF16
//                 or 4-bit W; dy for a BF16 or 4-bit W in the backward): the forward's logits move by up to ~5e-3
//                 of max |logit| (tests/gpu/test_model_cuda.cpp measured a CPU emulation of these roundings), so
//                 the summed loss by less: 1e-2 relative.
//   kBf16GradRelTol  the gradients go back through the same roundings twice (forward recomputation and bf16
//                 dout/dy in the backward, dS rounded to bf16 inside flash attention), each relative 2^-9 per
//                 input and independent: a few 1e-3 of the tensor's max |value|; 5e-2 is the usual allowance for
//                 bf16 gradients against fp32 and catches any wrong term (O(1) errors).
//                 Observed before any GPU run, with every launcher replaced by its CPU twin plus the GPU's bf16
//                 roundings of x, dy, q/k/v and the attention output (not flash's P and dS, nor the tensor-core
//                 path's bf16 ŵ): loss within 4e-4, gradients within 1.2e-2 (4-bit D = 64; 6.5e-3 for F32 D = 64),
//                 the pure-fp32 tiny model within 1e-9 (loss) and 8e-7 (gradients); the 50-step runs ended within
//                 0.1% of the CPU's loss.
//   AdamW         the GPU's update is checked against adamw_step_ref applied to the GPU's own (downloaded)
//                 gradients: both are the same fp32 per-element formula (the GPU may contract to FMAs), so each
//                 parameter within kAdamUlps ulps of its value plus kAdamUpdateRelTol of the step (|update| ~ lr at
//                 step 1); the gradient norm against the CPU's within the gradient tolerance.
//   training      50 steps: the last step's loss within kTrainRelTol = 5% of the CPU run's, both lower than
//                 their first step's.
//   kChunkingRelTol  the same trainer with small lm_head chunks (LoraModelCudaOptions::logits_chunk_rows) against
//                 the default one chunk of these small vocabularies: only the rows per lm_head GEMM differ (cuBLASLt
//                 may pick another algorithm, ~1e-7 relative per logit), the losses are per-row sums; 1e-5 of the
//                 summed loss.
// The lm_head / loss runs in chunks of rows (trainer/lora_cuda_buffers.h: 2^24 logits, one chunk for the vocabularies
// of these models): SeveralLogitsChunks forces 1, 7 and 64 rows per chunk, so that several chunks, a partial last one
// and a chunk larger than the batch run.
// Every test skips without a device; the stories260K test also without the shared data.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/files.h"
#include "core/process_group.h"
#include "core/rng.h"
#include "kernels/device_allocator.h"
#include "kernels/loss.h"
#include "kernels/optim.h"
#include "tests/gpu/gpu_test.h"
#include "tests/support/scoped_env.h"
#include "tests/gpu/gpu_test_models.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_training.h"
#include "trainer/dpo.h"
#include "trainer/kto.h"
#include "trainer/lora_model.h"
#include "trainer/lora_model_cuda.h"
#include "trainer/step_profile.h"
#include "trainer/memory_plan.h"
#include "trainer/oom_report.h"
#include "trainer/qwen_model.h"
#include "trainer/quantize_model.h"
#include "trainer/train_loop.h"

namespace qwenq {
namespace {

constexpr double kFp32RelTol = 1e-4;
constexpr double kBf16LossRelTol = 1e-2;
constexpr double kBf16GradRelTol = 5e-2;
constexpr double kAdamUlps = 4;
constexpr double kAdamUpdateRelTol = 1e-5;
constexpr double kTrainRelTol = 5e-2;
constexpr double kChunkingRelTol = 1e-5;

// The tiny preset (D = 16: the naive attention) from seed 5.
std::string tiny_random(const std::string& dir, DType dtype) { return test::make_random_model(dir, "tiny", dtype, 5); }

using test::kGpuQwen2Bias;
using test::kGpuQwen3;

// A random Qwen2 (q/k/v biases) or Qwen3 (q/k norms, untied lm_head) with D = 64, every tensor non-trivial
// (tests/gpu/gpu_test_models.h), and the tiny preset's tokenizer files (its ids are < 320 <= V), so train_lora can
// run on it.
std::string write_d64_model(const std::string& dir, const test::GpuTestArch& a, DType dtype, uint64_t seed,
                            const std::string& tokenizer_from) {
  test::write_gpu_test_model(dir, a, dtype, seed);
  test::copy_tokenizer_files(tokenizer_from, dir);
  return dir;
}

std::string quantize_rtn_gptq(const std::string& src) {
  QuantizeOptions q;
  q.method = QuantizeOptions::Method::Rtn;
  q.layout = IntLayout::GptqV1;
  q.group_size = 32;
  q.sym = true;
  q.model_dir = src;
  q.out_dir = src + "-rtn-gptq";
  q.quiet = true;
  quantize_model(q);
  return q.out_dir;
}

using test::random_batch;

// PEFT's A and a seeded nonzero B (0.05 · N(0, 1)), all seven targets, r = 4, alpha = 8. dora: a DoRA adapter, its
// magnitudes PEFT's start (the row norms of W + s·B A) times seeded factors in [0.8, 1.2] (g = m / n not all 1).
LoraAdapter test_adapter(const QwenModel& model, uint64_t seed, double dropout = 0.0, bool dora = false) {
  LoraConfig cfg;
  cfg.r = 4;
  cfg.alpha = 8;
  cfg.dropout = dropout;
  cfg.use_dora = dora;
  cfg.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  LoraAdapter a(lora_dims_of(model.config()), cfg);
  a.init_peft(seed);
  Rng rng(seed + 1);
  for (size_t i = 0; i < a.slots().size(); ++i) {  // layer by layer, targets in table order; a MoE layer's experts
    for (float& b : a.weights(i).B) b = 0.05f * static_cast<float>(rng.normal());
  }
  if (dora) test::perturbed_dora_magnitudes(model, &a, seed + 2);
  return a;
}

using test::zeros_like;

// Every A and B (and a DoRA adapter's m) in the adapter's slot order (the trainer's and clip_grad_norm's order), with
// the slot and the name of each.
struct TensorRef {
  std::vector<float>* v;
  size_t slot;
  const char* name;
};
std::vector<TensorRef> tensor_refs(LoraAdapter& a) {
  std::vector<TensorRef> out;
  for (size_t i = 0; i < a.slots().size(); ++i) {
    out.push_back({&a.weights(i).A, i, "A"});
    out.push_back({&a.weights(i).B, i, "B"});
    if (!a.weights(i).m.empty()) out.push_back({&a.weights(i).m, i, "m"});
  }
  return out;
}
std::vector<std::vector<float>*> tensors(LoraAdapter& a) {
  std::vector<std::vector<float>*> out;
  for (const TensorRef& t : tensor_refs(a)) out.push_back(t.v);
  return out;
}

// Every tensor of got within rel_tol · max |want| of want (scaled by `factor`); returns the worst ratio.
// experts_by_norm (a 4-bit MoE base: the two sides route from router logits that differ by the bf16 roundings, so a
// token near a tie may go to another expert on the GPU, moving that expert's gradient by about one row's share): the
// experts' tensors are compared by their joint L2 norm instead, within rel_tol; every other tensor elementwise.
double expect_grads_close(LoraAdapter& got, LoraAdapter& want, double factor, double rel_tol, const std::string& ctx,
                          bool experts_by_norm = false) {
  const auto g = tensors(got), w = tensors(want);
  const std::vector<TensorRef> refs = tensor_refs(want);
  double worst = 0, norm_got = 0, norm_want = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    if (experts_by_norm && want.slots()[refs[i].slot].expert != kNoExpert) {
      for (float f : *g[i]) norm_got += static_cast<double>(f) * f;
      for (float f : *w[i]) norm_want += factor * factor * static_cast<double>(f) * f;
      continue;
    }
    double mx = 0, err = 0;
    for (float f : *w[i]) mx = std::max(mx, factor * std::fabs(f));
    for (size_t j = 0; j < w[i]->size(); ++j) {
      const double e = std::fabs(static_cast<double>((*g[i])[j]) - factor * (*w[i])[j]);
      err = std::isnan(e) ? INFINITY : std::max(err, e);
    }
    const double tol = rel_tol * std::max(mx, 1e-30);
    worst = std::max(worst, err / tol * rel_tol);
    const LoraSlot& sl = want.slots()[refs[i].slot];
    EXPECT_LE(err, tol) << ctx << ": tensor " << i << " (layer " << sl.layer << " " << sl.path << ", " << refs[i].name
                        << "): max error " << err << ", max |grad| " << mx;
  }
  if (experts_by_norm) {
    EXPECT_GT(norm_want, 0) << ctx << ": no expert gradient";
    EXPECT_NEAR(std::sqrt(norm_got), std::sqrt(norm_want), rel_tol * std::sqrt(norm_want))
        << ctx << ": the experts' joint gradient norm";
  }
  return worst;
}

// One loss-and-gradient step (and one AdamW step) on the GPU against the CPU, for each batch; with dropout > 0
// both draw the masks of the same dropout_seed (kernels/dropout_mask.h), so the tolerances are dropout 0's.
void expect_step_matches_cpu(const std::string& dir, double loss_tol, double grad_tol, const std::string& what,
                             double dropout = 0.0, bool bf16_checkpoints = true, bool experts_by_norm = false,
                             bool dora = false) {
  SCOPED_TRACE(what);
  const QwenModel cpu(dir);
  const int64_t V = cpu.config().vocab_size;
  LoraAdapter adapter = test_adapter(cpu, 17, dropout, dora);
  const std::vector<std::vector<int64_t>> batches = {{1, 7, 33}, {100, 65}};
  for (size_t bi = 0; bi < batches.size(); ++bi) {
    const uint64_t seed = 91 + bi;
    const PackedBatch b = random_batch(batches[bi], V, seed);
    const std::vector<int32_t> targets = next_token_targets(b);
    int64_t counted = 0;
    for (int32_t t : targets) counted += t != kIgnoreIndex;
    LoraStepOptions so;
    so.grad_scale = 1.0 / static_cast<double>(counted);
    so.dropout_seed = 4242 + bi;
    so.bf16_checkpoints = bf16_checkpoints;
    // The dropout runs take NEFTune's embedding noise too (the same counter-based draws on both sides; none in
    // evaluation, which the train = false comparison below checks).
    so.neftune_half_width = dropout > 0.0 ? 0.05f : 0.f;
    LoraAdapter g_cpu = zeros_like(adapter);
    const LoraStepResult want = lora_loss_and_grad(cpu, adapter, b, targets, &g_cpu, so);

    LoraModelCuda gpu(cpu, adapter);
    const LoraStepResult got = gpu.loss_and_grad(b, targets, so);
    const std::string ctx = what + " batch T=" + std::to_string(b.num_tokens()) + " seed " + std::to_string(seed);
    EXPECT_EQ(got.counted, want.counted) << ctx;
    EXPECT_NEAR(got.nll_sum, want.nll_sum, loss_tol * std::fabs(want.nll_sum)) << ctx;
    LoraAdapter g_gpu = zeros_like(adapter);
    gpu.download_grads(&g_gpu);
    const double worst = expect_grads_close(g_gpu, g_cpu, 1.0, grad_tol, ctx, experts_by_norm);

    // The same batch again: the gradients accumulate (twice the CPU's) and the loss repeats.
    const LoraStepResult again = gpu.loss_and_grad(b, targets, so);
    EXPECT_NEAR(again.nll_sum, got.nll_sum, 1e-6 * std::fabs(got.nll_sum)) << ctx << ": the repeated loss differs";
    LoraAdapter g2 = zeros_like(adapter);
    gpu.download_grads(&g2);
    expect_grads_close(g2, g_cpu, 2.0, grad_tol, ctx + " (accumulated twice)", experts_by_norm);
    if (dropout == 0.0) {  // evaluation gives the training loss
      EXPECT_NEAR(gpu.loss(b, targets, so).nll_sum, got.nll_sum, 1e-6 * std::fabs(got.nll_sum))
          << ctx << ": loss() differs from loss_and_grad()";
    } else {
      // Evaluation has no dropout: loss() is the CPU's train = false loss, which dropout's loss differs from.
      LoraStepOptions eval = so;
      eval.train = false;
      const LoraStepResult want_eval = lora_loss_and_grad(cpu, adapter, b, targets, nullptr, eval);
      EXPECT_NE(want_eval.nll_sum, want.nll_sum) << ctx << ": dropout did not change the CPU's loss";
      EXPECT_NEAR(gpu.loss(b, targets, eval).nll_sum, want_eval.nll_sum, loss_tol * std::fabs(want_eval.nll_sum))
          << ctx << ": loss() is not the CPU's evaluation loss";
      // Another seed: other masks, the CPU's loss for them (the gradients it adds are zeroed below).
      LoraStepOptions other = so;
      other.dropout_seed += 1000;
      const LoraStepResult want_other = lora_loss_and_grad(cpu, adapter, b, targets, nullptr, other);
      EXPECT_NE(want_other.nll_sum, want.nll_sum) << ctx << ": the dropout seed did not change the CPU's loss";
      EXPECT_NEAR(gpu.loss_and_grad(b, targets, other).nll_sum, want_other.nll_sum,
                  loss_tol * std::fabs(want_other.nll_sum))
          << ctx << ": dropout_seed " << other.dropout_seed;
    }

    // One AdamW step with clipping: the GPU's update against adamw_step_ref on the GPU's own gradients. The DoRA
    // models take LoRA+'s rates (B and m at 4 lr: a launch per slot's A and per B + m), the others one launch.
    gpu.zero_grads();
    gpu.loss_and_grad(b, targets, so);
    gpu.download_grads(&g_gpu);
    LoraAdapter p_ref = adapter, m_ref = zeros_like(adapter), v_ref = zeros_like(adapter), g_ref = g_gpu;
    const std::vector<TensorRef> refs = tensor_refs(p_ref);
    auto P = tensors(p_ref), G = tensors(g_ref), M = tensors(m_ref), Vv = tensors(v_ref);
    std::vector<float*> gp;
    std::vector<int64_t> gs;
    for (auto* t : G) gp.push_back(t->data()), gs.push_back(static_cast<int64_t>(t->size()));
    const double lr = 1e-2, max_norm = 0.05, loraplus_ratio = dora ? 4.0 : 1.0;
    const float norm_ref = clip_grad_norm_ref(gp.data(), gs.data(), static_cast<int>(gp.size()), max_norm);
    for (size_t i = 0; i < P.size(); ++i) {
      const double rate = std::string(refs[i].name) == "A" ? lr : lr * loraplus_ratio;
      adamw_step_ref(P[i]->data(), G[i]->data(), M[i]->data(), Vv[i]->data(), static_cast<int64_t>(P[i]->size()),
                     rate, 0.9, 0.999, 1e-8, 0.01, 1);
    }
    const float norm = gpu.adamw_step(lr, 0.9, 0.999, 1e-8, 0.01, 1, max_norm, loraplus_ratio);
    EXPECT_NEAR(norm, norm_ref, 1e-5 * norm_ref) << ctx << ": gradient norm of the same gradients";
    std::vector<float*> cp;
    std::vector<int64_t> cs;
    for (auto* t : tensors(g_cpu)) cp.push_back(t->data()), cs.push_back(static_cast<int64_t>(t->size()));
    const float norm_cpu = clip_grad_norm_ref(cp.data(), cs.data(), static_cast<int>(cp.size()), INFINITY);
    EXPECT_NEAR(norm, norm_cpu, grad_tol * norm_cpu) << ctx << ": gradient norm against the CPU's";
    LoraAdapter p_gpu = zeros_like(adapter);
    gpu.download(&p_gpu);
    const auto pg = tensors(p_gpu);
    size_t bad = 0;
    for (size_t i = 0; i < P.size(); ++i) {
      for (size_t j = 0; j < P[i]->size(); ++j) {
        const double want_p = (*P[i])[j], e = std::fabs(static_cast<double>((*pg[i])[j]) - want_p);
        const double tol = kAdamUlps * std::ldexp(std::fabs(want_p), -23) + kAdamUpdateRelTol * lr * loraplus_ratio;
        if (!(e <= tol) && bad++ < 5) {
          ADD_FAILURE() << ctx << ": AdamW tensor " << i << "[" << j << "] = " << (*pg[i])[j] << ", ref " << want_p;
        }
      }
    }
    std::printf("[ %s ] T=%lld: loss GPU %.6f CPU %.6f (rel %.2e, tol %.0e); worst grad error / max %.2e (tol %.0e)\n",
                what.c_str(), static_cast<long long>(b.num_tokens()), got.nll_sum, want.nll_sum,
                std::fabs(got.nll_sum / want.nll_sum - 1), loss_tol, worst, grad_tol);
  }
}

TEST(LoraModelCuda, TinyF32IsTheCpuStep) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string dir = tiny_random(tmp + "/f32", DType::F32);
  expect_step_matches_cpu(dir, kFp32RelTol, kFp32RelTol, "tiny F32 (naive), fp32 checkpoints", 0.0, false);
  expect_step_matches_cpu(dir, kBf16LossRelTol, kBf16GradRelTol, "tiny F32 (naive), bf16 checkpoints");
}

// One trainer, the checkpoint dtype switched between calls (the buffers are re-made each time): every loss is the
// CPU's for the same dtype, and the bf16 and fp32 losses differ (the rounding is applied on the device).
TEST(LoraModelCuda, CheckpointDtypeSwitchesPerCall) {
  QWENQ_REQUIRE_GPU();
  const QwenModel cpu(tiny_random(test::scratch_dir() + "/f32", DType::F32));
  const LoraAdapter adapter = test_adapter(cpu, 17);
  const PackedBatch b = random_batch({60, 33, 7}, cpu.config().vocab_size, 93);
  const std::vector<int32_t> targets = next_token_targets(b);
  LoraModelCuda gpu(cpu, adapter);
  double got[2] = {0, 0};
  for (int i = 0; i < 3; ++i) {
    LoraStepOptions so;
    so.bf16_checkpoints = i != 1;
    const double want = lora_loss_and_grad(cpu, adapter, b, targets, nullptr, so).nll_sum;
    const double g = gpu.loss_and_grad(b, targets, so).nll_sum;
    const double tol = (so.bf16_checkpoints ? kBf16LossRelTol : kFp32RelTol) * std::fabs(want);
    EXPECT_NEAR(g, want, tol) << "call " << i << (so.bf16_checkpoints ? " (bf16)" : " (fp32)");
    EXPECT_NEAR(gpu.loss(b, targets, so).nll_sum, g, 1e-6 * std::fabs(g)) << "call " << i;
    got[i == 1] = g;
  }
  EXPECT_NE(got[0], got[1]);
}

// The data-parallel tests' start: a trainer on the tiny F32 model after one step, and its gradients then.
struct SteppedTrainer {
  QwenModel cpu;
  LoraAdapter adapter;
  LoraModelCuda gpu;
  LoraAdapter grads;
  SteppedTrainer(uint64_t adapter_seed, uint64_t batch_seed)
      : cpu(tiny_random(test::scratch_dir() + "/f32", DType::F32)), adapter(test_adapter(cpu, adapter_seed)),
        gpu(cpu, adapter), grads(zeros_like(adapter)) {
    const PackedBatch b = random_batch({40, 9}, cpu.config().vocab_size, batch_seed);
    gpu.loss_and_grad(b, next_token_targets(b), LoraStepOptions{});
    gpu.download_grads(&grads);
  }
};

// Data parallelism's gradient sum (all_reduce_grads): the trainer as rank 0 of a 2-rank group whose rank 1 is a
// host thread holding seeded values h. A sum of two floats is the same in either order, so every gradient must be
// g + h exactly in fp32, g the trainer's gradient before the call; the flat order is the arena's, A then B per slot
// in the adapter's tensor order (trainer/lora_model_cuda.h).
TEST(LoraModelCuda, AllReduceGradsIsTheSumWithTheOtherRanks) {
  QWENQ_REQUIRE_GPU();
  SteppedTrainer s(21, 95);
  LoraAdapter& g = s.grads;
  LoraAdapter got = zeros_like(s.adapter);
  std::vector<float> h;
  Rng rng(96);
  for (auto* t : tensors(g))
    for (size_t i = 0; i < t->size(); ++i) h.push_back(static_cast<float>(rng.normal()));
  const auto fds = make_ring_sockets(2);
  ProcessGroup rank0(0, 2, fds[0].first, fds[0].second), rank1(1, 2, fds[1].first, fds[1].second);
  std::vector<float> h_sum = h;
  std::string other_error;
  test::ScopedEnv host_path("QWENQ_DP_NCCL", nullptr);
  std::thread other([&] {
    try {
      rank1.check_same(0, "QWENQ_DP_NCCL (the gradients' transport)");  // the trainer's first call agrees on it
      rank1.all_reduce_sum(h_sum.data(), static_cast<int64_t>(h_sum.size()));
    } catch (const Error& e) {
      other_error = e.what();
    }
  });
  s.gpu.all_reduce_grads(rank0);
  other.join();
  ASSERT_EQ(other_error, "");
  s.gpu.download_grads(&got);
  size_t k = 0, wrong = 0;
  const auto gt = tensors(g), ot = tensors(got);
  for (size_t t = 0; t < gt.size(); ++t) {
    for (size_t i = 0; i < gt[t]->size(); ++i, ++k) {
      const float want = (*gt[t])[i] + h[k];
      wrong += (*ot[t])[i] != want || h_sum[k] != want;
    }
  }
  EXPECT_EQ(k, h.size());
  EXPECT_EQ(wrong, 0u) << "of " << k << " gradients";
}

// The same call with QWENQ_DP_NCCL=1 on a group of one rank: NCCL is set up (or, where it cannot be loaded, the host
// path is kept, with a line saying why) and the one rank's gradients come back unchanged, bit for bit.
TEST(LoraModelCuda, AllReduceGradsThroughNcclOnOneRank) {
  QWENQ_REQUIRE_GPU();
  SteppedTrainer s(22, 97);
  LoraAdapter after = zeros_like(s.adapter);
  test::ScopedEnv nccl("QWENQ_DP_NCCL", "1");
  ProcessGroup one(0, 1, -1, -1);
  s.gpu.all_reduce_grads(one);
  s.gpu.all_reduce_grads(one);  // the communicator made by the first call
  s.gpu.download_grads(&after);
  const auto bt = tensors(s.grads), at = tensors(after);
  for (size_t t = 0; t < bt.size(); ++t) EXPECT_EQ(*at[t], *bt[t]) << "tensor " << t;
}

// The head's edge cases: a batch whose every target is masked (an SFT micro-batch whose answers were all cut off)
// scores no row, as the CPU step: no count, no loss, zero gradients; a bad target is refused before anything is
// queued, named by its batch row (not by its row in a gathered chunk), as the CPU trainer names it.
TEST(LoraModelCuda, AllMaskedBatchAndBadTarget) {
  QWENQ_REQUIRE_GPU();
  const QwenModel cpu(tiny_random(test::scratch_dir() + "/f32", DType::F32));
  const LoraAdapter adapter = test_adapter(cpu, 17);
  const PackedBatch b = random_batch({60, 33, 7}, cpu.config().vocab_size, 93);
  LoraModelCuda gpu(cpu, adapter);
  const LoraStepOptions so;
  const std::vector<int32_t> none(static_cast<size_t>(b.num_tokens()), kIgnoreIndex);
  const LoraStepResult want = lora_loss_and_grad(cpu, adapter, b, none, nullptr, so);
  ASSERT_EQ(want.counted, 0);
  const LoraStepResult got = gpu.loss_and_grad(b, none, so);
  EXPECT_EQ(got.counted, 0);
  EXPECT_EQ(got.nll_sum, 0.0);
  LoraAdapter g = zeros_like(adapter);
  gpu.download_grads(&g);
  size_t nonzero = 0;
  for (auto* t : tensors(g))
    for (float v : *t) nonzero += v != 0.f;
  EXPECT_EQ(nonzero, 0u) << "gradients of a batch without a target";
  EXPECT_EQ(gpu.loss(b, none, so).counted, 0);

  // Half the rows masked (the compact head), a target outside the vocabulary at batch row 71.
  std::vector<int32_t> bad = next_token_targets(b);
  for (size_t t = 0; t < bad.size(); t += 2) bad[t] = kIgnoreIndex;
  bad[71] = static_cast<int32_t>(cpu.config().vocab_size) + 3;
  test::expect_error([&] { gpu.loss_and_grad(b, bad, so); }, {"lora_loss_and_grad (GPU)", "of row 71"});
  // The trainer is still usable: the next step is the CPU's.
  const std::vector<int32_t> targets = next_token_targets(b);
  gpu.zero_grads();
  const double w = lora_loss_and_grad(cpu, adapter, b, targets, nullptr, so).nll_sum;
  EXPECT_NEAR(gpu.loss_and_grad(b, targets, so).nll_sum, w, kBf16LossRelTol * std::fabs(w));
}

TEST(LoraModelCuda, D64FlashAttentionF32AndBf16) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string tok = tiny_random(tmp + "/tok", DType::F32);
  for (DType dtype : {DType::F32, DType::BF16}) {
    const std::string dir = tmp + "/" + std::string("qwen2_") + dtype_name(dtype);
    write_d64_model(dir, kGpuQwen2Bias, dtype, 21, tok);
    expect_step_matches_cpu(dir, kBf16LossRelTol, kBf16GradRelTol, std::string("qwen2 D=64 ") + dtype_name(dtype));
  }
  const std::string q3 = tmp + "/qwen3";
  write_d64_model(q3, kGpuQwen3, DType::BF16, 33, tok);
  ASSERT_TRUE(QwenModel(q3).config().qk_norm);
  expect_step_matches_cpu(q3, kBf16LossRelTol, kBf16GradRelTol, "qwen3 D=64 BF16");
}

// rope_scaling in the GPU step's forward, recomputation and backward (rope_backward_cuda: s·Rᵀ): YaRN with its
// attention scaling and llama3, against the CPU step.
TEST(LoraModelCuda, RopeScaling) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string tok = tiny_random(tmp + "/tok", DType::F32);
  const std::string yarn = write_d64_model(tmp + "/qwen2_yarn", test::kGpuQwen2Yarn, DType::BF16, 21, tok);
  ASSERT_EQ(QwenModel(yarn).config().rope.type, RopeType::Yarn);
  expect_step_matches_cpu(yarn, kBf16LossRelTol, kBf16GradRelTol, "qwen2 yarn D=64 BF16");
  const std::string llama3 = write_d64_model(tmp + "/qwen3_llama3", test::kGpuQwen3Llama3, DType::BF16, 33, tok);
  expect_step_matches_cpu(llama3, kBf16LossRelTol, kBf16GradRelTol, "qwen3 llama3 D=64 BF16");
}

TEST(LoraModelCuda, QLoraRtnGptq4Bit) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string tok = tiny_random(tmp + "/tok", DType::F32);
  const std::string q4 = quantize_rtn_gptq(write_d64_model(tmp + "/qwen2", kGpuQwen2Bias, DType::BF16, 44, tok));
  ASSERT_FALSE(QwenModel(q4).weights().layers[0].q.is_dense());
  expect_step_matches_cpu(q4, kBf16LossRelTol, kBf16GradRelTol, "rtn-gptq 4-bit D=64");
  const std::string tiny_q4 = quantize_rtn_gptq(tmp + "/tok");
  expect_step_matches_cpu(tiny_q4, kBf16LossRelTol, kBf16GradRelTol, "rtn-gptq 4-bit tiny (naive)");
}

// lora_dropout 0.1: the same masks as the CPU (kernels/dropout.h), so the dropout-0 tolerances hold, on the
// pure-fp32 path (naive attention), flash attention in BF16 and the 4-bit base.
TEST(LoraModelCuda, DropoutIsTheCpuStep) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string tok = tiny_random(tmp + "/tok", DType::F32);
  expect_step_matches_cpu(tok, kFp32RelTol, kFp32RelTol, "tiny F32 (naive), dropout 0.1", 0.1, false);
  const std::string bf16 = write_d64_model(tmp + "/qwen2_bf16", kGpuQwen2Bias, DType::BF16, 21, tok);
  expect_step_matches_cpu(bf16, kBf16LossRelTol, kBf16GradRelTol, "qwen2 D=64 BF16, dropout 0.1", 0.1);
  const std::string q4 = quantize_rtn_gptq(bf16);
  expect_step_matches_cpu(q4, kBf16LossRelTol, kBf16GradRelTol, "rtn-gptq 4-bit D=64, dropout 0.1", 0.1);
}

// DoRA (every target a DoRA layer: the row norms on the device from the base as uploaded, z and v kept per Linear,
// dm with dA and dB; m in the arenas, clipped and updated with A and B) against the CPU trainer: the pure-fp32 path,
// dropout 0.1 (z from the dropped input), flash attention in BF16 and a 4-bit base (the norms from the Q4 codes).
// Mixtures of experts with DoRA: MixtureOfExpertsIsTheCpuStep.
TEST(LoraModelCuda, DoraIsTheCpuStep) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string tok = tiny_random(tmp + "/tok", DType::F32);
  expect_step_matches_cpu(tok, kFp32RelTol, kFp32RelTol, "tiny F32 (naive), DoRA", 0.0, false, false, true);
  expect_step_matches_cpu(tok, kFp32RelTol, kFp32RelTol, "tiny F32 (naive), DoRA, dropout 0.1", 0.1, false, false,
                          true);
  const std::string bf16 = write_d64_model(tmp + "/qwen2_bf16", kGpuQwen2Bias, DType::BF16, 21, tok);
  expect_step_matches_cpu(bf16, kBf16LossRelTol, kBf16GradRelTol, "qwen2 D=64 BF16, DoRA", 0.0, true, false, true);
  const std::string q4 = quantize_rtn_gptq(bf16);
  expect_step_matches_cpu(q4, kBf16LossRelTol, kBf16GradRelTol, "rtn-gptq 4-bit D=64, DoRA, dropout 0.1", 0.1, true,
                          false, true);
}

// The lm_head in chunks of `rows` rows (1, 7, 64: for the batches of 41 and 165 tokens several chunks with a partial
// last one, and for 41 one chunk of T < rows) against the CPU step (loss and every gradient) and against the same
// trainer in its default single chunk (loss, evaluation loss); the logits buffer is rows·V fp32.
void expect_chunked_step_matches(const std::string& dir, double loss_tol, double grad_tol, const std::string& what,
                                 bool bf16_checkpoints) {
  SCOPED_TRACE(what);
  const QwenModel cpu(dir);
  const int64_t V = cpu.config().vocab_size;
  const LoraAdapter adapter = test_adapter(cpu, 17);
  for (const std::vector<int64_t>& lengths : {std::vector<int64_t>{1, 7, 33}, std::vector<int64_t>{100, 65}}) {
    const PackedBatch b = random_batch(lengths, V, 95);
    const std::vector<int32_t> targets = next_token_targets(b);
    LoraStepOptions so;
    so.grad_scale = 1e-2;
    so.bf16_checkpoints = bf16_checkpoints;
    LoraAdapter g_cpu = zeros_like(adapter);
    const LoraStepResult want = lora_loss_and_grad(cpu, adapter, b, targets, &g_cpu, so);
    double one_chunk = 0, one_chunk_eval = 0;
    {
      LoraModelCuda gpu(cpu, adapter);
      one_chunk = gpu.loss_and_grad(b, targets, so).nll_sum;
      one_chunk_eval = gpu.loss(b, targets, so).nll_sum;
    }
    for (int64_t rows : {1, 7, 64}) {
      const std::string ctx = what + " T=" + std::to_string(b.num_tokens()) + ", " + std::to_string(rows) + " rows";
      const uint64_t logits_before = cuda_device_allocator().stats().bytes_of(MemoryTag::Logits);
      LoraModelCudaOptions o;
      o.logits_chunk_rows = rows;
      LoraModelCuda gpu(cpu, adapter, o);
      const LoraStepResult got = gpu.loss_and_grad(b, targets, so);
      const int64_t chunk = std::min(rows, b.num_tokens());
      EXPECT_EQ(cuda_device_allocator().stats().bytes_of(MemoryTag::Logits) - logits_before,
                DeviceAllocator::round_size(static_cast<size_t>(chunk * V) * sizeof(float)))
          << ctx;
      EXPECT_EQ(got.counted, want.counted) << ctx;
      EXPECT_NEAR(got.nll_sum, want.nll_sum, loss_tol * std::fabs(want.nll_sum)) << ctx;
      EXPECT_NEAR(got.nll_sum, one_chunk, kChunkingRelTol * std::fabs(one_chunk)) << ctx << ": against one chunk";
      EXPECT_NEAR(gpu.loss(b, targets, so).nll_sum, one_chunk_eval, kChunkingRelTol * std::fabs(one_chunk_eval))
          << ctx << ": evaluation against one chunk";
      LoraAdapter g_gpu = zeros_like(adapter);
      gpu.download_grads(&g_gpu);
      expect_grads_close(g_gpu, g_cpu, 1.0, grad_tol, ctx);
    }
  }
}

TEST(LoraModelCuda, SeveralLogitsChunks) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string tok = tiny_random(tmp + "/tok", DType::F32);
  expect_chunked_step_matches(tok, kFp32RelTol, kFp32RelTol, "tiny F32 (naive), fp32 checkpoints", false);
  const std::string q3 = write_d64_model(tmp + "/qwen3", kGpuQwen3, DType::BF16, 33, tok);
  expect_chunked_step_matches(q3, kBf16LossRelTol, kBf16GradRelTol, "qwen3 D=64 BF16 (16-bit lm_head, untied)", true);
  const QwenModel cpu(tok);
  LoraModelCudaOptions bad;
  bad.logits_chunk_rows = -1;
  const std::string e = test::error_of([&] { LoraModelCuda refused(cpu, test_adapter(cpu, 17), bad); });
  EXPECT_NE(e.find("logits_chunk_rows must be 0 (the default chunk) or positive, got -1"), std::string::npos) << e;
}

// A sequence objective (trainer/dpo.h's DPO, LoraStepOptions::sequence_objective): the head run twice, per-row loss
// weights (cross_entropy_fused_cuda's row_scale) on the compact head (a prompt-masked batch: most rows gathered) and
// on the direct one (every row scored), against the CPU step with the same reference sums; in chunks of 7 rows too.
TEST(LoraModelCuda, SequenceObjectiveIsTheCpuStep) {
  QWENQ_REQUIRE_GPU();
  const QwenModel cpu(tiny_random(test::scratch_dir() + "/f32", DType::F32));
  const LoraAdapter adapter = test_adapter(cpu, 17);
  const PackedBatch b = random_batch({23, 17, 40, 9}, cpu.config().vocab_size, 97);  // two pairs
  const std::vector<int32_t> all = next_token_targets(b);
  std::vector<int32_t> completions = all;  // the first 60 % of each sequence is prompt
  for (int64_t j = 0; j < b.num_seqs(); ++j) {
    const int32_t n = b.cu_seqlens[j + 1] - b.cu_seqlens[j];
    for (int32_t t = 0; t < n * 3 / 5; ++t) completions[b.cu_seqlens[j] + t] = kIgnoreIndex;
  }
  for (const auto& [targets, what] : {std::make_pair(completions, "completions (compact head)"),
                                      std::make_pair(all, "every token (direct head)")}) {
    SCOPED_TRACE(what);
    LoraStepOptions so;
    so.bf16_checkpoints = false;
    const std::vector<double> ref = {40.0, 35.0, 90.0, 14.0};  // reference sums near the tiny model's
    DpoOptions o;
    o.label_smoothing = 0.1;
    o.rpo_alpha = 0.3;
    const std::vector<int64_t> counts = sequence_target_counts(b, targets);
    DpoStats want_stats, got_stats;
    so.sequence_objective = dpo_objective(o, ref, counts, 2, counts[0] + counts[2], &want_stats);
    LoraAdapter g_cpu = zeros_like(adapter);
    const LoraStepResult want = lora_loss_and_grad(cpu, adapter, b, targets, &g_cpu, so);
    for (int64_t rows : {0, 7}) {
      LoraModelCudaOptions mo;
      mo.logits_chunk_rows = rows;
      LoraModelCuda gpu(cpu, adapter, mo);
      so.sequence_objective = dpo_objective(o, ref, counts, 2, counts[0] + counts[2], &got_stats);
      const LoraStepResult got = gpu.loss_and_grad(b, targets, so);
      ASSERT_EQ(got.seq_nll.size(), want.seq_nll.size());
      for (size_t j = 0; j < want.seq_nll.size(); ++j)
        EXPECT_NEAR(got.seq_nll[j], want.seq_nll[j], kFp32RelTol * want.seq_nll[j]) << "sequence " << j;
      EXPECT_NEAR(got_stats.objective(o), want_stats.objective(o), kFp32RelTol * want_stats.objective(o));
      got_stats = DpoStats{};
      LoraAdapter g_gpu = zeros_like(adapter);
      gpu.download_grads(&g_gpu);
      expect_grads_close(g_gpu, g_cpu, 1.0, kFp32RelTol, std::string(what) + ", chunk " + std::to_string(rows));
    }
  }
}

// KTO's micro-batch (trainer/kto.h): the KL sequences' sums by an evaluation call (LoraModelCuda::loss) between
// zero_grads and the step, then the step over the examples with the objective made from them: z, the loss and every
// gradient the CPU's at the fp32 tolerances.
TEST(LoraModelCuda, KtoStepIsTheCpuStep) {
  QWENQ_REQUIRE_GPU();
  const QwenModel cpu(tiny_random(test::scratch_dir() + "/f32", DType::F32));
  const LoraAdapter adapter = test_adapter(cpu, 19);
  SftBatch units;  // [example, KL sequence] twice, one sequence a row
  units.packed = random_batch({23, 17, 40, 9}, cpu.config().vocab_size, 98);
  units.targets = next_token_targets(units.packed);
  for (int64_t j = 0; j < units.packed.num_seqs(); ++j) {  // the first 60 % of each sequence is prompt
    const int32_t n = units.packed.cu_seqlens[j + 1] - units.packed.cu_seqlens[j];
    for (int32_t t = 0; t < n * 3 / 5; ++t) units.targets[units.packed.cu_seqlens[j] + t] = kIgnoreIndex;
  }
  units.cu_rows = units.packed.cu_seqlens;
  units.num_examples = 4;
  const std::vector<int64_t> order = {0, 1, 2, 3};
  const std::vector<double> ref = {40.0, 35.0, 90.0, 14.0};  // reference sums near the tiny model's
  const std::vector<uint8_t> labels = {1, 0};
  KtoOptions o;
  o.beta = 0.5;
  o.undesirable_weight = 1.33;
  LoraStepOptions so;
  so.bf16_checkpoints = false;
  LoraStepOptions eval = so;
  eval.train = false;
  const SftBatch examples = select_batch_sequences(units, 2, 0);
  KtoStats want_stats, got_stats;
  so.sequence_objective = kto_step_objective(o, units, order, ref, labels, 2, &want_stats, [&](const SftBatch& kl) {
    return lora_loss_and_grad(cpu, adapter, kl.packed, kl.targets, nullptr, eval);
  });
  LoraAdapter g_cpu = zeros_like(adapter);
  lora_loss_and_grad(cpu, adapter, examples.packed, examples.targets, &g_cpu, so);
  LoraModelCuda gpu(cpu, adapter);
  gpu.zero_grads();
  so.sequence_objective = kto_step_objective(o, units, order, ref, labels, 2, &got_stats, [&](const SftBatch& kl) {
    return gpu.loss(kl.packed, kl.targets, eval);
  });
  gpu.loss_and_grad(examples.packed, examples.targets, so);
  EXPECT_NEAR(got_stats.kl, want_stats.kl, kFp32RelTol * std::max(1.0, want_stats.kl));
  EXPECT_NEAR(got_stats.objective(), want_stats.objective(), kFp32RelTol * want_stats.objective());
  LoraAdapter g_gpu = zeros_like(adapter);
  gpu.download_grads(&g_gpu);
  expect_grads_close(g_gpu, g_cpu, 1.0, kFp32RelTol, "kto");
}

// Mixture-of-experts models (tiny-moe: Qwen3-MoE, 8 experts, k = 2, norm_topk_prob, a dense layer between two MoE
// layers; tiny-moe-shared: Qwen2-MoE, 6 experts and the gated shared expert), every expert adapted (PEFT's MLP targets on a MoE layer): the step on the pure-fp32 path
// (F32 weights, naive attention, fp32 checkpoints) with and without dropout at the fp32 tolerances, and the 4-bit
// base (RTN GPTQ of the experts; the router stays dense) at the bf16 ones. The routing is recomputed on each side
// from its own router logits: a near-tie of two experts' probabilities could pick another expert on the GPU (a jump,
// not a rounding). On the fp32 path the logits differ by ~1e-6 relative, so a flip among these few hundred tokens is
// unlikely (~1e-2 per run, estimated); on the 4-bit base by the bf16 roundings (~1e-3), so a flip or two per step is
// expected: there the experts' gradients are compared by their joint norm (expect_grads_close's experts_by_norm),
// the attention's elementwise, the loss as everywhere.
TEST(LoraModelCuda, MixtureOfExpertsIsTheCpuStep) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  for (const char* preset : {"tiny-moe", "tiny-moe-shared"}) {
    const std::string dir = test::make_random_model(tmp + "/" + preset, preset, DType::F32, 57);
    ASSERT_TRUE(QwenModel(dir).config().is_moe());
    expect_step_matches_cpu(dir, kFp32RelTol, kFp32RelTol, std::string(preset) + " F32, fp32 checkpoints", 0.0, false);
    expect_step_matches_cpu(dir, kFp32RelTol, kFp32RelTol, std::string(preset) + " F32, dropout 0.1", 0.1, false);
    const std::string q4 = quantize_rtn_gptq(dir);
    expect_step_matches_cpu(q4, kBf16LossRelTol, kBf16GradRelTol, std::string(preset) + " rtn-gptq 4-bit", 0.0, true,
                            /*experts_by_norm=*/true);
    // DoRA on every expert's Linear (and the attention's): z, v in the MoE columns of DoraZ / DoraV.
    expect_step_matches_cpu(dir, kFp32RelTol, kFp32RelTol, std::string(preset) + " F32, DoRA", 0.0, false, false, true);
    expect_step_matches_cpu(dir, kFp32RelTol, kFp32RelTol, std::string(preset) + " F32, DoRA, dropout 0.1", 0.1, false,
                            false, true);
    expect_step_matches_cpu(q4, kBf16LossRelTol, kBf16GradRelTol, std::string(preset) + " rtn-gptq 4-bit, DoRA", 0.0,
                            true, /*experts_by_norm=*/true, true);
  }
}

using test::losses_of;

// 50 steps of train_lora on the GPU and on the CPU from the same model, data and seed.
void expect_training_matches_cpu(const std::string& model, const std::string& data, const std::string& tmp,
                                 const std::string& what, double dropout = 0.0, bool dora = false) {
  SCOPED_TRACE(what);
  TrainOptions o = test::small_lora_options(model, data, tmp + "/" + what + "-cpu", 50);
  o.lora.dropout = dropout;
  o.lora.use_dora = dora;
  o.save_every = 25;  // exercises the download before a checkpoint
  const TrainReport cpu = train_lora(o);
  o.out_dir = tmp + "/" + what + "-gpu";
  o.use_cuda = true;
  const TrainReport gpu = train_lora(o);
  const std::vector<double> lc = losses_of(tmp + "/" + what + "-cpu" + "/metrics.jsonl");
  const std::vector<double> lg = losses_of(tmp + "/" + what + "-gpu" + "/metrics.jsonl");
  ASSERT_EQ(lc.size(), 50u);
  ASSERT_EQ(lg.size(), 50u);
  EXPECT_LT(lc.back(), lc.front()) << "the CPU run's loss does not decrease";
  EXPECT_LT(lg.back(), lg.front()) << "the GPU run's loss does not decrease";
  EXPECT_NEAR(lg.back(), lc.back(), kTrainRelTol * lc.back());
  EXPECT_NEAR(gpu.eval_loss, cpu.eval_loss, kTrainRelTol * cpu.eval_loss);
  EXPECT_TRUE(file_exists(tmp + "/" + what + "-gpu" + "/adapter_model.safetensors"));
  std::printf("[ %s ] 50 steps: loss CPU %.4f -> %.4f, GPU %.4f -> %.4f; eval CPU %.4f GPU %.4f; %.1fs CPU, %.1fs GPU\n",
              what.c_str(), lc.front(), lc.back(), lg.front(), lg.back(), cpu.eval_loss, gpu.eval_loss, cpu.seconds,
              gpu.seconds);
}

TEST(LoraModelCuda, TrainFiftyStepsLikeTheCpu) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string data = test::make_text_data(tmp + "/data.jsonl", 200);
  const std::string tiny = tiny_random(tmp + "/tiny", DType::F32);
  expect_training_matches_cpu(tiny, data, tmp, "tiny-f32");
  expect_training_matches_cpu(tiny, data, tmp, "tiny-f32-dropout", 0.1);
  expect_training_matches_cpu(tiny, data, tmp, "tiny-f32-dora", 0.0, /*dora=*/true);
  const std::string q4 = quantize_rtn_gptq(write_d64_model(tmp + "/qwen2", kGpuQwen2Bias, DType::BF16, 55, tiny));
  expect_training_matches_cpu(q4, data, tmp, "qlora-d64");
  const std::string moe = test::make_random_model(tmp + "/moe", "tiny-moe-shared", DType::F32, 58);
  expect_training_matches_cpu(moe, data, tmp, "tiny-moe-shared-f32");
}

TEST(LoraModelCuda, Stories260KStep) {
  QWENQ_REQUIRE_GPU();
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string stories = test::import_stories260k(test::scratch_dir() + "/stories");
  const QwenModel cpu(stories);
  ASSERT_EQ(cpu.config().head_dim, 8);
  std::vector<int32_t> ids = test::tinystories_tokens(stories);
  ASSERT_GE(ids.size(), 2u * 256u);
  const PackedBatch b = PackedBatch::from_sequences({std::vector<int32_t>(ids.begin(), ids.begin() + 256),
                                                     std::vector<int32_t>(ids.begin() + 256, ids.begin() + 512)});
  const std::vector<int32_t> targets = next_token_targets(b);
  LoraAdapter adapter = test_adapter(cpu, 23);
  LoraStepOptions so;
  so.grad_scale = 1.0 / 510;
  so.bf16_checkpoints = false;  // the pure-fp32 comparison (see the header comment)
  LoraAdapter g_cpu = zeros_like(adapter), g_gpu = zeros_like(adapter);
  const LoraStepResult want = lora_loss_and_grad(cpu, adapter, b, targets, &g_cpu, so);
  LoraModelCuda gpu(cpu, adapter);
  const LoraStepResult got = gpu.loss_and_grad(b, targets, so);
  EXPECT_EQ(got.counted, 510);
  EXPECT_NEAR(got.nll_sum, want.nll_sum, kFp32RelTol * want.nll_sum);
  gpu.download_grads(&g_gpu);
  const double worst = expect_grads_close(g_gpu, g_cpu, 1.0, kFp32RelTol, "stories260K");
  std::printf("[ stories260K ] loss GPU %.6f CPU %.6f; worst grad error / max %.2e\n", got.nll_sum, want.nll_sum, worst);
}

// The device bytes a step holds, per allocator tag, are `qwen-qlora plan`'s one-GPU figures to the byte
// (trainer/memory_plan.h, from trainer/lora_cuda_buffers.h and the Q4 sizes): base weights, A/B, gradients, m and
// v, the per-batch buffers and the logits chunk. Live allocations only (the allocator's cache is not counted),
// taken as the difference to what the process held before the trainer was made.
void expect_device_bytes_are_the_plan(const std::string& dir, const std::string& what, bool bf16_checkpoints = true,
                                      bool dora = false) {
  SCOPED_TRACE(what);
  const QwenModel cpu(dir);
  const LoraAdapter adapter = test_adapter(cpu, 17, 0.0, dora);
  const PackedBatch b = random_batch({100, 65}, cpu.config().vocab_size, 7);
  const std::vector<int32_t> targets = next_token_targets(b);
  const DeviceAllocatorStats before = cuda_device_allocator().stats();  // anything an earlier test still holds
  LoraModelCuda gpu(cpu, adapter);
  LoraStepOptions so;
  so.bf16_checkpoints = bf16_checkpoints;
  gpu.loss_and_grad(b, targets, so);
  PlanInput in = plan_input_for_training(dir, cpu.config(), adapter.config(), 1, b.num_tokens(), uint64_t{80} << 30);
  in.bf16_checkpoints = bf16_checkpoints;
  const PlanResult plan = plan_memory(in);
  const DevicePlan& d = plan.device;
  const DeviceAllocatorStats after = cuda_device_allocator().stats();
  const auto held = [&](MemoryTag t) { return after.bytes_of(t) - before.bytes_of(t); };
  EXPECT_EQ(held(MemoryTag::Weights), d.base_weights);
  EXPECT_EQ(held(MemoryTag::Adapter), d.adapters);
  EXPECT_EQ(held(MemoryTag::Gradients), d.gradients);
  EXPECT_EQ(held(MemoryTag::Optimizer), d.optimizer);
  EXPECT_EQ(held(MemoryTag::Activations), d.activations);
  EXPECT_EQ(held(MemoryTag::Logits), d.ws_logits);
  std::printf("[ %s ] device bytes held = plan: weights %llu, adapter x4 %llu, activations %llu, logits %llu\n",
              what.c_str(), (unsigned long long)held(MemoryTag::Weights), (unsigned long long)d.adapters,
              (unsigned long long)held(MemoryTag::Activations), (unsigned long long)held(MemoryTag::Logits));
}

TEST(LoraModelCuda, DeviceBytesAreThePlan) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string tok = tiny_random(tmp + "/tok", DType::F32);
  expect_device_bytes_are_the_plan(tok, "tiny F32 (naive attention)");
  expect_device_bytes_are_the_plan(tok, "tiny F32 (naive attention), fp32 checkpoints", false);
  const std::string q3 = write_d64_model(tmp + "/qwen3", kGpuQwen3, DType::BF16, 33, tok);
  ASSERT_FALSE(QwenModel(q3).config().tie_word_embeddings);
  expect_device_bytes_are_the_plan(q3, "qwen3 D=64 BF16, untied: the input embedding stays on the host");
  const std::string q4 = quantize_rtn_gptq(write_d64_model(tmp + "/qwen2", kGpuQwen2Bias, DType::BF16, 44, tok));
  expect_device_bytes_are_the_plan(q4, "rtn-gptq 4-bit D=64 (flash attention)");
  expect_device_bytes_are_the_plan(q4, "rtn-gptq 4-bit D=64, DoRA (m in the arenas, the norms, the DoRA rows)", true,
                                   true);
  // Mixtures of experts: the expert arenas and the MoE rows of the buffer table.
  const std::string moe = test::make_random_model(tmp + "/moe", "tiny-moe-shared", DType::F32, 59);
  expect_device_bytes_are_the_plan(moe, "tiny-moe-shared F32 (shared expert)");
  const std::string moe_q4 = quantize_rtn_gptq(test::make_random_model(tmp + "/moe3", "tiny-moe", DType::BF16, 60));
  expect_device_bytes_are_the_plan(moe_q4, "tiny-moe rtn-gptq 4-bit (a dense layer among MoE layers)");
}

// QWENQ_LORA_FOLD=1 (kernels/qgemm.h) with the dense 4-bit path for every M > 64 (QWENQ_QGEMM_DENSE=1): the
// 165-token batch's adapted Linears fold the adapter into the base product ([x | s·u]·[Ŵ | B]ᵀ, s·u and B in bf16).
// The step is still the CPU's within the bf16 tolerances, with and without dropout; its loss is not the unfolded
// step's bits (the fold ran) but within the bf16 loss tolerance of it; the device bytes are still the plan's (act16
// and the dense copy of Ŵ have the adapter's columns on both sides).
TEST(LoraModelCuda, FoldedAdapterIsTheCpuStep) {
  QWENQ_REQUIRE_GPU();
  const test::ScopedEnv dense("QWENQ_QGEMM_DENSE", "1"), fold("QWENQ_LORA_FOLD", "1");
  const std::string tmp = test::scratch_dir();
  const std::string tok = tiny_random(tmp + "/tok", DType::F32);
  const std::string q4 = quantize_rtn_gptq(write_d64_model(tmp + "/qwen2", kGpuQwen2Bias, DType::BF16, 44, tok));
  expect_step_matches_cpu(q4, kBf16LossRelTol, kBf16GradRelTol, "rtn-gptq 4-bit D=64, folded");
  expect_step_matches_cpu(q4, kBf16LossRelTol, kBf16GradRelTol, "rtn-gptq 4-bit D=64, folded, dropout 0.1", 0.1);
  expect_device_bytes_are_the_plan(q4, "rtn-gptq 4-bit D=64, folded");
  const QwenModel cpu(q4);
  const LoraAdapter adapter = test_adapter(cpu, 17);
  const PackedBatch b = random_batch({100, 65}, cpu.config().vocab_size, 97);
  const std::vector<int32_t> targets = next_token_targets(b);
  LoraStepOptions so;
  LoraModelCuda folded(cpu, adapter);
  const double with_fold = folded.loss_and_grad(b, targets, so).nll_sum;
  // Every adapted Linear of the 4-bit layers folds both ways (no dropout here): 7 per layer forward and backward, and
  // 6 more forward in the backward's recomputation (the down projection's computes only its u: lin_recompute).
  const int64_t layers = cpu.config().num_layers;
  EXPECT_EQ(folded.fold_counts().forward, 13 * layers);
  EXPECT_EQ(folded.fold_counts().backward, 7 * layers);
  const test::ScopedEnv off("QWENQ_LORA_FOLD", nullptr);
  LoraModelCuda plain(cpu, adapter);
  const double without = plain.loss_and_grad(b, targets, so).nll_sum;
  EXPECT_EQ(plain.fold_counts().forward + plain.fold_counts().backward, 0);
  EXPECT_NE(with_fold, without) << "QWENQ_LORA_FOLD=1 changed no bit of the loss: the fold did not run";
  EXPECT_NEAR(with_fold, without, kBf16LossRelTol * std::fabs(without));
}

// --profile (trainer/step_profile.h): two trainers on the same 4-bit model, one profiled; the profile changes no
// bit of the loss, the gradients or the AdamW update, its phases cover the step (their sum plus the unattributed
// time is the wall time), the base Linears, LoRA, attention, norms and the optimizer all took time, and an
// evaluation call adds nothing to it.
TEST(LoraModelCuda, ProfileTimesThePhasesAndChangesNothing) {
  QWENQ_REQUIRE_GPU();
  const std::string tmp = test::scratch_dir();
  const std::string tok = tiny_random(tmp + "/tok", DType::F32);
  const QwenModel cpu(quantize_rtn_gptq(write_d64_model(tmp + "/qwen2", kGpuQwen2Bias, DType::BF16, 44, tok)));
  const LoraAdapter adapter = test_adapter(cpu, 17);
  const PackedBatch b = random_batch({60, 33, 7}, cpu.config().vocab_size, 93);
  const std::vector<int32_t> targets = next_token_targets(b);
  LoraModelCuda plain(cpu, adapter), timed(cpu, adapter);
  EXPECT_EQ(timed.profile(), nullptr);
  StepProfile* prof = timed.enable_profile();
  ASSERT_NE(prof, nullptr);
  EXPECT_EQ(timed.enable_profile(), prof) << "a second enable_profile must return the same profile";
  LoraStepOptions so;
  so.grad_scale = 1.0 / 100;
  for (int step = 0; step < 2; ++step) {
    const double a = plain.loss_and_grad(b, targets, so).nll_sum, t = timed.loss_and_grad(b, targets, so).nll_sum;
    EXPECT_EQ(a, t) << "step " << step << ": the loss changed under --profile";
    LoraAdapter ga = adapter, gt = adapter;
    plain.download_grads(&ga);
    timed.download_grads(&gt);
    for (size_t i = 0; i < ga.slots().size(); ++i) {
      EXPECT_EQ(ga.weights(i).A, gt.weights(i).A) << "step " << step << ", slot " << i << ": dA";
      EXPECT_EQ(ga.weights(i).B, gt.weights(i).B) << "step " << step << ", slot " << i << ": dB";
    }
    EXPECT_EQ(plain.adamw_step(1e-3, 0.9, 0.999, 1e-8, 0.0, step + 1, 1.0),
              timed.adamw_step(1e-3, 0.9, 0.999, 1e-8, 0.0, step + 1, 1.0));
    prof->end_step();
    plain.zero_grads();
    timed.zero_grads();
  }
  timed.loss(b, targets);  // evaluation: not profiled
  prof->end_step(false);
  ASSERT_EQ(prof->steps(), 2);
  double sum = 0;
  for (int p = 0; p < kStepPhases; ++p) sum += prof->total_ms(static_cast<StepPhase>(p));
  std::printf("%s", prof->table().c_str());
  EXPECT_GT(prof->wall_ms(), 0.0);
  EXPECT_NEAR(sum + prof->unattributed_ms(), prof->wall_ms(), 1e-9 * prof->wall_ms());
  EXPECT_GE(prof->unattributed_ms(), -1e-3) << "the phases add up to more than the wall time";
  for (StepPhase p : {StepPhase::Embed, StepPhase::Base, StepPhase::Lora, StepPhase::Attention, StepPhase::Norm,
                      StepPhase::Rope, StepPhase::Activation, StepPhase::Residual, StepPhase::Head,
                      StepPhase::Optimizer, StepPhase::Checkpoint})
    EXPECT_GT(prof->total_ms(p), 0.0) << step_phase_name(p) << " took no time";
  EXPECT_EQ(prof->total_ms(StepPhase::Moe), 0.0) << "a dense model has no MoE routing";
  EXPECT_EQ(prof->total_ms(StepPhase::Dora), 0.0) << "no DoRA here";
}

}  // namespace
}  // namespace qwenq
