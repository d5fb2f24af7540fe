// The GPU half of the memory plan (trainer/memory_plan.h) against the GPU trainer that exists: a hand-computed
// Qwen2.5-0.5B case (the arithmetic written out below), and the bytes the caching allocator holds when the
// allocations of LoraModelCuda / QwenModelCuda are replayed on a fake device (their sizes come from the same
// table, trainer/lora_cuda_buffers.h, and from the per-layer weight arenas of a real checkpoint, dense or quantized,
// as trainer/qwen_weight_arena.h lays them out with the real Q4 repacks), which must equal
// the plan's per-category figures to the byte, with bf16 and fp32 checkpoints and for tied and untied embeddings
// (an untied input table stays on the host). Nothing here needs a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "kernels/device_allocator.h"
#include "kernels/dora.h"
#include "kernels/qgemm.h"
#include "quant/format/qgemm_layout.h"
#include "quant/int_checkpoint.h"
#include "quant/nf4.h"
#include "quant/nf4_checkpoint.h"
#include "tests/support/scoped_env.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_paths.h"
#include "trainer/lora_cuda_buffers.h"
#include "trainer/lora_model.h"
#include "trainer/moe_block.h"
#include "trainer/memory_plan.h"
#include "trainer/quantize_model.h"
#include "trainer/qwen_model.h"
#include "trainer/qwen_weight_arena.h"
#include "trainer/qwen_weights.h"
#include "trainer/random_model.h"

namespace qwenq {
namespace {

using test::ScopedEnv;

constexpr uint64_t KiB = uint64_t{1} << 10, MiB = uint64_t{1} << 20;

// A device of unlimited size that hands out distinct addresses and never takes anything back.
class FakeDevice final : public DeviceMemoryBackend {
 public:
  void* allocate(size_t bytes) override {
    next_ += bytes + 4096;
    return reinterpret_cast<void*>(next_);
  }
  void release(void*) noexcept override {}
  bool memory_info(size_t*, size_t*) override { return false; }
  void synchronize() noexcept override {}
  std::string name() const override { return "fake:0"; }

