// qwen-qlora: LoRA/QLoRA fine-tuning of Qwen models on a frozen bf16 or 4-bit base, PEFT-compatible adapters.
// Each subcommand lives in tools/qlora_*.cpp.
#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"
#include "tools/cli_common.h"
#include "tools/qlora_cli.h"

int main(int argc, char** argv) {
  CLI::App app{"qwen-qlora: LoRA/QLoRA training on a frozen bf16 or 4-bit Qwen base (C++/CUDA)", "qwen-qlora"};
  app.require_subcommand(1);
  qwenq::cli::register_qlora_train(app);
  qwenq::cli::register_qlora_merge(app);
  qwenq::cli::register_qlora_generate(app);
  qwenq::cli::register_qlora_plan(app);
  qwenq::cli::register_qlora_data(app);
  qwenq::cli::register_qlora_eval(app);
  try {
    qwenq::cli::check_subcommand_name(app, std::vector<std::string>(argv, argv + argc));
    std::vector<std::string> args = qwenq::cli::expand_train_config(std::vector<std::string>(argv, argv + argc));
    std::vector<char*> ptrs;
    for (auto& a : args) ptrs.push_back(a.data());
    app.parse(static_cast<int>(ptrs.size()), ptrs.data());
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const qwenq::Error& e) {
    std::fprintf(stderr, "qwen-qlora: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qwen-qlora: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
