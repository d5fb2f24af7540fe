// qwen-qlora eval: the held-out loss `train` reports, for any base and adapter on any SFT data: the records read and
// rendered as train renders them (format, template flags, --max-len), optionally train's own held-out split
// (--eval-count / --eval-fraction with train's --seed), batched as train batches its evaluation, and the
// token-weighted mean next-token NLL over the loss tokens (trainer/train_loop.h, sft_eval_loss). Without --adapter
// the base alone (a zero adapter: train's step-0 evaluation of a PEFT-initialised run). Compares checkpoints,
// adapters on 4-bit and bf16 bases, or a base before and after fine-tuning on the same answers. --device cuda
// computes the losses with the GPU trainer's forward (trainer/lora_model_cuda.h), as train --device cuda evaluates.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "tools/cli_common.h"
#include "tools/qlora_cli.h"
#include "trainer/lora_merge.h"
#include "trainer/lora_model.h"
#include "trainer/model_dir.h"
#include "trainer/sft_data.h"
#include "trainer/tokenizer.h"
#include "trainer/train_loop.h"

namespace qwenq::cli {

namespace {

struct EvalArgs {
  std::string model, adapter, json_out;
  bool json = false;
  SftFlags sft;  // train's data and batching flags
  TrainOptions opt;
  CommonOptions common;
};

void run_sft_eval(EvalArgs& a) {
  DevicePick pick(a.common, "qwen-qlora eval");
  if (!a.json_out.empty()) check_output_dir_exists("--json-out", a.json_out);
  TrainOptions& o = a.opt;
  o.model_dir = resolve_model_dir(a.model);
  apply_sft_flags(a.sft, &o);
  const auto t0 = std::chrono::steady_clock::now();
  QwenModel model(o.model_dir);
  // LoraModelCuda's loss on the GPU, as train evaluates there.
  o.use_cuda = pick.settle_for_model(model, GpuUse::Train) == Device::Cuda;
  const Tokenizer tok = Tokenizer::from_model(o.model_dir);
  SftDataOptions dopt = o.data;
  dopt.max_len = data_max_len(o);
  SftDataset data = load_sft_dataset(o.data_path, tok, dopt);
  const bool split = o.data.eval_fraction > 0 || o.data.eval_count > 0;
  const std::vector<SftExample>& examples = split ? data.eval : data.train;  // no split: every record, file order
  // A zero adapter adds exactly 0 to every adapted Linear: the base's loss through the same step.
  const LoraAdapter adapter = a.adapter.empty()
                                  ? LoraAdapter(lora_dims_of(model.config()), LoraConfig())
                                  : load_adapter_for_base(a.adapter, o.model_dir, model.config(), AdapterUse::Apply);
  const auto [loss, tokens] = sft_eval_loss(model, adapter, examples, o);
  QWENQ_CHECK(tokens > 0, o.data_path << ": no loss tokens to evaluate (" << data.stats.summary() << ")");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::ordered_json j = {{"model", o.model_dir},
                              {"adapter", a.adapter.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(a.adapter)},
                              {"data", o.data_path},
                              {"split", split ? "eval" : "all"},
                              {"examples", examples.size()},
                              {"loss_tokens", tokens},
                              {"loss", loss},
                              {"perplexity", std::exp(loss)},
                              {"seconds", seconds},
                              {"peak_rss_bytes", peak_rss_bytes()}};
  if (a.json) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("eval loss %.4f (perplexity %.4f) over %zu %sexamples of %s, %lld loss tokens; %s%s, %.1fs, peak "
                "RSS %s\n",
                loss, std::exp(loss), examples.size(), split ? "held-out " : "", o.data_path.c_str(),
                (long long)tokens, a.adapter.empty() ? "the base alone" : "adapter ", a.adapter.c_str(), seconds,
                format_bytes(peak_rss_bytes()).c_str());
  }
  if (!a.json_out.empty()) write_file_atomic(a.json_out, j.dump(2) + "\n");
}

}  // namespace

void register_qlora_eval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  TrainOptions& o = a->opt;
  CLI::App* c = app.add_subcommand(
      "eval", "Held-out loss of a base (plus a LoRA adapter) on SFT data, as train computes its eval loss");
  c->add_option("--model,-m", a->model, "base model directory or repo id (any layout train reads)")->required();
  c->add_option("--adapter,-a", a->adapter, "LoRA adapter directory (PEFT layout); without it, the base alone");
  c->add_option("--data,-d", o.data_path, "SFT data: JSONL/JSON with text, Alpaca or chat messages")
      ->required()
      ->check(CLI::ExistingFile);
  add_sft_data_flags(c, &a->sft, &o);  // --eval-fraction / --eval-count: train's held-out split, not every record
  c->add_option("--seed", o.seed, "train's --seed (its held-out split)")->capture_default_str();
  c->add_option("--seq-len", o.seq_len, "tokens per row (as train)")->capture_default_str();
  c->add_option("--batch-size", o.batch_size, "rows per batch (as train)")
      ->check(at_least(1, "POSITIVE"))
      ->capture_default_str();
  c->add_option("--batching", a->sft.batch_mode, "packing or padding (as train)")->capture_default_str();
  c->add_option("--eval-batches", o.eval_batches, "at most N batches (0: all)")
      ->check(at_least(0, "NONNEGATIVE"))
      ->capture_default_str();
  c->add_flag("--fp32-checkpoints", a->sft.fp32_checkpoints, "block inputs kept in fp32, as train --fp32-checkpoints");
  c->add_flag("--json", a->json, "print one JSON object instead of the human line");
  c->add_option("--json-out", a->json_out, "also write the JSON result to this file");
  add_common_options(c, &a->common);
  c->callback([a]() { run_sft_eval(*a); });
}

}  // namespace qwenq::cli
