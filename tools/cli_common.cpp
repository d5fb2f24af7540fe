#include "tools/cli_common.h"

#include <cstdio>

#include "core/threads.h"
#include "kernels/device.h"

namespace qwenq::cli {

void add_common_options(CLI::App* cmd, CommonOptions* opt) {
  cmd->add_option("--threads", opt->threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--device", opt->device, "where to run: auto, cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
}

void apply_common_options(const CommonOptions& opt) {
  set_num_threads(opt.threads);
  DeviceChoice d = choose_device(opt.device);
  if (d.device == Device::Cuda) d.description += ", but this command computes on the CPU";
  std::fprintf(stderr, "%s; %d CPU threads\n", d.description.c_str(), num_threads());
}

Device resolve_experimental_device(const CommonOptions& opt, const std::string& what) {
  set_num_threads(opt.threads);
  DeviceChoice d = choose_device(opt.device);
  std::string line = d.description;
#ifdef QWENQ_HAVE_CUDA
  std::string gpu;
  if (d.device == Device::Cuda && opt.device != "cuda") {
    d.device = Device::Cpu;
    line += " (" + what + " on the GPU is experimental: pass --device cuda to use it)";
  } else if (d.device == Device::Cuda && cuda_device_query(&gpu)) {
    line = "device: cuda (" + gpu + "), " + what + " runs on the GPU (experimental)";
  }
#else
  (void)what;
#endif
  std::fprintf(stderr, "%s; %d CPU threads\n", line.c_str(), num_threads());
  return d.device;
}

void GenerationTimer::on_token() {
  if (tokens_++ == 0) first_ = std::chrono::steady_clock::now();
}

void GenerationTimer::print(size_t prompt_tokens) const {
  const auto now = std::chrono::steady_clock::now();
  const double s = std::chrono::duration<double>(now - start_).count();
  std::fprintf(stderr, "%zu prompt tokens, %zu new tokens in %.2fs (%.1f tok/s", prompt_tokens, tokens_, s,
               tokens_ / (s > 0 ? s : 1));
  if (tokens_ >= 2) {
    const double first = std::chrono::duration<double>(first_ - start_).count(), rest = s - first;
    std::fprintf(stderr, "; first token after %.2fs, then %.1f tok/s", first, (tokens_ - 1) / (rest > 0 ? rest : 1));
  }
  std::fprintf(stderr, ")\n");
}

}  // namespace qwenq::cli
