#include "tools/cli_common.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "core/error.h"
#include "core/files.h"
#include "core/gguf.h"
#include "core/progress.h"
#include "core/threads.h"
#include "lora/lora_select.h"
#include "trainer/lora_model.h"
#include "kernels/device.h"
#include "kernels/device_allocator.h"
#include "lora/lora_config.h"
#include "trainer/generation_config.h"
#include "trainer/gguf_model.h"
#include "trainer/lora_merge.h"
#include "trainer/model_dir.h"
#include "trainer/quant_config.h"
#include "trainer/qwen_config.h"
#include "trainer/qwen_weights.h"

namespace qwenq::cli {

void add_common_options(CLI::App* cmd, CommonOptions* opt) {
  cmd->add_option("--threads", opt->threads, "CPU threads (0: all cores)")->check(at_least(0, "NONNEGATIVE"));
  cmd->add_option("--device", opt->device, "where to run: auto, cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
}

namespace {

// A validator refusing numbers for which ok(v) is false with "must be <what>, got <text>".
template <typename Ok>
CLI::Validator numeric_check(Ok ok, const std::string& what, const std::string& name) {
  return CLI::Validator(
      [ok, what](std::string& text) -> std::string {
        std::istringstream in(text);
        double v = 0;
        if (!(in >> v) || !(in >> std::ws).eof()) return "";  // not a number: CLI11's conversion error says so
        return ok(v) ? "" : "must be " + what + ", got " + text;
      },
      name, name);
}

std::string number_text(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

}  // namespace

CLI::Validator at_least(double lo, const std::string& name) {
  return numeric_check([lo](double v) { return v >= lo; }, "at least " + number_text(lo), name);
}

CLI::Validator greater_than(double lo, const std::string& name) {
  return numeric_check([lo](double v) { return v > lo; }, "greater than " + number_text(lo), name);
}

CLI::Validator in_range(double lo, double hi, const std::string& name, bool lo_open) {
  return numeric_check([lo, hi, lo_open](double v) { return (lo_open ? v > lo : v >= lo) && v <= hi; },
                       std::string("in ") + (lo_open ? "(" : "[") + number_text(lo) + ", " + number_text(hi) + "]",
                       name);
}

int64_t window_len_for_model(const std::string& model_dir, int64_t requested, bool given, const char* flag) {
  const int64_t context = load_model_config(model_dir).max_position_embeddings;
  if (context <= 0) return requested;  // a config without the field: nothing to check against
  if (!given) return std::min(requested, context);
  QWENQ_CHECK(requested <= context, flag << " " << requested << " is longer than the model's context: "
                                         << (is_gguf_file(model_dir) ? model_dir + " (context_length)" : path_join(model_dir, "config.json"))
                                         << " has max_position_embeddings "
                                         << context << "; give " << flag << " " << context << " or less");
  return requested;
}

void check_subcommand_name(const CLI::App& app, const std::vector<std::string>& args) {
  if (args.size() < 2 || args[1].empty() || args[1][0] == '-') return;
  std::string known;
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
    if (sub->get_name() == args[1]) return;
    known += (known.empty() ? "" : ", ") + sub->get_name();
  }
  throw Error("unknown subcommand '" + args[1] + "' (known: " + known + ")");
}

void check_output_dir_exists(const char* flag, const std::string& path) {
  const size_t slash = path.find_last_of('/');
  const std::string parent = slash == std::string::npos ? "." : path.substr(0, std::max<size_t>(slash, 1));
  QWENQ_CHECK(dir_exists(parent), flag << " " << path << ": directory " << parent << " does not exist");
  QWENQ_CHECK(!dir_exists(path), flag << " " << path << " is a directory; give a file name");
}

void warn_if_no_thinking_switch(const Tokenizer& tok, bool no_thinking, const char* who) {
  if (no_thinking && !tok.chat_template_has_thinking_switch())
    std::fprintf(stderr, "%s: --no-thinking: the chat template has no enable_thinking switch; it changes nothing\n", who);
}

ChatOptions generation_chat_options(bool no_thinking) {
  ChatOptions o;
  o.add_generation_prompt = true;
  o.enable_thinking = !no_thinking;
  return o;
}

void check_prompt_fits(size_t prompt_tokens, int64_t context, int64_t max_new_tokens, const std::string& model,
                       const std::string& what) {
  QWENQ_CHECK(max_new_tokens == 0 || static_cast<int64_t>(prompt_tokens) < context,
              what << " is " << prompt_tokens << " tokens, which leaves no room for a new one in the model's context of "
                   << context << " (max_position_embeddings of " << model << "); shorten it");
}

void apply_common_options(const CommonOptions& opt) {
  set_num_threads(opt.threads);
  DeviceChoice d = choose_device(opt.device);
  if (d.device == Device::Cuda) d.description += ", but this command computes on the CPU";
  std::fprintf(stderr, "%s; %d CPU threads\n", d.description.c_str(), num_threads());
}

DevicePick::DevicePick(const CommonOptions& opt, std::string what)
    : request_(opt.device), what_(std::move(what)), found_(choose_device(opt.device)) {
  set_num_threads(opt.threads);
}

Device DevicePick::settle(const std::string& refusal) {
  const DeviceChoice d = settle_device(request_, found_, what_, refusal);
  std::fprintf(stderr, "%s%s; %d CPU threads\n", prefix_.c_str(), d.description.c_str(), num_threads());
  return d.device;
}

Device DevicePick::settle_for_model(const QwenModel& model, GpuUse use, const std::string& refusal) {
  return settle_for_models({&model}, use, refusal);
}

Device DevicePick::settle_for_models(const std::vector<const QwenModel*>& models, GpuUse use,
                                     const std::string& refusal) {
  std::string why = refusal;
  for (const QwenModel* m : models) {
    if (!why.empty() || !gpu_possible()) break;
    why = gpu_model_refusal(*m, use);
  }
  if (why.empty()) {
    why = auto_fit_refusal([&] {
      uint64_t bytes = 0;
      for (const QwenModel* m : models) bytes += gpu_weight_bytes(m->config(), m->weights(), use);
      return bytes;
    });
  }
  return settle(why);
}

std::string DevicePick::auto_fit_refusal(const std::function<uint64_t()>& weight_bytes) const {
#ifdef QWENQ_HAVE_CUDA
  // cuda tries whatever the room, and an out-of-memory error explains; a failed query leaves the GPU chosen.
  uint64_t free_bytes = 0, total_bytes = 0;
  std::string error;
  if (gpu_possible() && request_ == "auto" && cuda_device_memory(&free_bytes, &total_bytes, &error)) {
    return gpu_fit_refusal(weight_bytes(), free_bytes);
  }
#else
  (void)weight_bytes;
#endif
  return "";
}

Device DevicePick::settle_for_source(const std::string& model_dir) {
  std::string why = gpu_possible() ? gpu_source_refusal(model_dir) : "";
  if (why.empty()) why = auto_fit_refusal([&] { return gpu_source_weight_bytes(model_dir); });
  return settle(why);
}

void add_int8_activations_flag(CLI::App* cmd, bool* on) {
  cmd->add_flag("--int8-activations", *on,
                "GGUF and GPTQ/AWQ models on the CPU: round each activation row to 8 bits per block and multiply the "
                "quantized weights in integers, as llama.cpp does (faster; not the exact product)");
}

std::string int8_activations_refusal(bool on) {
  return on ? "--int8-activations multiplies in integers on the CPU" : "";
}

std::string lora_config_gpu_refusal(const LoraConfig& c, const QwenConfig& cfg, const std::string& source) {
  if (!c.selects_finely()) return "";
  const LoraDims dims = lora_dims_of(cfg);
  return lora_plan_gpu_refusal(lora_plan(dims, c, source), dims, c);
}

std::string adapter_gpu_refusal(const std::string& adapter_dir, const QwenConfig& cfg) {
  if (adapter_dir.empty()) return "";
  try {
    return lora_config_gpu_refusal(load_lora_config(adapter_dir), cfg, path_join(adapter_dir, "adapter_config.json"));
  } catch (const std::exception&) {
    return "";  // a missing or bad adapter: its loader, after the device line, names the problem for the command
  }
}

void apply_int8_activations(bool on, const std::string& model_path, const CommonOptions& common) {
  if (!on) return;
  QWENQ_CHECK(common.device != "cuda", "--int8-activations: the int8 products run on the CPU (drop --device cuda)");
  if (!is_gguf_file(model_path)) {
    const std::string dir = resolve_model_dir(model_path, "main", /*allow_gguf=*/true);
    const QuantConfig q = load_quant_config(dir);
    QWENQ_CHECK(q.method == QuantConfig::Method::Gptq || q.method == QuantConfig::Method::Awq ||
                    (q.method == QuantConfig::Method::CompressedTensors && q.ct_has_int()),
                "--int8-activations: " << model_path << " is neither a GGUF file nor a GPTQ/AWQ/compressed-tensors "
                                       << "integer checkpoint (its "
                                       << q.method_name() << " weights have no int8 product)");
  }
  set_int8_activations(true);
}

std::string model_or_adapter_base(const std::string& model, const std::string& adapter, bool quiet) {
  if (!model.empty()) return model;
  QWENQ_CHECK(!adapter.empty(), "give --model (or an --adapter whose adapter_config.json names its base model)");
  const LoraConfig c = load_lora_config(adapter);
  QWENQ_CHECK(!c.base_model.empty(), "--adapter " << adapter << ": adapter_config.json names no base model "
                                                  << "(base_model_name_or_path); give --model");
  if (!quiet) {
    std::fprintf(stderr, "model: %s (the base --adapter %s names in adapter_config.json)\n", c.base_model.c_str(),
                 adapter.c_str());
  }
  return c.base_model;
}

void warn_if_pissa_residual(const std::string& model_dir, const char* flag) {
  if (!file_exists(path_join(model_dir, "pissa_init/adapter_config.json"))) return;
  std::fprintf(stderr,
               "warning: %s is a PiSSA residual (it holds pissa_init/), used here without an adapter: its Linears lack "
               "their principal part; give %s %s/pissa_init (or a run trained from it)\n",
               model_dir.c_str(), flag, model_dir.c_str());
}

CommandAdapter::CommandAdapter(CommandAdapter&& o) noexcept
    : adapter_(std::move(o.adapter_)), layout_(std::move(o.layout_)), model_(o.model_) {
  o.model_ = nullptr;
}

CommandAdapter& CommandAdapter::operator=(CommandAdapter&& o) noexcept {
  if (this != &o) {
    if (model_ != nullptr && model_ != o.model_) model_->attach_adapter(nullptr);
    adapter_ = std::move(o.adapter_);
    layout_ = std::move(o.layout_);
    model_ = o.model_;
    o.model_ = nullptr;
  }
  return *this;
}

CommandAdapter::~CommandAdapter() {
  if (model_ != nullptr) model_->attach_adapter(nullptr);
}

CommandAdapter load_adapter_for_device(const std::string& adapter_dir, const std::string& model_dir, Device device,
                                       QwenModel& model, bool quiet) {
  CommandAdapter out;
  if (adapter_dir.empty()) {
    warn_if_pissa_residual(model_dir, "--adapter");
    return out;
  }
  out.adapter_ =
      std::make_unique<LoraAdapter>(load_adapter_for_base(adapter_dir, model_dir, model.config(), AdapterUse::Apply));
  const LoraAdapter& a = *out.adapter_;
  std::string how = "applied unmerged on the GPU (base kept as stored)";
  if (device != Device::Cuda) {
    out.layout_ = std::make_unique<LoraInferenceLayout>(lora_inference_layout(a, model.config(), adapter_dir));
    model.attach_adapter(out.layout_.get());
    out.model_ = &model;
    how = "applied unmerged (base kept as stored)";
  }
  if (!quiet) {
    const LoraConfig& c = a.config();
    if (!c.selects_finely()) {
      std::fprintf(stderr, "adapter %s %s: %zu target(s) x %lld layers, r %lld%s, scaling %g\n", adapter_dir.c_str(),
                   how.c_str(), a.targets().size(), (long long)model.config().num_layers, (long long)c.r,
                   a.use_dora() ? " (DoRA)" : "", c.scaling());
    } else {  // PEFT's finer selection: the Linears it picked, and the default r and scaling the patterns override
      std::fprintf(stderr, "adapter %s %s: %zu Linears (%s), r %lld%s, scaling %g where no pattern says otherwise\n",
                   adapter_dir.c_str(), how.c_str(), a.slots().size(), lora_selection_str(c).c_str(), (long long)c.r,
                   a.use_dora() ? " (DoRA)" : "", c.scaling());
    }
  }
  if (out.layout_) out.adapter_.reset();  // the layout holds its A, B (and m): one copy, not two (3.3 GB each for
                                          // r 16 on every expert of Qwen3-30B-A3B)
  return out;
}

#ifdef QWENQ_HAVE_CUDA
std::unique_ptr<QwenModelCuda> upload_model_cuda(const QwenModel& model, const LoraAdapter* adapter,
                                                 const std::string& adapter_dir) {
  auto gpu = std::make_unique<QwenModelCuda>(model);
  if (adapter) gpu->attach_adapter(*adapter, adapter_dir);
  return gpu;
}
#endif

EvalDevice::EvalDevice(Device device) : device_(device) {
#ifdef QWENQ_HAVE_CUDA
  if (device_ == Device::Cuda) cuda_device_allocator().reset_peak();
#endif
}

LogitsSource EvalDevice::source(const QwenModel& model, const LoraAdapter* adapter, const std::string& adapter_dir) {
#ifdef QWENQ_HAVE_CUDA
  if (device_ == Device::Cuda) return cuda_logits_source(upload(model, adapter, adapter_dir), model.dir());
#else
  (void)adapter;
  (void)adapter_dir;
#endif
  return cpu_logits_source(model);
}

#ifdef QWENQ_HAVE_CUDA
QwenModelCuda& EvalDevice::upload(const QwenModel& model, const LoraAdapter* adapter, const std::string& adapter_dir) {
  gpus_.push_back(upload_model_cuda(model, adapter, adapter_dir));
  return *gpus_.back();
}
#endif

std::string EvalDevice::add_peaks(nlohmann::ordered_json* j) const {
#ifdef QWENQ_HAVE_CUDA
  if (device_ == Device::Cuda) {
    const DeviceAllocatorStats ds = cuda_device_allocator().stats();
    (*j)["device_peak_allocated_bytes"] = static_cast<int64_t>(ds.peak_allocated);
    (*j)["device_peak_reserved_bytes"] = static_cast<int64_t>(ds.peak_reserved);
    return ", peak device memory " + format_bytes(ds.peak_allocated) + " allocated, " +
           format_bytes(ds.peak_reserved) + " reserved";
  }
#else
  (void)j;
#endif
  return "";
}

Int8Coverage report_int8_coverage(const QwenWeights& w, bool quiet) {
  const Int8Coverage c = int8_coverage(w);
  if (!int8_activations() || quiet) return c;
  std::fprintf(stderr, "int8 activations: %lld of %lld Linears%s%s\n", (long long)c.int8, (long long)c.linears,
               c.lm_head ? " and the output table" : "",
               c.int8 < c.linears ? " (the others multiply exactly: dense or merged, NF4, F16/F32 tensors, 2/3-bit "
                                    "GPTQ, shapes not in blocks of 32, act-order groups of unequal sizes)"
                                  : "");
  return c;
}

void GenerationTimer::on_token() {
  if (tokens_++ == 0) first_ = std::chrono::steady_clock::now();
}

void GenerationTimer::print(size_t prompt_tokens, size_t reused) const {
  const auto now = std::chrono::steady_clock::now();
  const double s = std::chrono::duration<double>(now - start_).count();
  std::fprintf(stderr, "%zu prompt tokens", prompt_tokens);
  if (reused > 0) std::fprintf(stderr, " (%zu of them cached from the last turn)", reused);
  std::fprintf(stderr, ", %zu new tokens in %.2fs (%.1f tok/s", tokens_, s, tokens_ / (s > 0 ? s : 1));
  if (tokens_ >= 2) {
    const double first = std::chrono::duration<double>(first_ - start_).count(), rest = s - first;
    std::fprintf(stderr, "; first token after %.2fs, then %.1f tok/s", first, (tokens_ - 1) / (rest > 0 ? rest : 1));
  }
  std::fprintf(stderr, ")\n");
}

void add_sampling_options(CLI::App* cmd, SamplingOptions* s, std::string* kv_cache, const char* max_new_help) {
  cmd->add_option("--max-new-tokens,-n", s->max_new_tokens, max_new_help)
      ->check(at_least(0, "NONNEGATIVE"))
      ->capture_default_str();
  const char* from_model = " (default: the model's generation_config.json, as transformers)";
  cmd->add_option("--temperature,-t", s->temperature, std::string("0 = greedy; > 0 samples") + from_model)
      ->check(at_least(0, "NONNEGATIVE"));
  cmd->add_option("--top-k", s->top_k, std::string("0 = off") + from_model)->check(at_least(0, "NONNEGATIVE"));
  cmd->add_option("--top-p", s->top_p, std::string("1 = off") + from_model)->check(in_range(0, 1, "(0, 1]", true));
  cmd->add_option("--min-p", s->min_p, std::string("0 = off; keep tokens at least this fraction of the top one's "
                                                   "probability") + from_model)
      ->check(in_range(0, 1, "[0, 1]"));
  cmd->add_option("--repetition-penalty", s->repetition_penalty,
                  std::string("1 = off; > 1 divides positive (multiplies negative) logits of every token already in "
                              "the prompt or output") + from_model)
      ->check(greater_than(0, "POSITIVE"));
  cmd->add_flag("--greedy", "greedy decoding, whatever the model's generation_config.json asks for");
  cmd->add_option("--seed", s->seed, "sampling seed")->capture_default_str();
  cmd->add_option("--kv-cache", *kv_cache,
                  "KV cache storage: f32, or bf16 (half the memory per token; K and V rounded to bf16)")
      ->capture_default_str();
  cmd->add_flag("--bf16-activations", s->bf16_activations,
                "GPU: round each 4-bit product's input to bf16, as a bf16 model under transformers, so that the "
                "decode products run on tensor cores (faster; not the CPU's fp32 numbers; no effect on the CPU)");
}

void note_bf16_activations(const SamplingOptions& s, Device device) {
  if (s.bf16_activations && device == Device::Cpu)
    std::fprintf(stderr, "--bf16-activations: no effect on the CPU (its decode products take fp32 activations)\n");
}

const char* const kCpuMatmulForwardHelp =
    "on the CPU, the products with a 16-bit or fp32 weight of at least 8 rows (dense Linears, the lm_head) and with a "
    "4-bit one of at least 32 (a prompt, not the decode steps after it): fp32 (the reference) or bf16 (bf16 "
    "operands, fp32 sums, as the GPU computes them; about twice as fast with AVX512_BF16)";

void add_cpu_matmul_option(CLI::App* cmd, std::string* value, const char* help) {
  cmd->add_option("--cpu-matmul", *value, help)->check(CLI::IsMember({"fp32", "bf16"}))->capture_default_str();
}

void apply_cpu_matmul(const std::string& value, Device device) {
  set_cpu_bf16_products(value == "bf16" && device == Device::Cpu);
  if (value == "bf16" && device != Device::Cpu)
    std::fprintf(stderr, "--cpu-matmul bf16: no effect on the GPU (its products take bf16 operands already)\n");
}

SamplingGiven sampling_flags_given(const CLI::App* cmd) {
  SamplingGiven g;
  g.temperature = cmd->count("--temperature") > 0;
  g.top_k = cmd->count("--top-k") > 0;
  g.top_p = cmd->count("--top-p") > 0;
  g.min_p = cmd->count("--min-p") > 0;
  g.repetition_penalty = cmd->count("--repetition-penalty") > 0;
  g.greedy = cmd->count("--greedy") > 0;
  return g;
}

void apply_generation_config(const std::string& model_path, const SamplingGiven& given, SamplingOptions* opt,
                             bool quiet) {
  QWENQ_CHECK(!(given.greedy && given.temperature && opt->temperature > 0),
              "--greedy and --temperature " << opt->temperature << " contradict each other: give one");
  const GenerationConfig gc = load_generation_config(model_path);
  bool defaulted = false;  // some setting came from the model (or transformers' defaults), not from a flag
  const auto take = [&](bool flag_given, auto* field, auto value) {
    if (flag_given) return;
    *field = value;
    defaulted = true;
  };
  take(given.repetition_penalty, &opt->repetition_penalty, gc.repetition_penalty);
  defaulted = defaulted || (!given.greedy && !given.temperature);  // do_sample decides
  const bool sample = !given.greedy && (given.temperature ? opt->temperature > 0 : gc.do_sample);
  if (!sample) {
    opt->temperature = 0.f;
  } else {
    take(given.temperature, &opt->temperature, gc.temperature);
    take(given.top_k, &opt->top_k, gc.top_k);
    take(given.top_p, &opt->top_p, gc.top_p);
    take(given.min_p, &opt->min_p, gc.min_p);
  }
  for (int32_t id : gc.eos_token_ids) {
    if (std::find(opt->stop_ids.begin(), opt->stop_ids.end(), id) == opt->stop_ids.end()) opt->stop_ids.push_back(id);
  }
  check_sampling_options(*opt);  // e.g. --temperature inf: refused before the line below
  if (quiet) return;
  char buf[256];
  std::snprintf(buf, sizeof buf, "temperature %g, top-k %lld, top-p %g", opt->temperature, (long long)opt->top_k,
                opt->top_p);
  std::string line = std::string("sampling: ") + (sample ? buf : "greedy");
  if (sample && opt->min_p > 0) {
    std::snprintf(buf, sizeof buf, ", min-p %g", opt->min_p);
    line += buf;
  }
  if (sample) line += ", seed " + std::to_string(opt->seed);
  if (opt->repetition_penalty != 1.f) {
    std::snprintf(buf, sizeof buf, ", repetition penalty %g", opt->repetition_penalty);
    line += buf;
  }
  if (defaulted) {
    line += " (" + (gc.path.empty() ? std::string("transformers' defaults: the model has no generation_config.json")
                                    : "from " + gc.path) +
            "; flags override" + (sample ? ", --greedy decodes greedily)" : ")");
  }
  std::fprintf(stderr, "%s\n", line.c_str());
}

}  // namespace qwenq::cli
