// qwen-quant eval: perplexity of a model on a text corpus (GPTQ/AWQ paper convention), optionally with a LoRA
// adapter (--adapter): applied unmerged on either device (tools/cli_common.h, load_adapter_for_device)
// (trainer/lora_inference_cuda.h), as `qwen-qlora generate` does. --kl-base DIR: also how far its next-token
// distributions are from DIR's on the same windows (trainer/kl_divergence.h). llama-perplexity's KL-divergence base
// files (trainer/kld_file.h): --save-kld FILE writes one from the model over --data, --kl-base FILE scores the model
// against one (its tokens, llama.cpp's chunks: the second half of each chunk scored), so a base file made by either
// tool scores models of both. Every mode runs its forwards on the CPU or, with --device cuda, on the GPU (both
// models of --kl-base DIR uploaded; trainer/logits_source.h), the statistics and the file's rows on the host.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/gguf.h"
#include "core/progress.h"
#include "core/threads.h"
#include "kernels/device.h"
#include "tools/cli.h"
#include "tools/cli_common.h"
#include "trainer/kl_divergence.h"
#include "trainer/kld_file.h"
#include "trainer/model_dir.h"
#include "trainer/perplexity.h"
#include "trainer/qwen_model_cuda.h"
#include "trainer/text_data.h"
#include "trainer/tokenizer.h"

