// The memory plan (trainer/memory_plan): base-weight bytes equal, to the byte, the tensor bytes our quantizers
// write; the adapter count equals LoraAdapter::num_parameters(); the 72B verdicts (4-bit fits each of 8 data-parallel
// 80 GB GPUs, bf16 does not, and the plan names the NF4 figure); rejected configurations; and a measured check of the CPU activation + workspace
// prediction against the resident memory the real trainer step (trainer/lora_model.h) adds.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/progress.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "core/threads.h"
#include "lora/lora_adapter.h"
#include "quant/nf4_checkpoint.h"
#include "tests/support/scoped_env.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_paths.h"
#include "trainer/lora_model.h"
#include "trainer/memory_plan.h"
#include "kernels/device_allocator.h"
#include "trainer/qwen_model.h"
#include "trainer/qwen_weight_arena.h"
#include "trainer/qwen_weights.h"
#include "trainer/quantize_model.h"
#include "trainer/random_model.h"

namespace qwenq {
namespace {

// Measured CPU activations + workspace must be within this fraction of the prediction (either way). The plan
// counts live buffers; RSS adds the allocator's rounding and fragmentation and misses nothing it counts.
constexpr double kMeasuredRelTol = 0.35;

LoraConfig all_linear(int64_t r) {
  LoraConfig l;
  l.r = r;
  l.alpha = 2.0 * static_cast<double>(r);
  l.target_modules = parse_lora_targets("all-linear");
  return l;
}

std::string write_tiny(const std::string& dir, const std::string& preset = "tiny", int64_t layers = 0) {
  RandomModelOptions o;
  o.preset = preset;
  o.layers = layers;
  o.out_dir = dir;
  o.seed = 5;
  write_random_model(o);  // bf16, like a released checkpoint
  return dir;
}

// `preset` (layers 0: the preset's) written to scratch/m and quantized by RTN into GPTQ v1 4-bit groups of `group` in
// scratch/gptq; the bf16 directory is removed when drop_dense (a large one). Returns the GPTQ directory.
std::string gptq_model(const std::string& scratch, const std::string& preset, int64_t layers, int64_t group,
                       bool drop_dense = false) {
  QuantizeOptions q;
  q.model_dir = write_tiny(scratch + "/m", preset, layers);
  q.out_dir = scratch + "/gptq";
  q.group_size = group;
  q.quiet = true;
  quantize_model(q);
  if (drop_dense) std::filesystem::remove_all(q.model_dir);
  return q.out_dir;
}

uint64_t checkpoint_tensor_bytes(const std::string& dir) {
  Checkpoint ck(dir);
  uint64_t sum = 0;
  for (const auto& name : ck.names()) sum += ck.get(name).nbytes();
  return sum;
}

PlanInput plan_for_dir(const std::string& dir, PlanBase base) {
  PlanInput in;
  in.model_name = dir;
  in.model = load_qwen_config(dir);
  in.base = base;
  in.lora = all_linear(4);
  in.device = PlanDevice::Cpu;
  in.device_bytes = uint64_t{1} << 34;
  return in;
}

TEST(MemoryPlan, Bf16BaseBytesEqualTheCheckpoint) {
  const std::string dir = write_tiny(test::scratch_dir() + "/m");
  const PlanResult p = plan_memory(plan_for_dir(dir, PlanBase::Bf16));
  EXPECT_EQ(p.base_weight_bytes, checkpoint_tensor_bytes(dir));
}

TEST(MemoryPlan, GptqAndAwqBaseBytesEqualTheWrittenFiles) {
  const std::string scratch = test::scratch_dir();
  const std::string dense = write_tiny(scratch + "/m");
  struct Case {
    IntLayout layout;
    int bits;
    int64_t group;
    bool sym;
  };
  for (const Case& c : {Case{IntLayout::GptqV1, 4, 128, true}, Case{IntLayout::GptqV1, 4, 32, true},
                        Case{IntLayout::GptqV2, 8, -1, false}, Case{IntLayout::GptqV2, 3, 32, false},
                        Case{IntLayout::AwqGemm, 4, 32, false}}) {
    QuantizeOptions q;
    q.model_dir = dense;
    q.out_dir = scratch + "/q" + std::to_string(static_cast<int>(c.layout)) + "_" + std::to_string(c.bits) + "_" +
                std::to_string(c.group);
    q.bits = c.bits;
    q.group_size = c.group;
    q.sym = c.sym;
    q.layout = c.layout;
    q.quiet = true;
    quantize_model(q);
    PlanInput in = plan_for_dir(q.out_dir, c.layout == IntLayout::AwqGemm ? PlanBase::Awq : PlanBase::Gptq);
    in.bits = c.bits;
    in.group_size = c.group;
    const PlanResult p = plan_memory(in);
    EXPECT_EQ(p.base_weight_bytes, checkpoint_tensor_bytes(q.out_dir))
        << int_layout_name(c.layout) << " " << c.bits << "-bit group " << c.group;
  }
}

// The quant_state JSON holds nested_offset, whose digits depend on the weights: the plan writes kPlanNestedOffset.
// Σ over the quant_states of `dir` of (their digits - the planned digits); *count = how many quant_states.
int64_t nf4_offset_digits_diff(const std::string& dir, bool double_quant, int64_t* count) {
  const std::string planned_offset = python_float_repr(kPlanNestedOffset);
  Checkpoint ck(dir);
  int64_t digits_diff = 0;
  *count = 0;
  for (const auto& name : ck.names()) {
    if (name.find(".quant_state.") == std::string::npos) continue;
    ++*count;
    const TensorView& t = ck.get(name);
    const std::string json(static_cast<const char*>(t.data), t.nbytes());
    const std::string key = "\"nested_offset\": ";
    const size_t at = json.find(key);
    EXPECT_EQ(at != std::string::npos, double_quant) << json;
    if (at == std::string::npos) continue;
    const size_t begin = at + key.size(), end = json.find('}', begin);
    digits_diff += static_cast<int64_t>(end - begin) - static_cast<int64_t>(planned_offset.size());
  }
  return digits_diff;
}

// NF4: everything but nested_offset's digits is exact, so the file equals the plan plus the per-Linear difference of
// those digit strings.
TEST(MemoryPlan, Nf4BaseBytesEqualTheWrittenFiles) {
  const std::string scratch = test::scratch_dir();
  const std::string dense = write_tiny(scratch + "/m");
  for (bool dq : {true, false}) {
    QuantizeOptions q;
    q.method = QuantizeOptions::Method::Nf4;
    q.model_dir = dense;
    q.out_dir = scratch + (dq ? "/nf4dq" : "/nf4");
    q.double_quant = dq;
    q.quiet = true;
    quantize_model(q);
    PlanInput in = plan_for_dir(q.out_dir, PlanBase::Nf4);
    in.double_quant = dq;
    const PlanResult p = plan_memory(in);

    int64_t quant_states = 0;
    const int64_t digits_diff = nf4_offset_digits_diff(q.out_dir, dq, &quant_states);
    EXPECT_EQ(quant_states, 7 * in.model.num_layers);
    const uint64_t file = checkpoint_tensor_bytes(q.out_dir);
    EXPECT_EQ(static_cast<int64_t>(file), static_cast<int64_t>(p.base_weight_bytes) + digits_diff)
        << (dq ? "double quant" : "no double quant") << ": nested_offset digits differ by " << digits_diff;
    EXPECT_LE(std::abs(digits_diff), 4 * quant_states);
    std::printf("nf4%s: %llu tensor bytes written, planned %llu, nested_offset digits %+lld over %lld Linears\n",
                dq ? "+dq" : "", (unsigned long long)file, (unsigned long long)p.base_weight_bytes,
                (long long)digits_diff, (long long)quant_states);
  }
}

TEST(MemoryPlan, AdapterParamsEqualLoraAdapter) {
  struct Case {
    const char* preset;
    int64_t r;
    const char* targets;
  };
  for (const Case& c : {Case{"tiny", 8, "all-linear"}, Case{"qwen2.5-0.5b", 16, "all-linear"},
                        Case{"qwen2.5-7b", 8, "q_proj,v_proj"}, Case{"qwen2.5-1.5b", 4, "down_proj,k_proj"}}) {
    PlanInput in;
    in.model = qwen_preset(c.preset);
    in.lora = all_linear(c.r);
    in.lora.target_modules = parse_lora_targets(c.targets);
    in.gpus = 2;  // data parallel: each GPU holds the whole adapter
    const PlanResult p = plan_memory(in);
    const LoraAdapter a(lora_dims_of(in.model), in.lora);
    EXPECT_EQ(p.lora_params, a.num_parameters()) << c.preset << " r=" << c.r << " " << c.targets;
    EXPECT_EQ(p.device.gradients, DeviceAllocator::round_size(static_cast<size_t>(4 * a.num_parameters())))
        << "each GPU holds the whole gradient";
    in.lora.use_dora = true;  // plus m [N] per adapted Linear
    in.device = PlanDevice::Cpu;
    EXPECT_EQ(plan_memory(in).lora_params, LoraAdapter(lora_dims_of(in.model), in.lora).num_parameters())
        << c.preset << " DoRA";
    in.device = PlanDevice::Cuda;  // the GPU plan takes DoRA on dense models (m in every arena)
    EXPECT_EQ(plan_memory(in).lora_params, LoraAdapter(lora_dims_of(in.model), in.lora).num_parameters())
        << c.preset << " DoRA on the GPU";
  }
  {  // ... and on a mixture of experts (every expert's Linear a DoRA layer with its m)
    PlanInput moe;
    moe.model = qwen_preset("tiny-moe-shared");
    moe.device = PlanDevice::Cuda;
    moe.gpus = 1;
    moe.lora = all_linear(4);
    moe.lora.use_dora = true;
    EXPECT_EQ(plan_memory(moe).lora_params, LoraAdapter(lora_dims_of(moe.model), moe.lora).num_parameters());
  }
  // 72B all-linear r=16 (too large to allocate here): REFERENCE B5's 210.5 M, Σ r·(N + K) per layer x 80.
  PlanInput in;
  in.model = qwen_preset("qwen2.5-72b");
  in.lora = all_linear(16);
  const int64_t per_layer = 16 * ((8192 + 8192) * 2 + (1024 + 8192) * 2 + (29568 + 8192) * 3);
  EXPECT_EQ(plan_memory(in).lora_params, 80 * per_layer);
}

// PEFT's finer selection (lora/lora_select.h): each layer's own Linears and ranks. The parameters are the adapter's
// (LoraAdapter applies the same rules, checked against PEFT by test_lora_select_oracle); without checkpointing every
// layer keeps the buffers of its own adapters, with it one set grown to the largest rank of each target.
TEST(MemoryPlan, FineSelectionCountsEachLayersOwnAdapters) {
  PlanInput in;
  in.model = qwen_preset("qwen2.5-0.5b");
  in.model.num_layers = 2;
  in.device = PlanDevice::Cpu;
  in.device_bytes = uint64_t{1} << 36;
  in.cpu_threads = 2;
  in.lora = all_linear(16);
  in.lora.target_modules = {"q_proj"};
  const auto plan_with = [&](bool checkpointing, int64_t r, const std::vector<std::pair<std::string, int64_t>>& ranks) {
    PlanInput x = in;
    x.checkpointing = checkpointing;
    x.lora.r = r;
    x.lora.rank_pattern = ranks;
    return plan_memory(x);
  };
  for (bool checkpointing : {true, false}) {
    const PlanResult r16 = plan_with(checkpointing, 16, {}), r4 = plan_with(checkpointing, 4, {});
    // layer 1's q_proj at rank 4, layer 0's at 16
    const PlanResult mixed = plan_with(checkpointing, 16, {{"layers.1.self_attn.q_proj", 4}});
    EXPECT_EQ(mixed.lora_params, (r16.lora_params + r4.lora_params) / 2);
    EXPECT_EQ(mixed.adapted_linears, 2);
    if (checkpointing) {
      EXPECT_EQ(mixed.device.act_block, r16.device.act_block) << "one BlockActs, grown to rank 16";
    } else {
      EXPECT_EQ(mixed.device.act_block, (r16.device.act_block + r4.device.act_block) / 2) << "each layer its own";
    }
    EXPECT_EQ(mixed.device.act_backward, r16.device.act_backward) << "bounded by the largest rank";
  }
  // The parameters of every kind of selection are the adapter's.
  struct Case {
    const char* what;
    std::function<void(LoraConfig*)> set;
  };
  const std::vector<Case> cases = {
      {"layers_to_transform", [](LoraConfig* l) { l->layers_to_transform = {1}; }},
      {"module paths", [](LoraConfig* l) { l->target_modules = {"model.layers.0.mlp.down_proj", "self_attn.v_proj"}; }},
      {"regex", [](LoraConfig* l) {
         l->target_modules.clear();
         l->target_regex = R"(.*\.1\.(self_attn\.k|mlp\.up)_proj)";
       }},
      {"exclude", [](LoraConfig* l) { l->exclude_modules = {"0.mlp.gate_proj", "o_proj"}; }},
      {"rank and alpha patterns", [](LoraConfig* l) {
         l->rank_pattern = {{"down_proj", 2}, {"q_proj", 32}};
         l->alpha_pattern = {{"v_proj", 3}};
       }},
  };
  for (const Case& c : cases) {
    PlanInput x = in;
    x.lora = all_linear(8);
    c.set(&x.lora);
    const PlanResult p = plan_memory(x);
    const LoraAdapter a(lora_dims_of(x.model), x.lora);
    EXPECT_EQ(p.lora_params, a.num_parameters()) << c.what;
    EXPECT_EQ(p.adapted_linears, static_cast<int64_t>(a.slots().size())) << c.what;
  }
}

// The GPU trainer lays out one rank and the same targets on every layer: a selection that is such an adapter is
// planned as one (a regex naming every layer's q and v is --target q_proj,v_proj), any other is refused by name.
TEST(MemoryPlan, GpuPlansOnlyTheAdapterItLaysOut) {
  PlanInput in;
  in.model = qwen_preset("qwen2.5-0.5b");
  in.model.num_layers = 3;
  in.device = PlanDevice::Cuda;
  in.lora = all_linear(8);
  in.lora.target_modules = {"q_proj", "v_proj"};
  const PlanResult listed = plan_memory(in);
  PlanInput regex = in;
  regex.lora.target_modules.clear();
  regex.lora.target_regex = R"(model\.layers\.\d+\.self_attn\.[qv]_proj)";
  const PlanResult by_regex = plan_memory(regex);
  EXPECT_EQ(by_regex.lora_params, listed.lora_params);
  EXPECT_EQ(by_regex.device.total, listed.device.total);
  in.lora.use_dora = true;  // DoRA's buffers sized by the targets the regex names
  regex.lora.use_dora = true;
  EXPECT_EQ(plan_memory(regex).device.total, plan_memory(in).device.total);

  PlanInput subset = in;
  subset.lora.layers_to_transform = {0, 2};
  EXPECT_THAT(test::error_of([&] { plan_memory(subset); }),
              testing::AllOf(testing::HasSubstr("other Linears in some layers"), testing::HasSubstr("--device cpu")));
  PlanInput ranks = in;
  ranks.lora.rank_pattern = {{"v_proj", 4}};
  EXPECT_THAT(test::error_of([&] { plan_memory(ranks); }),
              testing::AllOf(testing::HasSubstr("model.layers.0.self_attn.v_proj"),
                             testing::HasSubstr("rank or alpha of its own")));
  subset.device = PlanDevice::Cpu;  // the CPU trainer takes both
  subset.device_bytes = uint64_t{1} << 36;
  ranks.device = PlanDevice::Cpu;
  ranks.device_bytes = uint64_t{1} << 36;
  EXPECT_EQ(plan_memory(subset).adapted_linears, 4);
  EXPECT_EQ(plan_memory(ranks).adapted_linears, 6);
}

PlanInput qwen72b(PlanBase base, int gpus) {
  PlanInput in;
  in.model_name = "qwen2.5-72b";
  in.model = qwen_preset("qwen2.5-72b");
  in.base = base;
  in.bits = 4;
  in.group_size = 128;
  in.lora = all_linear(16);
  in.batch_size = 1;
  in.seq_len = 2048;
  in.device = PlanDevice::Cuda;
  in.gpus = gpus;
  in.device_bytes = 80'000'000'000;
  return in;
}

TEST(MemoryPlan, Qwen72bFourBitFitsEachGpuBf16DoesNot) {
  const test::ScopedEnv host_ring("QWENQ_DP_NCCL", nullptr);  // NCCL's reserve only where it is set below
  for (PlanBase base : {PlanBase::Gptq, PlanBase::Awq, PlanBase::Nf4}) {
    const PlanResult p = plan_memory(qwen72b(base, 8));
    std::printf("%s", format_plan_table(p).c_str());
    EXPECT_TRUE(p.device.fits) << plan_base_name(base);
    EXPECT_GT(p.device.headroom, 0) << plan_base_name(base);
    EXPECT_EQ(p.device.name, "cuda:0-7 each");
    // REFERENCE A6.4: ≈ 38.6 GiB for 4-bit g128 with 16-bit embeddings and head (NF4+DQ "almost the same").
    const double gib = static_cast<double>(p.base_weight_bytes) / (1u << 30);
    EXPECT_NEAR(gib, 38.6, 0.8) << plan_base_name(base);
    // Data parallel: each of the 8 GPUs holds what one GPU alone would (every layer as its Q4 repack, the lm_head,
    // all 80 layers' block inputs; 45.8 GiB for GPTQ), with NCCL's budget only when it is asked for.
    const PlanResult one = plan_memory(qwen72b(base, 1));
    EXPECT_EQ(p.device.total, one.device.total);
    {
      const test::ScopedEnv nccl("QWENQ_DP_NCCL", "1");
      EXPECT_EQ(plan_memory(qwen72b(base, 8)).device.ws_reserve, one.device.ws_reserve + kNcclBytes);
      EXPECT_EQ(plan_memory(qwen72b(base, 1)).device.ws_reserve, one.device.ws_reserve);
    }
    EXPECT_EQ(p.nf4_total, 0u);
  }
  // bf16: 135.4 GiB of weights fit no GPU; the plan names what an NF4 base would need, which fits.
  const PlanResult bf16 = plan_memory(qwen72b(PlanBase::Bf16, 8));
  const std::string table = format_plan_table(bf16);
  std::printf("%s", table.c_str());
  EXPECT_FALSE(bf16.device.fits);
  EXPECT_LT(bf16.device.headroom, 0);
  EXPECT_NEAR(static_cast<double>(bf16.base_weight_bytes) / (1u << 30), 135.4, 0.5);  // REFERENCE A6.4
  EXPECT_EQ(bf16.nf4_total, plan_memory(qwen72b(PlanBase::Nf4, 8)).device.total);
  EXPECT_NE(table.find("with a 4-bit base (qwen-quant nf4, or gptq/awq --bits 4, about as large): " +
                       format_bytes(bf16.nf4_total) + ", which fits"),
            std::string::npos);
  EXPECT_NE(table.find("data parallel (train --nproc 8): every GPU holds the whole model"), std::string::npos);
}

TEST(MemoryPlan, EmbeddingHeldOnlyAsTheLmHeadOnGpus) {
  PlanInput in;
  in.model = qwen_preset("qwen2.5-0.5b");
  in.base = PlanBase::Bf16;
  in.lora = all_linear(8);
  in.gpus = 1;
  // On the CPU the device holds the checkpoint's bytes, the tied embedding once.
  in.device = PlanDevice::Cpu;
  const PlanResult cpu = plan_memory(in);
  EXPECT_EQ(cpu.device.base_weights, cpu.base_weight_bytes);
  // On the GPU every tensor is held as the caching allocator rounds it: the embedding 151936·896·2 = 272,269,312 B
  // in 130 blocks of 2 MiB. The input embedding's rows are gathered on the host, so a tied table is held once, as
  // the lm_head: the GPU's dense bytes are the layers' norms and biases (24 layers: 2 RMSNorms 2·1792 B, q/k/v
  // biases 1792 + 2·256 B, each piece 256-aligned in the layer's arena), the final norm (1792 B -> 2 KiB) and the table.
  in.device = PlanDevice::Cuda;
  const uint64_t embed_held = 130ull << 21;
  const PlanResult one = plan_memory(in);
  EXPECT_EQ(one.device.base_dense, 24 * (2 * 1792 + 1792 + 2 * 256) + 2048 + embed_held);
  // Untied (7B): one GPU holds the lm_head, not the input embedding (152064·3584·2 B = 520 blocks of 2 MiB):
  // the GPU's dense bytes are the layers' norms and biases, the final norm and one table.
  in.model = qwen_preset("qwen2.5-7b");
  in.gpus = 1;
  const DevicePlan& d = plan_memory(in).device;
  const uint64_t layer_dense = 2 * 7168 + 7168 + 2 * 1024;  // 2 RMSNorms, q/k/v biases (all multiples of 512 B)
  EXPECT_EQ(d.base_dense, 28 * layer_dense + 7168 + (520ull << 21));
}

TEST(MemoryPlan, JsonCarriesEveryField) {
  const PlanResult p = plan_memory(qwen72b(PlanBase::Nf4, 8));
  const auto j = nlohmann::json::parse(plan_to_json(p));
  EXPECT_EQ(j.at("lora_params").get<int64_t>(), p.lora_params);
  EXPECT_EQ(j.at("base_weight_bytes").get<uint64_t>(), p.base_weight_bytes);
  EXPECT_EQ(j.at("gpus").get<int>(), 8);
  EXPECT_EQ(j.at("fits").get<bool>(), p.device.fits);
  const auto& d = j.at("per_device");
  EXPECT_EQ(d.at("name").get<std::string>(), "cuda:0-7 each");
  EXPECT_EQ(d.at("total").get<uint64_t>(), p.device.total);
  EXPECT_EQ(d.at("ws_logits").get<uint64_t>(), p.device.ws_logits);
  EXPECT_EQ(d.at("activations").get<uint64_t>(),
            p.device.act_checkpoints + p.device.act_block + p.device.act_backward + p.device.act_loss);
  EXPECT_FALSE(j.contains("nf4_total"));
  const auto b = nlohmann::json::parse(plan_to_json(plan_memory(qwen72b(PlanBase::Bf16, 8))));
  EXPECT_FALSE(b.at("fits").get<bool>());
  EXPECT_EQ(b.at("nf4_total").get<uint64_t>(), p.device.total);
}

TEST(MemoryPlan, RejectsWhatItCannotPlan) {
  PlanInput in = qwen72b(PlanBase::Gptq, 0);
  EXPECT_NE(test::error_of([&] { plan_memory(in); }).find("--gpus must be at least 1, got 0"), std::string::npos);
  in = qwen72b(PlanBase::Awq, 8);
  in.bits = 3;
  EXPECT_NE(test::error_of([&] { plan_memory(in); }).find("AWQ GEMM layout holds 4-bit codes only, not 3"),
            std::string::npos);
  in = qwen72b(PlanBase::Gptq, 8);
  in.model.intermediate_size = 172;  // stories260K's width: not 8-aligned
  EXPECT_NE(test::error_of([&] { plan_memory(in); }).find("does not pack into 4-bit GPTQ words"), std::string::npos);
  in = qwen72b(PlanBase::Nf4, 8);
  in.seq_len = 0;
  EXPECT_NE(test::error_of([&] { plan_memory(in); }).find("sequence length must be positive"), std::string::npos);
  in = qwen72b(PlanBase::Nf4, 8);
  in.model = qwen_preset("tiny");
  in.gpus = 1;
  in.lora.r = 40;  // k_proj of tiny is [32, 64]
  EXPECT_NE(test::error_of([&] { plan_memory(in); }).find("r=40 exceeds min(N, K) = 32 of model.layers.0.self_attn.k_proj"),
            std::string::npos);
}

// ---- measured -----------------------------------------------------------------------------------------------

uint64_t status_kib(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::string k = std::string(key) + ":";
  while (std::getline(f, line)) {
    if (line.compare(0, k.size(), k) == 0) return std::stoull(line.substr(k.size())) * 1024;
  }
  return 0;
}

// Peak RSS while f() runs, above the RSS just before it. VmHWM is reset by writing 5 to /proc/self/clear_refs
// (Linux >= 4.0); where that is refused a thread samples VmRSS every millisecond instead.
template <typename F>
uint64_t measure_peak_increase(F&& f, const char** how) {
#ifdef __GLIBC__
  malloc_trim(0);  // give back what earlier work freed, so that the baseline is what is live
#endif
  const uint64_t before = status_kib("VmRSS");
  bool reset = false;
  if (std::FILE* cr = std::fopen("/proc/self/clear_refs", "w")) {
    reset = std::fputs("5", cr) >= 0;
    reset = (std::fclose(cr) == 0) && reset;
  }
  reset = reset && status_kib("VmHWM") <= status_kib("VmRSS") + (1u << 20);
  std::atomic<bool> done{false};
  std::atomic<uint64_t> sampled{before};
  std::thread sampler;
  if (!reset) {
    sampler = std::thread([&] {
      while (!done) {
        sampled = std::max<uint64_t>(sampled, status_kib("VmRSS"));
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
  }
  f();
  done = true;
  if (sampler.joinable()) sampler.join();
  *how = reset ? "VmHWM after clear_refs" : "VmRSS sampled every 1 ms";
  const uint64_t peak = reset ? peak_rss_bytes() : sampled.load();
  return peak > before ? peak - before : 0;
}

PackedBatch token_batch(int64_t B, int64_t S, int64_t vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<std::vector<int32_t>> seqs(B, std::vector<int32_t>(S));
  for (auto& s : seqs)
    for (auto& t : s) t = static_cast<int32_t>(rng.uniform() * static_cast<double>(vocab - 3));
  return PackedBatch::from_sequences(seqs);
}

// Runs one lora_loss_and_grad step on `dir` (after a short warm-up step that maps every weight page, starts the
// threads and sizes the grads) and compares the peak RSS it adds with the CPU plan's activations + workspace.
// `selection`: a finer LoRA selection than all-linear at rank r (its own r and targets).
void check_measured(const std::string& dir, PlanBase base, int64_t B, int64_t S, int64_t r, bool checkpointing = true,
                    bool dora = false, double dropout = 0, bool bf16 = false, const LoraConfig* selection = nullptr) {
  const QwenModel model(dir);
  PlanInput in = plan_for_dir(dir, base);
  in.lora = selection ? *selection : all_linear(r);
  in.lora.use_dora = dora;
  in.lora.dropout = dropout;
  in.batch_size = B;
  in.seq_len = S;
  in.cpu_threads = num_threads();
  in.checkpointing = checkpointing;
  const PlanResult plan = plan_memory(in);
  const DevicePlan& d = plan.device;

  LoraAdapter adapter(lora_dims_of(model.config()), in.lora);
  adapter.init_peft(1);
  if (dora) init_dora_magnitudes(model, &adapter);
  LoraAdapter grads(lora_dims_of(model.config()), in.lora);
  LoraStepOptions opt;
  opt.checkpointing = checkpointing;
  opt.bf16_matmul = bf16;
  const PackedBatch warm = token_batch(1, 32, model.config().vocab_size, 2);
  lora_loss_and_grad(model, adapter, warm, next_token_targets(warm), &grads, opt);

  const PackedBatch batch = token_batch(B, S, model.config().vocab_size, 3);
  const std::vector<int32_t> targets = next_token_targets(batch);
  const char* how = "";
  const uint64_t measured = measure_peak_increase(
      [&] { lora_loss_and_grad(model, adapter, batch, targets, &grads, opt); }, &how);
  const uint64_t predicted = d.activations + d.workspace;
  std::printf("%s, %s base, %lld x %lld tokens, r=%lld%s%s, checkpointing %s, %d threads: predicted activations + "
              "workspace %s (checkpoints %s, block %s, backward %s, loss %s, dequant %s, logits %s, threads %s); "
              "measured peak RSS increase %s (%s); measured/predicted = %.3f\n",
              model.config().model_type.c_str(), plan_base_name(base), (long long)B, (long long)S, (long long)r,
              dora ? " DoRA" : "", dropout > 0 ? " dropout" : "", checkpointing ? "on" : "off", in.cpu_threads, format_bytes(predicted).c_str(),
              format_bytes(d.act_checkpoints).c_str(),
              format_bytes(d.act_block).c_str(), format_bytes(d.act_backward).c_str(),
              format_bytes(d.act_loss).c_str(), format_bytes(d.ws_dequant).c_str(), format_bytes(d.ws_logits).c_str(),
              format_bytes(d.ws_threads).c_str(), format_bytes(measured).c_str(), how,
              static_cast<double>(measured) / static_cast<double>(predicted));
  EXPECT_NEAR(static_cast<double>(measured), static_cast<double>(predicted), kMeasuredRelTol * predicted);
}

// tiny (C 64, I 128, V 320) with 16k packed tokens: activations are nearly everything.
TEST(MemoryPlanMeasured, TinyGptqActivationsMatchRss) {
  const std::string dir = gptq_model(test::scratch_dir(), "tiny", 0, 32);
  check_measured(dir, PlanBase::Gptq, 8, 2048, 8);
  check_measured(dir, PlanBase::Gptq, 8, 2048, 8, /*checkpointing=*/false);
}

// One Qwen2.5-0.5B-shaped layer, GPTQ g128, 512 tokens: the dequantized Linear, the 110-row logits chunk over
// V = 151936 and the widening buffers of the bf16 lm_head are a large part of the total. Then the same step with the
// trainer's bf16 products.
TEST(MemoryPlanMeasured, Qwen05bOneLayerGptqMatchesRss) {
  check_measured(gptq_model(test::scratch_dir(), "qwen2.5-0.5b", 1, 128), PlanBase::Gptq, 1, 512, 16);
  // --cpu-matmul bf16 (the plan models the fp32 products): no dequantized copy, but the packed A of each bf16
  // product, the largest the lm_head's input gradient (110 rows x 151936 logits, 33 MB). Measured 0.84 of the plan
  // at 512 tokens, 0.97 at 2048 (2026-12-06).
  check_measured(gptq_model(test::scratch_dir(), "qwen2.5-0.5b", 1, 128), PlanBase::Gptq, 1, 512, 16, true, false, 0,
                 /*bf16=*/true);
}

// A fine selection (layer 1 at a rank of its own, layer 0 without down_proj), each layer keeping its own buffers.
TEST(MemoryPlanMeasured, TinyGptqFineSelectionMatchesRss) {
  const std::string dir = gptq_model(test::scratch_dir(), "tiny", 0, 32);
  LoraConfig fine = all_linear(8);
  fine.rank_pattern = {{"layers.1.mlp.up_proj", 32}, {"layers.1.self_attn.q_proj", 32}};
  fine.exclude_modules = {"0.mlp.down_proj"};
  check_measured(dir, PlanBase::Gptq, 8, 2048, 8, /*checkpointing=*/false, false, 0, false, &fine);
  check_measured(dir, PlanBase::Gptq, 8, 2048, 8, /*checkpointing=*/true, false, 0, false, &fine);
}

// DoRA's z, v, n and backward temporaries counted in the CPU plan.
TEST(MemoryPlanMeasured, TinyGptqDoraActivationsMatchRss) {
  check_measured(gptq_model(test::scratch_dir(), "tiny", 0, 32), PlanBase::Gptq, 8, 2048, 8, true, /*dora=*/true);
}


// ---- mixtures of experts (the CPU plan) ---------------------------------------------------------------------

// Every tensor our writers put in a MoE checkpoint, to the byte: each routed expert's and the shared expert's
// Linears packed, the routers (mlp.gate, mlp.shared_expert_gate) in bf16. tiny-moe has a dense layer among its MoE
// layers; tiny-moe-shared has a shared expert.
TEST(MemoryPlanMoe, BaseBytesEqualTheWrittenFiles) {
  const std::string scratch = test::scratch_dir();
  for (const std::string preset : {"tiny-moe", "tiny-moe-shared"}) {
    const std::string dense = write_tiny(scratch + "/" + preset, preset);
    EXPECT_EQ(plan_memory(plan_for_dir(dense, PlanBase::Bf16)).base_weight_bytes, checkpoint_tensor_bytes(dense))
        << preset << " bf16";
    struct Case {
      IntLayout layout;
      int bits;
      int64_t group;
    };
    std::vector<Case> cases = {{IntLayout::GptqV1, 4, 32}, {IntLayout::GptqV2, 3, 32}, {IntLayout::GptqV2, 8, -1}};
    if (preset == "tiny-moe-shared") cases.push_back({IntLayout::AwqGemm, 4, 32});  // no dense layer (AutoAWQ's)
    for (const Case& c : cases) {
      QuantizeOptions q;
      q.model_dir = dense;
      q.out_dir = scratch + "/" + preset + "_q" + std::to_string(static_cast<int>(c.layout)) + "_" +
                  std::to_string(c.bits);
      q.bits = c.bits;
      q.group_size = c.group;
      q.layout = c.layout;
      q.quiet = true;
      quantize_model(q);
      PlanInput in = plan_for_dir(q.out_dir, PlanBase::Gptq);
      plan_base_from_model_dir(q.out_dir, &in);
      const PlanResult p = plan_memory(in);
      EXPECT_EQ(p.base_weight_bytes, checkpoint_tensor_bytes(q.out_dir))
          << preset << " " << int_layout_name(c.layout) << " " << c.bits << "-bit group " << c.group;
    }
    QuantizeOptions q;
    q.method = QuantizeOptions::Method::Nf4;
    q.model_dir = dense;
    q.out_dir = scratch + "/" + preset + "_nf4";
    q.quiet = true;
    quantize_model(q);
    PlanInput in = plan_for_dir(q.out_dir, PlanBase::Nf4);
    plan_base_from_model_dir(q.out_dir, &in);
    ASSERT_TRUE(in.double_quant);
    int64_t quant_states = 0;
    const int64_t digits_diff = nf4_offset_digits_diff(q.out_dir, true, &quant_states);
    EXPECT_EQ(static_cast<int64_t>(checkpoint_tensor_bytes(q.out_dir)),
              static_cast<int64_t>(plan_memory(in).base_weight_bytes) + digits_diff)
        << preset << " nf4: nested_offset digits differ by " << digits_diff << " over " << quant_states << " Linears";
    EXPECT_EQ(quant_states, count_layer_linears(in.model) - (preset == "tiny-moe" ? 2 : 4));  // routers unquantized
  }
}

// PEFT's MLP targets adapt every expert and the shared expert: the plan's count is LoraAdapter's.
TEST(MemoryPlanMoe, AdapterParamsEqualLoraAdapter) {
  for (const char* preset : {"tiny-moe", "tiny-moe-shared", "qwen3-30b-a3b", "qwen1.5-moe-a2.7b"}) {
    PlanInput in;
    in.model = qwen_preset(preset);
    in.model.num_layers = std::min<int64_t>(in.model.num_layers, 2);  // the released shapes, 2 layers
    in.model.moe_layer.resize(in.model.num_layers);
    in.device = PlanDevice::Cpu;
    for (const char* targets : {"all-linear", "q_proj,down_proj", "up_proj"}) {
      for (bool dora : {false, true}) {
        in.lora = all_linear(8);
        in.lora.target_modules = parse_lora_targets(targets);
        in.lora.use_dora = dora;
        const PlanResult p = plan_memory(in);
        EXPECT_EQ(p.lora_params, LoraAdapter(lora_dims_of(in.model), in.lora).num_parameters())
            << preset << " " << targets << (dora ? " DoRA" : "");
      }
    }
    // The experts of layer 1 only (the layer index read with layers_pattern "layers", not the expert's)
    in.lora = all_linear(8);
    in.lora.target_modules = {"down_proj"};
    in.lora.layers_to_transform = {1};
    in.lora.layers_pattern = {"layers"};
    EXPECT_EQ(plan_memory(in).lora_params, LoraAdapter(lora_dims_of(in.model), in.lora).num_parameters()) << preset;
  }
}

// The GPU plan's base weights are the allocations QwenModelCuda makes for the trainer: per layer the weight arena
// (trainer/qwen_weight_arena.h's qwen_layer_arena) and for a MoE layer the expert arena (qwen_moe_arena), each held
// at the caching allocator's rounding, plus the final norm and the lm_head (the untied input embedding stays on the
// host; a tied one is the lm_head). The arenas are laid out here from the checkpoints' own weights, the plan from
// the config: bf16 and 4-bit GPTQ (Q4 repacks), a dense model and both MoE presets. (The GPU test
// LoraModelCuda.DeviceBytesAreThePlan checks the allocator's bytes against the plan on a device.)
TEST(MemoryPlanMoe, GpuWeightBytesAreTheUploadArenas) {
  const std::string scratch = test::scratch_dir();
  for (const std::string preset : {"tiny", "tiny-moe", "tiny-moe-shared"}) {
    const std::string dense = write_tiny(scratch + "/" + preset, preset);
    QuantizeOptions q;
    q.model_dir = dense;
    q.out_dir = scratch + "/" + preset + "_gptq";
    q.group_size = 32;
    q.quiet = true;
    quantize_model(q);
    for (const std::string& dir : {dense, q.out_dir}) {
      SCOPED_TRACE(dir);
      PlanInput in = plan_for_dir(dir, PlanBase::Bf16);
      plan_base_from_model_dir(dir, &in);
      in.device = PlanDevice::Cuda;
      in.gpus = 1;
      const DevicePlan d = plan_memory(in).device;
      const QwenModel m(dir);
      const QwenConfig& c = m.config();
      const auto held = [](uint64_t b) { return static_cast<uint64_t>(DeviceAllocator::round_size(b)); };
      uint64_t want = 0;
      for (int64_t l = 0; l < c.num_layers; ++l) {
        const std::string prefix = "model.layers." + std::to_string(l) + ".";
        const QwenLayerWeights& w = m.weights().layers[static_cast<size_t>(l)];
        want += held(qwen_layer_arena(w, prefix).bytes);
        if (c.is_moe_layer(l)) want += held(qwen_moe_arena(w.moe, prefix).bytes);
      }
      const uint64_t dsz = dtype_size(in.dense_dtype);
      want += held(static_cast<uint64_t>(c.hidden_size) * dsz) +                      // model.norm
              held(static_cast<uint64_t>(c.vocab_size * c.hidden_size) * dsz);  // the lm_head
      EXPECT_EQ(d.base_weights, want);
      EXPECT_EQ(d.lora_params, LoraAdapter(lora_dims_of(c), in.lora).num_parameters());
    }
  }
  // The report names the experts.
  PlanInput in;
  in.model = qwen_preset("qwen3-30b-a3b");
  in.lora = all_linear(8);
  in.device = PlanDevice::Cuda;
  in.gpus = 1;
  const PlanResult p = plan_memory(in);
  const std::string table = format_plan_table(p);
  EXPECT_NE(table.find("48 MoE layers: 128 experts x 768, top-8"), std::string::npos) << table;
  const auto j = nlohmann::json::parse(plan_to_json(p));
  EXPECT_EQ(j.at("config").at("moe").at("experts").get<int64_t>(), 128);
}

// A MoE model's step measured against the plan: tiny-moe (8 experts, top-2, a dense layer between two MoE layers)
// with checkpointing on and off, and tiny-moe-shared (6 experts and a shared expert) with DoRA and dropout.
TEST(MemoryPlanMeasured, TinyMoeGptqActivationsMatchRss) {
  const std::string dir = gptq_model(test::scratch_dir(), "tiny-moe", 0, 32);
  check_measured(dir, PlanBase::Gptq, 8, 2048, 8);
  check_measured(dir, PlanBase::Gptq, 8, 2048, 8, /*checkpointing=*/false);
}

TEST(MemoryPlanMeasured, TinyMoeSharedDoraDropoutMatchesRss) {
  check_measured(gptq_model(test::scratch_dir(), "tiny-moe-shared", 0, 32), PlanBase::Gptq, 4, 2048, 8, true,
                 /*dora=*/true, /*dropout=*/0.1);
}

// One Qwen3-30B-A3B-shaped layer (128 experts of 768, top-8), GPTQ g128, 512 tokens: the real shapes, where the
// experts' saved rows (T·k = 4096) and the 151,936-row vocabulary's chunk and widening buffers dominate.
TEST(MemoryPlanMeasured, Qwen3MoeOneLayerGptqMatchesRss) {
  // 2.4 GB of bf16 removed once quantized
  check_measured(gptq_model(test::scratch_dir(), "qwen3-30b-a3b", 1, 128, /*drop_dense=*/true), PlanBase::Gptq, 1, 512,
                 16);
}

}  // namespace
}  // namespace qwenq
