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
  std::fprintf(stderr, "%s; %d CPU threads\n", d.description.c_str(), num_threads());
}

}  // namespace qwenq::cli
