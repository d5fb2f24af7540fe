// `qwen-qlora pissa-to-lora` (lora/pissa_convert.h): a trained PiSSA adapter and its initial one become one LoRA adapter
// of rank 2r whose update is s·(B A − B0 A0): the tensors concatenated bit for bit (A' = [A ; A0], B' = [B | −B0]),
// the scaling kept (alpha doubled, or times √2 with rsLoRA), PEFT's own "pissa" configs read, the wrong inputs refused
// by name with nothing written. PEFT's save_pretrained(path_initial_model_for_weight_conversion=...) is the oracle in
// tests/oracle/test_pissa_oracle.py.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/files.h"
#include "lora/peft_io.h"
#include "lora/pissa_convert.h"
#include "tests/support/safetensors_edit.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_training.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

using test::error_of;

// s'·B'A' against s·(B A − B0 A0) in double: the two sums differ in order only.
constexpr double kUpdateTol = 1e-12;

struct Adapters {
  QwenConfig config;
  std::string init, trained;
};

// A tiny model's all-linear adapters: an "initial" and a "trained" one (B random in both), saved under root.
Adapters save_pair(const std::string& root, bool rslora) {
  Adapters a;
  a.config = QwenModel(test::make_tiny_model(root + "/dense", 3)).config();
  const std::vector<std::string> all = parse_lora_targets("all-linear");
  a.init = root + "/init";
  a.trained = root + "/trained";
  save_peft_adapter(a.init, test::adapter_with_random_b(a.config, all, 4, 8, rslora, 1, 0.2f));
  save_peft_adapter(a.trained, test::adapter_with_random_b(a.config, all, 4, 8, rslora, 5, 0.3f));
  return a;
}

TEST(PissaConvert, UpdateIsTheTrainedMinusTheInitialAdapter) {
  for (const bool rslora : {false, true}) {
    SCOPED_TRACE(rslora ? "rsLoRA" : "LoRA");
    const std::string root = test::scratch_dir();
    const Adapters a = save_pair(root, rslora);
    const PissaConvertReport rep = convert_pissa_to_lora(a.init, a.trained, root + "/lora", false);
    const LoraDims dims = lora_dims_of(a.config);
    const LoraAdapter init = load_peft_adapter(a.init, dims), trained = load_peft_adapter(a.trained, dims);
    const LoraAdapter lora = load_peft_adapter(root + "/lora", dims);
    EXPECT_EQ(rep.linears, 7 * a.config.num_layers);
    EXPECT_EQ(lora.uniform_rank(), 8);
    EXPECT_EQ(lora.config().use_rslora, rslora);
    EXPECT_DOUBLE_EQ(lora.config().alpha, rslora ? 8 * std::sqrt(2.0) : 16.0);
    EXPECT_NEAR(lora.uniform_scaling(), trained.uniform_scaling(), 1e-15);
    ASSERT_EQ(lora.slots().size(), trained.slots().size());
    for (size_t i = 0; i < lora.slots().size(); ++i) {
      SCOPED_TRACE(lora.slots()[i].path);
      const LoraWeights &c = lora.weights(i), &t = trained.weights(i), &z = init.weights(i);
      const int64_t r = t.r, K = t.K, N = t.N;
      std::vector<float> a_expected(t.A);
      a_expected.insert(a_expected.end(), z.A.begin(), z.A.end());
      EXPECT_EQ(c.A, a_expected);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t j = 0; j < r; ++j) {
          ASSERT_EQ(c.B[n * 2 * r + j], t.B[n * r + j]);
          ASSERT_EQ(c.B[n * 2 * r + r + j], -z.B[n * r + j]);
        }
      double worst = 0, scale = 0;
      for (int64_t n = 0; n < N; n += 7)
        for (int64_t k = 0; k < K; k += 5) {
          double got = 0, want = 0;
          for (int64_t j = 0; j < 2 * r; ++j) got += double(c.B[n * 2 * r + j]) * c.A[j * K + k];
          for (int64_t j = 0; j < r; ++j)
            want += double(t.B[n * r + j]) * t.A[j * K + k] - double(z.B[n * r + j]) * z.A[j * K + k];
          worst = std::max(worst, std::fabs(lora.uniform_scaling() * got - trained.uniform_scaling() * want));
          scale = std::max(scale, std::fabs(trained.uniform_scaling() * want));
        }
      EXPECT_LE(worst, kUpdateTol * scale);
    }
  }
}