 private:
  uintptr_t next_ = 0x100000;
};

LoraConfig all_linear(int64_t r) {
  LoraConfig l;
  l.r = r;
  l.alpha = 2.0 * static_cast<double>(r);
  l.target_modules = parse_lora_targets("all-linear");
  return l;
}

PlanInput one_gpu(const QwenConfig& c, PlanBase base, int64_t r, int64_t T) {
  PlanInput in;
  in.model_name = "test";
  in.model = c;
  in.base = base;
  in.lora = all_linear(r);
  in.batch_size = 1;
  in.seq_len = T;
  in.device = PlanDevice::Cuda;
  in.gpus = 1;
  return in;
}

// Qwen2.5-0.5B, bf16 base, r = 16 on every Linear, T = 2048: C = 896, I = 4864, H = 14, Hkv = 2, D = 64 (flash),
// qd = 896, kvd = 128, V = 151936, L = 24, tied. A buffer of w words per token takes 2048·4·w = 8192·w bytes;
// the allocator holds it as is up to 1 MiB (w <= 128, all multiples of 512 B) and in 2 MiB steps above
// (2 MiB = 256 words): ceil(w / 256)·2 MiB.
TEST(MemoryPlanGpu, Qwen05bByHand) {
  const PlanResult p = plan_memory(one_gpu(qwen_preset("qwen2.5-0.5b"), PlanBase::Bf16, 16, 2048));
  const DevicePlan& d = p.device;
  // checkpoints: xs bf16 25·896 / 2 = 11200 words -> ceil(43.75) = 44 -> 88 MiB.
  EXPECT_EQ(d.act_checkpoints, 88 * MiB);
  // forward: xin, n1, q, a, h1, n2 896 words -> 8 MiB each (48; mlp is on dn2's storage); k, v 128 -> 1 MiB each (2); gate, up, act 4864 =
  // 19·256 -> 38 MiB each (114); act16 ceil(4864/2) = 2432 -> 20 MiB; q16, a16 448 -> 4 MiB each (8); k16, v16
  // 64 -> 512 KiB each; lse 14 -> 112 KiB; u 7·16 = 112 -> 896 KiB; qpre, kpre, tokens, positions 1 -> 8 KiB each.
  EXPECT_EQ(d.act_block, (48 + 2 + 114 + 20 + 8) * MiB + (2 * 512 + 112 + 896 + 4 * 8) * KiB);
  // backward: d, dn2, dh1 896 -> 24 MiB; g 16 -> 128 KiB. On other buffers' storage: dact, dgate, dup (act, up),
  // dn1 (dn2), tmp (gate: no dropout), and with flash attention da, dq, dk, dv, da16 (a, q, k, v, act16).
  EXPECT_EQ(d.act_backward, 24 * MiB + 128 * KiB);
  // loss: nll, targets -> 16 KiB (hidden, dhidden on n1, h1).
  EXPECT_EQ(d.act_loss, 16 * KiB);
  EXPECT_EQ(d.activations, 304 * MiB + 2208 * KiB);
  // logits: rows = 2^24 / 151936 = 110; 110·151936·4 = 66,851,840 B -> 32 blocks of 2 MiB = 64 MiB.
  EXPECT_EQ(d.ws_logits, 64 * MiB);
  // scratch: the bf16 copy of the lm_head's dlogits, 110·151936·2 = 33,425,920 B (> δ 2048·14·4, > a bf16
  // Linear's 2048·4864·2 = 19,922,944).
  EXPECT_EQ(d.ws_scratch, 33'425'920u);
  EXPECT_EQ(d.ws_dequant, 0u);
  EXPECT_EQ(d.workspace,
            d.ws_scratch + d.ws_logits + kCudaContextBytes + kCublasLtWorkspaceBytes + kAllocatorSlackBytes);
  // adapters: P = 24·16·((896 + 896)·2 + (128 + 896)·2 + (4864 + 896)·3) = 24·16·22912 = 8,798,208 floats =
  // 35,192,832 B -> 17 blocks = 34 MiB, for each of A/B, gradients, m, v.
  EXPECT_EQ(d.lora_params, 8'798'208);
  EXPECT_EQ(d.adapters, 34 * MiB);
  EXPECT_EQ(d.gradients, 34 * MiB);
  EXPECT_EQ(d.optimizer, 68 * MiB);
  // base weights: one arena per layer (trainer/qwen_weight_arena.h), every piece here a multiple of 256 B: q, o
  // [896, 896] bf16 1,605,632 B; k, v [128, 896] 229,376 B; gate, up, down 8,716,288 B; norms 2 x 1792 B; biases
  // 1792 + 2 x 256 B: 29,824,768 B -> 15 blocks = 30 MiB (one allocation per tensor held 34 MiB + 465,920 B).
  // Embedding (tied, once) 151936·896·2 = 272,269,312 B -> 130 blocks; final norm 1792 B -> 2 KiB.
  const uint64_t layer_small = 2 * 1792 + 1792 + 2 * 256;
  EXPECT_EQ(2 * 1'605'632 + 2 * 229'376 + 3 * 8'716'288 + layer_small, 29'824'768u);
  EXPECT_EQ(d.base_weights, 24 * 30 * MiB + 130 * 2 * MiB + 2 * KiB);
  EXPECT_EQ(d.base_dense, 24 * layer_small + 130 * 2 * MiB + 2 * KiB);
  EXPECT_EQ(d.base_linear, 24 * (30 * MiB - layer_small));
  // GPTQ 4-bit g128, the Q4 repack: q, o qweight 4·112·896 = 401,408 + meta 4·7·896 = 25,088; k, v 57,344 +
  // 3,584; gate, up qweight 4·112·4864 = 2,179,072 + meta 4·7·4864 = 136,192; down 4·608·896 = 2,179,072 +
  // 4·38·896 = 136,192 (all multiples of 256 B). With the norms and biases 7,926,528 B -> 4 blocks = 8 MiB a layer
  // (one allocation per array held 13,973,504 B: 579.8 MiB in all instead of 452.0 MiB).
  PlanInput gq = one_gpu(qwen_preset("qwen2.5-0.5b"), PlanBase::Gptq, 16, 2048);
  const DevicePlan& g = plan_memory(gq).device;
  EXPECT_EQ(2 * (401'408 + 25'088) + 2 * (57'344 + 3'584) + 3 * (2'179'072 + 136'192) + layer_small, 7'926'528u);
  EXPECT_EQ(g.base_weights, 24 * 8 * MiB + 130 * 2 * MiB + 2 * KiB);
  EXPECT_EQ(g.base_dense, d.base_dense);
  // lora_dropout > 0: tmp [T, 4864] of its own, 38 MiB.
  PlanInput drop = one_gpu(qwen_preset("qwen2.5-0.5b"), PlanBase::Bf16, 16, 2048);
  drop.lora.dropout = 0.05;
  EXPECT_EQ(plan_memory(drop).device.act_backward, d.act_backward + 38 * MiB);
  // fp32 checkpoints: xs 22400 words -> 88 blocks = 176 MiB, and no xin (8 MiB): 80 MiB more in all.
  PlanInput fp32 = one_gpu(qwen_preset("qwen2.5-0.5b"), PlanBase::Bf16, 16, 2048);
  fp32.bf16_checkpoints = false;
  const DevicePlan& f = plan_memory(fp32).device;
  EXPECT_EQ(f.act_checkpoints, 176 * MiB);
  EXPECT_EQ(f.act_block, d.act_block - 8 * MiB);
  EXPECT_EQ(f.total, d.total + 80 * MiB);
}

// The allocations LoraModelCuda's constructor, reserve(T) and logits chunk make, replayed on a fake device.
// dora_targets: a DoRA adapter's (empty: none), whose row norms are one more adapter allocation of Σ N floats.
void replay_lora_model_cuda(DeviceAllocator& a, const QwenConfig& c, int64_t lora_params, int64_t r, int64_t T,
                            bool flash, bool bf16_checkpoints, bool dropout, std::vector<DeviceAllocation>* keep,
                            const std::vector<LoraTarget>& dora_targets = {}) {
  const size_t arena = static_cast<size_t>(std::max<int64_t>(lora_params, 1)) * sizeof(float);
  keep->push_back(a.allocate(arena, nullptr, MemoryTag::Adapter, "A and B"));
  keep->push_back(a.allocate(arena, nullptr, MemoryTag::Gradients, "grads"));
  keep->push_back(a.allocate(arena, nullptr, MemoryTag::Optimizer, "m"));
  keep->push_back(a.allocate(arena, nullptr, MemoryTag::Optimizer, "v"));
  if (!dora_targets.empty()) {  // LoraModelCuda's norms: one N per adapted Linear (every layer)
    const LoraAdapter ad(lora_dims_of(c), [&] {
      LoraConfig lc;
      lc.r = r;
      lc.use_dora = true;
      lc.target_modules.clear();
      for (LoraTarget t : dora_targets) lc.target_modules.push_back(lora_target_path(t).substr(lora_target_path(t).rfind('.') + 1));
      return lc;
    }());
    int64_t n = 0;
    for (size_t i = 0; i < ad.slots().size(); ++i) n += ad.weights(i).N;
    keep->push_back(a.allocate(static_cast<size_t>(n) * sizeof(float), nullptr, MemoryTag::Adapter, "DoRA norms"));
  }
  for (const LoraCudaBuffer& b :
       lora_cuda_batch_buffers(c, c.num_layers, r, flash, bf16_checkpoints, dropout, dora_targets))
    keep->push_back(a.allocate(static_cast<size_t>(b.bytes(T)), nullptr, MemoryTag::Activations, b.what));
  const int64_t rows = lora_cuda_logits_rows(T, c.vocab_size);
  keep->push_back(a.allocate(static_cast<size_t>(rows * c.vocab_size) * 4, nullptr, MemoryTag::Logits, "logits"));
}

TEST(MemoryPlanGpu, ActivationsAdapterAndLogitsEqualWhatLoraModelCudaRequests) {
  QwenConfig qk = qwen_preset("qwen2.5-1.5b");  // Qwen3-like: QK-norm, no q/k/v bias, head_dim 128
  qk.qk_norm = true;
  qk.qkv_bias = false;
  qk.head_dim = 128;
  struct Case {
    const char* name;
    QwenConfig c;
    int64_t r, T;
  };
  for (const Case& k : {Case{"0.5b", qwen_preset("qwen2.5-0.5b"), 16, 2048},
                        Case{"7b", qwen_preset("qwen2.5-7b"), 8, 4096}, Case{"qk-norm", qk, 4, 1000},
                        Case{"72b", qwen_preset("qwen2.5-72b"), 16, 2048},
                        Case{"tiny (D = 16: no flash)", qwen_preset("tiny"), 8, 33},
                        Case{"qwen3-30b-a3b (MoE)", qwen_preset("qwen3-30b-a3b"), 16, 2048},
                        Case{"tiny-moe-shared (MoE, shared expert)", qwen_preset("tiny-moe-shared"), 4, 77}}) {
    for (int variant = 0; variant < 3; ++variant) {
      const bool bf16 = variant != 1, dropout = variant == 2;
      SCOPED_TRACE(std::string(k.name) + (bf16 ? ", bf16 checkpoints" : ", fp32 checkpoints") +
                   (dropout ? ", dropout" : ""));
      const QwenConfig& c = k.c;
      PlanInput in = one_gpu(c, PlanBase::Nf4, k.r, k.T);
      in.bf16_checkpoints = bf16;
      in.lora.dropout = dropout ? 0.1 : 0.0;
      const PlanResult p = plan_memory(in);
      const DevicePlan& d = p.device;
      DeviceAllocator alloc(std::make_unique<FakeDevice>());
      std::vector<DeviceAllocation> keep;
      replay_lora_model_cuda(alloc, c, p.lora_params, k.r, k.T, c.head_dim == 64 || c.head_dim == 128, bf16, dropout,
                             &keep);
      const DeviceAllocatorStats s = alloc.stats();
      EXPECT_EQ(s.bytes_of(MemoryTag::Activations), d.activations);
      EXPECT_EQ(s.bytes_of(MemoryTag::Adapter), d.adapters);
      EXPECT_EQ(s.bytes_of(MemoryTag::Gradients), d.gradients);
      EXPECT_EQ(s.bytes_of(MemoryTag::Optimizer), d.optimizer);
      EXPECT_EQ(s.bytes_of(MemoryTag::Logits), d.ws_logits);
    }
  }
}

// DoRA on the GPU (dense models): the plan's adapter bytes (the arenas with m, plus the row norms) and activations
// (the DoRA rows) equal what LoraModelCuda requests, for all seven targets and for q/v only, with and without dropout;
// the DoRA rows word for word (Qwen2.5-7B: Q = C = 3584, KV = 512, I = 18944).
TEST(MemoryPlanGpu, DoraRowsAndNormsAreWhatLoraModelCudaRequests) {
  using Id = LoraCudaBufferId;
  const auto words = [](const std::vector<LoraCudaBuffer>& t, Id id) -> int64_t {
    for (const LoraCudaBuffer& b : t)
      if (b.id == id) return b.words;
    return -1;
  };
  const QwenConfig c = qwen_preset("qwen2.5-7b");
  const int64_t C = c.hidden_size, Q = c.q_dim(), KV = c.kv_dim(), I = c.intermediate_size;
  const std::vector<LoraTarget> all = {LoraTarget::QProj, LoraTarget::KProj,    LoraTarget::VProj, LoraTarget::OProj,
                                       LoraTarget::GateProj, LoraTarget::UpProj, LoraTarget::DownProj};
  const std::vector<LoraTarget> qv = {LoraTarget::QProj, LoraTarget::VProj};
  const std::vector<LoraCudaBuffer> t = lora_cuda_batch_buffers(c, c.num_layers, 16, true, true, false, all);
  EXPECT_EQ(words(t, Id::DoraZ), Q + 2 * KV + C + 2 * I + C);
  EXPECT_EQ(words(t, Id::DoraV), Q + 2 * KV + C + 2 * I + C);
  EXPECT_EQ(words(t, Id::DoraDz), I);
  EXPECT_EQ(words(t, Id::DoraDv), I);
  EXPECT_EQ(words(t, Id::DoraTmp), I);  // down_proj's K
  const std::vector<LoraCudaBuffer> tq = lora_cuda_batch_buffers(c, c.num_layers, 16, true, true, false, qv);
  EXPECT_EQ(words(tq, Id::DoraZ), Q + KV);
  EXPECT_EQ(words(tq, Id::DoraDz), Q);
  EXPECT_EQ(words(tq, Id::DoraTmp), C);
  EXPECT_EQ(words(lora_cuda_batch_buffers(c, c.num_layers, 16, true, true, false), Id::DoraZ), -1) << "no DoRA";
  EXPECT_EQ(lora_cuda_dora_shape(c, qv, LoraTarget::VProj).offset, Q) << "v's z after q's";
  EXPECT_EQ(lora_cuda_dora_shape(c, all, LoraTarget::DownProj).offset, Q + 2 * KV + C + 2 * I);
  // A mixture of experts: the attention's columns, then per MLP target the routed experts' k·N_e and the shared
  // expert's N_s (tiny-moe-shared: C 64, Q 64, KV 32, k 2, Im 32, Is 96).
  {
    const QwenConfig m = qwen_preset("tiny-moe-shared");
    const int64_t mC = m.hidden_size, mQ = m.q_dim(), mKV = m.kv_dim(), k = m.experts_per_token,
                  Im = m.moe_intermediate_size, Is = m.shared_expert_intermediate_size;
    const LoraCudaDoraMoe moe = lora_cuda_dora_moe(m, all);
    const int64_t attn = mQ + 2 * mKV + mC;
    EXPECT_EQ(moe.routed[0], attn);
    EXPECT_EQ(moe.shared[0], attn + k * Im);
    EXPECT_EQ(moe.routed[1], attn + k * Im + Is);
    EXPECT_EQ(moe.routed[2], attn + 2 * (k * Im + Is));
    EXPECT_EQ(moe.shared[2], attn + 2 * (k * Im + Is) + k * mC);
    EXPECT_EQ(moe.words, attn + 2 * (k * Im + Is) + k * mC + mC);
    const std::vector<LoraCudaBuffer> tm = lora_cuda_batch_buffers(m, m.num_layers, 4, false, true, false, all);
    EXPECT_EQ(words(tm, Id::DoraZ), moe.words) << "no dense MLP layer: the MoE layout is the wider";
    EXPECT_EQ(words(tm, Id::DoraDz), std::max({mC, mQ, Im, Is}));
    EXPECT_EQ(words(tm, Id::DoraTmp), std::max({mC, mQ, Im, Is}));
  }
  struct PlanCase {
    QwenConfig c;
    std::vector<LoraTarget> targets;
  };
  for (const PlanCase& pc : {PlanCase{c, all}, PlanCase{c, qv}, PlanCase{qwen_preset("tiny-moe-shared"), all},
                             PlanCase{qwen_preset("tiny-moe"), all}}) {
    const QwenConfig& c = pc.c;
    const std::vector<LoraTarget>& targets = pc.targets;
    for (bool dropout : {false, true}) {
      SCOPED_TRACE(std::to_string(targets.size()) + " targets" + (dropout ? ", dropout" : "") +
                   (c.is_moe() ? ", MoE" : ""));
      const int64_t r = c.is_moe() ? 4 : 8, T = c.is_moe() ? 77 : 2048;
      PlanInput in = one_gpu(c, PlanBase::Nf4, r, T);
      in.lora.use_dora = true;
      in.lora.dropout = dropout ? 0.1 : 0.0;
      in.lora.target_modules = targets.size() == 2 ? std::vector<std::string>{"q_proj", "v_proj"}
                                                   : parse_lora_targets("all-linear");
      const PlanResult p = plan_memory(in);
      const DevicePlan& d = p.device;
      DeviceAllocator alloc(std::make_unique<FakeDevice>());
      std::vector<DeviceAllocation> keep;
      replay_lora_model_cuda(alloc, c, p.lora_params, r, T, c.head_dim == 64 || c.head_dim == 128, true, dropout,
                             &keep, targets);
      const DeviceAllocatorStats s = alloc.stats();
      EXPECT_EQ(s.bytes_of(MemoryTag::Activations), d.activations);
      EXPECT_EQ(s.bytes_of(MemoryTag::Adapter), d.adapters);
      EXPECT_EQ(s.bytes_of(MemoryTag::Gradients), d.gradients);
      EXPECT_EQ(s.bytes_of(MemoryTag::Optimizer), d.optimizer);
    }
  }
}

// Where LoraModelCuda keeps each DoRA Linear's z and v (lora_cuda_dora_shape's columns for a layer's own Linears,
// lora_cuda_dora_expert_offset for a MoE layer's experts, the trainer's own pointer arithmetic): in every layer kind,
// for a seeded routing (some experts idle, none over T rows), every Linear's block lies inside the DoraZ rows of the
// table and no two blocks of one layer overlap. Qwen3-MoE with a dense layer, Qwen2-MoE with a shared expert narrower
// and (Qwen1.5-MoE-A2.7B) wider than C; all seven targets and q/up/down.
TEST(MemoryPlanGpu, DoraColumnsOfEveryLinearAreDisjoint) {
  const auto words_of = [](const std::vector<LoraCudaBuffer>& t) -> int64_t {
    for (const LoraCudaBuffer& b : t)
      if (b.id == LoraCudaBufferId::DoraZ) return b.words;
    return -1;
  };
  const std::vector<LoraTarget> all = {LoraTarget::QProj, LoraTarget::KProj,    LoraTarget::VProj, LoraTarget::OProj,
                                       LoraTarget::GateProj, LoraTarget::UpProj, LoraTarget::DownProj};
  const std::vector<LoraTarget> some = {LoraTarget::QProj, LoraTarget::UpProj, LoraTarget::DownProj};
  for (const char* preset : {"tiny-moe", "tiny-moe-shared", "qwen1.5-moe-a2.7b", "qwen3-30b-a3b"}) {
    for (const auto& targets : {all, some}) {
      SCOPED_TRACE(std::string(preset) + ", " + std::to_string(targets.size()) + " targets");
      const QwenConfig c = qwen_preset(preset);
      const int64_t T = 13, k = c.experts_per_token, E = c.num_experts;
      const int64_t words = words_of(lora_cuda_batch_buffers(c, c.num_layers, 4, true, true, false, targets));
      ASSERT_GT(words, 0);
      const LoraCudaDoraMoe moe = lora_cuda_dora_moe(c, targets);
      // [begin, end) in floats of each Linear's block, per layer kind.
      const auto check = [&](std::vector<std::pair<int64_t, int64_t>> blocks, const char* kind) {
        std::sort(blocks.begin(), blocks.end());
        for (size_t i = 0; i < blocks.size(); ++i) {
          EXPECT_GE(blocks[i].first, 0) << kind;
          EXPECT_LE(blocks[i].second, words * T) << kind << ": a block past the DoraZ rows";
          if (i > 0) {
            EXPECT_GE(blocks[i].first, blocks[i - 1].second) << kind << ": two blocks overlap";
          }
        }
      };
      std::vector<std::pair<int64_t, int64_t>> attention;
      for (LoraTarget t : targets) {
        if (moe_expert_index(t) >= 0) continue;
        const LoraCudaDoraShape sh = lora_cuda_dora_shape(c, targets, t);
        attention.push_back({T * sh.offset, T * (sh.offset + sh.N)});
      }
      if (c.has_dense_mlp()) {
        std::vector<std::pair<int64_t, int64_t>> dense = attention;
        for (LoraTarget t : targets) {
          if (moe_expert_index(t) < 0) continue;
          const LoraCudaDoraShape sh = lora_cuda_dora_shape(c, targets, t);
          dense.push_back({T * sh.offset, T * (sh.offset + sh.N)});
        }
        check(dense, "a dense layer");
      }
      // A seeded routing: T·k rows over the experts, at most T each (a token picks an expert once); with E > k some
      // experts stay idle.
      Rng rng(5);
      std::vector<int64_t> rows(static_cast<size_t>(E), 0);
      for (int64_t left = T * k; left > 0;) {
        const int64_t e = static_cast<int64_t>(rng.below(static_cast<uint64_t>(E)));
        if (rows[e] < T) ++rows[e], --left;
      }
      std::vector<std::pair<int64_t, int64_t>> blocks = attention;
      for (LoraTarget t : targets) {
        const int which = moe_expert_index(t);
        if (which < 0) continue;
        const int64_t Ne = which == 2 ? c.hidden_size : c.moe_intermediate_size;
        int64_t r0 = 0;
        for (int64_t e = 0; e < E; ++e) {
          if (rows[e] > 0) {
            const int64_t at = lora_cuda_dora_expert_offset(moe, which, e, T, r0, Ne);
            blocks.push_back({at, at + rows[e] * Ne});
          }
          r0 += rows[e];
        }
        if (c.shared_expert_intermediate_size > 0) {
          const int64_t Ns = which == 2 ? c.hidden_size : c.shared_expert_intermediate_size;
          const int64_t at = lora_cuda_dora_expert_offset(moe, which, -1, T, 0, Ns);
          blocks.push_back({at, at + T * Ns});
        }
      }
      check(blocks, "a MoE layer");
    }
  }
}

// The MoE rows of the buffer table (trainer/lora_cuda_buffers.h), word for word: Qwen3-30B-A3B (k 8, E 128, Im 768,
// no shared expert, no dense MLP layer: gate/up/act one word) and Qwen1.5-MoE-A2.7B (k 4, E 60, Im 1408, shared
// expert 5632: wider than C, so tmp and act16 cover it); a dense model has none of them.
TEST(MemoryPlanGpu, MixtureOfExpertsRowsOfTheBufferTable) {
  using Id = LoraCudaBufferId;
  const auto words = [](const std::vector<LoraCudaBuffer>& t, Id id) -> int64_t {
    for (const LoraCudaBuffer& b : t)
      if (b.id == id) return b.words;
    return -1;
  };
  for (const char* preset : {"qwen3-30b-a3b", "qwen1.5-moe-a2.7b"}) {
    SCOPED_TRACE(preset);
    const QwenConfig c = qwen_preset(preset);
    const int64_t r = 16, C = c.hidden_size, k = c.experts_per_token, Im = c.moe_intermediate_size,
                  Is = c.shared_expert_intermediate_size;
    ASSERT_TRUE(c.is_moe());
    const std::vector<LoraCudaBuffer> t = lora_cuda_batch_buffers(c, c.num_layers, r, true, true, /*dropout=*/true);
    EXPECT_EQ(words(t, Id::Mx), k * C);
    EXPECT_EQ(words(t, Id::My), k * C);
    EXPECT_EQ(words(t, Id::Mdy), k * C);
    for (Id id : {Id::Mgate, Id::Mup, Id::Mact}) EXPECT_EQ(words(t, id), k * Im);
    EXPECT_EQ(words(t, Id::Mu), 3 * k * r);
    EXPECT_EQ(words(t, Id::Mlogits), c.num_experts);
    EXPECT_EQ(words(t, Id::Mindex), 2 * k);
    EXPECT_EQ(words(t, Id::Mweight), k + 1);
    EXPECT_EQ(words(t, Id::Mdw), k);
    EXPECT_EQ(words(t, Id::Mtmp), C);
    for (Id id : {Id::Sgate, Id::Sup, Id::Sact}) EXPECT_EQ(words(t, id), Is > 0 ? Is : 1);
    EXPECT_EQ(words(t, Id::Sy), Is > 0 ? C : 1);
    EXPECT_EQ(words(t, Id::Su), Is > 0 ? 3 * r : 1);
    EXPECT_EQ(words(t, Id::Ds), Is > 0 ? C : 1);
    ASSERT_FALSE(c.has_dense_mlp());
    for (Id id : {Id::Gate, Id::Up, Id::Act}) EXPECT_EQ(words(t, id), 1) << "no dense MLP layer";
    const int64_t wide = std::max({C, c.q_dim(), c.intermediate_size, Im, Is, c.num_experts});
    EXPECT_EQ(words(t, Id::Tmp), wide);
    EXPECT_EQ(words(t, Id::Act16), (wide + 1) / 2);
  }
  const std::vector<LoraCudaBuffer> dense = lora_cuda_batch_buffers(qwen_preset("qwen2.5-7b"), 28, 16, true, true, false);
  EXPECT_EQ(words(dense, Id::Mx), -1);
  EXPECT_EQ(words(dense, Id::Gate), qwen_preset("qwen2.5-7b").intermediate_size);
}

// QwenModelCuda's upload for the trainer (QwenModelCudaOptions::upload_embedding = false) replayed: the input
// embedding only when it is the (tied) lm_head, the final norm and lm_head one allocation each, and each decoder
// layer one allocation of its arena as QwenModelCuda lays it out (qwen_layer_arena: the real Q4 repacks of the
// packed Linears, every tensor of the layer at 256-byte offsets).
uint64_t replayed_weight_bytes(const QwenModel& m) {
  DeviceAllocator a(std::make_unique<FakeDevice>());
  std::vector<DeviceAllocation> keep;
  std::map<const void*, bool> seen;
  const auto dense = [&](const TensorView& t) {
    if (t.data == nullptr || seen[t.data]) return;
    seen[t.data] = true;
    keep.push_back(a.allocate(t.nbytes(), nullptr, MemoryTag::Weights, "dense"));
  };
  const QwenWeights& w = m.weights();
  if (w.embed.data == w.lm_head.data) dense(w.embed);
  dense(w.final_norm);
  dense(w.lm_head);
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const QwenLayerArena arena = qwen_layer_arena(w.layers[l], "model.layers." + std::to_string(l) + ".");
    keep.push_back(a.allocate(arena.bytes, nullptr, MemoryTag::Weights, "layer"));
  }
  return a.stats().bytes_of(MemoryTag::Weights);
}

// The model in `dir` with an untied lm_head (a copy of the embedding, its own tensor) and config.json saying so.
void untie_embeddings(const std::string& dir) {
  std::vector<float> head;
  {
    SafetensorsFile f(path_join(dir, "model.safetensors"));
    SafetensorsWriter w;
    for (const std::string& n : f.names()) w.add(n, f.get(n).dtype, f.get(n).shape, f.get(n).data);
    const TensorView& e = f.get("model.embed_tokens.weight");
    std::vector<uint8_t> bytes(static_cast<const uint8_t*>(e.data), static_cast<const uint8_t*>(e.data) + e.nbytes());
    w.add_owned("lm_head.weight", e.dtype, e.shape, std::move(bytes));
    w.write(path_join(dir, "model.safetensors.new"));
  }
  std::rename(path_join(dir, "model.safetensors.new").c_str(), path_join(dir, "model.safetensors").c_str());
  nlohmann::json cfg = nlohmann::json::parse(read_file(path_join(dir, "config.json")));
  cfg["tie_word_embeddings"] = false;
  write_file_atomic(path_join(dir, "config.json"), cfg.dump(2));
}

TEST(MemoryPlanGpu, BaseWeightsEqualTheUploadOfARealCheckpoint) {
  const std::string scratch = test::scratch_dir();
  RandomModelOptions o;
  o.preset = "tiny";
  o.out_dir = scratch + "/m";
  o.seed = 5;
  write_random_model(o);
  {  // untied: the input embedding is not uploaded, the lm_head is
    RandomModelOptions u = o;
    u.out_dir = scratch + "/untied";
    write_random_model(u);
    untie_embeddings(u.out_dir);
    const QwenModel model(u.out_dir);
    ASSERT_FALSE(model.config().tie_word_embeddings);
    ASSERT_NE(model.weights().embed.data, model.weights().lm_head.data);
    PlanInput in = one_gpu(model.config(), PlanBase::Bf16, 4, 64);
    const uint64_t replayed = replayed_weight_bytes(model);
    EXPECT_EQ(plan_memory(in).device.base_weights, replayed);
    // Against the tied model: the same bytes (the embedding's allocation is now the lm_head's).
    const QwenModel tied(o.out_dir);
    EXPECT_EQ(replayed, replayed_weight_bytes(tied));
  }
  struct Case {
    const char* name;
    QuantizeOptions::Method method;
    IntLayout layout;
    int64_t group;
    bool dq;
  };
  for (const Case& k : {Case{"bf16", QuantizeOptions::Method::Rtn, IntLayout::GptqV1, 0, false},
                        Case{"gptq g32", QuantizeOptions::Method::Rtn, IntLayout::GptqV1, 32, false},
                        Case{"gptq g-1", QuantizeOptions::Method::Rtn, IntLayout::GptqV2, -1, false},
                        Case{"awq g32", QuantizeOptions::Method::Rtn, IntLayout::AwqGemm, 32, false},
                        Case{"nf4+dq", QuantizeOptions::Method::Nf4, IntLayout::GptqV1, 0, true},
                        Case{"nf4", QuantizeOptions::Method::Nf4, IntLayout::GptqV1, 0, false}}) {
    SCOPED_TRACE(k.name);
    std::string dir = o.out_dir;
    if (std::string(k.name) != "bf16") {
      QuantizeOptions q;
      q.method = k.method;
      q.model_dir = o.out_dir;
      q.out_dir = scratch + "/q" + std::to_string(static_cast<int>(k.method)) + "_" +
                  std::to_string(static_cast<int>(k.layout)) + "_" + std::to_string(k.group) + (k.dq ? "dq" : "");
      q.bits = 4;
      q.group_size = k.group;
      q.layout = k.layout;
      q.double_quant = k.dq;
      q.quiet = true;
      quantize_model(q);
      dir = q.out_dir;
    }
    const QwenModel model(dir);
    PlanInput in = one_gpu(model.config(), PlanBase::Bf16, 4, 64);
    in.dense_dtype = plan_dense_dtype(model.config().torch_dtype);
    plan_base_from_model_dir(dir, &in);
    const PlanBase want = k.method == QuantizeOptions::Method::Nf4 ? PlanBase::Nf4
                          : std::string(k.name) == "bf16"          ? PlanBase::Bf16
                          : k.layout == IntLayout::AwqGemm         ? PlanBase::Awq
                                                                   : PlanBase::Gptq;
    ASSERT_EQ(in.base, want);
    ASSERT_EQ(model.weights().layers.at(0).gate.is_dense(), want == PlanBase::Bf16);
    const PlanResult p = plan_memory(in);
    const uint64_t replayed = replayed_weight_bytes(model);
    EXPECT_NE(p.device.base_weights, p.base_weight_bytes);  // the allocator's rounding (and Q4) show
    EXPECT_EQ(p.device.base_weights, replayed);
    std::printf("%s: GPU base weights %llu B (file %llu B)\n", k.name, (unsigned long long)replayed,
                (unsigned long long)p.base_weight_bytes);
  }
}

// The layer arena of real Qwen shapes (Qwen2.5-0.5B with q/k/v biases, and Qwen3-like QK-norm at head_dim 128, both
// over 1 MiB a layer, so the 2 MiB rounding applies) built by qwen_layer_arena from synthetic weights in each base
// format (bf16 views of a zero buffer; GPTQ v1 g128, AWQ g128, NF4 with double quantization from the synthetic
// generators), one allocation per layer on the fake device: the plan's base weights to the byte, and its split
// (norms and biases as base_dense, the rest as base_linear).
TEST(MemoryPlanGpu, LayerArenaOfQwenShapesIsThePlans) {
  QwenConfig qk = qwen_preset("qwen2.5-1.5b");
  qk.qk_norm = true;
  qk.qkv_bias = false;
  qk.head_dim = 128;
  const std::vector<uint8_t> zeros(size_t{8960} * 1536 * 2);  // the largest bf16 Linear, 1.5B's gate
  for (const QwenConfig& c : {qwen_preset("qwen2.5-0.5b"), qk}) {
    for (PlanBase base : {PlanBase::Bf16, PlanBase::Gptq, PlanBase::Awq, PlanBase::Nf4}) {
      SCOPED_TRACE(std::to_string(c.hidden_size) + " " + plan_base_name(base));
      const int64_t C = c.hidden_size, I = c.intermediate_size, Q = c.q_dim(), KV = c.kv_dim(), D = c.head_dim;
      const auto view = [&](std::vector<int64_t> shape) {
        TensorView t;
        t.data = zeros.data();
        t.dtype = DType::BF16;
        t.shape = std::move(shape);
        EXPECT_LE(t.nbytes(), zeros.size());
        return t;
      };
      uint64_t seed = 40;
      const auto linear = [&](int64_t N, int64_t K) {
        LinearWeight w;
        w.N = N;
        w.K = K;
        if (base == PlanBase::Bf16) {
          w.dense = view({N, K});
        } else if (base == PlanBase::Nf4) {
          auto q = std::make_shared<Nf4Linear>();
          q->q = q4_synthetic_nf4(N, K, false, 64, true, ++seed);
          q->shape = {N, K};
          q->dtype = "bfloat16";
          w.nf4 = q;
        } else {
          const IntLayout layout = base == PlanBase::Awq ? IntLayout::AwqGemm : IntLayout::GptqV1;
          w.packed = std::make_shared<PackedIntLinear>(q4_synthetic_int_linear(layout, K, N, 128, false, ++seed));
        }
        return w;
      };
      QwenLayerWeights l;
      l.input_norm = view({C});
      l.post_norm = view({C});
      if (c.qk_norm) l.q_norm = view({D}), l.k_norm = view({D});
      if (c.qkv_bias) l.q_bias = view({Q}), l.k_bias = view({KV}), l.v_bias = view({KV});
      l.q = linear(Q, C);
      l.k = linear(KV, C);
      l.v = linear(KV, C);
      l.o = linear(C, Q);
      l.gate = linear(I, C);
      l.up = linear(I, C);
      l.down = linear(C, I);
      const QwenLayerArena arena = qwen_layer_arena(l, "model.layers.0.");
      ASSERT_GT(arena.bytes, MiB);
      DeviceAllocator a(std::make_unique<FakeDevice>());
      const DeviceAllocation held = a.allocate(arena.bytes, nullptr, MemoryTag::Weights, "layer");

      PlanInput in = one_gpu(c, base, 16, 2048);
      in.model.num_layers = 1;
      const DevicePlan& d = plan_memory(in).device;
      const uint64_t rest = DeviceAllocator::round_size(size_t(C) * 2) +                     // final norm
                            DeviceAllocator::round_size(size_t(c.vocab_size) * size_t(C) * 2);  // lm_head (tied)
      EXPECT_EQ(d.base_weights, held.block_bytes() + rest);
      EXPECT_EQ(d.base_linear, held.block_bytes() - (arena.bytes - arena.linear_bytes));
      EXPECT_EQ(d.base_dense, arena.bytes - arena.linear_bytes + rest);
    }
  }
}

// DoRA's kernels allocate stream-ordered partial sums (kernels/dora.h): the plan's kernel scratch is at least the
// largest of them. Qwen2.5-7B with fp32 dense weights (no cast copy), T = 2048: without DoRA the scratch is
// attention's δ [T, H]; all-linear DoRA adds gate/up's split grad (8 row slices x 18944 doubles); q/v-only DoRA
// q_proj's row norms (10 K slices x 3584), larger than its split grad (8 x 3584) and δ. The dense 4-bit path's bf16
// Ŵ (larger than all of them at T = 2048; DenseQgemmPathHoldsOneBf16Weight) is turned off to see them.
TEST(MemoryPlanGpu, DoraScratchIsTheKernelsLargestPartialSums) {
  const ScopedEnv fused("QWENQ_QGEMM_DENSE", "0");
  EXPECT_EQ(dora_row_norm_slices(896, 4864), 19) << "kernels/dora.cu's worked example: 28 tiles x 19 slices";
  EXPECT_EQ(dora_row_norm_slices(18944, 3584), 2) << "592 tiles x 2 slices";
  EXPECT_EQ(dora_row_norms_scratch_bytes(64, 64), 0u) << "one slice finishes in place";
  EXPECT_EQ(dora_split_grad_slices(2048, 1), 8);
  EXPECT_EQ(dora_split_grad_slices(1, 1), 1);
  EXPECT_EQ(dora_split_grad_slices(1 << 20, 1), kDoraSplitMaxSlices);
  const QwenConfig c = qwen_preset("qwen2.5-7b");
  const int64_t T = 2048;
  PlanInput in = one_gpu(c, PlanBase::Nf4, 16, T);
  in.dense_dtype = DType::F32;
  const uint64_t delta = static_cast<uint64_t>(T * c.num_heads * 4);
  EXPECT_EQ(plan_memory(in).device.ws_scratch, delta);
  in.lora.use_dora = true;
  EXPECT_EQ(plan_memory(in).device.ws_scratch, 8u * 18944 * 8);
  in.lora.target_modules = {"q_proj", "v_proj"};
  EXPECT_EQ(plan_memory(in).device.ws_scratch, 10u * 3584 * 8);
  EXPECT_GT(10u * 3584 * 8, std::max<uint64_t>(delta, 8u * 3584 * 8));
}

// The dense 4-bit path (kernels/qgemm.h: by default from 512 tokens a step; QWENQ_QGEMM_DENSE=1 from 65, =0 never)
// holds bf16 Ŵ during its product: all of it, or with the overlap (QWENQ_QGEMM_OVERLAP=1, for weights of 8M values
// and up) two pieces of it. The plan's kernel scratch is the largest, for a 4-bit base: Qwen2.5-7B's gate/up
// [18944, 3584], 18944 x 3584 x 2 bytes; with the overlap its forward pieces, its 448 word-rows cut into 4 pieces of
// whole 32-word-row tiles (128 word-rows, 1024 inputs): 2 x 18944 x 1024 x 2 bytes (its transposed pieces,
// 4736 x 3584, and down_proj's are smaller). A bf16 base is unchanged (no 4-bit weight).
TEST(MemoryPlanGpu, DenseQgemmPathHoldsOneBf16Weight) {
  const QwenConfig c = qwen_preset("qwen2.5-7b");
  const auto scratch = [&](PlanBase base, int64_t seq, const char* env) {
    const ScopedEnv dense("QWENQ_QGEMM_DENSE", env);
    return plan_memory(one_gpu(c, base, 16, seq)).device.ws_scratch;
  };
  // By default from 512 tokens a step (kQgemmDenseMinM), then the largest Linear's Ŵ: gate/up [18944, 3584].
  const uint64_t dflt = scratch(PlanBase::Gptq, 2048, nullptr), off = scratch(PlanBase::Gptq, 2048, "0");
  const uint64_t short_dflt = scratch(PlanBase::Gptq, 256, nullptr), short_on = scratch(PlanBase::Gptq, 256, "1");
  const uint64_t bf16_dflt = scratch(PlanBase::Bf16, 2048, nullptr), bf16_off = scratch(PlanBase::Bf16, 2048, "0");
  EXPECT_EQ(dflt, 18944u * 3584 * 2);
  EXPECT_LT(off, dflt);
  EXPECT_EQ(short_on, 18944u * 3584 * 2);
  EXPECT_LT(short_dflt, short_on);
  EXPECT_EQ(bf16_dflt, bf16_off);  // a bf16 base has no 4-bit products
  const ScopedEnv overlap("QWENQ_QGEMM_OVERLAP", "1");
  EXPECT_EQ(scratch(PlanBase::Gptq, 2048, nullptr), 2u * 18944 * 1024 * 2);
  EXPECT_EQ(qgemm_dense_scratch_bytes(18944, 3584), 2 * 18944 * 1024 * 2);
  // The pieces: whole tiles, the last one shorter.
  EXPECT_EQ(qgemm_dense_chunk(448, 4, kQgemmDqWordRows), 128);
  EXPECT_EQ(qgemm_dense_chunk(18944, 4, kQgemmDqCols), 4736);
  EXPECT_EQ(qgemm_dense_chunk(29568, 4, kQgemmDqCols), 7424);  // 3 x 7424 + 7296
  EXPECT_EQ(qgemm_dense_chunks(512, 3584), 1) << "k/v_proj: 1.8M values, one piece";
  // 32 word-rows are one forward piece (one buffer: the whole weight), larger than two transposed pieces.
  EXPECT_EQ(qgemm_dense_scratch_bytes(32768, 256), 32768 * 256 * 2);
}

// A float32 checkpoint's dense Linears are uploaded as fp32: twice the bf16 file-bytes formula.
TEST(MemoryPlanGpu, Fp32DenseBaseIsUploadedAsStored) {
  RandomModelOptions o;
  o.preset = "tiny";
  o.out_dir = test::scratch_dir() + "/f32";
  o.seed = 6;
  o.dtype = DType::F32;
  write_random_model(o);
  const QwenModel model(o.out_dir);
  PlanInput in = one_gpu(model.config(), PlanBase::Bf16, 4, 64);
  in.dense_dtype = plan_dense_dtype(model.config().torch_dtype);
  ASSERT_EQ(in.dense_dtype, DType::F32);
  const PlanResult p = plan_memory(in);
  EXPECT_EQ(p.device.base_weights, replayed_weight_bytes(model));
  EXPECT_EQ(p.device.ws_scratch, 64u * 4 * 4);  // only δ [T, H]: no 16-bit weight, no cast copy
}

// The Q4 sizes the plan derives without building a layout equal the repack's, for Qwen shapes and awkward ones.
TEST(MemoryPlanGpu, Q4SizesEqualTheRepack) {
  struct Shape {
    int64_t N, K, group;
  };
  for (const Shape& s : {Shape{896, 4864, 128}, Shape{128, 896, 128}, Shape{4864, 896, -1}, Shape{40, 96, 32},
                         Shape{8, 200, 8}}) {
    const Q4Layout q = q4_from_int_linear(q4_synthetic_int_linear(IntLayout::GptqV1, s.K, s.N, s.group, false, 1));
    const int64_t g = q4_int_layout_group(s.K, s.group);
    EXPECT_EQ(g, q.group) << s.N << "x" << s.K;
    EXPECT_EQ(q4_qweight_words(s.N, s.K), static_cast<int64_t>(q.qweight.size())) << s.N << "x" << s.K;
    EXPECT_EQ(q4_meta_words(s.N, s.K, g), static_cast<int64_t>(q.meta.size())) << s.N << "x" << s.K;
  }
  for (const Shape& s : {Shape{896, 4864, 64}, Shape{6, 96, 64}, Shape{10, 120, 256}}) {
    const Q4Layout q = q4_from_nf4(q4_synthetic_nf4(s.N, s.K, false, s.group, true, 2), s.N, s.K);
    const int64_t g = q4_nf4_layout_group(s.K, s.group);
    EXPECT_EQ(g, q.group) << s.N << "x" << s.K;
    EXPECT_EQ(q4_qweight_words(s.N, s.K), static_cast<int64_t>(q.qweight.size())) << s.N << "x" << s.K;
    EXPECT_EQ(q4_meta_words(s.N, s.K, g), static_cast<int64_t>(q.meta.size())) << s.N << "x" << s.K;
  }
}

// The GPU trainer's logits chunk (trainer/lora_cuda_buffers.h): 2^24 logits, at least one row, at most T rows; a
// positive max_rows (LoraModelCudaOptions::logits_chunk_rows) replaces the rule. The chunks cover T with a partial
// last one.
TEST(MemoryPlanGpu, LogitsChunkRows) {
  const test::ScopedEnv unset("QWENQ_LOGITS_CHUNK", nullptr);
  EXPECT_EQ(kLoraCudaLogitsChunkFloats, int64_t{1} << 24);
  EXPECT_EQ(lora_cuda_logits_rows(2048, 151936), 110);
  EXPECT_EQ(lora_cuda_logits_rows(2048, 152064), 110);
  EXPECT_EQ(lora_cuda_logits_rows(100, 152064), 100);  // T < rows: one chunk of T
  EXPECT_EQ(lora_cuda_logits_rows(2048, 320), 2048);
  EXPECT_EQ(lora_cuda_logits_rows(7, int64_t{1} << 25), 1);  // V > 2^24: still a row
  EXPECT_EQ(lora_cuda_logits_rows(165, 384, 7), 7);
  EXPECT_EQ(lora_cuda_logits_rows(5, 384, 7), 5);
  EXPECT_EQ(lora_cuda_logits_rows(5, 384, 0), 5);
  // 2048 tokens in chunks of 110: 18 full chunks and one of 68.
  const int64_t rows = lora_cuda_logits_rows(2048, 152064);
  int64_t chunks = 0, last = 0, covered = 0;
  for (int64_t r0 = 0; r0 < 2048; r0 += rows, ++chunks) covered += last = std::min(rows, 2048 - r0);
  EXPECT_EQ(chunks, 19);
  EXPECT_EQ(last, 68);
  EXPECT_EQ(covered, 2048);
}

// QWENQ_LOGITS_CHUNK replaces the 2^24 logits of a chunk, in the trainer's rows and in the plan's logits buffer
// alike; a value that is not an integer in [1, 2^30] is refused, naming the variable.
TEST(MemoryPlanGpu, LogitsChunkFromTheEnvironment) {
  const auto logits = [] {
    return plan_memory(one_gpu(qwen_preset("qwen2.5-7b"), PlanBase::Gptq, 16, 2048)).device.ws_logits;
  };
  uint64_t dflt = 0;
  {
    const test::ScopedEnv unset("QWENQ_LOGITS_CHUNK", nullptr);
    EXPECT_EQ(lora_cuda_logits_chunk_floats(), kLoraCudaLogitsChunkFloats);
    dflt = logits();
  }
  {
    const test::ScopedEnv empty("QWENQ_LOGITS_CHUNK", "");
    EXPECT_EQ(lora_cuda_logits_chunk_floats(), kLoraCudaLogitsChunkFloats);
  }
  const test::ScopedEnv big("QWENQ_LOGITS_CHUNK", "67108864");  // 2^26: 441 rows at V = 152064
  EXPECT_EQ(lora_cuda_logits_rows(2048, 152064), 441);
  EXPECT_EQ(lora_cuda_logits_rows(300, 152064), 300);
  EXPECT_GT(logits(), dflt);
  for (const char* bad : {"0", "-5", "2^26", "64M", "1073741825"}) {
    const test::ScopedEnv b("QWENQ_LOGITS_CHUNK", bad);
    test::expect_error([] { lora_cuda_logits_rows(2048, 152064); },
                       {std::string("QWENQ_LOGITS_CHUNK=") + bad, "expected an integer in [1, 1073741824]"});
  }
}

// Qwen2.5-72B GPTQ g128, r 16, T = 2048 on each of 8 data-parallel GPUs: every one the whole model's step.
TEST(MemoryPlanGpu, Qwen72bOnEachOfEightGpus) {
  const ScopedEnv host_ring("QWENQ_DP_NCCL", nullptr);  // NCCL's reserve only where it is set below
  PlanInput in = one_gpu(qwen_preset("qwen2.5-72b"), PlanBase::Gptq, 16, 2048);
  in.gpus = 8;
  const PlanResult p = plan_memory(in);
  const DevicePlan& d = p.device;
  // xs holds L + 1 = 81 block inputs in bf16: 2048·(81·8192 / 2 words)·4 B = 2592 MiB (a multiple of 2 MiB).
  EXPECT_EQ(d.act_checkpoints, 2592 * MiB);
  // The untied input embedding stays on the host. Dense: per layer 2 RMSNorms and the q bias 16 KiB each, the k/v
  // biases 2 KiB each (256-aligned pieces of the layer's arena); the final norm (8192 bf16 = 16 KiB) and the
  // lm_head (152064·8192·2 B = 1188 blocks of 2 MiB).
  EXPECT_EQ(d.base_dense, 80 * (3 * 16 * KiB + 2 * 2 * KiB) + 16 * KiB + 1188 * 2 * MiB);
  // Loss buffers nll, targets 8 KiB each (hidden, dhidden on n1, h1).
  EXPECT_EQ(d.act_loss, 16 * KiB);
  EXPECT_EQ(d.ws_reserve, kCudaContextBytes + kCublasLtWorkspaceBytes + kAllocatorSlackBytes);
  {
    const ScopedEnv nccl("QWENQ_DP_NCCL", "1");  // NCCL's buffers on each GPU
    EXPECT_EQ(plan_memory(in).device.ws_reserve,
              kCudaContextBytes + kCublasLtWorkspaceBytes + kAllocatorSlackBytes + kNcclBytes);
  }
  // 2048 tokens take the dense 4-bit path (kQgemmDenseMinM): the largest scratch is gate/up's bf16 Ŵ,
  // 29568·8192·2 B; with the overlap two pieces of it, its transposed product's 7424 of 29568 columns x 8192
  // (down_proj's forward pieces, 8192 x 8·928, are as large). Without the dense path, the lm_head's dlogits copy
  // 110·152064·2 (2^24 / 152064 = 110 rows; attention's δ is 2048·64·4 = 512 KiB).
  EXPECT_EQ(d.ws_scratch, 29568u * 8192 * 2);
  {
    const ScopedEnv overlap("QWENQ_QGEMM_OVERLAP", "1");
    EXPECT_EQ(plan_memory(in).device.ws_scratch, 2u * 7424 * 8192 * 2);
  }
  {
    const ScopedEnv fused("QWENQ_QGEMM_DENSE", "0");
    EXPECT_EQ(plan_memory(in).device.ws_scratch, 110u * 152064 * 2);
  }
  // logits 110·152064·4 = 66,908,160 B -> 32 blocks of 2 MiB.
  EXPECT_EQ(d.ws_logits, 64 * MiB);
  // The same bytes as one GPU alone.
  in.gpus = 1;
  EXPECT_EQ(plan_memory(in).device.total, d.total);
}

TEST(MemoryPlanGpu, RefusesWhatTheGpuTrainerCannotRead) {
  PlanInput in = one_gpu(qwen_preset("qwen2.5-0.5b"), PlanBase::Gptq, 16, 2048);
  in.bits = 3;
  EXPECT_NE(test::error_of([&] { plan_memory(in); }).find("the GPU trainer reads 4-bit weights only"),
            std::string::npos);
  in.device = PlanDevice::Cpu;  // the CPU trainer reads 3-bit GPTQ
  EXPECT_NO_THROW(plan_memory(in));
  in = one_gpu(qwen_preset("qwen2.5-0.5b"), PlanBase::Gptq, 16, 2048);
  in.group_size = 4;  // 896 / 4 groups of 4 rows: a Q4 word of 8 rows would straddle two
  EXPECT_NE(test::error_of([&] { plan_memory(in); }).find("Q4 layout group of 4, not a multiple of 8"),
            std::string::npos);
}

}  // namespace
}  // namespace qwenq
