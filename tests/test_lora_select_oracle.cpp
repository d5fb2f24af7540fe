// The C++ half of tests/oracle/test_lora_select_oracle.py: adapters made by PEFT with its finer module selection
// (layers_to_transform, exclude_modules, rank_pattern, alpha_pattern, regex target_modules) read by our loader, which
// must adapt the modules PEFT adapted with the same r and scaling, and give PEFT's logits through the CPU trainer's
// forward, the unmerged inference forward and the model merged in memory; then saved again for PEFT to read.
// Skipped unless the script points QWENQ_ORACLE_LORA_SELECT_DIR at its fixtures.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>

#include "core/files.h"
#include "core/json_file.h"
#include "core/safetensors.h"
#include "lora/lora_select.h"
#include "lora/peft_io.h"
#include "trainer/lora_inference.h"
#include "trainer/lora_merge.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

// fp32 on both sides; only summation orders differ.
constexpr double kLogitRelTol = 1e-5;

// max |got - want| / max |want|, printed under `what`.
double rel_error(const std::vector<float>& got, const TensorView& want, const std::string& what) {
  EXPECT_EQ(static_cast<int64_t>(got.size()), want.numel());
  double scale = 0, worst = 0;
  for (int64_t i = 0; i < want.numel() && i < static_cast<int64_t>(got.size()); ++i) {
    scale = std::max(scale, (double)std::fabs(want.as<float>()[i]));
    worst = std::max(worst, (double)std::fabs(got[i] - want.as<float>()[i]));
  }
  std::printf("%s: max |ours - peft| = %.3g, max |logit| = %.3g, relative %.3g\n", what.c_str(), worst, scale,
              worst / scale);
  return worst / scale;
}

void check_case(const std::string& root, const std::string& name) {
  SCOPED_TRACE(name);
  const std::string dir = path_join(root, name);
  QwenModel model(path_join(root, "base"));
  const LoraAdapter adapter = load_peft_adapter(path_join(dir, "peft_adapter"), lora_dims_of(model.config()));
  EXPECT_TRUE(adapter.config().selects_finely());
  EXPECT_FALSE(adapter.gpu_refusal().empty());  // each case is one the GPU paths do not lay out

  // The modules PEFT adapted, with its r and scaling.
  const nlohmann::json peft = read_json_object(path_join(dir, "modules.json"));
  std::map<std::string, std::pair<int64_t, double>> ours;
  for (size_t i = 0; i < adapter.slots().size(); ++i) {
    ours[lora_module_key(adapter.slots()[i])] = {adapter.weights(i).r, adapter.weights(i).scaling};
  }
  EXPECT_EQ(ours.size(), peft.size());
  for (auto it = peft.begin(); it != peft.end(); ++it) {
    const auto hit = ours.find(it.key());
    if (hit == ours.end()) {
      ADD_FAILURE() << "PEFT adapted " << it.key() << ", we did not";
      continue;
    }
    EXPECT_EQ(hit->second.first, it.value()[0].get<int64_t>()) << it.key();
    EXPECT_EQ(hit->second.second, it.value()[1].get<double>()) << it.key();
  }

  SafetensorsFile expected(path_join(dir, "expected.safetensors"));
  const TensorView& ids = expected.get("input_ids");
  const std::vector<int32_t> seq(ids.as<int32_t>(), ids.as<int32_t>() + ids.numel());
  const PackedBatch batch = PackedBatch::from_sequences({seq});
  const TensorView& want = expected.get("logits");

  save_peft_adapter(path_join(dir, "ours"), adapter);
  EXPECT_LE(rel_error(lora_forward_logits(model, adapter, batch), want, name + ": trainer forward (unmerged)"),
            kLogitRelTol);
  {
    const LoraInferenceLayout layout = lora_inference_layout(adapter, model.config(), dir);
    EXPECT_FALSE(layout.gpu_refusal.empty());
    model.attach_adapter(&layout);
    EXPECT_LE(rel_error(model.forward_logits(batch), want, name + ": inference forward (unmerged)"), kLogitRelTol);
    model.attach_adapter(nullptr);
  }
  merge_adapter_in_memory(model, adapter);
  EXPECT_LE(rel_error(model.forward_logits(batch), want, name + ": merged in memory"), kLogitRelTol);
}

TEST(LoraSelectOracle, PeftSelectionsReadRunAndSaved) {
  const char* root = std::getenv("QWENQ_ORACLE_LORA_SELECT_DIR");
  if (!root) GTEST_SKIP() << "QWENQ_ORACLE_LORA_SELECT_DIR not set (run tests/oracle/test_lora_select_oracle.py)";
  for (const char* name : {"layers", "patterns", "regex", "paths", "dora"}) check_case(root, name);
}

}  // namespace
}  // namespace qwenq
