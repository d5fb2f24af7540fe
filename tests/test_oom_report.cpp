// The GPU trainer's out-of-memory report (trainer/oom_report.h): a real OutOfMemoryError from the caching
// allocator on a fake device, then the plan of the run next to the live bytes, checked against plan_memory's
// numbers and the allocator's; the advice follows the category that holds the most; the run's plan input comes
// from the model directory (bf16 or GPTQ).
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "core/progress.h"
#include "kernels/device_allocator.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/oom_report.h"
#include "trainer/random_model.h"

namespace qwenq {
namespace {

constexpr uint64_t MiB = uint64_t{1} << 20, GiB = uint64_t{1} << 30;

// A device of `capacity` bytes that hands out fake addresses (never dereferenced).
class FakeDevice final : public DeviceMemoryBackend {
 public:
  explicit FakeDevice(uint64_t capacity) : capacity_(capacity) {}
  void* allocate(size_t bytes) override {
    if (used_ + bytes > capacity_) return nullptr;
    used_ += bytes;
    next_ += bytes + 4096;
    return reinterpret_cast<void*>(next_);
  }
  void release(void*) noexcept override {}  // the tests below never free to the backend
  bool memory_info(size_t* free_bytes, size_t* total_bytes) override {
    *free_bytes = capacity_ - used_;
    *total_bytes = capacity_;
    return true;
  }
  void synchronize() noexcept override {}
  std::string name() const override { return "fake:0"; }

