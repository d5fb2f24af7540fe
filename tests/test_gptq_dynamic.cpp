// GPTQModel's per-module "dynamic" rules (QuantConfig::gptq_dynamic): a GPTQ checkpoint whose down_proj Linears are
// 8-bit per channel ("+:" rule), whose first q_proj is left dense ("-:" rule) and whose other Linears are the
// config's 4-bit g32 loads every Linear with the ŵ of the checkpoint it was taken from, bit for bit (spliced here from
// `rtn` outputs of one tiny model), and computes. `plan` refuses it (one setting per model), naming the rules.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "core/safetensors.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/memory_plan.h"
#include "trainer/quantize_model.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

// Copies every tensor of `src` whose name `take` accepts into w.
template <typename Take>
void copy_tensors(const std::string& src, SafetensorsWriter* w, Take take) {
  SafetensorsFile f(path_join(src, "model.safetensors"));
  for (const std::string& name : f.names()) {
    if (!take(name)) continue;
    const TensorView& t = f.get(name);
    const uint8_t* p = static_cast<const uint8_t*>(t.data);
    w->add_owned(name, t.dtype, t.shape, std::vector<uint8_t>(p, p + t.nbytes()));
  }
}

TEST(GptqDynamic, PerModuleBitsAndSkipsLoadAsTheirSources) {
  const std::string root = test::scratch_dir();
  const std::string dense = test::make_tiny_model(root + "/dense", 9);
  QuantizeOptions q;
  q.model_dir = dense;
  q.out_dir = root + "/g4";
  q.group_size = 32;
  q.quiet = true;
  quantize_model(q);
  q.out_dir = root + "/g8";
  q.bits = 8;
  q.group_size = -1;
  quantize_model(q);

  const std::string mixed = root + "/mixed";
  std::filesystem::create_directories(mixed);
  for (const auto& e : std::filesystem::directory_iterator(root + "/g4")) {
    if (e.path().filename() != "model.safetensors") std::filesystem::copy_file(e.path(), mixed + "/" + e.path().filename().string());
  }
  const std::string skipped = "model.layers.0.self_attn.q_proj";
  const auto is_down = [](const std::string& n) { return n.find(".mlp.down_proj.") != std::string::npos; };
  SafetensorsWriter w;
  copy_tensors(root + "/g4", &w, [&](const std::string& n) { return !is_down(n) && !starts_with(n, skipped + "."); });
  copy_tensors(root + "/g8", &w, [&](const std::string& n) { return is_down(n) && n.find(".bias") == std::string::npos; });
  copy_tensors(dense, &w, [&](const std::string& n) { return n == skipped + ".weight" || n == skipped + ".bias"; });
  w.write(path_join(mixed, "model.safetensors"));
  nlohmann::ordered_json cfg = nlohmann::ordered_json::parse(read_file(path_join(mixed, "config.json")));
  cfg["quantization_config"]["dynamic"] = {{"-:.*layers\\.0\\.self_attn\\.q_proj", nlohmann::ordered_json::object()},
                                           {"+:.*down_proj", {{"bits", 8}, {"group_size", -1}}}};
  write_file_atomic(path_join(mixed, "config.json"), cfg.dump(2));

  const QwenModel m(mixed), g4(root + "/g4"), g8(root + "/g8"), d(dense);
  int64_t from_g8 = 0, from_dense = 0, from_g4 = 0;
  for (int64_t l = 0; l < m.config().num_layers; ++l) {
    for (const LayerLinear& ll : layer_linears(m.config(), l)) {
      const std::string prefix = "model.layers." + std::to_string(l) + "." + ll.name;
      const LinearWeight& got = layer_linear(m.weights().layers[l], ll.decoder_index);
      const QwenModel& src = prefix == skipped ? d : is_down(prefix + ".") ? g8 : g4;
      (prefix == skipped ? from_dense : is_down(prefix + ".") ? from_g8 : from_g4) += 1;
      const LinearWeight& want = layer_linear(src.weights().layers[l], ll.decoder_index);
      if (prefix == skipped) {
        EXPECT_TRUE(got.is_dense()) << prefix;
      } else {
        ASSERT_TRUE(got.packed) << prefix;
        EXPECT_EQ(got.packed->bits, is_down(prefix + ".") ? 8 : 4) << prefix;
      }
      const std::vector<float> a = got.dequantize(), b = want.dequantize();
      ASSERT_EQ(a.size(), b.size()) << prefix;
      EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << prefix << ": ŵ differs from its source";
    }
  }
  EXPECT_EQ(from_dense, 1);
  EXPECT_EQ(from_g8, m.config().num_layers);
  EXPECT_GT(from_g4, from_g8);
  const std::vector<float> logits = m.forward_logits(test::random_batch({7}, m.config().vocab_size, 3));
  for (float v : logits) ASSERT_TRUE(std::isfinite(v));

  PlanInput in;
  test::expect_error([&] { plan_base_from_model_dir(mixed, &in); }, {mixed, "\"dynamic\" rules give some modules"});
}

}  // namespace
}  // namespace qwenq
