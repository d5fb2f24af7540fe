// qwen-quant gguf: a Hugging Face model directory (dense, GPTQ, AWQ or bitsandbytes 4-bit; e.g. the output of
// `qwen-qlora merge`) as one GGUF file for llama.cpp, in convert_hf_to_gguf's or llama-quantize's file types
// (trainer/gguf_model.h, trainer/gguf_file_type.h).
#include <cstdio>
#include <memory>
#include <string>

#include "core/gguf.h"
#include "core/progress.h"
#include "tools/cli.h"
#include "tools/cli_common.h"
#include "trainer/gguf_file_type.h"
#include "trainer/gguf_model.h"
#include "trainer/model_dir.h"

namespace qwenq::cli {

namespace {

struct GgufArgs {
  std::string model, out, type = "q8_0", name, imatrix;
  bool overwrite = false, quiet = false, pad_intermediate = false;
  double split_gb = 0;
  CommonOptions common;
};

}  // namespace

void register_gguf(CLI::App& app) {
  auto a = std::make_shared<GgufArgs>();
  CLI::App* c = app.add_subcommand("gguf", "Write a model as one GGUF file for llama.cpp (f16, q8_0, q4_k_m, iq4_xs, ...)");
  c->add_option("--model,-m", a->model, "model directory or repo id (dense, GPTQ, AWQ or bitsandbytes 4-bit), or a GGUF file to "
                "re-quantize")->required();
  c->add_option("--out,-o", a->out, "output .gguf file")->required();
  c->add_option("--type,-t", a->type,
                "file type: f32, f16, bf16, q8_0 (as convert_hf_to_gguf.py --outtype), q4_0, q4_1, q5_0, q5_1, q2_k, "
                "q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k, iq4_nl, iq4_xs (as llama-quantize, with "
                "--imatrix as llama-quantize --imatrix)")
      ->check(CLI::IsMember(gguf_file_type_list()))
      ->capture_default_str();
  c->add_option("--split-max-size", a->split_gb,
                "split into files of at most this many GB of tensors (model-00001-of-0000N.gguf ..., as gguf-split; "
                "llama.cpp loads the first); 0: one file")
      ->check(at_least(0, "NONNEGATIVE"));
  c->add_option("--imatrix", a->imatrix,
                "importance matrix (qwen-quant imatrix's or llama-imatrix's .gguf/.dat): quantize each tensor it covers "
                "as llama-quantize --imatrix does")
      ->check(CLI::ExistingFile);
  c->add_option("--name", a->name, "general.name (default: the model directory's name)");
  c->add_flag("--overwrite", a->overwrite, "replace an existing output file");
  c->add_flag("--quiet,-q", a->quiet, "no progress bar");
  c->add_flag("--pad-intermediate", a->pad_intermediate,
              "zero-pad the MLP width to a multiple of the type's block (32, or 256 for k-quants; exact), so "
              "ffn_down's rows split into blocks");
  add_common_options(c, &a->common);
  c->callback([a]() {
    apply_common_options(a->common);
    check_output_dir_exists("--out", a->out);
    GgufExportOptions o;
    o.type = a->type;
    o.name = a->name;
    o.overwrite = a->overwrite;
    o.quiet = a->quiet;
    o.pad_intermediate = a->pad_intermediate;
    o.split_max_bytes = static_cast<uint64_t>(a->split_gb * 1e9);
    o.imatrix_path = a->imatrix;
    const std::string dir = resolve_model_dir(a->model, "main", /*allow_gguf=*/true);
    warn_if_pissa_residual(dir, "qwen-qlora merge --adapter");  // gguf exports the base alone
    const GgufExportReport r = export_gguf(dir, a->out, o);
    std::string types;
    for (const auto& kv : r.types) types += (types.empty() ? "" : ", ") + std::to_string(kv.second) + " " + kv.first;
    const std::string where = r.files.size() == 1 ? r.files[0]
                                                  : r.files[0] + " .. " + r.files.back() + " (" +
                                                        std::to_string(r.files.size()) + " files)";
    const std::string imatrix =
        a->imatrix.empty() ? "" : ", importance matrix for " + std::to_string(r.imatrix_tensors) + " of them";
    std::printf("wrote %s: %s %s, %lld tensors (2-D: %s%s%s), %s, %.1fs\n", where.c_str(), r.arch.c_str(),
                a->type.c_str(), (long long)r.tensors, types.c_str(),
                r.fallbacks ? ("; " + std::to_string(r.fallbacks) + " by row length").c_str() : "", imatrix.c_str(),
                format_bytes(r.bytes).c_str(), r.seconds);
  });
}

}  // namespace qwenq::cli
