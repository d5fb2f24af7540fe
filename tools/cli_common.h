// Options shared by the subcommands: threads and device selection, the numeric-range checks of every flag, and
// the window length of an evaluation or calibration checked against the model's context.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "kernels/device.h"
#include "lora/lora_adapter.h"
#include "trainer/generate.h"
#include "trainer/gpu_support.h"
#include "trainer/logits_source.h"
#include "trainer/lora_inference.h"
#include "trainer/qwen_model.h"
#ifdef QWENQ_HAVE_CUDA
#include "trainer/qwen_model_cuda.h"
#endif
#include "trainer/qwen_weights.h"
#include "trainer/tokenizer.h"

namespace qwenq::cli {

struct CommonOptions {
  int threads = 0;             // 0: all cores
  std::string device = "auto"; // auto | cpu | cuda
};

void add_common_options(CLI::App* cmd, CommonOptions* opt);

// Range checks for numeric flags: a value below `lo` (or not above it, for greater_than; outside [lo, hi], or
// (lo, hi] with lo_open, for in_range) is refused with "--flag: must be at least 0, got -1" (CLI11 prefixes the
// flag). `name` is what --help shows after the type (e.g. NONNEGATIVE). Text that is not a number passes on to CLI11's own conversion error.
CLI::Validator at_least(double lo, const std::string& name);
CLI::Validator greater_than(double lo, const std::string& name);
CLI::Validator in_range(double lo, double hi, const std::string& name, bool lo_open = false);

// The window length (tokens) of an evaluation or a calibration on the model in `model_dir`: `requested` when the
// user gave `flag`, else min(`requested` (the default), the model's max_position_embeddings). A given length beyond
// the context is refused, naming the flag and config.json: positions the model never saw make the numbers
// meaningless and the quadratic attention slow.
int64_t window_len_for_model(const std::string& model_dir, int64_t requested, bool given, const char* flag);
// Refuses a first argument that is neither an option nor one of app's subcommands: CLI11 alone answers
// "A subcommand is required" to `qwen-quant evl`. The error names it and lists the subcommands.
void check_subcommand_name(const CLI::App& app, const std::vector<std::string>& args);
// Refuses an output file whose directory does not exist, naming the flag: found before the work, not after it.
void check_output_dir_exists(const char* flag, const std::string& path);
// Refuses a prompt of `prompt_tokens` tokens that leaves no room in the model's `context` for a new token (before
// the prompt is echoed, so the error is the only output). `what` names the prompt ("--prompt", or a prompt file's
// "FILE:LINE: the prompt"), `model` the directory or GGUF file whose max_position_embeddings sets the context.
void check_prompt_fits(size_t prompt_tokens, int64_t context, int64_t max_new_tokens, const std::string& model,
                       const std::string& what = "--prompt");
// --no-thinking given for a chat template without Qwen3's enable_thinking switch: one line on stderr, "<who>:
// --no-thinking: ... it changes nothing".
void warn_if_no_thinking_switch(const Tokenizer& tok, bool no_thinking, const char* who);
// apply_chat_template's options for a generation prompt (add_generation_prompt; enable_thinking unless no_thinking).
ChatOptions generation_chat_options(bool no_thinking);
// The sampling flags of both tools' generate (and qwen-qlora chat), range-checked: --max-new-tokens/-n (help
// `max_new_help`), --temperature/-t, --top-k, --top-p, --min-p, --repetition-penalty, --seed into `s`, --greedy, and
// --kv-cache (f32 or bf16, parsed by the command) into `kv_cache`.
void add_sampling_options(CLI::App* cmd, SamplingOptions* s, std::string* kv_cache, const char* max_new_help);
// One line on stderr when --bf16-activations was given and the generation runs on the CPU, which ignores it.
void note_bf16_activations(const SamplingOptions& s, Device device);
// --cpu-matmul fp32|bf16 (default fp32) into `value`, with `help`; eval's and generate's are kCpuMatmulForwardHelp.
void add_cpu_matmul_option(CLI::App* cmd, std::string* value, const char* help);
extern const char* const kCpuMatmulForwardHelp;
// The forward's --cpu-matmul (eval, generate, chat): set_cpu_bf16_products (trainer/qwen_weights.h) for the CPU; on
// the GPU, which has its own products, one line on stderr saying that it changes nothing there.
void apply_cpu_matmul(const std::string& value, Device device);
// Which of those the command line gave (after parsing): the others come from the model's generation_config.json.
struct SamplingGiven {
  bool temperature = false, top_k = false, top_p = false, min_p = false, repetition_penalty = false, greedy = false;
};
SamplingGiven sampling_flags_given(const CLI::App* cmd);
// transformers' decoding defaults for `opt` (trainer/generation_config.h) where the command line gave none: greedy
// unless the model's do_sample (or --temperature > 0) asks for sampling, then its temperature, top_k (transformers'
// 50 when the file has none), top_p and min_p; its repetition_penalty either way; --greedy keeps greedy decoding
// whatever the file says (the penalty still applies, as with do_sample false). Its eos_token_id(s) join
// opt->stop_ids. One line on stderr says how tokens are picked and where the settings came from, unless quiet.
void apply_generation_config(const std::string& model_path, const SamplingGiven& given, SamplingOptions* opt,
                             bool quiet = false);
// Applies --threads and resolves --device, printing one line to stderr saying where the work runs.
void apply_common_options(const CommonOptions& opt);
// Where a subcommand with a GPU path runs (`what`, e.g. "the generation"), in two steps. The constructor applies
// --threads and looks for a GPU (--device cuda without one fails there, before any work). settle() decides once the
// input is known (kernels/device.h's settle_device: `auto` takes the GPU when there is one and it can run the input,
// else the CPU; `cuda` refuses an input the GPU cannot run), prints the one device line to stderr and returns the
// device (Device::Cpu in a build without CUDA). settle_for_model asks trainer/gpu_support.h about a loaded model
// (only while the GPU is still possible): whether the GPU can run it, and for `auto` whether its weights fit the
// GPU's free memory with kGpuAutoHeadroomBytes to spare; `refusal` adds a reason of the command's own (a CPU-only
// flag).
class DevicePick {
 public:
  DevicePick(const CommonOptions& opt, std::string what);
  // True while the GPU may still be chosen (a GPU is there; choose_device("cpu") looks for none): compute refusals
  // only then.
  bool gpu_possible() const { return found_.device == Device::Cuda; }
  Device settle(const std::string& refusal = "");
  Device settle_for_model(const QwenModel& model, GpuUse use, const std::string& refusal = "");
  // The same, with every model of a command (eval's model and its KL base): the first refusal counts.
  Device settle_for_models(const std::vector<const QwenModel*>& models, GpuUse use, const std::string& refusal = "");
  // For a quantizer's source directory (gptq, awq): gpu_source_refusal, and for `auto` the fit of its tensors.
  Device settle_for_source(const std::string& model_dir);
  // Starts the device line, e.g. "rank 1: " for a data-parallel process (train --nproc).
  void set_line_prefix(std::string prefix) { prefix_ = std::move(prefix); }

