// The GPU trainer's out-of-memory report (trainer/oom_report.h): the plan of the run next to the allocator's
// live bytes at the failure.
#include "trainer/oom_report.h"

#include <algorithm>
#include <cstdio>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "core/progress.h"
#include "lora/lora_select.h"
#include "trainer/lora_model.h"

namespace qwenq {

namespace {

// The --target list of the GPU trainer's adapter: the targets it adapts on every layer (the GPU lays out no finer
// selection, lora_plan_gpu_refusal), whatever selection (a regex, module paths) named them.
std::string targets_of(const PlanInput& in) {
  return lora_targets_str(lora_plan_target_names(lora_plan(lora_dims_of(in.model), in.lora, "plan")));
}

// The `qwen-qlora plan` command line that prints the full breakdown of this plan.
std::string plan_command(const PlanInput& in) {
  std::ostringstream os;
  os << "qwen-qlora plan --model " << in.model_name << " --base " << plan_base_name(in.base);
  if (in.base == PlanBase::Gptq || in.base == PlanBase::Awq) {
    os << " --bits " << in.bits << " --group-size " << in.group_size;
  }
  if (in.base == PlanBase::Nf4 && !in.double_quant) os << " --no-double-quant";
  char gb[32];
  std::snprintf(gb, sizeof gb, "%.1f", static_cast<double>(in.device_bytes) / 1e9);
  os << " --lora-r " << in.lora.r << " --target " << targets_of(in) << " --batch-size " << in.batch_size
     << " --seq-len " << in.seq_len << " --gpus 1 --gpu-mem-gb " << gb;
  return os.str();
}

}  // namespace

PlanInput plan_input_for_training(const std::string& model_dir, const QwenConfig& config, const LoraConfig& lora,
                                  int64_t batch_size, int64_t seq_len, uint64_t device_bytes) {
  PlanInput in;
  in.model_name = model_dir;
  in.model = config;
  in.dense_dtype = plan_dense_dtype(config.torch_dtype);
  plan_base_from_model_dir(model_dir, &in);
  in.lora = lora;
  in.batch_size = batch_size;
  in.seq_len = seq_len;
  in.checkpointing = true;
  in.device = PlanDevice::Cuda;
  in.gpus = 1;
  in.device_bytes = device_bytes;
  return in;
}

std::string plan_vs_live_report(PlanInput in, const OutOfMemoryFacts& f) {
  in.device = PlanDevice::Cuda;
  in.gpus = 1;
  if (f.device_known && f.device_total > 0) in.device_bytes = f.device_total;
  PlanResult plan;
  try {
    plan = plan_memory(in);
  } catch (const Error& e) {
    return std::string("(no plan for this run: ") + e.what() + ")";
  }
  const DevicePlan& d = plan.device;
  const DeviceAllocatorStats& s = f.stats;
  // The plan's categories, what the allocator held in each, and where the failed request belongs.
  struct Category {
    const char* name;
    uint64_t planned, live;
    bool has_request;
    const char* note;
  };
  const auto req_in = [&](std::initializer_list<MemoryTag> tags) {
    return std::find(tags.begin(), tags.end(), f.tag) != tags.end();
  };
  const uint64_t logits_ws = s.bytes_of(MemoryTag::Logits) + s.bytes_of(MemoryTag::Workspace);
  const Category rows[] = {
      {"base weights", d.base_weights, s.bytes_of(MemoryTag::Weights), req_in({MemoryTag::Weights}), ""},
      {"adapters", d.adapters, s.bytes_of(MemoryTag::Adapter), req_in({MemoryTag::Adapter}), ""},
      {"gradients", d.gradients, s.bytes_of(MemoryTag::Gradients), req_in({MemoryTag::Gradients}), ""},
      {"optimizer", d.optimizer, s.bytes_of(MemoryTag::Optimizer), req_in({MemoryTag::Optimizer}), ""},
      {"activations", d.activations, s.bytes_of(MemoryTag::Activations), req_in({MemoryTag::Activations}), ""},
      {"workspace", d.workspace, logits_ws, req_in({MemoryTag::Logits, MemoryTag::Workspace}),
       " (logits + kernel scratch; the plan adds the CUDA context and allocator slack)"},
  };
  std::ostringstream os;
  os << "memory at the failure vs `" << plan_command(in) << "`:\n";
  os << "| category | planned | live at the failure |\n| --- | ---: | ---: |\n";
  for (const Category& c : rows) {
    os << "| " << c.name << " | " << format_bytes(c.planned) << " | " << format_bytes(c.live);
    if (c.has_request) os << " + " << format_bytes(f.requested) << " requested";
    os << c.note << " |\n";
  }
  os << "| total | " << format_bytes(d.total) << " | " << format_bytes(s.allocated) << " + "
     << format_bytes(f.requested) << " requested (" << format_bytes(s.reserved) << " reserved) |\n";
  if (d.fits) {
    os << "The plan fits this device (" << format_bytes(d.total) << " of " << format_bytes(d.capacity) << ")";
  } else {
    os << "The plan does not fit this device either (" << format_bytes(d.total) << " of "
       << format_bytes(d.capacity) << ")";
  }
  os << "; its activations are this GPU trainer's own buffers (trainer/lora_cuda_buffers.h).\n";
  // What to lower: the group that holds the most, the failed request included.
  const auto with_request = [&](uint64_t live, std::initializer_list<MemoryTag> tags) {
    return live + (req_in(tags) ? f.requested : 0);
  };
  const uint64_t weights = with_request(s.bytes_of(MemoryTag::Weights), {MemoryTag::Weights});
  const uint64_t lora = with_request(s.bytes_of(MemoryTag::Adapter) + s.bytes_of(MemoryTag::Gradients) +
                                         s.bytes_of(MemoryTag::Optimizer),
                                     {MemoryTag::Adapter, MemoryTag::Gradients, MemoryTag::Optimizer});
  const uint64_t acts = with_request(s.bytes_of(MemoryTag::Activations) + logits_ws,
                                     {MemoryTag::Activations, MemoryTag::Logits, MemoryTag::Workspace});
  os << "What to lower: ";
  if (acts >= weights && acts >= lora) {
    os << "activations and logits take " << format_bytes(acts) << " for " << plan.tokens << " tokens per micro-batch ("
       << in.batch_size << " x " << in.seq_len << ") and grow with them: lower --seq-len or --batch-size (raise "
       << "--grad-accum to keep the tokens per step).";
  } else if (weights >= lora) {
    os << "the base weights take " << format_bytes(weights) << ": train on a 4-bit base (qwen-quant gptq / awq / "
       << "nf4) or a smaller model.";
  } else {
    os << "the adapter with its gradients and AdamW state takes " << format_bytes(lora) << " (16 B per parameter, "
       << plan.lora_params << " parameters): lower --lora-r (now " << in.lora.r << ") or the --target list.";
  }
  return os.str();
}

OutOfMemoryError training_out_of_memory(const OutOfMemoryError& e, const std::string& context, const PlanInput& in) {
  return OutOfMemoryError(context + e.what() + "\n" + plan_vs_live_report(in, e.facts()), e.facts());
}

}  // namespace qwenq
