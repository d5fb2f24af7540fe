// Options shared by the subcommands: threads and device selection.
#pragma once

#include <chrono>
#include <cstddef>
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
// For a subcommand whose GPU path is new (`what`, e.g. "the generation"): applies --threads and resolves --device
// as `eval` does. The GPU runs only when asked for by name (--device cuda); `auto` stays on the CPU and says how to
// ask for the GPU. Prints the device line; returns where `what` runs (Device::Cpu in a build without CUDA).
Device resolve_experimental_device(const CommonOptions& opt, const std::string& what);

// Wall time of a generation, for the line `generate` prints to stderr at the end:
//   "12 prompt tokens, 128 new tokens in 1.93s (66.3 tok/s; first token after 0.41s, then 83.6 tok/s)"
// The overall rate includes the prompt's prefill; the rate after the first token is the decoding speed alone.
class GenerationTimer {
 public:
  GenerationTimer() : start_(std::chrono::steady_clock::now()) {}
  void on_token();  // call from the on_token callback
  void print(size_t prompt_tokens) const;

 private:
  std::chrono::steady_clock::time_point start_, first_;
  size_t tokens_ = 0;
};

}  // namespace qwenq::cli