 private:
  // auto with a GPU: gpu_fit_refusal of weight_bytes() against the free device memory; "" otherwise.
  std::string auto_fit_refusal(const std::function<uint64_t()>& weight_bytes) const;
  std::string request_, what_;
  DeviceChoice found_;
  std::string prefix_;
};

// --int8-activations (generate, eval): int8-activation products on the CPU for a GGUF model's quantized tensors
// (llama.cpp's) and a GPTQ/AWQ checkpoint's 4- and 8-bit Linears (trainer/qwen_weights.h, set_int8_activations).
// apply_int8_activations refuses it, before any work, for a model that is neither (dense, NF4) and with --device
// cuda, and otherwise switches it on; call it before loading the model.
void add_int8_activations_flag(CLI::App* cmd, bool* on);
void apply_int8_activations(bool on, const std::string& model_path, const CommonOptions& common);
// Why the GPU cannot run a command given --int8-activations (`on`), for DevicePick::settle: "" when off.
std::string int8_activations_refusal(bool on);

// Why the GPU paths cannot apply the adapter in `adapter_dir` to a model of `cfg`: "" without an adapter or when they
// can; PEFT's finer selections they do not lay out (per-Linear ranks, layer subsets: LoraAdapter::gpu_refusal) keep
// `auto` on the CPU with the reason on the device line, and `--device cuda` refused naming it.
std::string adapter_gpu_refusal(const std::string& adapter_dir, const QwenConfig& cfg);
// The same for an adapter of config `c` (a training run's; `source` names it in errors).
std::string lora_config_gpu_refusal(const LoraConfig& c, const QwenConfig& cfg, const std::string& source);
// The first non-empty refusal of the two ("" when both are).
inline std::string first_refusal(const std::string& a, const std::string& b) { return a.empty() ? b : a; }
// With the switch on and not quiet: one stderr line saying how many of the loaded model's Linears (and whether its
// output table) take the int8 products, and why the rest do not. Returns the coverage (int8_coverage).
Int8Coverage report_int8_coverage(const QwenWeights& w, bool quiet = false);

// One stderr line when `model_dir` is a PiSSA residual (`qwen-quant ... --pissa-rank` wrote pissa_init/ into it) and a
// command uses it without an adapter (`flag`: the command's adapter flag, named in the advice): its Linears lack
// their principal part, so the model alone is not the original's quantization (its perplexity is far off). Not an
// error: the residual alone is a legitimate thing to look at.
void warn_if_pissa_residual(const std::string& model_dir, const char* flag);

// --model as given, or, when it is empty and an adapter directory is, the base that adapter's adapter_config.json
// names (base_model_name_or_path), as PEFT's AutoPeftModelForCausalLM.from_pretrained(adapter) finds it (one stderr
// line says so unless quiet). Throws naming the flags when neither tells the model.
std::string model_or_adapter_base(const std::string& model, const std::string& adapter, bool quiet);

// --adapter for a command that evaluates or generates with `model`, for as long as this lives. On the CPU the adapter
// is attached unmerged (QwenModel::attach_adapter): the base keeps its weights as stored (a 4-bit base stays packed,
// as PEFT keeps a bitsandbytes or GPTQ base) and every adapted Linear adds s·(x Aᵀ) Bᵀ after its base product, a
// mixture-of-experts layer's experts included; DoRA then scales the row by its gain m / ‖W + s·B A‖, computed once as
// the adapter attaches. Against merging into an fp32 copy of the adapted Linears (trainer/lora_merge.h), unmerged is
// a quarter to a third of the memory and decodes a third to a half faster; prefill is about a tenth slower
// (benchmarks/results/2026-12-07-cpu-unmerged-adapter.md). With device Cuda the adapter is only
// kept, for upload_model_cuda to attach unmerged on the GPU (DoRA too).
class CommandAdapter {
 public:
  CommandAdapter() = default;
  CommandAdapter(CommandAdapter&& o) noexcept;
  CommandAdapter& operator=(CommandAdapter&& o) noexcept;
  CommandAdapter(const CommandAdapter&) = delete;
  ~CommandAdapter();  // detaches an unmerged adapter from its model

