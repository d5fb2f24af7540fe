// qwen-quant imatrix: an importance matrix of a model over calibration text, as llama-imatrix computes it
// (trainer/imatrix_model.h), for `qwen-quant gguf --imatrix` and llama-quantize --imatrix.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/files.h"
#include "tools/cli.h"
#include "tools/cli_common.h"
#include "trainer/imatrix_model.h"
#include "trainer/model_dir.h"

namespace qwenq::cli {

namespace {

struct ImatrixArgs {
  ImatrixOptions o;
  std::string model, out, format = "gguf";
  std::vector<std::string> in_files;
  bool overwrite = false;
  CommonOptions common;
};

}  // namespace

void register_imatrix(CLI::App& app) {
  auto a = std::make_shared<ImatrixArgs>();
  CLI::App* c = app.add_subcommand(
      "imatrix", "Compute an importance matrix over calibration text (llama-imatrix's statistics) for gguf --imatrix");
  c->add_option("--model,-m", a->model, "model directory or repo id (dense, GPTQ, AWQ or bitsandbytes 4-bit), or a GGUF file");
  c->add_option("--calib,-f", a->o.calib_path,
                "calibration text or JSONL (e.g. C4 documents, WikiText train; chat records rendered with the chat "
                "template, their special tokens parsed)")
      ->check(CLI::ExistingFile);
  c->add_option("--in-file", a->in_files,
                "an earlier importance matrix (ours or llama-imatrix's, GGUF or .dat) to add to this one; repeatable, and "
                "without --calib the files are only merged (llama-imatrix --in-file)")
      ->check(CLI::ExistingFile);
  c->add_option("--text-field", a->o.text_field, "JSONL field holding the text")->capture_default_str();
  c->add_option("--out,-o", a->out, "output file (.gguf, or the legacy .dat with --output-format dat)")->required();
  c->add_option("--output-format", a->format, "gguf (llama-imatrix's default) or dat (its legacy format)")
      ->check(CLI::IsMember({"gguf", "dat"}))
      ->capture_default_str();
  c->add_option("--ctx,-c", a->o.ctx, "tokens per chunk (llama-imatrix -c)")
      ->check(at_least(2, "INT>=2"))
      ->capture_default_str();
  c->add_option("--chunks", a->o.chunks, "at most this many chunks (-1: all the text gives)")->capture_default_str();
  c->add_flag("--process-output", a->o.process_output,
              "also collect output.weight's input (untied models; llama-imatrix --process-output)");
  c->add_flag("--parse-special", a->o.parse_special,
              "encode special-token text (<|im_start|>, ...) of a plain text file as the special tokens "
              "(llama-imatrix --parse-special)");
  c->add_flag("--no-ppl", a->o.no_ppl, "skip the perplexity estimate of the pass (llama-imatrix --no-ppl)");
  c->add_option("--batch-tokens", a->o.batch_tokens, "tokens forwarded at once (whole chunks; memory)")
      ->check(at_least(1, "POSITIVE"))
      ->capture_default_str();
  c->add_flag("--overwrite", a->overwrite, "replace an existing output file");
  c->add_flag("--quiet,-q", a->o.quiet, "no progress bar");
  add_common_options(c, &a->common);
  c->callback([a]() {
    apply_common_options(a->common);
    check_output_dir_exists("--out", a->out);
    QWENQ_CHECK(a->overwrite || !file_exists(a->out), a->out << ": already exists (pass --overwrite to replace it)");
    QWENQ_CHECK(a->o.chunks == -1 || a->o.chunks > 0, "--chunks: must be positive or -1 (all), got " << a->o.chunks);
    QWENQ_CHECK(!a->o.calib_path.empty() || !a->in_files.empty(),
                "imatrix: give --calib TEXT (with --model), --in-file FILE to merge, or both");
    QWENQ_CHECK(a->o.calib_path.empty() || !a->model.empty(), "imatrix: --calib needs --model");
    // As llama-imatrix: the earlier files first (their datasets first), then this run's statistics.
    Imatrix m;
    m.chunk_size = static_cast<uint32_t>(a->o.ctx);
    for (const std::string& f : a->in_files) merge_imatrix(&m, read_imatrix(f), f);
    ImatrixReport r;
    if (!a->o.calib_path.empty()) {
      a->o.model = resolve_model_dir(a->model, "main", /*allow_gguf=*/true);
      merge_imatrix(&m, compute_imatrix(a->o, &r), a->o.calib_path);
    }
    if (a->format == "dat") {
      write_imatrix_dat(m, a->out);
    } else {
      write_imatrix_gguf(m, a->out);
    }
    if (r.chat_records) {
      std::fprintf(stderr, "imatrix: chat records rendered with the chat template, special tokens parsed\n");
    }
    if (r.tied_output) {
      std::fprintf(stderr, "imatrix: --process-output: the model's output is its embedding (tied), which llama.cpp "
                           "quantizes without an importance matrix; no output.weight entry\n");
    }
    if (r.ppl_tokens > 0) {
      std::fprintf(stderr, "imatrix: perplexity %.4f +/- %.5f over the second halves of the chunks (%lld tokens, as "
                           "llama-imatrix estimates it)\n", r.ppl, r.ppl_err, (long long)r.ppl_tokens);
    }
    const std::string merged =
        a->in_files.empty() ? "" : " (" + std::to_string(a->in_files.size()) + " earlier file(s) added)";
    if (a->o.calib_path.empty()) {
      std::printf("wrote %s: %zu entries, %u chunks in all%s\n", a->out.c_str(), m.entries.size(), m.chunk_count,
                  merged.c_str());
    } else {
      std::printf("wrote %s: %zu entries from %lld chunks of %lld tokens (%lld of the text's %lld tokens)%s, %.1fs\n",
                  a->out.c_str(), m.entries.size(), (long long)r.chunks, (long long)a->o.ctx, (long long)r.tokens,
                  (long long)r.text_tokens, merged.c_str(), r.seconds);
    }
  });
}

}  // namespace qwenq::cli
