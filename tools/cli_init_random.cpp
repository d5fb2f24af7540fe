// qwen-quant init-random: a random-weight Qwen2 model in a real Qwen2.5 shape (or tiny), made offline.
#include <cstdio>

#include "tools/cli.h"
#include "tools/cli_common.h"
#include "trainer/random_model.h"

namespace qwenq::cli {

void register_init_random(CLI::App& app) {
  auto o = std::make_shared<RandomModelOptions>();
  auto dtype = std::make_shared<std::string>("bf16");
  CLI::App* cmd = app.add_subcommand("init-random", "Write a random-weight Qwen2 model (for benchmarks and first runs)");
  cmd->add_option("--preset", o->preset, "tiny, tiny-moe (qwen3_moe), tiny-moe-shared (qwen2_moe), qwen3-30b-a3b, qwen1.5-moe-a2.7b, tiny256, tiny896, qwen2.5-0.5b, -1.5b, -3b, -7b, -14b, -32b, -72b")->capture_default_str();
  cmd->add_option("--layers", o->layers, "override the number of decoder layers (0: the preset's)")
      ->check(at_least(0, "NONNEGATIVE"));
  cmd->add_option("--dtype", *dtype, "fp32, bf16 or fp16")->check(CLI::IsMember({"fp32", "bf16", "fp16"}))->capture_default_str();
  cmd->add_option("--seed", o->seed, "seed of the weights")->capture_default_str();
  cmd->add_option("--out,-o", o->out_dir, "output directory")->required();
  cmd->add_flag("--overwrite", o->overwrite, "replace an existing output directory");
  cmd->callback([o, dtype]() {
    o->dtype = *dtype == "fp32" ? DType::F32 : *dtype == "fp16" ? DType::F16 : DType::BF16;
    write_random_model(*o);
    std::printf("wrote %s (random %s weights, preset %s)\n", o->out_dir.c_str(), dtype->c_str(), o->preset.c_str());
  });
}

}  // namespace qwenq::cli
