// qwen-quant multiple-choice: accuracy on loglikelihood multiple-choice items (ARC as Hugging Face publishes it, or
// any {"context", "choices", "label"} set) scored as lm-evaluation-harness scores them (trainer/multiple_choice.h),
// for any model we read, optionally with a LoRA adapter (applied unmerged, tools/cli_common.h),
// on the CPU or with --device cuda on the GPU (trainer/logits_source.h): the downstream number quantization
// comparisons quote beside perplexity.
#include <cstdio>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "tools/cli.h"
#include "tools/cli_common.h"
#include "trainer/model_dir.h"
#include "trainer/multiple_choice.h"

namespace qwenq::cli {

namespace {

struct ChoiceArgs {
  std::string model, adapter, data, json_out, predictions;
  int64_t batch_tokens = 4096;
  bool json = false, quiet = false;
  CommonOptions common;
};

void run_choices(const ChoiceArgs& a) {
  DevicePick pick(a.common, "multiple-choice scoring");
  for (const std::string* out : {&a.json_out, &a.predictions}) {
    if (!out->empty()) check_output_dir_exists(out == &a.json_out ? "--json-out" : "--predictions", *out);
  }
  const std::vector<ChoiceItem> items = read_choice_items(a.data);  // a bad record costs no model load
  const std::string dir = resolve_model_dir(a.model, "main", /*allow_gguf=*/true);
  QwenModel model(dir);
  const Device device = pick.settle_for_model(model, GpuUse::Forward, adapter_gpu_refusal(a.adapter, model.config()));
  const CommandAdapter adapter = load_adapter_for_device(a.adapter, dir, device, model, a.quiet);
  const Tokenizer tok = Tokenizer::from_model(dir);
  EvalDevice ed(device);  // on the GPU: the forward and the continuation NLLs there, the sums and argmaxes here
  LogitsSource src = ed.source(model, adapter.get(), a.adapter);
  const ChoiceResult r = evaluate_choices(src, tok, items, a.batch_tokens, a.quiet);
  const int64_t n = static_cast<int64_t>(items.size());
  nlohmann::ordered_json j = {{"model", dir},       {"data", a.data},         {"items", n},
                              {"acc", r.acc},       {"acc_stderr", r.acc_stderr},
                              {"acc_norm", r.acc_norm}, {"acc_norm_stderr", r.acc_norm_stderr},
                              {"tokens", r.tokens}, {"seconds", r.seconds}};
  if (!a.adapter.empty()) j["adapter"] = a.adapter;
  if (a.json) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("acc %.4f ± %.4f, acc_norm %.4f ± %.4f  (%lld items of %s, %lld tokens, %.1fs)\n", r.acc,
                r.acc_stderr, r.acc_norm, r.acc_norm_stderr, (long long)n, a.data.c_str(), (long long)r.tokens,
                r.seconds);
  }
  if (!a.json_out.empty()) write_file_atomic(a.json_out, j.dump(2) + "\n");
  if (!a.predictions.empty()) {  // per item: where, label, each choice's loglik, both predictions
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) {
      out += nlohmann::ordered_json({{"where", items[i].where},
                                     {"label", items[i].label},
                                     {"loglik", r.items[i].loglik},
                                     {"pred", r.items[i].pred},
                                     {"pred_norm", r.items[i].pred_norm}})
                 .dump() +
             "\n";
    }
    write_file_atomic(a.predictions, out);
  }
}

}  // namespace

void register_choices(CLI::App& app) {
  auto a = std::make_shared<ChoiceArgs>();
  CLI::App* cmd = app.add_subcommand(
      "multiple-choice", "Accuracy on multiple-choice items (ARC, or context/choices/label JSONL), lm-eval's scoring");
  cmd->add_option("--model,-m", a->model, "model directory, repo id (offline cache) or .gguf file")->required();
  cmd->add_option("--adapter,-a", a->adapter, "LoRA adapter directory (PEFT layout): applied unmerged (the base kept as stored; DoRA and MoE-expert adapters merged in memory on the CPU)");
  cmd->add_option("--data,-d", a->data,
                  "JSONL items: {\"context\", \"choices\": [...], \"label\"} or ARC's {\"question\", \"choices\": "
                  "{\"text\", \"label\"}, \"answerKey\"}")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--batch-tokens", a->batch_tokens, "tokens forwarded at once (whole choices)")
      ->check(at_least(1, "POSITIVE"))
      ->capture_default_str();
  cmd->add_option("--predictions", a->predictions, "write each item's choice log-likelihoods and predictions (JSONL)");
  cmd->add_flag("--json", a->json, "print one JSON object instead of the human line");
  cmd->add_option("--json-out", a->json_out, "also write the JSON result to this file");
  cmd->add_flag("--quiet,-q", a->quiet, "no progress bar");
  add_common_options(cmd, &a->common);
  cmd->callback([a]() { run_choices(*a); });
}

}  // namespace qwenq::cli