// PEFT saves a trained PiSSA adapter with init_lora_weights "pissa" (or "pissa_niter_<n>"), which loading refuses
// (PEFT would split the base again); the conversion reads it as an ordinary adapter.
TEST(PissaConvert, ReadsPeftsPissaConfig) {
  const std::string root = test::scratch_dir();
  const Adapters a = save_pair(root, false);
  const std::string cfg = path_join(a.trained, "adapter_config.json");
  std::string text = read_file(cfg);
  const size_t at = text.find("\"init_lora_weights\": true");
  ASSERT_NE(at, std::string::npos);
  text.replace(at, std::string("\"init_lora_weights\": true").size(), "\"init_lora_weights\": \"pissa_niter_4\"");
  write_file_atomic(cfg, text);
  EXPECT_NE(error_of([&] { load_peft_adapter(a.trained, lora_dims_of(a.config)); }).find("is not supported"),
            std::string::npos);
  EXPECT_EQ(convert_pissa_to_lora(a.init, a.trained, root + "/lora", false).config.r, 8);
}

TEST(PissaConvert, Refusals) {
  const std::string root = test::scratch_dir();
  const Adapters a = save_pair(root, false);
  const std::string out = root + "/out";
  auto refused = [&](const std::string& init, const std::string& trained, const std::string& expect) {
    const std::string e = error_of([&] { convert_pissa_to_lora(init, trained, out, false); });
    EXPECT_NE(e.find(expect), std::string::npos) << e;
    EXPECT_FALSE(dir_exists(out));
  };
  const std::vector<std::string> all = parse_lora_targets("all-linear");
  save_peft_adapter(root + "/r8", test::adapter_with_random_b(a.config, all, 8, 8, false, 2, 0.2f));
  refused(a.init, root + "/r8", "differ in their configs (r 4 / 8");
  save_peft_adapter(root + "/qv", test::adapter_with_random_b(a.config, {"q_proj", "v_proj"}, 4, 8, false, 2, 0.2f));
  refused(a.init, root + "/qv", "targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj / q_proj,v_proj");
  refused(a.init, root + "/nowhere", "no adapter_config.json in " + root + "/nowhere");
  // A tensor dropped, one misshapen, one that is not an A or B matrix.
  auto copy_of_trained = [&](const std::string& name) {
    std::filesystem::copy(a.trained, root + "/" + name, std::filesystem::copy_options::recursive);
    return root + "/" + name;
  };
  const std::string dropped = copy_of_trained("dropped");
  test::rewrite_adapter_weights(dropped, [](const std::string& n, const TensorView& v, std::vector<uint8_t> b,
                                            SafetensorsWriter& w) {
    if (n.find("layers.1.mlp.up_proj.lora_B") == std::string::npos) w.add_owned(n, v.dtype, v.shape, std::move(b));
  });
  refused(a.init, dropped, "hold different tensors");
  const std::string reshaped = copy_of_trained("reshaped");
  test::rewrite_adapter_weights(reshaped, [](const std::string& n, const TensorView& v, std::vector<uint8_t> b,
                                             SafetensorsWriter& w) {
    std::vector<int64_t> shape = v.shape;
    if (n.find("layers.0.self_attn.q_proj.lora_A") != std::string::npos) std::swap(shape[0], shape[1]);
    w.add_owned(n, v.dtype, shape, std::move(b));
  });
  refused(a.init, reshaped, "self_attn.q_proj.lora_A.weight is [4, 64] in the first and [64, 4] in the second");
  // DoRA: PEFT's conversion has no formula for the magnitudes.
  const std::string dora = copy_of_trained("dora");
  std::string cfg = read_file(path_join(dora, "adapter_config.json"));
  const size_t at = cfg.find("\"use_dora\": false");
  ASSERT_NE(at, std::string::npos);
  cfg.replace(at, std::string("\"use_dora\": false").size(), "\"use_dora\": true");
  write_file_atomic(path_join(dora, "adapter_config.json"), cfg);
  refused(dora, dora, "DoRA adapters cannot be converted");
  // An existing output is kept.
  make_dirs(out);
  const std::string e = error_of([&] { convert_pissa_to_lora(a.init, a.trained, out, false); });
  EXPECT_NE(e.find("exists (pass --overwrite to replace it)"), std::string::npos) << e;
}

}  // namespace
}  // namespace qwenq
