// qwen-quant rtn | nf4 | fp4: calibration-free quantization of a whole model directory.
#include <cstdio>
#include <string>

#include "core/gguf.h"
#include "core/progress.h"
#include "tools/cli.h"
#include "tools/cli_common.h"
#include "trainer/gguf_model.h"
#include "trainer/model_dir.h"
#include "trainer/quantize_model.h"

namespace qwenq::cli {

namespace {

struct QuantizeArgs {
  QuantizeOptions opt;
  std::string model, format = "gptq";
  bool asym = false, no_double_quant = false;
  double max_shard_gb = 4.0;
  int64_t loftq_rank = 0;
  double loftq_alpha = 0;  // 0: the rank (s = 1, as PEFT's LoftQ assumes)
  std::string loftq_target = "all-linear";
  int64_t pissa_rank = 0;
  double pissa_alpha = 0;  // 0: the rank (s = 1)
  std::string pissa_target = "all-linear";
  CommonOptions common;
};

// LoftQ's iterative form (rtn, nf4, fp4): the base and an adapter that starts where the base falls short.
void add_loftq_options(CLI::App* cmd, QuantizeArgs* a, bool iterative = true) {
  cmd->add_option("--loftq-rank", a->loftq_rank,
                  "LoftQ: also write <out>/loftq_init, a rank-R adapter that starts at the rank-R part of W - Q "
                  "(PEFT's init_lora_weights=\"loftq\"; for qwen-qlora train --init-adapter)")
      ->check(at_least(1, "POSITIVE"));
  if (iterative) {  // GPTQ's LoftQ is one-shot
    cmd->add_option("--loftq-iter", a->opt.loftq_iters, "LoftQ alternations of quantization and SVD (the paper uses 5)")
        ->check(at_least(1, "POSITIVE"))
        ->capture_default_str();
  }
  cmd->add_option("--loftq-alpha", a->loftq_alpha, "the adapter's lora_alpha (default: the rank, i.e. scaling 1)")
      ->check(greater_than(0, "POSITIVE"));
  cmd->add_option("--loftq-target", a->loftq_target, "the Linears LoftQ adapts: names as --target, or all-linear")
      ->capture_default_str();
}

// PiSSA (rtn, nf4, fp4, gptq): the adapter takes each Linear's principal part, the base stores the quantized residual.
void add_pissa_options(CLI::App* cmd, QuantizeArgs* a) {
  cmd->add_option("--pissa-rank", a->pissa_rank,
                  "PiSSA: store the quantized residual W - s*B*A and write <out>/pissa_init, a rank-R adapter holding "
                  "W's R principal singular directions (PEFT's init_lora_weights=\"pissa\" on the original model, then "
                  "its residual quantized; for qwen-qlora train --init-adapter)")
      ->check(at_least(1, "POSITIVE"));
  cmd->add_option("--pissa-alpha", a->pissa_alpha, "the adapter's lora_alpha (default: the rank, i.e. scaling 1)")
      ->check(greater_than(0, "POSITIVE"));
  cmd->add_option("--pissa-target", a->pissa_target, "the Linears PiSSA adapts: names as --target, or all-linear")
      ->capture_default_str();
}

void add_io_options(CLI::App* cmd, QuantizeArgs* a) {
  cmd->add_option("--model,-m", a->model,
                  "model directory or Hugging Face repo id (bf16/fp16/fp32, or FP8: read as its dequantized weights)")
      ->required();
  cmd->add_option("--out,-o", a->opt.out_dir, "output directory (written under a temporary name, renamed when complete)")
      ->required();
  cmd->add_flag("--overwrite", a->opt.overwrite, "replace an existing output directory");
  cmd->add_option("--max-shard-size", a->max_shard_gb, "largest safetensors shard, in GB")
      ->check(greater_than(0, "POSITIVE"))
      ->capture_default_str();
  cmd->add_flag("--quiet,-q", a->opt.quiet, "no progress bar");
  add_common_options(cmd, &a->common);
}

// --format: the layout the codes are made in, and whether they are written as compressed-tensors (from GPTQ v2 codes).
void apply_format(const std::string& format, QuantizeOptions* o) {
  o->compressed_tensors = format == "compressed-tensors";
  o->layout = format == "awq" ? IntLayout::AwqGemm : format == "gptq" ? IntLayout::GptqV1 : IntLayout::GptqV2;
}

// The LoftQ flags into the options, and the summary line after the work.
void apply_loftq_args(QuantizeArgs& a, QuantizeOptions* opt) {
  if (a.loftq_rank <= 0) return;
  opt->loftq.r = a.loftq_rank;
  opt->loftq.alpha = a.loftq_alpha > 0 ? a.loftq_alpha : static_cast<double>(a.loftq_rank);
  opt->loftq.target_modules = parse_lora_targets(a.loftq_target);
}
void apply_pissa_args(QuantizeArgs& a, QuantizeOptions* opt) {
  if (a.pissa_rank <= 0) return;
  opt->pissa.r = a.pissa_rank;
  opt->pissa.alpha = a.pissa_alpha > 0 ? a.pissa_alpha : static_cast<double>(a.pissa_rank);
  opt->pissa.target_modules = parse_lora_targets(a.pissa_target);
}
// GPTQ reports no quantization errors (its quantizer is the Linear's Hessian's): the share alone.
void print_pissa_summary(const QuantizeArgs& a, const QuantizeOptions& opt, const QuantizeReport& r) {
  if (a.pissa_rank <= 0) return;
  std::printf("pissa: %s/pissa_init (rank %lld, %.1f%% of the adapted weights' squared norm)", opt.out_dir.c_str(),
              (long long)a.pissa_rank, 100.0 * r.pissa_share);
  if (r.pissa_plain_error > 0) {
    std::printf(": ||W - q(W)|| %.6g -> ||W - q(W_res) - s*B*A|| %.6g over the adapted Linears (-%.1f%%)",
                r.pissa_plain_error, r.pissa_error, 100.0 * (1.0 - r.pissa_error / r.pissa_plain_error));
  }
  std::printf("\n");
}
void print_loftq_summary(const QuantizeArgs& a, const QuantizeOptions& opt, const QuantizeReport& r) {
  if (a.loftq_rank <= 0) return;
  std::printf("loftq: %s/loftq_init (rank %lld, %d iteration(s)): ||W - Q|| %.6g -> ||W - Q - s*B*A|| %.6g over the "
              "adapted Linears (-%.1f%%)\n",
              opt.out_dir.c_str(), (long long)a.loftq_rank, opt.loftq_iters, r.loftq_plain_error, r.loftq_error,
              100.0 * (1.0 - r.loftq_error / r.loftq_plain_error));
}

void run(QuantizeArgs& a, QuantizeOptions::Method method) {
  DevicePick pick(a.common, method == QuantizeOptions::Method::Rtn   ? "RTN"
                            : method == QuantizeOptions::Method::Nf4 ? "NF4"
                            : method == QuantizeOptions::Method::Fp8 ? "FP8"
                                                                     : "FP4");
  a.opt.method = method;
  a.opt.model_dir = resolve_model_dir(a.model);
  a.opt.sym = !a.asym;
  a.opt.double_quant = !a.no_double_quant;
  a.opt.max_shard_bytes = static_cast<uint64_t>(a.max_shard_gb * 1e9);
  apply_format(a.format, &a.opt);
  apply_loftq_args(a, &a.opt);
  apply_pissa_args(a, &a.opt);
  a.opt.device = pick.settle(pick.gpu_possible() ? quantize_gpu_refusal(a.opt) : "");
  QuantizeReport r = quantize_model(a.opt);
  std::printf("wrote %s: %lld Linear layers (%.1fM weights) quantized, %d shard(s), %s of tensors, %.1fs, peak RSS %s\n",
              a.opt.out_dir.c_str(), (long long)r.linears, r.params_quantized / 1e6, r.shards,
              format_bytes(r.bytes_written).c_str(), r.seconds, format_bytes(r.peak_rss).c_str());
  print_loftq_summary(a, a.opt, r);
  print_pissa_summary(a, a.opt, r);
}

}  // namespace

void register_quantize(CLI::App& app) {
  auto rtn = std::make_shared<QuantizeArgs>();
  CLI::App* cmd = app.add_subcommand("rtn", "Round-to-nearest per group, written as GPTQ (v1/v2) or AWQ GEMM tensors");
  add_io_options(cmd, rtn.get());
  add_loftq_options(cmd, rtn.get());
  add_pissa_options(cmd, rtn.get());
  cmd->add_option("--bits", rtn->opt.bits, "2, 3, 4 or 8 (AWQ: 4)")->capture_default_str();
  cmd->add_option("--group-size", rtn->opt.group_size, "input rows per scale; -1 = one group per output channel")
      ->capture_default_str();
  cmd->add_flag("--asym", rtn->asym, "asymmetric grid with a zero point (default: symmetric, as Qwen's GPTQ releases)");
  cmd->add_option("--format", rtn->format,
                  "gptq (v1, what transformers/vLLM/ExLlamaV2 read), gptq_v2, awq or compressed-tensors (llm-compressor's "
                  "pack-quantized, what vLLM reads natively)")
      ->check(CLI::IsMember({"gptq", "gptq_v2", "awq", "compressed-tensors"}))
      ->capture_default_str();
  cmd->add_flag("--pad-intermediate", rtn->opt.pad_intermediate,
                "zero-pad the MLP intermediate size when the layout cannot hold it (exact: same outputs)");
  cmd->callback([rtn]() { run(*rtn, QuantizeOptions::Method::Rtn); });

  auto g = std::make_shared<QuantizeArgs>();
  auto gopt = std::make_shared<GptqModelOptions>();
  CLI::App* gc = app.add_subcommand("gptq", "GPTQ with calibration data, layer by layer, written as GPTQ (v1/v2) tensors");
  add_io_options(gc, g.get());
  add_loftq_options(gc, g.get(), false);
  add_pissa_options(gc, g.get());
  gc->add_option("--calib", gopt->calib_path, "calibration text or JSONL (e.g. C4 documents)")->required()->check(CLI::ExistingFile);
  gc->add_option("--calib-samples", gopt->calib_samples, "calibration windows")->capture_default_str();
  CLI::Option* g_seq_len =
      gc->add_option("--calib-seq-len", gopt->calib_seq_len, "tokens per window (at most the model's context)")
          ->capture_default_str();
  gc->add_option("--text-field", gopt->text_field, "JSONL field holding the text")->capture_default_str();
  gc->add_option("--seed", gopt->seed, "seed of the window sampling")->capture_default_str();
  gc->add_option("--bits", g->opt.bits, "2, 3, 4 or 8")->capture_default_str();
  gc->add_option("--group-size", g->opt.group_size, "-1 = one group per output channel")->capture_default_str();
  gc->add_flag("--asym", g->asym, "asymmetric grid (written as gptq_v2 unless --format says otherwise)");
  gc->add_option("--format", g->format, "gptq (v1), gptq_v2 or compressed-tensors (llm-compressor's pack-quantized)")
      ->check(CLI::IsMember({"gptq", "gptq_v2", "compressed-tensors"}))
      ->capture_default_str();
  gc->add_option("--damp", gopt->damp, "dampening: fraction of mean(diag H) (raised automatically if Cholesky fails)")
      ->capture_default_str();
  gc->add_flag("--desc-act", gopt->desc_act, "act-order: quantize columns by decreasing Hessian diagonal");
  gc->add_flag("--static-groups", gopt->static_groups, "compute group grids up front (with --desc-act: monotone g_idx)");
  gc->add_option("--block-size", gopt->block_size, "lazy-update block (speed only)")->capture_default_str();
  gc->add_flag("--pad-intermediate", g->opt.pad_intermediate, "zero-pad the MLP width when the layout cannot hold it");
  gc->add_option("--chunk-tokens", gopt->chunk_tokens,
                 "tokens forwarded through a block at a time (whole windows; activation memory)")->capture_default_str();
  auto calib_dtype = std::make_shared<std::string>("fp32");
  gc->add_option("--calib-dtype", *calib_dtype,
                 "what the calibration computes with: fp32, or bf16 as a bf16 model under AutoGPTQ/GPTQModel (each "
                 "quantized weight and each Hessian's inputs rounded to bf16; with --device cuda the later GEMMs and "
                 "the Hessians then run on bf16 tensor cores, several times faster)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  gc->callback([g, gopt, g_seq_len, calib_dtype]() {
    gopt->calib_dtype = *calib_dtype == "bf16" ? DType::BF16 : DType::F32;
    DevicePick pick(g->common, "GPTQ");
    if (g->asym && g->format == "gptq") g->format = "gptq_v2";
    gopt->out = g->opt;
    gopt->out.model_dir = resolve_model_dir(g->model);
    gopt->calib_seq_len =
        window_len_for_model(gopt->out.model_dir, gopt->calib_seq_len, g_seq_len->count() > 0, "--calib-seq-len");
    gopt->out.sym = !g->asym;
    gopt->out.max_shard_bytes = static_cast<uint64_t>(g->max_shard_gb * 1e9);
    apply_format(g->format, &gopt->out);
    apply_loftq_args(*g, &gopt->out);
    apply_pissa_args(*g, &gopt->out);
    gopt->device = pick.settle_for_source(gopt->out.model_dir);
    QuantizeReport r = gptq_quantize_model(*gopt);
    std::printf("wrote %s: %lld Linear layers (%.1fM weights) quantized with GPTQ, %d shard(s), %.1fs, peak RSS %s\n",
                gopt->out.out_dir.c_str(), (long long)r.linears, r.params_quantized / 1e6, r.shards, r.seconds,
                format_bytes(r.peak_rss).c_str());
    print_loftq_summary(*g, gopt->out, r);
    print_pissa_summary(*g, gopt->out, r);
  });