namespace qwenq::cli {

namespace {

struct EvalArgs {
  std::string model, adapter, data, field = "text", json_out, kl_base, save_kld, cpu_matmul = "fp32";
  bool json = false, quiet = false, no_bos = false, seq_len_given = false, int8_activations = false;
  PerplexityOptions ppl;
  CommonOptions common;
};

// KL divergence compares the two models position by position, so both must see the same tokens: the text is
// tokenized again with the base's tokenizer and the ids compared.
void check_same_tokens(const std::string& base_dir, const std::vector<int32_t>& tokens, const EvalArgs& a,
                       const std::string& text) {
  const std::vector<int32_t> base_tokens = Tokenizer::from_model(base_dir).encode(text, !a.no_bos);
  size_t i = 0;
  while (i < tokens.size() && i < base_tokens.size() && tokens[i] == base_tokens[i]) ++i;
  QWENQ_CHECK(i == tokens.size() && i == base_tokens.size(),
              "--kl-base " << base_dir << ": its tokenizer splits " << a.data << " differently from " << a.model
                           << "'s (" << base_tokens.size() << " vs " << tokens.size()
                           << " tokens, first difference at token " << i
                           << "); KL divergence needs one tokenization for both models");
}

// Both base-file modes: --max-windows chunks, --batch of them at a time; llama.cpp's chunks put BOS in each chunk's
// first position when the tokenizer adds one (and --no-bos is not given).
KldRunOptions kld_run_options(const EvalArgs& a, const Tokenizer& tok) {
  KldRunOptions opt;
  opt.max_chunks = a.ppl.max_windows;
  opt.chunks_per_batch = a.ppl.windows_per_batch;
  opt.bos = !a.no_bos && tok.adds_bos() ? tok.bos_id() : -1;
  opt.quiet = a.quiet;
  return opt;
}

void add_int8_json(const EvalArgs& a, const Int8Coverage& int8, nlohmann::ordered_json* j) {
  if (a.cpu_matmul != "fp32") (*j)["cpu_matmul"] = a.cpu_matmul;
  if (!a.int8_activations) return;
  (*j)["int8_activations"] = true;
  (*j)["int8_linears"] = int8.int8;
  (*j)["linears"] = int8.linears;
  (*j)["int8_output_table"] = int8.lm_head;
}

void print_result(const EvalArgs& a, const nlohmann::ordered_json& j, const std::string& human) {
  if (a.json) std::printf("%s\n", j.dump().c_str());
  else std::printf("%s", human.c_str());
  if (!a.json_out.empty()) write_file_atomic(a.json_out, j.dump(2) + "\n");
}

// The result every mode prints; data "" (a base file's own tokens) leaves "data" out.
nlohmann::ordered_json result_json(const std::string& dir, const std::string& data, const PerplexityResult& r,
                                   int64_t seq_len) {
  nlohmann::ordered_json j = {{"model", dir}};
  if (!data.empty()) j["data"] = data;
  j.update(nlohmann::ordered_json{{"perplexity", r.perplexity},
                                  {"mean_nll", r.mean_nll},
                                  {"seq_len", seq_len},
                                  {"windows", r.windows},
                                  {"scored_tokens", r.scored_tokens},
                                  {"corpus_tokens", r.corpus_tokens},
                                  {"seconds", r.seconds},
                                  {"tokens_per_s", r.tokens_per_s},
                                  {"peak_rss_bytes", peak_rss_bytes()}});
  return j;
}

// llama.cpp's chunks: the same with how positions were scored.
nlohmann::ordered_json chunk_result_json(const std::string& dir, const std::string& data, const PerplexityResult& r,
                                         int64_t n_ctx) {
  nlohmann::ordered_json j = result_json(dir, data, r, n_ctx);
  j["scoring"] = "llama-perplexity: the second half of each chunk";
  return j;
}

std::string chunk_result_line(const PerplexityResult& r, int64_t n_ctx, const std::string& source,
                              const std::string& device_peak) {
  char buf[768];
  std::snprintf(buf, sizeof buf,
                "perplexity %.4f  (%lld chunks x %lld tokens of %s, the second half of each scored as "
                "llama-perplexity does: %lld tokens, %.0f tok/s, peak RSS %s%s)\n",
                r.perplexity, (long long)r.windows, (long long)n_ctx, source.c_str(), (long long)r.scored_tokens,
                r.tokens_per_s, format_bytes(peak_rss_bytes()).c_str(), device_peak.c_str());
  return buf;
}

// eval --save-kld FILE: the model's log-probabilities over the text's chunks, for llama-perplexity --kl-divergence or
// eval --kl-base FILE to score other models against.
void run_save_kld(const EvalArgs& a, const std::string& dir, DevicePick& pick) {
  const int64_t n_ctx = window_len_for_model(dir, a.ppl.seq_len, a.seq_len_given, "--seq-len");
  QwenModel model(dir);
  const Device device = pick.settle_for_model(
      model, GpuUse::Forward,
      first_refusal(int8_activations_refusal(a.int8_activations), adapter_gpu_refusal(a.adapter, model.config())));
  apply_cpu_matmul(a.cpu_matmul, device);
  const CommandAdapter adapter = load_adapter_for_device(a.adapter, dir, device, model, a.quiet);
  const Int8Coverage int8 = report_int8_coverage(model.weights(), a.quiet);
  Tokenizer tok = Tokenizer::from_model(dir);
  const std::vector<int32_t> tokens = tok.encode(load_text_corpus(a.data, a.field, &tok), !a.no_bos);
  const KldRunOptions opt = kld_run_options(a, tok);
  EvalDevice ed(device);
  LogitsSource src = ed.source(model, adapter.get(), a.adapter);
  const PerplexityResult r = save_kld_file(src, tokens, n_ctx, opt, a.save_kld);
  nlohmann::ordered_json j = chunk_result_json(dir, a.data, r, n_ctx);
  if (!a.adapter.empty()) j["adapter"] = a.adapter;
  const uint64_t bytes = kld_file_bytes({static_cast<int32_t>(n_ctx), static_cast<int32_t>(model.config().vocab_size),
                                         static_cast<int32_t>(r.windows)});
  add_int8_json(a, int8, &j);
  j["save_kld"] = a.save_kld;
  j["save_kld_bytes"] = bytes;
  const std::string device_peak = ed.add_peaks(&j);
  print_result(a, j, chunk_result_line(r, n_ctx, a.data, device_peak) +
                         "saved the log-probabilities of those positions to " + a.save_kld + " (" +
                         format_bytes(bytes) + ")\n");
}

// eval --kl-base FILE: the model over the file's tokens, each scored position against the file's row.
void run_kld_file(const EvalArgs& a, const std::string& dir, DevicePick& pick) {
  const KldFile file(a.kl_base);
  const int64_t n_ctx = file.header().n_ctx;
  QWENQ_CHECK(!a.seq_len_given || a.ppl.seq_len == n_ctx,
              "--seq-len " << a.ppl.seq_len << " differs from the n_ctx " << n_ctx << " of " << a.kl_base
                           << ", whose chunks are scored; leave --seq-len out");
  QwenModel model(dir);
  const Device device = pick.settle_for_model(
      model, GpuUse::Forward,
      first_refusal(int8_activations_refusal(a.int8_activations), adapter_gpu_refusal(a.adapter, model.config())));
  apply_cpu_matmul(a.cpu_matmul, device);
  const CommandAdapter adapter = load_adapter_for_device(a.adapter, dir, device, model, a.quiet);
  const Int8Coverage int8 = report_int8_coverage(model.weights(), a.quiet);
  const KldRunOptions opt = kld_run_options(a, Tokenizer::from_model(dir));
  EvalDevice ed(device);
  LogitsSource src = ed.source(model, adapter.get(), a.adapter);
  const KlDivergenceResult kl = evaluate_kl_divergence_file(src, file, opt);
  nlohmann::ordered_json j = chunk_result_json(dir, "", kl.model, n_ctx);
  if (!a.adapter.empty()) j["adapter"] = a.adapter;
  add_int8_json(a, int8, &j);
  j["kl_divergence"] = kl_divergence_json(kl, a.kl_base);
  const std::string device_peak = ed.add_peaks(&j);
  print_result(a, j, chunk_result_line(kl.model, n_ctx, a.kl_base, device_peak) + kl_divergence_text(kl, a.kl_base));
}

void run_eval(const EvalArgs& a) {
  apply_int8_activations(a.int8_activations, a.model, a.common);  // refused before any work
  DevicePick pick(a.common, "the evaluation");
  const bool kl_file = !a.kl_base.empty() && is_kld_file(a.kl_base);
  if (!a.kl_base.empty() && !kl_file && file_exists(a.kl_base) && !dir_exists(a.kl_base) && !is_gguf_file(a.kl_base)) {
    KldFile refuse(a.kl_base);  // neither a model nor a base file: the reader names what is wrong with it
  }
  QWENQ_CHECK(a.save_kld.empty() || a.kl_base.empty(),
              "--save-kld writes a base file from --model; --kl-base scores --model against a base: give one of them");
  QWENQ_CHECK(!kl_file || a.data.empty(),
              "--kl-base " << a.kl_base << " is a KL-divergence base file, which carries the tokens it scores; "
                           << "leave --data out");
  QWENQ_CHECK(kl_file || !a.data.empty(), "eval needs --data (the text to score)");
  const std::string dir = resolve_model_dir(a.model, "main", /*allow_gguf=*/true);
  if (!a.json_out.empty()) check_output_dir_exists("--json-out", a.json_out);
  if (!a.save_kld.empty()) {
    check_output_dir_exists("--save-kld", a.save_kld);
    return run_save_kld(a, dir, pick);
  }
  if (kl_file) return run_kld_file(a, dir, pick);
  const std::string base_dir = a.kl_base.empty() ? "" : resolve_model_dir(a.kl_base, "main", /*allow_gguf=*/true);
  PerplexityOptions opt = a.ppl;
  opt.quiet = a.quiet;
  opt.seq_len = window_len_for_model(dir, a.ppl.seq_len, a.seq_len_given, "--seq-len");
  const auto t0 = std::chrono::steady_clock::now();
  QwenModel model(dir);
  Tokenizer tok = Tokenizer::from_model(dir);
  const std::string text = load_text_corpus(a.data, a.field, &tok);
  // The tokenizer's own convention: Llama-style tokenizers prepend BOS once to the whole corpus, Qwen's
  // add nothing (transformers: tokenizer("\n\n".join(texts))).
  std::vector<int32_t> tokens = tok.encode(text, !a.no_bos);
  if (!base_dir.empty()) check_same_tokens(base_dir, tokens, a, text);
  const double tok_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!a.quiet) {
    std::fprintf(stderr, "model %s (%s, %lld layers, hidden %lld), corpus %s: %zu bytes -> %zu tokens (%.1fs)\n",
                 dir.c_str(), model.config().model_type.c_str(), (long long)model.config().num_layers,
                 (long long)model.config().hidden_size, a.data.c_str(), text.size(), tokens.size(), tok_s);
  }
  std::unique_ptr<QwenModel> base;
  if (!base_dir.empty()) {
    base = std::make_unique<QwenModel>(base_dir);
  }
  // Both models on one device: the GPU when it can run each.
  std::vector<const QwenModel*> models{&model};
  if (base) models.push_back(base.get());
  const Device device = pick.settle_for_models(
      models, GpuUse::Forward,
      first_refusal(int8_activations_refusal(a.int8_activations), adapter_gpu_refusal(a.adapter, model.config())));
  apply_cpu_matmul(a.cpu_matmul, device);
  const CommandAdapter adapter = load_adapter_for_device(a.adapter, dir, device, model, a.quiet);
  // After the adapter: one merged in memory (DoRA, experts) leaves dense Linears; an unmerged one keeps the base's.
  const Int8Coverage int8 = report_int8_coverage(model.weights(), a.quiet);
  PerplexityResult r;
  std::unique_ptr<KlDivergenceResult> kl;
  EvalDevice ed(device);
  if (base) {  // both models' logits, from the CPU or the GPU; the statistics on the host
    LogitsSource m = ed.source(model, adapter.get(), a.adapter), b = ed.source(*base, nullptr, "");
    kl = std::make_unique<KlDivergenceResult>(evaluate_kl_divergence(m, b, tokens, opt));
    r = kl->model;
  } else if (device == Device::Cpu) {
    r = evaluate_perplexity(model, tokens, opt);
  } else {
#ifdef QWENQ_HAVE_CUDA
    QwenModelCuda& gpu = ed.upload(model, adapter.get(), a.adapter);
    const auto nll_fn = [&gpu](const PackedBatch& b, std::vector<float>* nll) { return gpu.next_token_nll(b, nll); };
    r = evaluate_perplexity(nll_fn, tokens, opt);
#endif
  }

