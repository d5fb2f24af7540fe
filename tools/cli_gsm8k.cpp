// qwen-quant gsm8k: generation accuracy on GSM8K's math word problems as lm-evaluation-harness's gsm8k task scores
// it (trainer/gsm8k.h: its prompt, few-shot draw, stop strings, strict and flexible extraction, exact match), for any
// model we read, optionally with a LoRA adapter (applied unmerged, tools/cli_common.h; with --device cuda, generation
// by trainer/qwen_decode_cuda.h, as `generate --device cuda`).
#include <cstdio>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "tools/cli.h"
#include "tools/cli_common.h"
#include "trainer/generation_config.h"
#include "trainer/gsm8k.h"
#include "trainer/model_dir.h"
#include "trainer/qwen_decode_cuda.h"
#include "trainer/qwen_model_cuda.h"

namespace qwenq::cli {

namespace {

struct Gsm8kArgs {
  std::string model, adapter, data, fewshot_data, json_out, predictions;
  Gsm8kOptions opt;
  bool json = false, until_given = false, penalty_given = false;
  std::vector<std::string> until;
  CommonOptions common;
};

void run_gsm8k(Gsm8kArgs a) {
  DevicePick pick(a.common, "gsm8k");
  for (const std::string* out : {&a.json_out, &a.predictions}) {
    if (!out->empty()) check_output_dir_exists(out == &a.json_out ? "--json-out" : "--predictions", *out);
  }
  QWENQ_CHECK(a.opt.fewshot == 0 || !a.fewshot_data.empty(),
              "--fewshot " << a.opt.fewshot << " draws its examples from --fewshot-data (GSM8K's train split)");
  if (a.until_given) a.opt.stops = a.until;
  const std::vector<Gsm8kItem> items = read_gsm8k(a.data);  // bad records cost no model load
  const std::vector<Gsm8kItem> shots = a.fewshot_data.empty() ? std::vector<Gsm8kItem>{} : read_gsm8k(a.fewshot_data);
  const std::string dir = resolve_model_dir(a.model, "main", /*allow_gguf=*/true);
  QwenModel model(dir);
  const Device device = pick.settle_for_model(model, GpuUse::Decode, adapter_gpu_refusal(a.adapter, model.config()));
  const CommandAdapter adapter = load_adapter_for_device(a.adapter, dir, device, model, a.opt.quiet);
  const Tokenizer tok = Tokenizer::from_model(dir);
  // lm-eval's hf backend decodes with model.generate(do_sample=False) over the model's generation_config.json: its
  // repetition_penalty and eos ids apply (greedy otherwise).
  const GenerationConfig gc = load_generation_config(dir);
  if (!a.penalty_given) a.opt.repetition_penalty = gc.repetition_penalty;
  a.opt.stop_ids = gc.eos_token_ids;
  SamplingOptions decoding;  // the penalty checked by generate's own rule before the line below
  decoding.repetition_penalty = a.opt.repetition_penalty;
  check_sampling_options(decoding);
  if (!a.opt.quiet && a.opt.repetition_penalty != 1.f) {
    std::fprintf(stderr, "decoding: greedy, repetition penalty %g%s\n", a.opt.repetition_penalty,
                 a.penalty_given ? "" : (" (from " + gc.path + ", as lm-eval's hf backend applies it; "
                                         "--repetition-penalty 1 for plain greedy)").c_str());
  }
  Gsm8kResult r;
#ifdef QWENQ_HAVE_CUDA
  if (device == Device::Cuda) {  // generate_cuda: the same loop and sampling; an adapter applied unmerged
    const std::unique_ptr<QwenModelCuda> gpu = upload_model_cuda(model, adapter.get(), a.adapter);
    const Gsm8kGenerateFn gen = [&gpu](const std::vector<int32_t>& p, const SamplingOptions& so) {
      return generate_cuda(*gpu, p, so);
    };
    r = evaluate_gsm8k(gen, model.config(), tok, items, shots, a.opt);
  }
#endif
  if (device == Device::Cpu) r = evaluate_gsm8k(model, tok, items, shots, a.opt);
  const int64_t n = static_cast<int64_t>(r.items.size());
  nlohmann::ordered_json j = {{"model", dir},
                              {"data", a.data},
                              {"items", n},
                              {"fewshot", a.opt.fewshot},
                              {"repetition_penalty", a.opt.repetition_penalty},
                              {"exact_match_strict", r.strict},
                              {"exact_match_strict_stderr", r.strict_stderr},
                              {"exact_match_flexible", r.flexible},
                              {"exact_match_flexible_stderr", r.flexible_stderr},
                              {"new_tokens", r.new_tokens},
                              {"seconds", r.seconds}};
  if (!a.adapter.empty()) j["adapter"] = a.adapter;
  if (a.json) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("exact_match strict-match %.4f ± %.4f, flexible-extract %.4f ± %.4f  (%lld items of %s, %d-shot, "
                "%lld tokens generated, %.1fs)\n",
                r.strict, r.strict_stderr, r.flexible, r.flexible_stderr, (long long)n, a.data.c_str(),
                (int)a.opt.fewshot, (long long)r.new_tokens, r.seconds);
  }
  if (!a.json_out.empty()) write_file_atomic(a.json_out, j.dump(2) + "\n");
  if (!a.predictions.empty()) {  // per item: the prompt, the output, both extractions and verdicts
    std::string out;
    for (const Gsm8kItemResult& it : r.items) {
      out += nlohmann::ordered_json({{"prompt", it.prompt},
                                     {"output", it.output},
                                     {"strict", it.strict},
                                     {"strict_match", it.strict_ok},
                                     {"flexible", it.flexible},
                                     {"flexible_match", it.flexible_ok},
                                     {"prompt_tokens", it.prompt_tokens},
                                     {"new_tokens", it.new_tokens}})
                 .dump() +
             "\n";
    }
    write_file_atomic(a.predictions, out);
  }
}

}  // namespace

