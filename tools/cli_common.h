// Options shared by the subcommands: threads and device selection.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

#include "kernels/device.h"

namespace qwenq::cli {

struct CommonOptions {
  int threads = 0;             // 0: all cores
  std::string device = "auto"; // auto | cpu | cuda
};

void add_common_options(CLI::App* cmd, CommonOptions* opt);
// Applies --threads and resolves --device, printing one line to stderr saying where the work runs.
void apply_common_options(const CommonOptions& opt);
// The same for a command with a GPU path not yet validated on hardware (eval, gptq): it runs on the GPU only when
// asked for by name (--device cuda); `auto` keeps the CPU and the line says so. `what` names the work in that line
// ("the evaluation", "GPTQ"). Returns where the work runs.
Device apply_common_options_gpu(const CommonOptions& opt, const std::string& what);

}  // namespace qwenq::cli
