// The qwen-quant command line: each subcommand lives in its own tools/cli_<name>.cpp and registers itself
// on the app with a register_<name>() function called from tools/qwen_quant_main.cpp.
#pragma once

#include <CLI/CLI.hpp>

namespace qwenq::cli {

void register_eval(CLI::App& app);
void register_generate(CLI::App& app);
void register_import_llama2c(CLI::App& app);
void register_init_random(CLI::App& app);
void register_tokenize(CLI::App& app);
void register_quantize(CLI::App& app);  // rtn, nf4, fp4, dequantize
void register_compare(CLI::App& app);
void register_gguf(CLI::App& app);
void register_imatrix(CLI::App& app);
void register_choices(CLI::App& app);  // multiple-choice
void register_gsm8k(CLI::App& app);

}  // namespace qwenq::cli
