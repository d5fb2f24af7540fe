#include "tools/cli_common.h"

#include <cstdio>
#include <string>

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
  std::fprintf(stderr, "%s; %d CPU threads\n", d.description.c_str(), num_threads());
}

Device apply_common_options_gpu(const CommonOptions& opt, const std::string& what) {
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
#endif
  std::fprintf(stderr, "%s; %d CPU threads\n", line.c_str(), num_threads());
  return d.device;
}

}  // namespace qwenq::cli