 private:
  uint64_t capacity_, used_ = 0;
  uintptr_t next_ = 0x100000;
};

PlanInput qwen05b_input() {
  PlanInput in;
  in.model_name = "qwen2.5-0.5b";
  in.model = qwen_preset("qwen2.5-0.5b");
  in.base = PlanBase::Bf16;
  in.lora.r = 16;
  in.lora.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  in.batch_size = 2;
  in.seq_len = 1024;
  return in;
}

// Holds `weights`, `adapter` (x4: A/B, grads, m, v split by tag) and `acts`, then asks for `request` more of
// `tag`; returns the OutOfMemoryError.
OutOfMemoryError fail(DeviceAllocator& a, uint64_t weights, uint64_t adapter, uint64_t acts, uint64_t request,
                      MemoryTag tag, std::vector<DeviceAllocation>* keep) {
  CudaStream s = nullptr;
  keep->push_back(a.allocate(weights, s, MemoryTag::Weights, "weights"));
  keep->push_back(a.allocate(adapter, s, MemoryTag::Adapter, "A and B"));
  keep->push_back(a.allocate(adapter, s, MemoryTag::Gradients, "grads"));
  keep->push_back(a.allocate(2 * adapter, s, MemoryTag::Optimizer, "m and v"));
  keep->push_back(a.allocate(acts, s, MemoryTag::Activations, "block inputs"));
  try {
    a.allocate(request, s, tag, "the failing buffer");
  } catch (const OutOfMemoryError& e) {
    return e;
  }
  ADD_FAILURE() << "no out-of-memory error";
  return OutOfMemoryError("", {});
}

TEST(OomReport, PutsThePlanNextToTheLiveBytesAndAdvisesOnTheLargest) {
  const uint64_t capacity = 8 * GiB;
  DeviceAllocator alloc(std::make_unique<FakeDevice>(capacity));
  std::vector<DeviceAllocation> keep;
  const OutOfMemoryError e = fail(alloc, 1 * GiB, 20 * MiB, 6 * GiB, 2 * GiB, MemoryTag::Activations, &keep);
  const PlanInput in = qwen05b_input();
  const std::string r = plan_vs_live_report(in, e.facts());
  SCOPED_TRACE(r);
  // The plan of the same run on one GPU of the device's size, computed independently.
  PlanInput one = in;
  one.gpus = 1;
  one.device = PlanDevice::Cuda;
  one.device_bytes = capacity;
  const PlanResult plan = plan_memory(one);
  const DevicePlan& d = plan.device;
  const auto has = [&](const std::string& part) {
    EXPECT_NE(r.find(part), std::string::npos) << "missing: " << part;
  };
  has("qwen-qlora plan --model qwen2.5-0.5b --base bf16 --lora-r 16 --target "
      "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --batch-size 2 --seq-len 1024 --gpus 1 "
      "--gpu-mem-gb 8.6");
  has("| base weights | " + format_bytes(d.base_weights) + " | 1.00 GiB |");
  has("| adapters | " + format_bytes(d.adapters) + " | 20.00 MiB |");
  has("| gradients | " + format_bytes(d.gradients) + " | 20.00 MiB |");
  has("| optimizer | " + format_bytes(d.optimizer) + " | 40.00 MiB |");
  has("| activations | " + format_bytes(d.activations) + " | 6.00 GiB + 2.00 GiB requested |");
  has("| workspace | " + format_bytes(d.workspace) + " | 0 B (logits + kernel scratch");
  has("| total | " + format_bytes(d.total) + " | " + format_bytes(GiB + 80 * MiB + 6 * GiB) + " + 2.00 GiB requested");
  has(d.fits ? "The plan fits this device" : "The plan does not fit this device either");
  has("What to lower: activations and logits take 8.00 GiB for 2048 tokens per micro-batch (2 x 1024)");
  has("lower --seq-len or --batch-size");
  // The rethrown error: context, the allocator's message, the report; the same facts.
  const OutOfMemoryError t = training_out_of_memory(e, "step 3, micro-batch 1: ", in);
  const std::string m = t.what();
  EXPECT_EQ(m.rfind("step 3, micro-batch 1: out of memory on fake:0: cannot allocate 2.00 GiB", 0), 0u) << m;
  EXPECT_NE(m.find(r), std::string::npos);
  EXPECT_EQ(t.facts().requested, 2 * GiB);
  EXPECT_EQ(t.facts().stats.allocated, e.facts().stats.allocated);
}

TEST(OomReport, AdvisesA4BitBaseOrASmallerRankWhenThoseHoldTheMost) {
  {
    DeviceAllocator alloc(std::make_unique<FakeDevice>(4 * GiB));
    std::vector<DeviceAllocation> keep;
    const OutOfMemoryError e = fail(alloc, 3 * GiB, 10 * MiB, 100 * MiB, 1 * GiB, MemoryTag::Weights, &keep);
    const std::string r = plan_vs_live_report(qwen05b_input(), e.facts());
    EXPECT_NE(r.find("| base weights | "), std::string::npos) << r;
    EXPECT_NE(r.find("3.00 GiB + 1.00 GiB requested"), std::string::npos) << r;
    EXPECT_NE(r.find("What to lower: the base weights take 4.00 GiB: train on a 4-bit base"), std::string::npos) << r;
  }
  {
    DeviceAllocator alloc(std::make_unique<FakeDevice>(4 * GiB));
    std::vector<DeviceAllocation> keep;
    const OutOfMemoryError e = fail(alloc, 100 * MiB, 512 * MiB, 100 * MiB, 2 * GiB, MemoryTag::Optimizer, &keep);
    const std::string r = plan_vs_live_report(qwen05b_input(), e.facts());
    EXPECT_NE(r.find("What to lower: the adapter with its gradients and AdamW state takes 4.00 GiB"),
              std::string::npos)
        << r;
    EXPECT_NE(r.find("lower --lora-r (now 16)"), std::string::npos) << r;
  }
  // A run the plan cannot describe still gets one line.
  DeviceAllocator alloc(std::make_unique<FakeDevice>(GiB));
  std::vector<DeviceAllocation> keep;
  const OutOfMemoryError e = fail(alloc, 100 * MiB, MiB, 100 * MiB, 2 * GiB, MemoryTag::Activations, &keep);
  PlanInput bad = qwen05b_input();
  bad.lora.r = 100000;
  const std::string r = plan_vs_live_report(bad, e.facts());
  EXPECT_EQ(r.rfind("(no plan for this run: plan: LoRA rank r=100000 exceeds min(N, K)", 0), 0u) << r;
}

// The plan command names the targets the GPU adapter has on every layer, whatever selection named them.
TEST(OomReport, PlanCommandListsTheTargetsARegexSelects) {
  DeviceAllocator alloc(std::make_unique<FakeDevice>(8 * GiB));
  std::vector<DeviceAllocation> keep;
  const OutOfMemoryError e = fail(alloc, 1 * GiB, 20 * MiB, 6 * GiB, 2 * GiB, MemoryTag::Activations, &keep);
  PlanInput in = qwen05b_input();
  in.lora.target_modules.clear();
  in.lora.target_regex = R"(.*\.(v_proj|self_attn\.q_proj|down_proj))";
  const std::string r = plan_vs_live_report(in, e.facts());
  EXPECT_NE(r.find("--lora-r 16 --target q_proj,v_proj,down_proj --batch-size"), std::string::npos) << r;
}

TEST(OomReport, TakesTheRunsBaseFormatFromTheModelDirectory) {
  const std::string root = test::scratch_dir();
  const std::string dir = test::make_tiny_model(root + "/m", /*seed=*/3);
  const QwenConfig cfg = qwen_preset("tiny");
  LoraConfig lora;
  lora.r = 4;
  PlanInput in = plan_input_for_training(dir, cfg, lora, 3, 64, 80 * GiB);
  EXPECT_EQ(in.base, PlanBase::Bf16);
  EXPECT_EQ(in.model_name, dir);
  EXPECT_EQ(in.batch_size, 3);
  EXPECT_EQ(in.seq_len, 64);
  EXPECT_EQ(in.gpus, 1);
  EXPECT_EQ(in.device, PlanDevice::Cuda);
  EXPECT_TRUE(in.checkpointing);
  EXPECT_EQ(in.device_bytes, 80 * GiB);
  EXPECT_EQ(in.lora.r, 4);
  // A GPTQ directory: its bits and group size.
  auto j = nlohmann::json::parse(read_file(dir + "/config.json"));
  j["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 3}, {"group_size", 32}};
  write_file_atomic(dir + "/config.json", j.dump());
  in = plan_input_for_training(dir, cfg, lora, 1, 64, 80 * GiB);
  EXPECT_EQ(in.base, PlanBase::Gptq);
  EXPECT_EQ(in.bits, 3);
  EXPECT_EQ(in.group_size, 32);
}

}  // namespace
}  // namespace qwenq