void register_gsm8k(CLI::App& app) {
  auto a = std::make_shared<Gsm8kArgs>();
  CLI::App* cmd = app.add_subcommand(
      "gsm8k", "Exact-match accuracy on GSM8K math word problems, greedy generation scored as lm-eval's gsm8k task");
  cmd->add_option("--model,-m", a->model, "model directory, repo id (offline cache) or .gguf file")->required();
  cmd->add_option("--adapter,-a", a->adapter, "LoRA adapter directory (PEFT layout): applied unmerged (the base kept as stored; DoRA and MoE-expert adapters merged in memory on the CPU)");
  cmd->add_option("--data,-d", a->data, "GSM8K JSONL to score ({\"question\", \"answer\"}: the test split)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--fewshot", a->opt.fewshot, "examples before each question (lm-eval's gsm8k: 5)")
      ->check(at_least(0, "NONNEGATIVE"))
      ->capture_default_str();
  cmd->add_option("--fewshot-data", a->fewshot_data, "GSM8K JSONL the examples are drawn from (the train split)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--fewshot-seed", a->opt.fewshot_seed, "random.Random seed of the draws (lm-eval's: 1234)")
      ->capture_default_str();
  cmd->add_option("--max-new-tokens,-n", a->opt.max_new_tokens, "tokens generated at most per item")
      ->check(at_least(1, "POSITIVE"))
      ->capture_default_str();
  cmd->add_option("--until", a->until, "stop strings (default: \"Question:\" \"</s>\" \"<|im_end|>\")");
  cmd->add_option("--repetition-penalty", a->opt.repetition_penalty,
                  "repetition penalty of the greedy decoding (default: the model's generation_config.json, as "
                  "lm-eval's hf backend applies it; 1 = off)")
      ->check(greater_than(0, "POSITIVE"));
  cmd->add_option("--limit", a->opt.limit, "score the first N items only (0: all)")
      ->check(at_least(0, "NONNEGATIVE"))
      ->capture_default_str();
  cmd->add_option("--predictions", a->predictions, "write each item's prompt, output and verdicts (JSONL)");
  cmd->add_flag("--json", a->json, "print one JSON object instead of the human line");
  cmd->add_option("--json-out", a->json_out, "also write the JSON result to this file");
  cmd->add_flag("--quiet,-q", a->opt.quiet, "no progress bar");
  add_common_options(cmd, &a->common);
  cmd->callback([a, cmd]() {
    Gsm8kArgs args = *a;
    args.until_given = cmd->count("--until") > 0;
    args.penalty_given = cmd->count("--repetition-penalty") > 0;
    run_gsm8k(args);
  });
}

}  // namespace qwenq::cli
