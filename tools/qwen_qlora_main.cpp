// qwen-qlora: LoRA/QLoRA fine-tuning of Qwen models on a frozen bf16 or 4-bit base, PEFT-compatible adapters.
// Each subcommand lives in tools/qlora_*.cpp.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.h"
#include "tools/cli_common.h"
#include "tools/qlora_cli.h"

namespace {

// A process of a data-parallel run (train --nproc, started by rank 0: QWENQ_DP_RANK set) names its rank in its
// error, unless the message already does.
std::string rank_prefix(const std::string& what) {
  const char* rank = std::getenv("QWENQ_DP_RANK");
  if (rank == nullptr || what.rfind("data-parallel rank", 0) == 0) return "";
  return std::string("data-parallel rank ") + rank + ": ";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"qwen-qlora: LoRA/QLoRA training on a frozen bf16 or 4-bit Qwen base (C++/CUDA)", "qwen-qlora"};
  app.require_subcommand(1);
  qwenq::cli::register_qlora_train(app);
  qwenq::cli::register_qlora_merge(app);
  qwenq::cli::register_qlora_generate(app);
  qwenq::cli::register_qlora_plan(app);
  qwenq::cli::register_qlora_data(app);
  qwenq::cli::register_qlora_eval(app);
  qwenq::cli::register_qlora_pissa_to_lora(app);
  try {
    qwenq::cli::check_subcommand_name(app, std::vector<std::string>(argv, argv + argc));
    std::vector<std::string> args = qwenq::cli::expand_train_config(std::vector<std::string>(argv, argv + argc));
    std::vector<char*> ptrs;
    for (auto& a : args) ptrs.push_back(a.data());
    app.parse(static_cast<int>(ptrs.size()), ptrs.data());
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {  // qwenq::Error included
    std::fprintf(stderr, "qwen-qlora: error: %s%s\n", rank_prefix(e.what()).c_str(), e.what());
    return 1;
  }
  return 0;
}
