// qwen-qlora merge: fold a LoRA adapter into its base model and write a dense Hugging Face directory, or with --gguf
// TYPE one GGUF file for llama.cpp (the dense model written next to it as "<out>.merged", exported, then removed).
#include <cstdio>
#include <memory>
#include <string>

#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "tools/cli_common.h"
#include "tools/qlora_cli.h"
#include "lora/lora_config.h"
#include "trainer/gguf_file_type.h"
#include "trainer/gguf_model.h"
#include "trainer/imatrix_model.h"
#include "trainer/lora_merge.h"
#include "trainer/model_dir.h"

namespace qwenq::cli {

namespace {

struct MergeArgs {
  MergeOptions opt;
  std::string model, dtype;  // dtype "": the base's (bf16 for a quantized base)
  std::string gguf;          // a GGUF file type: write --out as one GGUF file
  std::string imatrix;       // --gguf with an importance matrix file
  std::string imatrix_calib;  // --gguf with an importance matrix computed on the merged model over this text
  int64_t imatrix_ctx = 512, imatrix_chunks = 128;
  double max_shard_gb = 4.0;
  CommonOptions common;
};

const char* dtype_flag(DType t) { return t == DType::F32 ? "fp32" : t == DType::F16 ? "fp16" : "bf16"; }

void run_merge(MergeArgs& a) {
  apply_common_options(a.common);
  a.opt.model_dir = resolve_model_dir(a.model);
  a.opt.max_shard_bytes = static_cast<uint64_t>(a.max_shard_gb * 1e9);
  if (!a.dtype.empty()) {
    a.opt.dtype = a.dtype == "fp32" ? DType::F32 : a.dtype == "fp16" ? DType::F16 : DType::BF16;
  } else {
    a.opt.dtype = default_merge_dtype(a.opt.model_dir);
  }
  std::string gguf_out;
  QWENQ_CHECK(a.gguf.empty() ? a.imatrix.empty() && a.imatrix_calib.empty() : true,
              "--imatrix and --imatrix-calib quantize a GGUF file: give --gguf TYPE too");
  QWENQ_CHECK(a.imatrix.empty() || a.imatrix_calib.empty(), "give --imatrix FILE or --imatrix-calib TEXT, not both");
  if (!a.imatrix.empty()) read_imatrix(a.imatrix);  // a bad file is refused before the merge
  // A reward model's adapter (SEQ_CLS) merges into a sequence classifier, which a GGUF language model cannot hold.
  const bool reward_model = dir_exists(a.opt.adapter_dir) &&
                            file_exists(path_join(a.opt.adapter_dir, "adapter_config.json")) &&
                            load_lora_config(a.opt.adapter_dir).seq_cls();
  QWENQ_CHECK(!reward_model || a.gguf.empty(),
              "merge --gguf: " << a.opt.adapter_dir << " is a sequence classifier's adapter (task_type SEQ_CLS: a reward "
                               << "model's or a text classifier's): it merges into "
                               << "a sequence classifier directory, which llama.cpp's GGUF language models cannot hold; "
                                  "leave --gguf out");
  if (!a.gguf.empty()) {  // refused before the merge: the type, an existing file, a missing directory
    gguf_file_type(a.gguf);
    check_output_dir_exists("--out", a.opt.out_dir);
    QWENQ_CHECK(a.opt.overwrite || !file_exists(a.opt.out_dir),
                a.opt.out_dir << ": already exists (pass --overwrite to replace it)");
    gguf_out = a.opt.out_dir;
    a.opt.out_dir = gguf_out + ".merged";  // ours: a dead run's copy is replaced
    a.opt.overwrite = true;
  }
  QuantizeReport r = merge_adapter_to_dir(a.opt);
  if (!gguf_out.empty()) {
    struct RemoveDir {
      std::string path;
      ~RemoveDir() { remove_tree(path); }
    } merged{a.opt.out_dir};
    GgufExportOptions g;
    g.type = a.gguf;
    g.overwrite = true;  // checked above
    g.quiet = a.opt.quiet;
    g.imatrix_path = a.imatrix;
    double imatrix_seconds = 0;
    if (!a.imatrix_calib.empty()) {  // the merged model's own statistics, kept beside the GGUF file for reuse
      ImatrixOptions io;
      io.model = a.opt.out_dir;
      io.calib_path = a.imatrix_calib;
      io.ctx = a.imatrix_ctx;
      io.chunks = a.imatrix_chunks;
      io.quiet = a.opt.quiet;
      ImatrixReport ir;
      const Imatrix m = compute_imatrix(io, &ir);
      g.imatrix_path = gguf_path_prefix(gguf_out) + ".imatrix.gguf";
      write_imatrix_gguf(m, g.imatrix_path);
      imatrix_seconds = ir.seconds;
    }
    const GgufExportReport gr = export_gguf(a.opt.out_dir, gguf_out, g);
    const std::string with = g.imatrix_path.empty() ? "" : ", importance matrix " + g.imatrix_path;
    std::printf("wrote %s: %lld Linear layers (%.1fM weights) merged with %s, as GGUF %s (%s)%s, %s, %.1fs\n",
                gguf_out.c_str(), (long long)r.linears, r.params_quantized / 1e6, a.opt.adapter_dir.c_str(),
                a.gguf.c_str(), gr.arch.c_str(), with.c_str(), format_bytes(gr.bytes).c_str(),
                r.seconds + imatrix_seconds + gr.seconds);
    return;
  }
  std::printf("wrote %s: %lld Linear layers (%.1fM weights) merged with %s, weights in %s, %d shard(s), %s of "
              "tensors, %.1fs, peak RSS %s\n",
              a.opt.out_dir.c_str(), (long long)r.linears, r.params_quantized / 1e6, a.opt.adapter_dir.c_str(),
              dtype_flag(*a.opt.dtype), r.shards, format_bytes(r.bytes_written).c_str(), r.seconds,
              format_bytes(r.peak_rss).c_str());
  if (reward_model && file_exists(path_join(a.opt.adapter_dir, "labels.json"))) {  // train --objective classify's
    std::printf("a text classifier (Qwen2ForSequenceClassification, id2label from labels.json): `qwen-qlora eval "
                "--objective classify --model %s --data ...` checks it on labelled texts; transformers' "
                "AutoModelForSequenceClassification loads it\n", a.opt.out_dir.c_str());
    return;
  }
  if (reward_model) {
    std::printf("a reward model (Qwen2ForSequenceClassification): `qwen-qlora train --objective grpo --reward model=%s` "
                "scores with it, `qwen-qlora eval --objective reward --model %s` checks it on pairs, `qwen-quant nf4` "
                "quantizes it\n", a.opt.out_dir.c_str(), a.opt.out_dir.c_str());
    return;
  }
  std::printf("a dense model: quantize it again with `qwen-quant gptq|awq|nf4 --model %s --out ...`\n",
              a.opt.out_dir.c_str());
}

}  // namespace

void register_qlora_merge(CLI::App& app) {
  auto a = std::make_shared<MergeArgs>();
  CLI::App* cmd = app.add_subcommand("merge", "Fold a LoRA adapter into its base (dense, bf16 or 4-bit) and write a "
                                              "dense Hugging Face model");
  cmd->add_option("--model,-m", a->model, "base model directory or Hugging Face repo id (dense or GPTQ/AWQ/NF4); "
                                         "default: the base --adapter's adapter_config.json names");
  cmd->add_option("--adapter,-a", a->opt.adapter_dir, "LoRA adapter directory (PEFT layout)")->required();
  cmd->add_option("--out,-o", a->opt.out_dir, "output directory (written under a temporary name, renamed when complete)")
      ->required();
  cmd->add_option("--dtype", a->dtype, "bf16, fp16 or fp32 for the Linear weights (default: the base's; bf16 for a "
                                       "quantized base)")
      ->check(CLI::IsMember({"bf16", "fp16", "fp32"}));
  cmd->add_option("--gguf", a->gguf,
                  "write --out as one GGUF file of this type for llama.cpp (q4_k_m, q8_0, f16, ...: `qwen-quant gguf`'s "
                  "--type) instead of a directory")
      ->check(CLI::IsMember(gguf_file_type_list()));
  cmd->add_option("--imatrix", a->imatrix, "with --gguf: quantize with this importance matrix (qwen-quant imatrix's or "
                                           "llama-imatrix's)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--imatrix-calib", a->imatrix_calib,
                  "with --gguf: compute the merged model's importance matrix over this text or JSONL first (kept as "
                  "<out>.imatrix.gguf) and quantize with it")
      ->check(CLI::ExistingFile);
  cmd->add_option("--imatrix-ctx", a->imatrix_ctx, "tokens per chunk for --imatrix-calib")
      ->check(at_least(2, "INT>=2"))
      ->capture_default_str();
  cmd->add_option("--imatrix-chunks", a->imatrix_chunks, "at most this many chunks for --imatrix-calib")
      ->check(at_least(1, "POSITIVE"))
      ->capture_default_str();
  cmd->add_flag("--overwrite", a->opt.overwrite, "replace an existing output");
  cmd->add_option("--max-shard-size", a->max_shard_gb, "largest safetensors shard, in GB")
      ->check(greater_than(0, "POSITIVE"))
      ->capture_default_str();
  cmd->add_flag("--quiet,-q", a->opt.quiet, "no progress bar");
  add_common_options(cmd, &a->common);
  cmd->callback([a]() {
    a->model = model_or_adapter_base(a->model, a->opt.adapter_dir, a->opt.quiet);
    run_merge(*a);
  });
}

}  // namespace qwenq::cli
