// qwen-quant compare: quantize one model with several methods, evaluate all of them and the original on the
// same texts, and write the accuracy-loss table (Markdown, CSV, JSON) and an SVG chart.
//
// `--quantized NAME=PATH` adds rows for models quantized elsewhere (AutoGPTQ/GPTQModel, AutoAWQ, llm-compressor,
// bitsandbytes through transformers, llama.cpp, an earlier run), evaluated on the same texts and windows.
// Beside perplexity, optional columns per model: KL divergence from the original (--kld, or --kld-file against a
// llama-perplexity base file of the original per text, one model in memory at a time), multiple-choice accuracy
// (--choices) and GSM8K exact match (--gsm8k), each from the same child evaluations a user would run by hand.
//
// Every quantization and evaluation runs as a child process of this same binary (posix_spawn of
// /proc/self/exe), so each method's time and peak memory are its own (wait4's ru_maxrss) and a method that
// fails (e.g. a shape its file format cannot hold) becomes a line in the log instead of ending the run.
#include <algorithm>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <dirent.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/gguf.h"
#include "core/json_file.h"
#include "core/progress.h"
#include "tools/cli.h"
#include "tools/cli_common.h"
#include "trainer/compare_report.h"
#include "trainer/gguf_file_type.h"
#include "trainer/gguf_model.h"
#include "trainer/gsm8k.h"
#include "trainer/model_dir.h"
#include "trainer/quantize_output.h"
#include "trainer/quant_config.h"
#include "trainer/qwen_config.h"

extern char** environ;