  nlohmann::ordered_json j = result_json(dir, a.data, r, opt.seq_len);
  if (!a.adapter.empty()) j["adapter"] = a.adapter;
  if (kl) j["kl_divergence"] = kl_divergence_json(*kl, base_dir);
  add_int8_json(a, int8, &j);
  const std::string device_peak = ed.add_peaks(&j);
  char human[1024];
  std::snprintf(human, sizeof human,
                "perplexity %.4f  (%lld windows x %lld tokens of %s, %lld tokens scored, %.0f tok/s, peak RSS %s%s)\n",
                r.perplexity, (long long)r.windows, (long long)opt.seq_len, a.data.c_str(), (long long)r.scored_tokens,
                r.tokens_per_s, format_bytes(peak_rss_bytes()).c_str(),
                (device_peak + (a.int8_activations ? ", int8 activations in " + std::to_string(int8.int8) + " of " +
                                                          std::to_string(int8.linears) + " Linears"
                                                    : "") +
                 (a.cpu_matmul == "bf16" ? ", bf16 products on the CPU" : ""))
                    .c_str());
  print_result(a, j, human + (kl ? kl_divergence_text(*kl, base_dir) : std::string()));
}

}  // namespace

void register_eval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand("eval", "Perplexity of a model on a text or JSONL file");
  cmd->add_option("--model,-m", a->model, "model directory or Hugging Face repo id (offline cache)")->required();
  cmd->add_option("--adapter,-a", a->adapter,
                  "LoRA adapter directory (PEFT layout): applied unmerged (the base kept as stored; DoRA and "
                  "MoE-expert adapters merged in memory on the CPU)");
  cmd->add_option("--data,-d", a->data, "text file, or JSONL with a text field (not with --kl-base FILE)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--text-field", a->field, "JSONL field holding the text")->capture_default_str();
  CLI::Option* seq_len =
      cmd->add_option("--seq-len", a->ppl.seq_len, "window length in tokens (default: 2048, or the model's context "
                                                   "when shorter)")
          ->check(at_least(2, "POSITIVE"));
  cmd->add_option("--max-windows", a->ppl.max_windows, "score at most this many windows (0: all)")
      ->check(at_least(0, "NONNEGATIVE"))
      ->capture_default_str();
  cmd->add_option("--batch", a->ppl.windows_per_batch, "windows forwarded together")
      ->check(at_least(1, "POSITIVE"))
      ->capture_default_str();
  cmd->add_flag("--no-bos", a->no_bos, "do not let the tokenizer add its BOS token");
  cmd->add_option("--kl-base", a->kl_base,
                  "also the KL divergence of the model's next-token distributions from this model's (the original: "
                  "a directory, repo id or .gguf; same tokenizer and vocabulary), with top-1 agreement and the "
                  "true token's probability change; or from a base file of --save-kld or llama-perplexity "
                  "--kl-divergence-base (its tokens and chunks, no --data); CPU")
      ->option_text("DIR|FILE");
  cmd->add_option("--save-kld", a->save_kld,
                  "write the model's log-probabilities over --data as a KL-divergence base file (llama-perplexity's "
                  "--kl-divergence-base format: --seq-len chunks, the second half of each; about 2 bytes x vocabulary "
                  "x seq-len/2 per chunk) for --kl-base FILE or llama-perplexity --kl-divergence; CPU")
      ->option_text("FILE");
  add_int8_activations_flag(cmd, &a->int8_activations);
  add_cpu_matmul_option(cmd, &a->cpu_matmul, kCpuMatmulForwardHelp);
  cmd->add_flag("--json", a->json, "print one JSON object instead of the human line");
  cmd->add_option("--json-out", a->json_out, "also write the JSON result to this file");
  cmd->add_flag("--quiet,-q", a->quiet, "no progress bar");
  add_common_options(cmd, &a->common);
  cmd->callback([a, seq_len]() {
    a->seq_len_given = seq_len->count() > 0;
    run_eval(*a);
  });
}

}  // namespace qwenq::cli