  // The adapter for the GPU's upload (upload_model_cuda); null without --adapter, and on the CPU, where the attached
  // layout holds the adapter's only copy.
  const LoraAdapter* get() const { return adapter_.get(); }

 private:
  friend CommandAdapter load_adapter_for_device(const std::string&, const std::string&, Device, QwenModel&, bool);
  std::unique_ptr<LoraAdapter> adapter_;
  std::unique_ptr<LoraInferenceLayout> layout_;  // the CPU's unmerged adapter (null: none, or the GPU's)
  QwenModel* model_ = nullptr;                   // the model layout_ is attached to
};

// The adapter of --adapter `adapter_dir` (none when ""; then warn_if_pissa_residual's line) loaded for model_dir's base
// and applied to `model` as CommandAdapter says; one line on stderr says how, unless quiet.
CommandAdapter load_adapter_for_device(const std::string& adapter_dir, const std::string& model_dir, Device device,
                                       QwenModel& model, bool quiet);

#ifdef QWENQ_HAVE_CUDA
// `model` uploaded for an evaluation on the GPU, with load_adapter_for_device's adapter attached unmerged (adapter
// null: none; adapter_dir names it in errors).
std::unique_ptr<QwenModelCuda> upload_model_cuda(const QwenModel& model, const LoraAdapter* adapter,
                                                 const std::string& adapter_dir);
#endif

// Where an evaluation runs its model(s): on the CPU, or uploaded to the GPU (upload_model_cuda: an adapter attached
// unmerged) for as long as this lives, with the caching allocator's peaks reported beside the result. Used by eval
// (every mode) and multiple-choice.
class EvalDevice {
 public:
  explicit EvalDevice(Device device);  // resets the device allocator's peaks on the GPU
  // The model as trainer/logits_source.h sees it: the CPU model (an adapter already applied to it by
  // load_adapter_for_device), or its upload with `adapter` attached.
  LogitsSource source(const QwenModel& model, const LoraAdapter* adapter, const std::string& adapter_dir);
#ifdef QWENQ_HAVE_CUDA
  QwenModelCuda& upload(const QwenModel& model, const LoraAdapter* adapter, const std::string& adapter_dir);
#endif
  // "device_peak_allocated_bytes" / "device_peak_reserved_bytes" into j and ", peak device memory ..." for the
  // human line; nothing on the CPU.
  std::string add_peaks(nlohmann::ordered_json* j) const;

 private:
  [[maybe_unused]] Device device_;  // read by the GPU paths only
#ifdef QWENQ_HAVE_CUDA
  std::vector<std::unique_ptr<QwenModelCuda>> gpus_;
#endif
};

// Wall time of a generation, for the line `generate` prints to stderr at the end:
//   "12 prompt tokens, 128 new tokens in 1.93s (66.3 tok/s; first token after 0.41s, then 83.6 tok/s)"
// The overall rate includes the prompt's prefill; the rate after the first token is the decoding speed alone.
class GenerationTimer {
 public:
  GenerationTimer() : start_(std::chrono::steady_clock::now()) {}
  void on_token();  // call from the on_token callback
  // "N prompt tokens, ..." on stderr; with reused > 0 "N prompt tokens (R of them cached from the last turn), ...".
  void print(size_t prompt_tokens, size_t reused = 0) const;

 private:
  std::chrono::steady_clock::time_point start_, first_;
  size_t tokens_ = 0;
};

}  // namespace qwenq::cli