namespace qwenq::cli {

namespace {

// Stands for the importance matrix file in a gguf-<type>-imatrix method's arguments until run_compare makes it.
const char* const kImatrixFile = "<imatrix>";

struct CompareArgs {
  std::string model, methods = "rtn,rtn-g64,nf4,fp4", out, calib;
  int64_t calib_samples = 128, calib_seq_len = 512;
  std::vector<std::string> data;
  int64_t seq_len = 2048, max_windows = 0, batch = 1;
  bool seq_len_given = false, calib_seq_len_given = false;
  bool keep_models = false;
  bool kld = false;  // each model's KL divergence from the original (eval --kl-base)
  bool kld_file = false;  // the same against one base file of the original per text (eval --save-kld / --kl-base FILE)
  std::vector<std::string> choices;  // multiple-choice sets: each model's accuracy (qwen-quant multiple-choice)
  std::string gsm8k, gsm8k_fewshot_data;  // GSM8K exact match of each model (qwen-quant gsm8k)
  int64_t gsm8k_fewshot = 5, gsm8k_limit = 0, gsm8k_max_new_tokens = 256;
  std::vector<std::string> quantized;  // NAME=PATH
  CommonOptions common;
};

struct ChildResult {
  int status = -1;
  double seconds = 0;
  uint64_t peak_rss = 0;
};

// Runs /proc/self/exe with `args`, stdout+stderr appended to `log`.
ChildResult run_self(const std::vector<std::string>& args, const std::string& log) {
  std::vector<char*> argv;
  std::string self = "/proc/self/exe";
  argv.push_back(self.data());
  std::vector<std::string> copy = args;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  const auto t0 = std::chrono::steady_clock::now();
  pid_t pid;
  const int rc = posix_spawn(&pid, self.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  QWENQ_CHECK(rc == 0, "compare: cannot start a child qwen-quant: " << std::strerror(rc));
  ChildResult r;
  struct rusage ru;
  QWENQ_CHECK(wait4(pid, &r.status, 0, &ru) == pid, "compare: wait4 failed: " << std::strerror(errno));
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.peak_rss = static_cast<uint64_t>(ru.ru_maxrss) * 1024;
  return r;
}

bool ok(const ChildResult& r) { return WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0; }

// Bytes of the regular files in `dir` (not recursive), or of `dir` itself when it is a file (a GGUF output).
uint64_t dir_size(const std::string& dir) {
  uint64_t total = 0;
  struct stat self;
  if (stat(dir.c_str(), &self) == 0 && S_ISREG(self.st_mode)) return static_cast<uint64_t>(self.st_size);
  DIR* d = opendir(dir.c_str());
  if (!d) return 0;
  while (dirent* e = readdir(d)) {
    struct stat st;
    if (stat(path_join(dir, e->d_name).c_str(), &st) == 0 && S_ISREG(st.st_mode)) total += st.st_size;
  }
  closedir(d);
  return total;
}

std::string last_error_line(const std::string& log) {
  std::string text = file_exists(log) ? read_file(log) : "";
  std::string last;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.find("error") != std::string::npos) last = line;
  }
  return last.empty() ? "see " + log : last;
}

// The number after the first `skip` characters of option `p` of method `spec` (g64 -> 64), refused with the method's
// name unless it is a plain decimal of at most 9 digits (std::stoll alone would say only "stoll").
int64_t option_number(const std::string& spec, const std::string& p, size_t skip) {
  QWENQ_CHECK(p.size() > skip && p.size() - skip <= 9 && p.find_first_not_of("0123456789", skip) == std::string::npos,
              "compare: option '" << p << "' in method '" << spec << "' needs a number of at most 9 digits after '"
                                  << p.substr(0, skip) << "'");
  return std::stoll(p.substr(skip));
}

// A spec's adapter options, LoftQ's "lq<R>" (rank) and "it<T>" (iterations) or PiSSA's "ps<R>" (rank), taken out of
// `parts`; the method is then evaluated with the adapter it writes (<model>/loftq_init or <model>/pissa_init).
struct AdapterSpec {
  int64_t rank = 0, iters = 1, pissa_rank = 0;
};
AdapterSpec take_adapter_options(const std::string& spec, std::vector<std::string>* parts) {
  AdapterSpec lq;
  std::vector<std::string> kept = {parts->front()};  // the method's name stays whatever it is
  for (size_t i = 1; i < parts->size(); ++i) {
    const std::string& p = (*parts)[i];
    if (p.rfind("lq", 0) == 0 && p.size() > 2) lq.rank = option_number(spec, p, 2);
    else if (p.rfind("it", 0) == 0 && p.size() > 2) lq.iters = option_number(spec, p, 2);
    else if (p.rfind("ps", 0) == 0 && p.size() > 2) lq.pissa_rank = option_number(spec, p, 2);
    else kept.push_back(p);
  }
  QWENQ_CHECK(lq.rank > 0 || lq.iters == 1, "compare: method '" << spec << "' gives it<T> without lq<R>");
  QWENQ_CHECK(lq.iters >= 1, "compare: method '" << spec << "': it<T> must be at least 1");
  QWENQ_CHECK(lq.rank == 0 || lq.pissa_rank == 0, "compare: method '" << spec << "' gives both lq<R> and ps<R>");
  *parts = std::move(kept);
  return lq;
}

// A GGUF file type's row: nominal bits of its base type's codes (Q4_K, IQ4_XS: 4), as the other rows count them,
// and the base type's block as the group.
void set_gguf_bits(const GgufFileType& ft, CompareRow* row) {
  const GgmlTypeInfo& info = *ggml_type_info(static_cast<uint32_t>(ft.base));
  const char* digit = info.name[0] == 'Q' ? info.name + 1 : info.name[0] == 'I' ? info.name + 2 : nullptr;
  row->bits = digit ? *digit - '0' : static_cast<int>(info.bytes * 8);
  row->group_size = info.block;
}

// An integer method's bits, group and file format refused before any work, with the quantizers' own messages (a
// child that refused them would cost a run of the methods before it and leave the row out).
void check_int_spec(const std::string& spec, int bits, int64_t group, bool sym, const std::string& fmt) {
  QuantizeOptions o;
  o.bits = bits;
  o.group_size = group;
  o.sym = sym;
  o.layout = fmt == "awq" ? IntLayout::AwqGemm : fmt == "gptq_v2" ? IntLayout::GptqV2 : IntLayout::GptqV1;
  try {
    check_int_options(o);
  } catch (const Error& e) {
    QWENQ_FAIL("compare: method '" << spec << "': " << e.what());
  }
}

// The subcommand arguments of a spec split into `parts` (its LoftQ options taken out), and the row's format.
std::vector<std::string> quantize_args(const std::string& spec, const std::vector<std::string>& parts,
                                       const CompareArgs& a, CompareRow* row) {
  const std::string& base = parts[0];
  if (base == "rtn" || base == "gptq") {
    int bits = 4;
    int64_t group = 128;
    bool asym = false, act = false;
    std::string fmt = "gptq";
    for (size_t i = 1; i < parts.size(); ++i) {
      const std::string& p = parts[i];
      if (p == "asym") asym = true;
      else if (p == "awq" && base == "rtn") fmt = "awq", asym = true;
      else if (p == "act" && base == "gptq") act = true;
      else if (p == "v2") fmt = "gptq_v2";
      else if (p == "pc") group = -1;
      else if (p.size() > 1 && p[0] == 'g') group = option_number(spec, p, 1);
      else if (p.size() > 1 && p[0] == 'b') bits = static_cast<int>(option_number(spec, p, 1));
      else QWENQ_FAIL("compare: unknown option '" << p << "' in method '" << spec
                                                  << "' (rtn options: g<N>, pc, b<N>, asym, v2, awq; gptq: g<N>, pc, b<N>, asym, v2, act)");
    }
    if (asym && fmt == "gptq") fmt = "gptq_v2";  // v1 cannot store a zero point of 0
    check_int_spec(spec, bits, group, !asym, fmt);
    row->format = fmt == "awq" ? "awq-gemm" : fmt;
    row->bits = bits;
    row->group_size = group;
    std::vector<std::string> args = {base, "--bits", std::to_string(bits), "--group-size", std::to_string(group),
                                     "--format", fmt, "--pad-intermediate"};
    if (asym) args.push_back("--asym");
    if (base == "gptq") {
      QWENQ_CHECK(!a.calib.empty(), "compare: method '" << spec << "' needs calibration text: pass --calib FILE");
      args.insert(args.end(), {"--calib", a.calib, "--calib-samples", std::to_string(a.calib_samples),
                               "--calib-seq-len", std::to_string(a.calib_seq_len)});
      if (act) args.push_back("--desc-act");
      row->format += act ? " act-order" : "";
    }
    return args;
  }
  if (base == "awq") {
    int64_t group = 128;
    bool clip = true;
    std::string fmt = "awq";
    for (size_t i = 1; i < parts.size(); ++i) {
      const std::string& p = parts[i];
      if (p == "noclip") clip = false;
      else if (p == "v2") fmt = "gptq_v2";
      else if (p.size() > 1 && p[0] == 'g') group = option_number(spec, p, 1);
      else QWENQ_FAIL("compare: unknown option '" << p << "' in method '" << spec << "' (awq options: g<N>, noclip, v2)");
    }
    QWENQ_CHECK(!a.calib.empty(), "compare: method '" << spec << "' needs calibration text: pass --calib FILE");
    check_int_spec(spec, 4, group, false, fmt);
    row->format = fmt == "awq" ? "awq-gemm" : fmt;
    row->bits = 4;
    row->group_size = group;
    std::vector<std::string> args = {"awq", "--group-size", std::to_string(group), "--format", fmt, "--pad-intermediate",
                                     "--calib", a.calib, "--calib-samples", std::to_string(a.calib_samples),
                                     "--calib-seq-len", std::to_string(a.calib_seq_len)};
    if (!clip) args.push_back("--no-clip"), row->format += " no-clip";
    return args;
  }
  if (base == "fp8") {
    int64_t block = 0;  // per output channel (compressed-tensors FP8_DYNAMIC)
    for (size_t i = 1; i < parts.size(); ++i) {
      const std::string& p = parts[i];
      QWENQ_CHECK(p.size() > 1 && p[0] == 'b' && p.find_first_not_of("0123456789", 1) == std::string::npos,
                  "compare: unknown option '" << p << "' in method '" << spec
                                              << "' (fp8 options: b<N>, blocks of N x N as Qwen's block-wise fp8)");
      block = option_number(spec, p, 1);
    }
    row->format = block ? "fp8 e4m3 blocks " + std::to_string(block) + "x" + std::to_string(block)
                        : std::string("compressed-tensors float8");
    row->bits = 8;
    row->group_size = block ? block : -1;
    std::vector<std::string> args = {"fp8"};
    if (block) args.insert(args.end(), {"--format", "fp8", "--block", std::to_string(block)});
    return args;
  }
  if (base == "nf4" || base == "fp4") {
    bool dq = true;
    for (size_t i = 1; i < parts.size(); ++i) {
      QWENQ_CHECK(parts[i] == "nodq", "compare: unknown option '" << parts[i] << "' in method '" << spec << "' (nf4/fp4 options: nodq)");
      dq = false;
    }
    row->format = "bnb-" + base + (dq ? "+dq" : "");
    row->bits = 4;
    row->group_size = 64;
    std::vector<std::string> a = {base};
    if (!dq) a.push_back("--no-double-quant");
    return a;
  }
  if (base == "gguf") {
    const bool imatrix = parts.size() == 3 && parts[2] == "imatrix";
    QWENQ_CHECK(parts.size() == 2 || imatrix, "compare: method '" << spec << "': gguf takes one type and optionally "
                                              "imatrix, e.g. gguf-q4_k_m or gguf-q4_k_m-imatrix");
    const GgufFileType& ft = gguf_file_type(parts[1]);  // refuses an unknown type before any work
    row->format = std::string("gguf ") + ft.name + (imatrix ? " +imatrix" : "") + " (llama.cpp)";
    set_gguf_bits(ft, row);
    std::vector<std::string> args = {"gguf", "--type", parts[1], "--pad-intermediate"};
    if (imatrix) {  // run_compare computes the matrix first, on the calibration text, into this file
      QWENQ_CHECK(!a.calib.empty(), "compare: method '" << spec << "' needs calibration text: pass --calib FILE");
      args.insert(args.end(), {"--imatrix", kImatrixFile});
    }
    return args;
  }
  QWENQ_FAIL("compare: unknown method '" << spec << "' (known: rtn[-g<N>|-pc|-b<N>|-asym|-awq|-v2], "
                                         "gptq[-g<N>|-pc|-b<N>|-asym|-act], awq[-g<N>|-noclip|-v2], nf4[-nodq], fp4[-nodq], "
                                         "gguf-<type>[-imatrix] (q8_0, q4_0, q4_k_m, ...); rtn, nf4, fp4 also -lq<R>[-it<T>] (LoftQ) or -ps<R> (PiSSA), gptq -lq<R> or -ps<R>)");
}

// A method spec ("rtn", "rtn-g64-asym", "rtn-awq", "rtn-b8", "nf4", "nf4-nodq", "fp4", "nf4-lq16-it5", "nf4-ps16") ->
// subcommand arguments.
std::vector<std::string> method_args(const std::string& spec, const CompareArgs& a, CompareRow* row) {
  std::vector<std::string> parts;
  std::stringstream ss(spec);
  for (std::string p; std::getline(ss, p, '-');) parts.push_back(p);
  row->method = spec;
  // AWQ's rescaled base has no LoftQ or PiSSA: there lq<R> / ps<R> stay and are refused as unknown options.
  const AdapterSpec lq =
      parts[0] == "awq" || parts[0] == "gguf" || parts[0] == "fp8" ? AdapterSpec{} : take_adapter_options(spec, &parts);
  QWENQ_CHECK(parts[0] != "gptq" || lq.iters == 1, "compare: method '" << spec << "': GPTQ's LoftQ is one-shot (no it<T>)");
  std::vector<std::string> args = quantize_args(spec, parts, a, row);
  if (lq.rank > 0) {
    args.insert(args.end(), {"--loftq-rank", std::to_string(lq.rank)});
    if (lq.iters > 1) args.insert(args.end(), {"--loftq-iter", std::to_string(lq.iters)});
    row->adapter = "loftq_init";
    row->format += " +LoftQ r" + std::to_string(lq.rank) + (lq.iters > 1 ? " x" + std::to_string(lq.iters) : "");
  }
  if (lq.pissa_rank > 0) {
    args.insert(args.end(), {"--pissa-rank", std::to_string(lq.pissa_rank)});
    row->adapter = "pissa_init";
    row->format += " +PiSSA r" + std::to_string(lq.pissa_rank);
  }
  return args;
}

// An `eval` child of `model` (plus an adapter) with the run's windows, device and threads and `extra` arguments; its
// JSON result.
nlohmann::json run_eval_child(const CompareArgs& a, const std::string& model, const std::string& tag,
                              const std::string& logs, const std::string& json, const std::string& adapter,
                              const std::vector<std::string>& extra, ChildResult* result) {
  std::vector<std::string> args = {"eval", "--model", model, "--seq-len", std::to_string(a.seq_len),
                                   "--max-windows", std::to_string(a.max_windows), "--batch", std::to_string(a.batch),
                                   "--json-out", json, "--quiet", "--threads", std::to_string(a.common.threads),
                                   "--device", a.common.device};
  if (!adapter.empty()) args.insert(args.end(), {"--adapter", adapter});
  args.insert(args.end(), extra.begin(), extra.end());
  *result = run_self(args, path_join(logs, tag + ".log"));
  if (!ok(*result)) throw Error("evaluation of " + tag + " failed: " + last_error_line(path_join(logs, tag + ".log")));
  return read_json_file(json);
}

// Each evaluation text's perplexity into row->perplexity; with KL bases (every row but the original's under --kld or
// --kld-file: per text the original's directory, or its base file) the KL divergence from the original and the
// top-1 agreement too: from the same eval under --kld (the original beside the model), from a second eval against
// the text's base file under --kld-file (the perplexity eval stays the plain one).
void evaluate_all(const CompareArgs& a, const std::string& model, const std::string& tag, const std::string& logs,
                  CompareRow* row, const std::string& adapter = "", const std::vector<std::string>& kl_bases = {}) {
  std::vector<double>& ppl = row->perplexity;
  ppl.clear();
  for (size_t d = 0; d < a.data.size(); ++d) {
    const std::string json = path_join(logs, tag + ".eval" + std::to_string(d) + ".json");
    const bool kl = d < kl_bases.size();
    std::vector<std::string> extra = {"--data", a.data[d]};
    if (kl && !a.kld_file) extra.insert(extra.end(), {"--kl-base", kl_bases[d]});
    ChildResult r;
    nlohmann::json j = run_eval_child(a, model, tag, logs, json, adapter, extra, &r);
    ppl.push_back(j["perplexity"].get<double>());
    if (kl && a.kld_file) {  // the model over the base file's tokens and chunks
      ChildResult rk;
      j = run_eval_child(a, model, tag, logs, path_join(logs, tag + ".kld" + std::to_string(d) + ".json"), adapter,
                         {"--kl-base", kl_bases[d]}, &rk);
      r.seconds += rk.seconds;
    }
    std::string kl_text;
    if (kl) {
      const nlohmann::json& k = j.at("kl_divergence");
      row->kld.push_back(k.at("kld").at("mean").get<double>());
      row->same_top1.push_back(k.at("same_top1").get<double>());
      char buf[96];
      std::snprintf(buf, sizeof buf, ", KLD %.5f, same top-1 %.2f%%", row->kld.back(), 100 * row->same_top1.back());
      kl_text = buf;
    }
    std::fprintf(stderr, "  %-16s %-28s perplexity %.4f%s (%.1fs)\n", tag.c_str(), a.data[d].c_str(), ppl.back(),
                 kl_text.c_str(), r.seconds);
  }
  row->acc.clear();
  row->acc_norm.clear();
  for (size_t c = 0; c < a.choices.size(); ++c) {
    const std::string json = path_join(logs, tag + ".choices" + std::to_string(c) + ".json");
    std::vector<std::string> args = {"multiple-choice", "--model", model, "--data", a.choices[c], "--json-out", json,
                                     "--quiet", "--threads", std::to_string(a.common.threads), "--device",
                                     a.common.device};
    if (!adapter.empty()) args.insert(args.end(), {"--adapter", adapter});
    ChildResult r = run_self(args, path_join(logs, tag + ".log"));
    if (!ok(r)) throw Error("multiple-choice of " + tag + " failed: " + last_error_line(path_join(logs, tag + ".log")));
    const nlohmann::json j = read_json_file(json);
    row->acc.push_back(j.at("acc").get<double>());
    row->acc_norm.push_back(j.at("acc_norm").get<double>());
    std::fprintf(stderr, "  %-16s %-28s acc %.2f%%, acc_norm %.2f%% (%.1fs)\n", tag.c_str(), a.choices[c].c_str(),
                 100 * row->acc.back(), 100 * row->acc_norm.back(), r.seconds);
  }
  if (!a.gsm8k.empty()) {
    const std::string json = path_join(logs, tag + ".gsm8k.json");
    std::vector<std::string> args = {"gsm8k", "--model", model, "--data", a.gsm8k, "--fewshot",
                                     std::to_string(a.gsm8k_fewshot), "--limit", std::to_string(a.gsm8k_limit),
                                     "--max-new-tokens", std::to_string(a.gsm8k_max_new_tokens), "--json-out", json,
                                     "--predictions", path_join(logs, tag + ".gsm8k.predictions.jsonl"), "--quiet",
                                     "--threads", std::to_string(a.common.threads), "--device", a.common.device};
    if (!a.gsm8k_fewshot_data.empty()) args.insert(args.end(), {"--fewshot-data", a.gsm8k_fewshot_data});
    if (!adapter.empty()) args.insert(args.end(), {"--adapter", adapter});
    ChildResult r = run_self(args, path_join(logs, tag + ".log"));
    if (!ok(r)) throw Error("gsm8k of " + tag + " failed: " + last_error_line(path_join(logs, tag + ".log")));
    const nlohmann::json j = read_json_file(json);
    row->gsm8k_strict = j.at("exact_match_strict").get<double>();
    row->gsm8k_flexible = j.at("exact_match_flexible").get<double>();
    std::fprintf(stderr, "  %-16s %-28s gsm8k strict %.2f%%, flexible %.2f%% (%.1fs)\n", tag.c_str(),
                 a.gsm8k.c_str(), 100 * row->gsm8k_strict, 100 * row->gsm8k_flexible, r.seconds);
  }
}

std::string base_name(const std::string& p) {
  const size_t s = p.find_last_of('/');
  std::string b = s == std::string::npos ? p : p.substr(s + 1);
  const size_t dot = b.find('.');
  return dot == std::string::npos ? b : b.substr(0, dot);
}

// Whether a method spec writes AutoAWQ's GEMM layout: awq (without -v2) and rtn-...-awq.
bool writes_awq_layout(const std::string& spec) {
  std::vector<std::string> parts;
  std::stringstream ss(spec);
  for (std::string p; std::getline(ss, p, '-');) parts.push_back(p);
  if (parts.empty()) return false;
  const auto has = [&](const char* p) { return std::find(parts.begin() + 1, parts.end(), p) != parts.end(); };
  return (parts[0] == "awq" && !has("v2")) || (parts[0] == "rtn" && has("awq"));
}

// The table's description of a model quantized elsewhere: its layout, bits and group from its own config.
void describe_given(const std::string& path, CompareRow* row) {
  if (is_gguf_file(path)) {
    const GgufFile f(path);
    const int64_t ftype = f.get_int_or("general.file_type", -1);
    row->format = "gguf";
    for (const std::string& n : gguf_file_type_list()) {
      const GgufFileType& ft = gguf_file_type(n);
      if (static_cast<int64_t>(ft.ftype) != ftype) continue;
      row->format = std::string("gguf ") + ft.name;
      set_gguf_bits(ft, row);
    }
    return;
  }
  const QuantConfig q = load_quant_config(path);
  const nlohmann::json cfg = read_json_file(path_join(path, "config.json"));
  switch (q.method) {
    case QuantConfig::Method::None: {
      const std::string dtype = cfg.value("torch_dtype", "bfloat16");
      row->format = "safetensors " + dtype;
      row->bits = dtype == "float32" ? 32 : 16;
      return;
    }
    case QuantConfig::Method::Gptq:
      row->format = std::string(int_layout_name(q.layout)) + (q.desc_act ? " act-order" : "");
      break;
    case QuantConfig::Method::Awq: row->format = "awq-gemm"; break;
    case QuantConfig::Method::Bnb4: {
      const nlohmann::json& qc = cfg.at("quantization_config");
      row->format = "bnb-" + qc.value("bnb_4bit_quant_type", std::string("fp4")) +
                    (qc.value("bnb_4bit_use_double_quant", false) ? "+dq" : "");
      row->bits = 4;
      row->group_size = 64;
      return;
    }
    case QuantConfig::Method::Fp8:
      row->format = "fp8 e4m3 blocks " + std::to_string(q.block_n) + "x" + std::to_string(q.block_k);
      row->bits = 8;
      row->group_size = q.block_k;
      return;
    case QuantConfig::Method::CompressedTensors: {
      const CtWeightArgs& w = q.ct_schemes.front().weights;
      row->format = std::string("compressed-tensors ") + (w.is_float ? "float" : "int") + std::to_string(w.bits) +
                    (q.ct_schemes.size() > 1 ? " (mixed)" : "");
      row->bits = w.bits;
      row->group_size = w.strategy == CtStrategy::Group ? w.group_size : w.strategy == CtStrategy::Channel ? -1 : 0;
      return;
    }
  }
  row->bits = q.bits;
  row->group_size = q.group_size;
}

// --quantized NAME=PATH entries, checked before any work: a name, a model we read, the original's vocabulary and
// shape (perplexities are comparable only over the same tokens).
std::vector<std::pair<std::string, std::string>> given_models(const CompareArgs& a, const std::string& original,
                                                              const std::vector<std::string>& specs) {
  const QwenConfig oc = load_qwen_config(original);
  std::vector<std::pair<std::string, std::string>> out;
  for (const std::string& q : a.quantized) {
    const size_t eq = q.find('=');
    QWENQ_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < q.size(),
                "compare --quantized " << q << ": expected NAME=PATH (e.g. autogptq-g128=/models/qwen-gptq)");
    const std::string name = q.substr(0, eq);
    QWENQ_CHECK(name.find_first_of("/ ,|") == std::string::npos,
                "compare --quantized " << q << ": NAME must not contain '/', ' ', ',' or '|'");
    QWENQ_CHECK(name != "original" && std::find(specs.begin(), specs.end(), name) == specs.end(),
                "compare --quantized " << q << ": the name " << name << " is already a row of the table");
    for (const auto& [n, p] : out) QWENQ_CHECK(n != name, "compare --quantized: the name " << name << " is given twice");
    const std::string path = resolve_model_dir(q.substr(eq + 1), "main", /*allow_gguf=*/true);
    const QwenConfig c = load_model_config(path);
    QWENQ_CHECK(c.vocab_size == oc.vocab_size && c.hidden_size == oc.hidden_size && c.num_layers == oc.num_layers,
                "compare --quantized " << q << ": " << path << " is not a quantization of " << original << " (vocab "
                                       << c.vocab_size << ", hidden " << c.hidden_size << ", " << c.num_layers
                                       << " layers against " << oc.vocab_size << ", " << oc.hidden_size << ", "
                                       << oc.num_layers << ")");
    out.emplace_back(name, path);
  }
  return out;
}

