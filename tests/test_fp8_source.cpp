// Quantizing from an FP8 model (trainer/quantize_output.h check_quantizable_source: rtn, nf4, gptq, awq and LoftQ read
// each FP8 Linear as the fp32 ŵ the FP8 model computes with) against the oracle of its F32 twin, the same ŵ stored
// in F32 (tests/support/fp8_fixtures.h, written by the tests' own FP8 quantizer): every quantizer writes the same
// tensors byte for byte and the same quantization_config from both, and drops the FP8 scale tensors; is_source_scale
// names exactly the scale tensors of decoder Linears; rtn --device cuda and integer-quantized sources are refused
// before any output.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "core/safetensors.h"
#include "tests/support/checkpoint_compare.h"
#include "tests/support/fp8_fixtures.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/quantize_model.h"
#include "trainer/quantize_output.h"

namespace qwenq {
namespace {

using nlohmann::json;

// Every tensor of `a` and `b` (directories) byte for byte, none of them an FP8 scale, and their quantization_configs.
void expect_same_output(const std::string& a, const std::string& b) {
  test::expect_same_tensors(a, b);
  for (const std::string& name : Checkpoint(a).names()) {
    EXPECT_EQ(name.find("weight_scale_inv"), std::string::npos) << name << ": the FP8 source's scales passed through";
  }
  EXPECT_EQ(json::parse(read_file(a + "/config.json"))["quantization_config"],
            json::parse(read_file(b + "/config.json"))["quantization_config"]);
}

struct Fp8Source : ::testing::Test {
  void SetUp() override {
    root = test::scratch_dir();
    const std::string src = test::make_tiny_model(root + "/src", /*seed=*/41);
    test::write_fp8_pair(src, root + "/fp8", root + "/ref", test::qwen_fp8_config());
    calib = test::write_random_words(root + "/calib.txt", 20000, 4);
  }
  // `run` (taking the model and output directories) on the FP8 model and on its F32 twin; the outputs compared.
  void expect_twins(const std::string& what, const std::function<void(const std::string&, const std::string&)>& run) {
    SCOPED_TRACE(what);
    run(root + "/fp8", root + "/" + what + "-from-fp8");
    run(root + "/ref", root + "/" + what + "-from-ref");
    expect_same_output(root + "/" + what + "-from-fp8", root + "/" + what + "-from-ref");
  }
  std::string root, calib;
};

QuantizeOptions options(const std::string& model, const std::string& out) {
  QuantizeOptions o;
  o.model_dir = model;
  o.out_dir = out;
  o.group_size = 32;
  o.quiet = true;
  return o;
}

TEST_F(Fp8Source, QuantizersWriteWhatTheF32TwinGives) {
  expect_twins("rtn", [](const std::string& m, const std::string& out) { quantize_model(options(m, out)); });
  expect_twins("rtn-ct-asym", [](const std::string& m, const std::string& out) {
    QuantizeOptions o = options(m, out);
    o.layout = IntLayout::GptqV2;
    o.compressed_tensors = true;
    o.sym = false;
    quantize_model(o);
  });
  expect_twins("nf4", [](const std::string& m, const std::string& out) {
    QuantizeOptions o = options(m, out);
    o.method = QuantizeOptions::Method::Nf4;
    quantize_model(o);
  });
  expect_twins("rtn-loftq", [](const std::string& m, const std::string& out) {
    QuantizeOptions o = options(m, out);
    o.loftq.r = 4;
    o.loftq.alpha = 4;
    quantize_model(o);
  });
  EXPECT_TRUE(read_file(root + "/rtn-loftq-from-fp8/loftq_init/adapter_model.safetensors") ==
              read_file(root + "/rtn-loftq-from-ref/loftq_init/adapter_model.safetensors"))
      << "the LoftQ adapters differ";
  expect_twins("gptq", [this](const std::string& m, const std::string& out) {
    GptqModelOptions g;
    g.out = options(m, out);
    g.calib_path = calib;
    g.calib_samples = 8;
    g.calib_seq_len = 64;
    g.desc_act = true;
    gptq_quantize_model(g);
  });
  expect_twins("awq", [this](const std::string& m, const std::string& out) {
    awq_quantize_model(test::awq_test_options(m, out, calib, IntLayout::GptqV2));
  });
}

TEST_F(Fp8Source, RefusedWhereItCannotBeRead) {
  QuantizeOptions o = options(root + "/fp8", root + "/gpu");
  o.device = Device::Cuda;
  test::expect_error([&] { quantize_model(o); },
                     {"is an FP8 model: its weights are decoded on the CPU; quantize it with --device cpu"});
  EXPECT_FALSE(std::filesystem::exists(root + "/gpu"));
  // An integer-quantized model is no source.
  quantize_model(options(root + "/ref", root + "/int4"));
  test::expect_error([&] { quantize_model(options(root + "/int4", root + "/again")); },
                     {"int4 is already quantized", "(or an FP8 one)"});
  EXPECT_FALSE(std::filesystem::exists(root + "/again"));
}

TEST(Fp8SourceNames, ScaleTensorsOfDecoderLinearsOnly) {
  for (const char* name : {"model.layers.0.self_attn.q_proj.weight_scale_inv", "model.layers.3.mlp.down_proj.weight_scale",
                           "model.layers.1.mlp.experts.7.up_proj.input_scale",
                           "model.layers.2.mlp.shared_expert.gate_proj.weight_scale"}) {
    EXPECT_TRUE(is_source_scale(name)) << name;
  }
  for (const char* name : {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias",
                           "lm_head.weight_scale", "model.layers.0.mlp.gate.weight_scale", "model.norm.weight",
                           "model.layers.0.input_layernorm.weight_scale"}) {
    EXPECT_FALSE(is_source_scale(name)) << name;
  }
}

}  // namespace
}  // namespace qwenq
