// qwen-qlora plan: the memory a LoRA/QLoRA training step needs on its device (each GPU of train --nproc), from the
// model's shapes alone
// (trainer/memory_plan.h has the formulas). Nothing is loaded but config.json; no device is touched.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "tools/cli_common.h"
#include "tools/qlora_cli.h"
#include "trainer/memory_plan.h"
#include "trainer/model_dir.h"
#include "trainer/quant_config.h"
#include "trainer/random_model.h"

namespace qwenq::cli {

namespace {

struct PlanArgs {
  std::string model, preset, base = "auto", device = "cuda";
  LoraSelectionFlags selection;
  int64_t layers = 0;
  int bits = 4;
  int64_t group_size = 128, nf4_blocksize = 64;
  bool no_double_quant = false, no_checkpointing = false, fp32_checkpoints = false, json = false;
  int64_t lora_r = 16;
  double lora_alpha = 0, lora_dropout = 0;
  bool use_dora = false;
  int64_t batch_size = 1, seq_len = 2048;
  int gpus = 1;
  double gpu_mem_gb = 80, cpu_mem_gb = 0;
  int threads = 0;
};

uint64_t host_ram_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0;
}

uint64_t gb(double v, const char* flag) {
  QWENQ_CHECK(std::isfinite(v) && v > 0, flag << " must be a positive number of GB, got " << v);
  return static_cast<uint64_t>(v * 1e9);
}

void run_plan(const PlanArgs& a, const CLI::App& cmd) {
  QWENQ_CHECK(a.model.empty() != a.preset.empty(), "plan: give exactly one of --model DIR and --preset NAME");
  PlanInput in;
  std::string dir;
  if (!a.model.empty()) {
    dir = resolve_model_dir(a.model);
    in.model = load_qwen_config(dir);
    in.model_name = a.model;
    in.dense_dtype = plan_dense_dtype(in.model.torch_dtype);
  } else {
    in.model = qwen_preset(a.preset);
    in.model_name = a.preset;
  }
  if (a.layers > 0) {
    in.model.num_layers = a.layers;
    in.model_name += " (" + std::to_string(a.layers) + " layers)";
  }
  if (a.base == "auto") {
    if (!dir.empty()) plan_base_from_model_dir(dir, &in);
    else in.base = PlanBase::Bf16;
    // Flags given explicitly still win over what the directory says.
    if (cmd.count("--bits")) in.bits = a.bits;
    if (cmd.count("--group-size")) in.group_size = a.group_size;
    if (a.no_double_quant) in.double_quant = false;
  } else {
    QWENQ_CHECK(plan_base_from_name(a.base, &in.base), "plan: --base must be auto, bf16, gptq, awq or nf4, got '"
                                                           << a.base << "'");
    in.bits = a.bits;
    in.group_size = a.group_size;
    in.double_quant = !a.no_double_quant;
  }
  in.nf4_blocksize = a.nf4_blocksize;
  in.lora.r = a.lora_r;
  in.lora.alpha = a.lora_alpha > 0 ? a.lora_alpha : 2.0 * static_cast<double>(a.lora_r);
  in.lora.dropout = a.lora_dropout;
  in.lora.use_dora = a.use_dora;
  apply_lora_selection(cmd, a.selection, &in.lora);
  in.batch_size = a.batch_size;
  in.seq_len = a.seq_len;
  in.checkpointing = !a.no_checkpointing;
  in.bf16_checkpoints = !a.fp32_checkpoints;
  if (a.device == "cpu") {
    QWENQ_CHECK(!cmd.count("--gpus") || a.gpus == 1,
                "plan: --gpus " << a.gpus << " with --device cpu; the CPU plan is one process's: train --nproc N on "
                                   "the CPU runs N such processes (only the 16-bit tensors, read from the page cache, "
                                   "are shared)");
    in.device = PlanDevice::Cpu;
    in.device_bytes = a.cpu_mem_gb > 0 ? gb(a.cpu_mem_gb, "--cpu-mem-gb") : host_ram_bytes();
    QWENQ_CHECK(in.device_bytes > 0, "plan: cannot read this machine's RAM size; give --cpu-mem-gb");
    in.cpu_threads = a.threads > 0 ? a.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  } else {
    QWENQ_CHECK(a.device == "cuda", "plan: --device must be cpu or cuda, got '" << a.device << "'");
    in.device = PlanDevice::Cuda;
    in.gpus = a.gpus;
    in.device_bytes = gb(a.gpu_mem_gb, "--gpu-mem-gb");
  }
  const PlanResult plan = plan_memory(in);
  std::fputs((a.json ? plan_to_json(plan) : format_plan_table(plan)).c_str(), stdout);
}

}  // namespace

