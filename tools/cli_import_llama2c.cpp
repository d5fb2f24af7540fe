// qwen-quant import-llama2c: llama2.c checkpoint -> Hugging Face Qwen2 directory.
#include <cstdio>

#include "core/dtype.h"
#include "tools/cli.h"
#include "trainer/llama2c_import.h"

namespace qwenq::cli {

void register_import_llama2c(CLI::App& app) {
  auto o = std::make_shared<Llama2cImportOptions>();
  auto dtype = std::make_shared<std::string>("fp32");
  CLI::App* cmd = app.add_subcommand("import-llama2c", "Convert a llama2.c model (e.g. stories260K) to a HF Qwen2 directory");
  cmd->add_option("--checkpoint", o->checkpoint, "llama2.c .bin model file")->required()->check(CLI::ExistingFile);
  cmd->add_option("--tokenizer", o->tokenizer, "llama2.c tokenizer .bin (tok512.bin)")->required()->check(CLI::ExistingFile);
  cmd->add_option("--out,-o", o->out_dir, "output directory")->required();
  cmd->add_option("--dtype", *dtype, "stored dtype: fp32 or bf16")->check(CLI::IsMember({"fp32", "bf16"}))->capture_default_str();
  cmd->add_flag("--overwrite", o->overwrite, "replace an existing output directory");
  cmd->callback([o, dtype]() {
    o->dtype = *dtype == "bf16" ? DType::BF16 : DType::F32;
    import_llama2c(*o);
    std::printf("wrote %s (Qwen2 architecture, %s)\n", o->out_dir.c_str(), dtype->c_str());
  });
}

}  // namespace qwenq::cli