void run_compare(CompareArgs& a) {
  apply_common_options(a.common);
  const std::string model = resolve_model_dir(a.model);
  {  // Refused before any output: a mixture of experts GGUF cannot describe (dense layers, ...), and
     // AutoAWQ's layout where it cannot keep a MoE model's routers unquantized (dense layers too; awq-v2 / rtn without
     // -awq can).
    const QwenConfig cfg = load_qwen_config(model);
    std::stringstream methods(a.methods);
    for (std::string m; std::getline(methods, m, ',');) {
      if (m.rfind("gguf", 0) == 0) {
        check_gguf_moe(cfg, "compare --methods " + m + ": " + path_join(model, "config.json"));
      }
      if (!cfg.is_moe() || !writes_awq_layout(m)) continue;
      try {
        nlohmann::ordered_json qc;
        add_moe_module_lists(qc, cfg, MoeListFor::Awq);
      } catch (const Error& e) {
        QWENQ_FAIL("compare --methods " << m << ": " << e.what() << " (in compare: awq-v2, or rtn without -awq)");
      }
    }
  }
  if (!a.gsm8k.empty()) {  // the GSM8K files and the few-shot count, before any work (as gsm8k checks them)
    const int64_t items = static_cast<int64_t>(read_gsm8k(a.gsm8k).size());
    QWENQ_CHECK(a.gsm8k_fewshot == 0 || !a.gsm8k_fewshot_data.empty(),
                "--gsm8k-fewshot " << a.gsm8k_fewshot << " draws its examples from --gsm8k-fewshot-data (GSM8K's "
                                   << "train split); give it, or --gsm8k-fewshot 0");
    const int64_t pool =
        a.gsm8k_fewshot_data.empty() ? 0 : static_cast<int64_t>(read_gsm8k(a.gsm8k_fewshot_data).size());
    QWENQ_CHECK(pool >= a.gsm8k_fewshot, "--gsm8k-fewshot " << a.gsm8k_fewshot << " needs as many records; "
                                                           << a.gsm8k_fewshot_data << " has " << pool);
    QWENQ_CHECK(items >= 1, a.gsm8k << ": no GSM8K records");
  }
  // Both window lengths checked against the model's context now, not by each child after quantizing.
  a.seq_len = window_len_for_model(model, a.seq_len, a.seq_len_given, "--seq-len");
  a.calib_seq_len = window_len_for_model(model, a.calib_seq_len, a.calib_seq_len_given, "--calib-seq-len");
  CompareTable t;
  t.model = model;
  t.seq_len = a.seq_len;
  t.max_windows = a.max_windows;
  t.kld = a.kld || a.kld_file;
  if (a.kld_file) t.kld_scoring = "llama-perplexity chunks: the second half of each, against a base file of the original";
  for (const auto& c : a.choices) t.choice_sets.push_back(base_name(c));
  if (!a.gsm8k.empty()) t.gsm8k_set = base_name(a.gsm8k);
  t.gsm8k_fewshot = a.gsm8k_fewshot;
  for (const auto& d : a.data) t.datasets.push_back(base_name(d));

  std::vector<std::string> specs;
  std::stringstream ss(a.methods);
  for (std::string m; std::getline(ss, m, ',');) {
    if (!m.empty()) specs.push_back(m);
  }
  std::vector<CompareRow> planned;
  std::vector<std::vector<std::string>> planned_args;
  for (const auto& m : specs) {  // validate every spec before any work
    CompareRow row;
    planned_args.push_back(method_args(m, a, &row));
    planned.push_back(row);
  }
  const std::vector<std::pair<std::string, std::string>> given = given_models(a, model, specs);
  QWENQ_CHECK(!specs.empty() || !given.empty(), "compare: no --methods and no --quantized models to compare");
  // Only now that every spec and given model is known to be good: a refused run leaves no directory behind.
  for (const char* sub : {"models", "logs"}) {  // no shell: any character may be in --out
    const int err = make_dirs(path_join(a.out, sub));
    QWENQ_CHECK(err == 0, "compare: cannot create " << path_join(a.out, sub) << ": " << std::strerror(err));
  }
  const std::string logs = path_join(a.out, "logs");

  std::fprintf(stderr, "compare: %s on %zu text(s), %zu method(s), %zu given model(s); outputs in %s\n",
               model.c_str(), a.data.size(), specs.size(), given.size(), a.out.c_str());
  CompareRow orig;
  orig.method = "original";
  describe_given(model, &orig);  // its dtype, or an FP8 model's float8 (the methods start from its ŵ)
  orig.size_bytes = dir_size(model);
  evaluate_all(a, model, "original", logs, &orig);
  t.rows.push_back(orig);
  // The KL bases of the other rows, per text: the original itself (--kld), or its base file (--kld-file), written
  // here over the text's chunks (refused by eval, before any work, when larger than the free space).
  std::vector<std::string> kl_bases;
  for (size_t d = 0; d < a.data.size() && (a.kld || a.kld_file); ++d) {
    if (!a.kld_file) {
      kl_bases.push_back(model);
      continue;
    }
    kl_bases.push_back(path_join(logs, "original.text" + std::to_string(d) + ".kld"));
    ChildResult r;
    const nlohmann::json j = run_eval_child(a, model, "original", logs,
                                            path_join(logs, "original.save-kld" + std::to_string(d) + ".json"), "",
                                            {"--data", a.data[d], "--save-kld", kl_bases.back()}, &r);
    std::fprintf(stderr, "  %-16s %-28s base file %s (%s, %.1fs)\n", "original", a.data[d].c_str(),
                 kl_bases.back().c_str(), format_bytes(j.at("save_kld_bytes").get<uint64_t>()).c_str(), r.seconds);
  }

  std::vector<std::string> failed;
  for (size_t i = 0; i < specs.size(); ++i) {
    CompareRow row = planned[i];
    const std::string qdir = path_join(path_join(a.out, "models"), specs[i]);
    std::vector<std::string> args = planned_args[i];
    for (const char* x : {"--model", "--out"}) args.push_back(x), args.push_back(x[2] == 'm' ? model : qdir);
    args.insert(args.end(), {"--overwrite", "--quiet", "--threads", std::to_string(a.common.threads)});
    std::fprintf(stderr, "[%zu/%zu] %s: quantizing...\n", i + 1, specs.size(), specs[i].c_str());
    double prelude_seconds = 0;
    uint64_t prelude_rss = 0;
    const auto imx = std::find(args.begin(), args.end(), kImatrixFile);
    if (imx != args.end()) {  // gguf-<type>-imatrix: the importance matrix over the calibration budget first
      *imx = qdir + ".imatrix.gguf";
      const ChildResult m = run_self({"imatrix", "--model", model, "--calib", a.calib, "--ctx",
                                      std::to_string(a.calib_seq_len), "--chunks", std::to_string(a.calib_samples),
                                      "--out", *imx, "--overwrite", "--quiet", "--threads",
                                      std::to_string(a.common.threads)},
                                     path_join(logs, specs[i] + ".imatrix.log"));
      if (!ok(m)) {
        failed.push_back(specs[i] + ": " + last_error_line(path_join(logs, specs[i] + ".imatrix.log")));
        std::fprintf(stderr, "  %s failed: %s\n", specs[i].c_str(), failed.back().c_str());
        continue;
      }
      prelude_seconds = m.seconds;
      prelude_rss = m.peak_rss;
    }
    ChildResult q = run_self(args, path_join(logs, specs[i] + ".log"));
    q.seconds += prelude_seconds;
    q.peak_rss = std::max(q.peak_rss, prelude_rss);
    if (!ok(q)) {
      failed.push_back(specs[i] + ": " + last_error_line(path_join(logs, specs[i] + ".log")));
      std::fprintf(stderr, "  %s failed: %s\n", specs[i].c_str(), failed.back().c_str());
      continue;
    }
    row.quant_seconds = q.seconds;
    row.quant_peak_rss = q.peak_rss;
    const std::string adapter = row.adapter.empty() ? "" : path_join(qdir, row.adapter);  // counted in the size
    row.size_bytes = dir_size(qdir) + (adapter.empty() ? 0 : dir_size(adapter));
    evaluate_all(a, qdir, specs[i], logs, &row, adapter, kl_bases);
    t.rows.push_back(row);
    if (!a.keep_models) {
      remove_tree(qdir);
      std::remove((qdir + ".imatrix.gguf").c_str());
    }
  }
  for (size_t i = 0; i < given.size(); ++i) {
    const auto& [name, path] = given[i];
    std::fprintf(stderr, "[given %zu/%zu] %s: %s\n", i + 1, given.size(), name.c_str(), path.c_str());
    CompareRow row;
    row.method = name;
    row.given = true;
    describe_given(path, &row);
    row.size_bytes = dir_size(path);
    try {
      evaluate_all(a, path, name, logs, &row, "", kl_bases);
    } catch (const Error& e) {
      failed.push_back(name + ": " + e.what());
      std::fprintf(stderr, "  %s failed: %s\n", name.c_str(), failed.back().c_str());
      continue;
    }
    t.rows.push_back(row);
  }
  if (a.kld_file) {  // 2 bytes per vocabulary entry and scored position: not worth keeping
    for (const std::string& f : kl_bases) std::remove(f.c_str());
  }
  write_file_atomic(path_join(a.out, "compare.md"), compare_markdown(t));
  write_file_atomic(path_join(a.out, "compare.csv"), compare_csv(t));
  write_file_atomic(path_join(a.out, "compare.json"), compare_json(t));
  write_file_atomic(path_join(a.out, "compare.svg"), compare_svg(t));
  std::printf("%s", compare_markdown(t).c_str());
  for (const auto& f : failed) std::printf("\nnot in the table: %s\n", f.c_str());
  std::printf("\nwrote %s/compare.{md,csv,json,svg}\n", a.out.c_str());
  std::fflush(stdout);  // the table before the error line below, also through a pipe
  // Like make -k: the other rows are in the table, and the exit status still says that a row is missing.
  QWENQ_CHECK(failed.empty(), "compare: " << failed.size() << " of " << specs.size() + given.size()
                                          << " methods and given models failed and are not in the table (above; "
                                          << "their logs in " << logs << ")");
}

}  // namespace

