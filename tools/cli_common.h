// Options shared by the subcommands: threads and device selection.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

namespace qwenq::cli {

struct CommonOptions {
  int threads = 0;             // 0: all cores
  std::string device = "auto"; // auto | cpu | cuda
};

void add_common_options(CLI::App* cmd, CommonOptions* opt);
// Applies --threads and resolves --device, printing one line to stderr saying where the work runs.
void apply_common_options(const CommonOptions& opt);

}  // namespace qwenq::cli
