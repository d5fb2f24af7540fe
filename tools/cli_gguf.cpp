// qwen-quant gguf: a Hugging Face model directory (dense, GPTQ, AWQ or bitsandbytes 4-bit; e.g. the output of
// `qwen-qlora merge`) as one GGUF file for llama.cpp, in F32/F16/BF16/Q8_0/Q4_0/Q4_1 (trainer/gguf_model.h).
#include <cstdio>
#include <memory>
#include <string>

#include "core/gguf.h"
#include "core/progress.h"
#include "tools/cli.h"
#include "tools/cli_common.h"
#include "trainer/gguf_model.h"
#include "trainer/model_dir.h"

namespace qwenq::cli {

namespace {

struct GgufArgs {
  std::string model, out, type = "q8_0", name;
  bool overwrite = false, quiet = false, pad_intermediate = false;
  CommonOptions common;
};

}  // namespace

void register_gguf(CLI::App& app) {
  auto a = std::make_shared<GgufArgs>();
  CLI::App* c = app.add_subcommand("gguf", "Write a model as one GGUF file for llama.cpp (f32, f16, bf16, q8_0, q4_0, q4_1)");
  c->add_option("--model,-m", a->model, "model directory or repo id (dense, GPTQ, AWQ or bitsandbytes 4-bit)")->required();
  c->add_option("--out,-o", a->out, "output .gguf file")->required();
  c->add_option("--type,-t", a->type,
                "weight type: f32, f16, bf16, q8_0 (as convert_hf_to_gguf.py --outtype), q4_0 or q4_1 (as "
                "llama-quantize without an importance matrix; embedding and output in q8_0)")
      ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"}))
      ->capture_default_str();
  c->add_option("--name", a->name, "general.name (default: the model directory's name)");
  c->add_flag("--overwrite", a->overwrite, "replace an existing output file");
  c->add_flag("--quiet,-q", a->quiet, "no progress bar");
  c->add_flag("--pad-intermediate", a->pad_intermediate,
              "zero-pad the MLP width to a multiple of 32 (exact), so ffn_down is quantized instead of kept in f16");
  add_common_options(c, &a->common);
  c->callback([a]() {
    apply_common_options(a->common);
    check_output_dir_exists("--out", a->out);
    GgufExportOptions o;
    o.type = parse_ggml_type(a->type);
    o.name = a->name;
    o.overwrite = a->overwrite;
    o.quiet = a->quiet;
    o.pad_intermediate = a->pad_intermediate;
    const GgufExportReport r = export_gguf(resolve_model_dir(a->model), a->out, o);
    std::printf("wrote %s: %s, %lld tensors in %s%s, %s, %.1fs\n", a->out.c_str(), r.arch.c_str(),
                (long long)r.tensors, a->type.c_str(),
                r.f16_fallbacks ? (" (" + std::to_string(r.f16_fallbacks) +
                                   " with rows not a multiple of 32 in f16, as convert_hf_to_gguf does)").c_str()
                                : "",
                format_bytes(r.bytes).c_str(), r.seconds);
  });
}

}  // namespace qwenq::cli