  auto w = std::make_shared<QuantizeArgs>();
  w->format = "awq";
  w->opt.group_size = 128;
  auto wopt = std::make_shared<AwqModelOptions>();
  auto no_clip = std::make_shared<bool>(false), no_duo = std::make_shared<bool>(false);
  CLI::App* wc = app.add_subcommand("awq", "AWQ: activation-aware scale and clip search, written as AutoAWQ GEMM tensors");
  add_io_options(wc, w.get());
  wc->add_option("--calib", wopt->calib_path, "calibration text or JSONL (AutoAWQ uses a Pile sample)")->check(CLI::ExistingFile);
  wc->add_option("--calib-samples", wopt->calib_samples, "calibration windows")->capture_default_str();
  CLI::Option* w_seq_len =
      wc->add_option("--calib-seq-len", wopt->calib_seq_len, "tokens per window (at most the model's context)")
          ->capture_default_str();
  wc->add_option("--text-field", wopt->text_field, "JSONL field holding the text")->capture_default_str();
  wc->add_option("--seed", wopt->seed, "seed of the window sampling")->capture_default_str();
  wc->add_flag("--calib-concat", wopt->calib_concat,
               "AutoAWQ's calibration: the first --calib-samples documents of at most --calib-seq-len tokens, "
               "concatenated and cut into blocks (default: random windows)");
  wc->add_option("--group-size", w->opt.group_size, "input rows per scale (w_bit is 4)")->capture_default_str();
  wc->add_option("--format", w->format,
                 "awq (AutoAWQ GEMM, what transformers/vLLM read), gptq_v2 or compressed-tensors (llm-compressor's "
                 "pack-quantized with zero points)")
      ->check(CLI::IsMember({"awq", "gptq_v2", "compressed-tensors"}))
      ->capture_default_str();
  wc->add_option("--n-grid", wopt->search.n_grid, "scale exponents tried per group (alpha = i/n, i < n)")->capture_default_str();
  wc->add_flag("--no-duo-scaling", *no_duo, "scales from activations only (s = x^alpha), not x^alpha / w^(1-alpha)");
  wc->add_flag("--no-clip", *no_clip, "skip the clip search");
  wc->add_option("--save-search", wopt->save_search, "write the scales and clip bounds found (safetensors) to this file");
  wc->add_option("--load-search", wopt->load_search, "apply a saved search instead of searching (no calibration needed)")
      ->check(CLI::ExistingFile);
  wc->add_flag("--pad-intermediate", w->opt.pad_intermediate, "zero-pad the MLP width when the layout cannot hold it");
  wc->add_option("--chunk-tokens", wopt->chunk_tokens,
                 "tokens a module evaluation runs at a time (whole windows; activation memory)")->capture_default_str();
  auto w_calib_dtype = std::make_shared<std::string>("fp32");
  wc->add_option("--calib-dtype", *w_calib_dtype,
                 "what the scale search's module evaluations compute with: fp32, or bf16 (the searched Linears rounded "
                 "to bf16, as AutoAWQ evaluates in fp16; with --device cuda its GEMMs then run on bf16 tensor cores)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  wc->callback([w, wopt, no_clip, no_duo, w_seq_len, w_calib_dtype]() {
    wopt->calib_dtype = *w_calib_dtype == "bf16" ? DType::BF16 : DType::F32;
    DevicePick pick(w->common, "AWQ");
    wopt->out = w->opt;
    wopt->out.model_dir = resolve_model_dir(w->model);
    if (!wopt->save_search.empty()) check_output_dir_exists("--save-search", wopt->save_search);
    if (wopt->load_search.empty()) {  // a saved search needs no calibration windows
      wopt->calib_seq_len =
          window_len_for_model(wopt->out.model_dir, wopt->calib_seq_len, w_seq_len->count() > 0, "--calib-seq-len");
    }
    wopt->out.max_shard_bytes = static_cast<uint64_t>(w->max_shard_gb * 1e9);
    apply_format(w->format, &wopt->out);
    wopt->clip = !*no_clip;
    wopt->search.duo_scaling = !*no_duo;
    wopt->device = pick.settle_for_source(wopt->out.model_dir);
    QuantizeReport r = awq_quantize_model(*wopt);
    std::printf("wrote %s: %lld Linear layers (%.1fM weights) quantized with AWQ, %d shard(s), %.1fs, peak RSS %s\n",
                wopt->out.out_dir.c_str(), (long long)r.linears, r.params_quantized / 1e6, r.shards, r.seconds,
                format_bytes(r.peak_rss).c_str());
  });

  auto dq = std::make_shared<DequantizeOptions>();
  auto dq_model = std::make_shared<std::string>();
  auto dq_dtype = std::make_shared<std::string>("bf16");
  auto dq_common = std::make_shared<CommonOptions>();
  CLI::App* d = app.add_subcommand("dequantize", "Write a dense model from a GPTQ/AWQ/bitsandbytes-4bit directory or a GGUF file");
  d->add_option("--model,-m", *dq_model, "quantized model directory, repo id or GGUF file")->required();
  d->add_option("--out,-o", dq->out_dir, "output directory")->required();
  d->add_option("--dtype", *dq_dtype, "bf16, fp16 or fp32")->check(CLI::IsMember({"bf16", "fp16", "fp32"}))->capture_default_str();
  d->add_flag("--overwrite", dq->overwrite, "replace an existing output directory");
  d->add_flag("--quiet,-q", dq->quiet, "no progress bar");
  add_common_options(d, dq_common.get());
  d->callback([dq, dq_model, dq_dtype, dq_common]() {
    apply_common_options(*dq_common);
    dq->model_dir = resolve_model_dir(*dq_model, "main", /*allow_gguf=*/true);
    dq->dtype = *dq_dtype == "fp32" ? DType::F32 : *dq_dtype == "fp16" ? DType::F16 : DType::BF16;
    QuantizeReport r = is_gguf_file(dq->model_dir) ? gguf_to_hf(*dq) : dequantize_model(*dq);
    std::printf("wrote %s: %lld Linear layers dequantized to %s, %d shard(s), %.1fs\n", dq->out_dir.c_str(),
                (long long)r.linears, dq_dtype->c_str(), r.shards, r.seconds);
  });

  for (const char* name : {"nf4", "fp4"}) {
    auto a = std::make_shared<QuantizeArgs>();
    const bool fp4 = std::string(name) == "fp4";
    CLI::App* c = app.add_subcommand(name, fp4 ? "bitsandbytes FP4, blockwise absmax (the QLoRA comparison baseline)"
                                               : "bitsandbytes NF4, blockwise absmax (the QLoRA baseline)");
    add_io_options(c, a.get());
    add_loftq_options(c, a.get());
    add_pissa_options(c, a.get());
    c->add_option("--blocksize", a->opt.blocksize, "weights per absmax block")->capture_default_str();
    c->add_flag("--no-double-quant", a->no_double_quant, "keep the absmax scales in fp32 (default: 8-bit, block 256)");
    c->callback([a, fp4]() { run(*a, fp4 ? QuantizeOptions::Method::Fp4 : QuantizeOptions::Method::Nf4); });
  }

  auto f8 = std::make_shared<QuantizeArgs>();
  f8->format = "compressed-tensors";
  auto f8_block = std::make_shared<int64_t>(128);
  CLI::App* fc = app.add_subcommand("fp8", "float8 e4m3 weights with fp32 scales (CPU): compressed-tensors FP8_DYNAMIC "
                                           "per channel (vLLM's W8A8 FP8) or Qwen's block-wise fp8");
  add_io_options(fc, f8.get());
  fc->add_option("--format", f8->format,
                 "compressed-tensors (a scale per output channel, dynamic per-token float8 activations: llm-compressor's "
                 "FP8_DYNAMIC) or fp8 (a scale per --block x --block weights, as Qwen's FP8 releases)")
      ->check(CLI::IsMember({"compressed-tensors", "fp8"}))
      ->capture_default_str();
  fc->add_option("--block", *f8_block, "block side of --format fp8")->check(at_least(1, "POSITIVE"))->capture_default_str();
  fc->callback([f8, f8_block]() {
    f8->opt.fp8_block = f8->format == "fp8" ? *f8_block : 0;
    run(*f8, QuantizeOptions::Method::Fp8);
  });
}

}  // namespace qwenq::cli
