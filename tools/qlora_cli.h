// The qwen-qlora command line: each subcommand lives in its own tools/qlora_<name>.cpp and registers itself on
// the app with a register_<name>() function called from tools/qwen_qlora_main.cpp.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace qwenq::cli {

void register_qlora_train(CLI::App& app);
void register_qlora_merge(CLI::App& app);     // merge
void register_qlora_generate(CLI::App& app);  // generate, chat
void register_qlora_plan(CLI::App& app);
void register_qlora_data(CLI::App& app);
void register_qlora_eval(CLI::App& app);

// `train --config FILE.json`: the file's options inserted before the command line's (which then win).
std::vector<std::string> expand_train_config(const std::vector<std::string>& args);

}  // namespace qwenq::cli
