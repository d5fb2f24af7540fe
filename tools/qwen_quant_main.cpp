// qwen-quant: quantize, evaluate and inspect Qwen checkpoints. Each subcommand lives in tools/cli_*.cpp.
#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"
#include "tools/cli.h"
#include "tools/cli_common.h"

int main(int argc, char** argv) {
  CLI::App app{"qwen-quant: quantize and evaluate Qwen checkpoints (C++/CUDA)", "qwen-quant"};
  app.require_subcommand(1);
  qwenq::cli::register_eval(app);
  qwenq::cli::register_generate(app);
  qwenq::cli::register_import_llama2c(app);
  qwenq::cli::register_init_random(app);
  qwenq::cli::register_tokenize(app);
  qwenq::cli::register_quantize(app);
  qwenq::cli::register_compare(app);
  qwenq::cli::register_gguf(app);
  qwenq::cli::register_imatrix(app);
  qwenq::cli::register_choices(app);
  qwenq::cli::register_gsm8k(app);
  try {
    qwenq::cli::check_subcommand_name(app, std::vector<std::string>(argv, argv + argc));
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const qwenq::Error& e) {
    std::fprintf(stderr, "qwen-quant: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qwen-quant: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