void register_qlora_plan(CLI::App& app) {
  auto a = std::make_shared<PlanArgs>();
  CLI::App* cmd = app.add_subcommand("plan", "Predict the memory a LoRA/QLoRA training step needs on each device "
                                             "(base weights, adapters, gradients, AdamW, activations, workspace)");
  cmd->add_option("--model,-m", a->model, "model directory or Hugging Face repo id (only config.json is read)");
  cmd->add_option("--preset", a->preset, "a model shape instead (init-random's presets: tiny, qwen2.5-0.5b ... qwen2.5-72b, qwen3-30b-a3b, ...)");
  cmd->add_option("--layers", a->layers, "override the number of decoder layers")->check(at_least(1, "POSITIVE"));
  cmd->add_option("--base", a->base, "frozen base format: auto (the directory's; bf16 for a preset), bf16, gptq, awq, "
                                     "nf4")
      ->capture_default_str();
  cmd->add_option("--bits", a->bits, "GPTQ/AWQ code bits")->capture_default_str();
  cmd->add_option("--group-size", a->group_size, "GPTQ/AWQ group size (-1: one group per column)")
      ->capture_default_str();
  cmd->add_flag("--no-double-quant", a->no_double_quant, "NF4 without double quantization of the block scales");
  cmd->add_option("--nf4-blocksize", a->nf4_blocksize, "NF4 block size")->capture_default_str();
  cmd->add_option("--lora-r", a->lora_r, "LoRA rank r")->capture_default_str();
  cmd->add_option("--lora-alpha", a->lora_alpha, "LoRA alpha (does not change memory; default 2r)")
      ->check(greater_than(0, "POSITIVE"));
  cmd->add_option("--lora-dropout", a->lora_dropout, "LoRA dropout (> 0 keeps the dropped inputs on the CPU; none on the GPU)")
      ->capture_default_str();
  cmd->add_flag("--use-dora", a->use_dora, "DoRA: a magnitude per output row and its activations");
  add_lora_selection_flags(cmd, &a->selection);
  cmd->add_option("--batch-size", a->batch_size, "sequences per micro-batch (B)")->capture_default_str();
  cmd->add_option("--seq-len", a->seq_len, "tokens per sequence (S)")->capture_default_str();
  cmd->add_flag("--no-checkpointing", a->no_checkpointing, "keep every block's activations instead of recomputing (CPU only: the GPU trainer always checkpoints)");
  cmd->add_flag("--fp32-checkpoints", a->fp32_checkpoints, "GPU: keep the block inputs in fp32 (train --fp32-checkpoints) instead of bf16");
  cmd->add_option("--device", a->device, "cpu (trainer/lora_model.h) or cuda (trainer/lora_model_cuda.h)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_option("--gpus", a->gpus, "GPUs, one process each (train --nproc): every GPU holds the whole model and its own micro-batches")
      ->check(at_least(1, "POSITIVE"))
      ->capture_default_str();
  cmd->add_option("--gpu-mem-gb", a->gpu_mem_gb, "memory per GPU in GB (10^9 bytes)")->capture_default_str();
  cmd->add_option("--cpu-mem-gb", a->cpu_mem_gb, "host RAM in GB for --device cpu (default: this machine's)")
      ->check(greater_than(0, "POSITIVE"));
  cmd->add_option("--threads", a->threads, "CPU threads the trainer would use (default: this machine's cores)")
      ->check(at_least(1, "POSITIVE"));
  cmd->add_flag("--json", a->json, "print JSON instead of tables");
  cmd->callback([a, cmd]() { run_plan(*a, *cmd); });
}

}  // namespace qwenq::cli