void register_compare(CLI::App& app) {
  auto a = std::make_shared<CompareArgs>();
  CLI::App* cmd = app.add_subcommand("compare", "Quantize with several methods and tabulate the accuracy loss of each");
  cmd->add_option("--model,-m", a->model, "model directory or repo id (unquantized)")->required();
  cmd->add_option("--data,-d", a->data, "evaluation text(s): text or JSONL; repeat for several")->required();
  cmd->add_option("--methods", a->methods, "comma-separated: rtn[-g<N>|-pc|-b<N>|-asym|-awq], gptq[-g<N>|-asym|-act], awq[-g<N>|-noclip], nf4[-nodq], fp4[-nodq], fp8[-b<N>], gguf-<type>[-imatrix] (llama.cpp: q8_0, q4_0, q4_k_m, ...; -imatrix: with an importance matrix over --calib); "
                  "rtn/nf4/fp4 with -lq<R>[-it<T>], gptq with -lq<R>: LoftQ rank R (T iterations); rtn/nf4/fp4/gptq "
                  "with -ps<R>: PiSSA rank R; each evaluated with its adapter")
      ->capture_default_str();
  cmd->add_option("--out,-o", a->out, "directory for the table, chart, logs (and models with --keep-models)")->required();
  CLI::Option* seq_len = cmd->add_option("--seq-len", a->seq_len, "perplexity window (at most the model's context)")
                             ->capture_default_str();
  cmd->add_option("--max-windows", a->max_windows, "windows per text (0: all)")->capture_default_str();
  cmd->add_option("--batch", a->batch, "windows per forward")->capture_default_str();
  cmd->add_option("--calib", a->calib, "calibration text or JSONL for gptq and awq methods (e.g. C4)");
  cmd->add_option("--calib-samples", a->calib_samples, "calibration windows for gptq and awq methods")->capture_default_str();
  CLI::Option* calib_seq_len =
      cmd->add_option("--calib-seq-len", a->calib_seq_len,
                      "tokens per calibration window (at most the model's context)")
          ->capture_default_str();
  cmd->add_flag("--keep-models", a->keep_models, "keep the quantized directories under OUT/models");
  cmd->add_option("--choices", a->choices,
                  "multiple-choice items (ARC or context/choices/label JSONL): also each model's acc and acc_norm "
                  "(qwen-quant multiple-choice, on --device); repeat for several")
      ->check(CLI::ExistingFile);
  cmd->add_option("--gsm8k", a->gsm8k,
                  "GSM8K JSONL ({\"question\", \"answer\"}, the test split): also each model's exact match, strict and "
                  "flexible (qwen-quant gsm8k, greedy generation: slow on the CPU, see --gsm8k-limit)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--gsm8k-fewshot-data", a->gsm8k_fewshot_data, "GSM8K JSONL the few-shot examples come from (train)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--gsm8k-fewshot", a->gsm8k_fewshot, "examples before each question (lm-eval's gsm8k: 5)")
      ->check(at_least(0, "NONNEGATIVE"))
      ->capture_default_str();
  cmd->add_option("--gsm8k-limit", a->gsm8k_limit, "score the first N GSM8K items only (0: all)")
      ->check(at_least(0, "NONNEGATIVE"))
      ->capture_default_str();
  cmd->add_option("--gsm8k-max-new-tokens", a->gsm8k_max_new_tokens, "tokens generated at most per GSM8K item")
      ->check(at_least(1, "POSITIVE"))
      ->capture_default_str();
  cmd->add_flag("--kld-file", a->kld_file,
                "--kld's columns with one model in memory: the original's log-probabilities written once per text to a "
                "llama-perplexity base file (eval --save-kld; 2 bytes x vocabulary x seq-len/2 per chunk, bound it "
                "with --max-windows; removed at the end) and every model scored against it (eval --kl-base FILE: "
                "the second half of each --seq-len chunk, as llama.cpp)");
  cmd->add_flag("--kld", a->kld,
                "also each model's mean KL divergence from the original and the share of positions where both pick "
                "the same top-1 token (eval --kl-base; each evaluation runs the original beside it, on --device)");
  cmd->add_option("--quantized", a->quantized,
                  "NAME=PATH: also a row for a model quantized elsewhere (a directory or repo id any loader reads: "
                  "AutoGPTQ/GPTQModel, AutoAWQ, bitsandbytes, FP8, compressed-tensors; or a GGUF file), evaluated on "
                  "the same texts; repeat for several");
  add_common_options(cmd, &a->common);
  cmd->callback([a, seq_len, calib_seq_len]() {
    a->seq_len_given = seq_len->count() > 0;
    a->calib_seq_len_given = calib_seq_len->count() > 0;
    run_compare(*a);
  });
}

}  // namespace qwenq::cli
