// The training loop end to end on the CPU: the learning-rate schedule against its formula; a run on a random
// model lowers the loss of the text it sees; a run stopped mid-way and resumed gives bit-identical losses and the
// same final adapter as an uninterrupted run; a diverging run stops with the step named; on the real stories260K
// with the shared Alpaca data, training lowers the held-out loss, on a bf16 base and on a 4-bit (GPTQ-layout RTN
// and NF4) base.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_training.h"
#include "trainer/lora_merge.h"
#include "trainer/lora_model.h"
#include "trainer/quantize_model.h"
#include "trainer/train_checkpoint.h"
#include "trainer/sft_data.h"
#include "trainer/tokenizer.h"
#include "trainer/train_loop.h"

namespace qwenq {
namespace {

using test::error_of;

std::string make_model(const std::string& dir) { return test::make_tiny_model(dir, /*seed=*/2); }

using test::losses_of;
using test::make_text_data;

// The small LoRA run of tests/support/test_training.h, 12 steps unless a test changes it.
TrainOptions base_options(const std::string& model, const std::string& data, const std::string& out) {
  return test::small_lora_options(model, data, out, 12);
}

TEST(TrainLoop, ScheduleFollowsItsFormula) {
  TrainOptions o;
  o.lr = 1e-3;
  o.warmup_steps = 4;
  o.min_lr_ratio = 0.1;
  EXPECT_DOUBLE_EQ(lr_at_step(o, 0, 20), 0.0);  // transformers' warm-up: step / warmup
  EXPECT_DOUBLE_EQ(lr_at_step(o, 1, 20), 1e-3 * 1 / 4);
  EXPECT_DOUBLE_EQ(lr_at_step(o, 3, 20), 1e-3 * 3 / 4);
  EXPECT_DOUBLE_EQ(lr_at_step(o, 4, 20), 1e-3);  // cosine at p = 0
  EXPECT_NEAR(lr_at_step(o, 12, 20), 1e-3 * (0.1 + 0.9 * 0.5), 1e-15);  // p = 1/2
  EXPECT_NEAR(lr_at_step(o, 20, 20), 1e-4, 1e-15);
  o.scheduler = "linear";
  EXPECT_NEAR(lr_at_step(o, 12, 20), 1e-3 * (1 - 0.9 * 0.5), 1e-15);
  o.scheduler = "constant";
  o.min_lr_ratio = 0;  // (refused for constant: it has no minimum)
  EXPECT_DOUBLE_EQ(lr_at_step(o, 15, 20), 1e-3);
}

// --eval-every / --save-every below 1 are fractions of the run, rounded up as transformers' Trainer rounds eval_steps
// (math.ceil(max_steps · eval_steps)); above 1 whole steps.
TEST(TrainLoop, IntervalsTakeFractionsOfTheRun) {
  EXPECT_EQ(run_interval(0, 100), 0);
  EXPECT_EQ(run_interval(5, 100), 5);
  EXPECT_EQ(run_interval(0.1, 100), 10);
  EXPECT_EQ(run_interval(0.1, 95), 10);   // ceil(9.5)
  EXPECT_EQ(run_interval(0.25, 8), 2);
  EXPECT_EQ(run_interval(0.01, 20), 1);   // ceil(0.2)
  const std::string dir = test::scratch_dir();
  TrainOptions o;
  o.out_dir = dir + "/run";
  for (double bad : {2.5, -1.0, static_cast<double>(NAN)}) {
    o.eval_every = bad;
    EXPECT_NE(error_of([&] { check_train_options(o); }).find("--eval-every must be a whole number"), std::string::npos)
        << bad;
  }
  o.eval_every = 0;
  o.save_every = 1.5;
  EXPECT_NE(error_of([&] { check_train_options(o); }).find("--save-every"), std::string::npos);
}

// The metric's flags are refused when nothing watches the metric (the best model, early stopping, reduce_lr_on_plateau),
// and accepted with any of them.
TEST(TrainLoop, MetricFlagsNeedSomethingThatWatchesTheMetric) {
  const std::string dir = test::scratch_dir();
  TrainOptions o;
  o.out_dir = dir + "/run";
  o.best.metric = "loss";
  EXPECT_NE(error_of([&] { check_train_options(o); }).find("--metric-for-best-model has no effect without"),
            std::string::npos);
  o.best.metric.clear();
  o.best.greater_is_better = 0;
  EXPECT_NE(error_of([&] { check_train_options(o); }).find("--greater-is-better / --no-greater-is-better has no"),
            std::string::npos);
  o.best.greater_is_better = -1;
  o.best.threshold = 0.01;
  EXPECT_NE(error_of([&] { check_train_options(o); }).find("--early-stopping-threshold has no effect"),
            std::string::npos);
  o.best.metric = "loss";
  o.eval_every = 5;
  o.data.eval_count = 4;
  for (const auto& with : {std::function<void(TrainOptions*)>([](TrainOptions* t) { t->best.patience = 2; }),
                           std::function<void(TrainOptions*)>([](TrainOptions* t) { t->best.load_best = true; }),
                           std::function<void(TrainOptions*)>([](TrainOptions* t) { t->scheduler = "reduce_lr_on_plateau"; })}) {
    TrainOptions t = o;
    with(&t);
    EXPECT_EQ(error_of([&] { check_train_options(t); }), "<no error>");
  }
}

TEST(TrainLoop, LowersTheLossOfARandomModel) {
  const std::string root = test::scratch_dir();
  TrainOptions o = base_options(make_model(root + "/m"), make_text_data(root + "/d.jsonl", 200), root + "/run");
  o.max_steps = 25;
  const TrainReport r = train_lora(o);
  EXPECT_EQ(r.steps, 25);
  ASSERT_GE(r.first_eval_loss, 0);
  std::printf("random tiny model: eval loss %.4f -> %.4f\n", r.first_eval_loss, r.eval_loss);
  EXPECT_LT(r.eval_loss, r.first_eval_loss - 0.25);  // measured: 5.80 -> 5.35
  for (const char* f : {"adapter_model.safetensors", "adapter_config.json", "metrics.jsonl", "loss_curve.svg"}) {
    EXPECT_TRUE(file_exists(root + "/run/" + f)) << f;
  }
  EXPECT_EQ(losses_of(root + "/run/metrics.jsonl").size(), 25u);
  // The last record is the run's summary; a CPU run has no device peaks.
  const std::string text = read_file(root + "/run/metrics.jsonl");
  const size_t last = text.rfind('\n', text.size() - 2);
  const auto summary = nlohmann::json::parse(text.substr(last == std::string::npos ? 0 : last + 1));
  EXPECT_EQ(summary.value("step", int64_t{0}), 25);
  EXPECT_TRUE(summary.value("final", false));
  EXPECT_FALSE(summary.contains("loss"));
  EXPECT_EQ(summary.value("peak_rss_bytes", uint64_t{0}), r.peak_rss);
  EXPECT_FALSE(summary.contains("device_peak_allocated_bytes"));
  EXPECT_FALSE(summary.contains("device_peak_reserved_bytes"));
  EXPECT_EQ(r.device_peak_allocated, -1);
  EXPECT_EQ(r.device_peak_reserved, -1);
  // A second run into the same directory is refused unless resumed or overwritten.
  EXPECT_NE(error_of([&] { train_lora(o); }).find("holds a previous run (pass --resume to continue it, or --overwrite)"),
            std::string::npos);
}

// --eval-data: every record of its own file is the held-out set (nothing split off --data): the first and final eval
// losses are sft_eval_loss (qwen-qlora eval's function) of the initial (B = 0) and the saved adapter on those
// examples; with a split asked for too, refused before any work.
TEST(TrainLoop, EvalDataFileIsTheHeldOutSet) {
  const std::string root = test::scratch_dir();
  const std::string model_dir = make_model(root + "/m");
  TrainOptions o = base_options(model_dir, make_text_data(root + "/train.jsonl", 120), root + "/run");
  o.data.eval_count = 0;
  o.eval_data_path = make_text_data(root + "/eval.jsonl", 20);
  o.max_steps = 6;
  const TrainReport r = train_lora(o);
  const QwenModel model(model_dir);
  SftDataOptions dopt = o.data;
  dopt.max_len = data_max_len(o);
  const SftDataset e = load_sft_dataset(o.eval_data_path, Tokenizer::from_dir(model_dir), dopt);
  ASSERT_EQ(e.train.size(), 20u);
  const LoraAdapter zero(lora_dims_of(model.config()), o.lora);
  const auto [first, n] = sft_eval_loss(model, zero, e.train, o);
  EXPECT_GT(n, 0);
  EXPECT_NEAR(r.first_eval_loss, first, 1e-12);
  const LoraAdapter trained = load_adapter_for_base(root + "/run", model_dir, model.config(), AdapterUse::Apply);
  EXPECT_NEAR(r.eval_loss, sft_eval_loss(model, trained, e.train, o).first, 1e-9);
  EXPECT_LT(r.eval_loss, r.first_eval_loss);
  o.data.eval_count = 8;
  o.overwrite = true;
  EXPECT_NE(error_of([&] { train_lora(o); }).find("is the held-out set: give it or --eval-fraction / --eval-count, not both"),
            std::string::npos);
}

TEST(TrainLoop, ResumeIsBitExact) {
  const std::string root = test::scratch_dir();
  const std::string model = make_model(root + "/m"), data = make_text_data(root + "/d.jsonl", 120);
  TrainOptions full = base_options(model, data, root + "/full");
  full.save_every = 4;
  full.lora.dropout = 0.1;  // dropout masks must come back too
  full.grad_accum = 2;
  train_lora(full);
  TrainOptions part = full;
  part.out_dir = root + "/part";
  part.stop_after = 7;  // "killed" after step 7: the newest checkpoint is step 4
  train_lora(part);
  EXPECT_FALSE(file_exists(part.out_dir + "/adapter_model.safetensors"));
  part.stop_after = 0;
  part.resume = true;
  const TrainReport r = train_lora(part);
  EXPECT_EQ(r.start_step, 4);
  EXPECT_EQ(losses_of(full.out_dir + "/metrics.jsonl"), losses_of(part.out_dir + "/metrics.jsonl"));
  test::expect_same_adapter_file(full.out_dir, part.out_dir);
  // Only the newest save_total_limit (2) checkpoints remain: 8 and 12.
  EXPECT_FALSE(dir_exists(full.out_dir + "/checkpoint-4"));
  EXPECT_TRUE(dir_exists(full.out_dir + "/checkpoint-8"));
  EXPECT_TRUE(dir_exists(full.out_dir + "/checkpoint-12"));
  // Other settings cannot resume this run.
  TrainOptions other = part;
  other.lr = 1e-2;
  const std::string lr_err = error_of([&] { train_lora(other); });
  EXPECT_NE(lr_err.find("was made with other settings"), std::string::npos) << lr_err;
  // One line naming the one difference and its flag (it was both whole settings objects, on two more lines).
  EXPECT_NE(lr_err.find("\"lr\" (--lr): saved 0.003, now 0.01"), std::string::npos) << lr_err;
  EXPECT_EQ(lr_err.find('\n'), std::string::npos) << lr_err;
  EXPECT_EQ(lr_err.find("\"seq_len\""), std::string::npos) << lr_err;
  // Nor other activation-checkpoint storage (block inputs in bf16 vs fp32 change the numbers).
  TrainOptions fp32 = part;
  fp32.bf16_checkpoints = !part.bf16_checkpoints;
  const std::string err = error_of([&] { train_lora(fp32); });
  EXPECT_NE(err.find("was made with other settings"), std::string::npos) << err;
  EXPECT_NE(err.find("\"checkpoints\""), std::string::npos) << err;
  // Nor other loss masks.
  TrainOptions prompt = part;
  prompt.data.templ.train_on_prompt = true;
  const std::string prompt_err = error_of([&] { train_lora(prompt); });
  EXPECT_NE(prompt_err.find("\"train_on_prompt\" (--train-on-prompt): saved false, now true"), std::string::npos) << prompt_err;
  // A checkpoint written before that setting existed (no "checkpoints" key) kept fp32 block inputs: it resumes with
  // fp32 checkpoints only.
  const std::string state_path = latest_checkpoint(part.out_dir) + "/trainer_state.json";
  nlohmann::json state = nlohmann::json::parse(read_file(state_path));
  ASSERT_EQ(state["options"]["checkpoints"], "bf16");
  state["options"].erase("checkpoints");
  state["options"].erase("thinking");  // from before the chat options: their defaults
  state["options"].erase("train_on_prompt");
  state["options"].erase("alpaca_chat");
  state["options"].erase("mask_history");
  write_file_atomic(state_path, state.dump());
  EXPECT_NE(error_of([&] { train_lora(part); }).find("was made with other settings"), std::string::npos);
  TrainOptions legacy = part;
  legacy.bf16_checkpoints = false;
  EXPECT_EQ(error_of([&] { train_lora(legacy); }), "<no error>");
}

// Alpaca records whose prompt alone is longer than seq_len (every other one) against short ones. By default
// (--max-len 0 = --seq-len) the long ones are dropped when the data loads and every step trains on some targets;
// with --max-len above --seq-len (2048, the former default) the batcher cuts them to seq_len and a step made of one
// of them has no target at all (loss 0, nothing learned), which the default once did silently.
TEST(TrainLoop, ExamplesAreCutAtSeqLenSoNoStepIsWithoutTargets) {
  const std::string root = test::scratch_dir();
  nlohmann::json records = nlohmann::json::array();
  for (int i = 0; i < 24; ++i) {
    std::string instruction = "say the word " + std::to_string(i);
    if (i % 2) for (int w = 0; w < 20; ++w) instruction += " and then some more words";  // ~600 tokens
    records.push_back({{"instruction", instruction}, {"input", ""}, {"output", "word " + std::to_string(i) + "."}});
  }
  const std::string data = root + "/alpaca.json";
  write_file_atomic(data, records.dump());
  const std::string model = make_model(root + "/m");
  TrainOptions o = base_options(model, data, root + "/run");
  o.batch_size = 1;
  o.seq_len = 400;  // the short records fit (~165 tokens here), the long ones do not
  o.data.eval_count = 0;
  ASSERT_EQ(o.data.max_len, 0);  // the default: --seq-len
  train_lora(o);
  const std::vector<double> by_default = test::step_metric(o.out_dir + "/metrics.jsonl", "targets");
  ASSERT_EQ(by_default.size(), 12u);
  for (size_t i = 0; i < by_default.size(); ++i) EXPECT_GT(by_default[i], 0) << "step " << i + 1;
  o.out_dir = root + "/run2048";
  o.data.max_len = 2048;
  train_lora(o);
  const std::vector<double> cut_late = test::step_metric(o.out_dir + "/metrics.jsonl", "targets");
  EXPECT_NE(std::count(cut_late.begin(), cut_late.end(), 0.0), 0) << "no step without targets: the data does not "
                                                                   "exercise the cut";
}

TEST(TrainLoop, DivergenceStopsWithTheStepNamed) {
  const std::string root = test::scratch_dir();
  TrainOptions o = base_options(make_model(root + "/m"), make_text_data(root + "/d.jsonl", 60), root + "/run");
  o.lr = 1e30;
  o.max_grad_norm = 0;
  o.save_every = 1;
  const std::string err = error_of([&] { train_lora(o); });
  EXPECT_NE(err.find("is not finite"), std::string::npos) << err;
  EXPECT_NE(err.find("step "), std::string::npos) << err;
  EXPECT_NE(err.find("the last good checkpoint is"), std::string::npos) << err;
}

// The acceptance on the real model: stories260K on the shared Alpaca set, bf16-equivalent (fp32) and 4-bit bases.
TEST(TrainLoop, Stories260KOnAlpacaLowersTheHeldOutLoss) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string root = test::scratch_dir();
  const std::string fp32 = test::import_stories260k(root + "/fp32");
  QuantizeOptions q;
  q.model_dir = fp32;
  q.out_dir = root + "/nf4";
  q.method = QuantizeOptions::Method::Nf4;
  q.quiet = true;
  quantize_model(q);
  for (const std::string& base : {fp32, q.out_dir}) {
    SCOPED_TRACE(base);
    TrainOptions o = base_options(base, test::shared_data_dir() + "/alpaca/alpaca_en_demo.json", base + "-run");
    o.seq_len = 256;
    o.batch_size = 4;
    o.max_steps = 30;
    o.lr = 2e-3;
    o.data.eval_count = 32;
    const TrainReport r = train_lora(o);
    std::printf("stories260K (%s) on Alpaca, 30 steps: held-out loss %.4f -> %.4f\n", base.c_str(), r.first_eval_loss, r.eval_loss);
    EXPECT_LT(r.eval_loss, r.first_eval_loss - 0.05);
  }
}

}  // namespace
}  // namespace qwenq
