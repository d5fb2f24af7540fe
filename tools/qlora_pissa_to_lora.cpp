// qwen-qlora pissa-to-lora: a PiSSA adapter trained on its residual base (`qwen-quant nf4 --pissa-rank`, then `train
// --init-adapter <base>/pissa_init`) rewritten as a plain LoRA adapter of rank 2r for the original model
// (lora/pissa_convert.h), what PEFT's save_pretrained(path_initial_model_for_weight_conversion=...) writes.
#include <cstdio>
#include <memory>
#include <string>

#include "lora/pissa_convert.h"
#include "tools/qlora_cli.h"

namespace qwenq::cli {

namespace {

struct PissaToLoraArgs {
  std::string init, adapter, out;
  bool overwrite = false;
};

}  // namespace

void register_qlora_pissa_to_lora(CLI::App& app) {
  auto a = std::make_shared<PissaToLoraArgs>();
  CLI::App* cmd = app.add_subcommand("pissa-to-lora", "Rewrite a trained PiSSA adapter as a LoRA adapter (rank 2r) of "
                                                      "the original model the PiSSA base was made from");
  cmd->add_option("--init", a->init, "the initial adapter qwen-quant wrote: <base>/pissa_init")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--adapter,-a", a->adapter, "the trained adapter (a qwen-qlora train run directory)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--out,-o", a->out, "output adapter directory (written under a temporary name, renamed when complete)")
      ->required();
  cmd->add_flag("--overwrite", a->overwrite, "replace an existing output");
  cmd->callback([a]() {
    const PissaConvertReport r = convert_pissa_to_lora(a->init, a->adapter, a->out, a->overwrite);
    std::printf("wrote %s: a LoRA adapter of rank %lld, lora_alpha %g, on %lld Linears, for the original model "
                "(e.g. qwen-qlora merge --model ORIGINAL --adapter %s)\n",
                a->out.c_str(), (long long)r.config.r, r.config.alpha, (long long)r.linears, a->out.c_str());
  });
}

}  // namespace qwenq::cli
