// load_quant_config (trainer/quant_config.h) on the configs it must refuse: a quant_method transformers knows and we do
// not read (each named, with the ones we do), a config.json that is not JSON, a quantization config whose fields have
// the wrong JSON types, and AutoGPTQ's separate quantize_config.json; every message names the file. The formats it
// reads are tested with their checkpoints (test_quantize_model, test_awq*, test_quant_nf4, test_fp8*,
// test_compressed_tensors*).
#include <gtest/gtest.h>

#include <string>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_paths.h"
#include "trainer/quant_config.h"

namespace qwenq {
namespace {

using test::error_of;

// A model directory whose config.json holds `quantization_config` (no field when it is null).
std::string dir_with(const std::string& root, const std::string& name, const nlohmann::json& qc) {
  const std::string dir = path_join(root, name);
  EXPECT_EQ(make_dirs(dir), 0);
  nlohmann::json cfg = {{"model_type", "qwen2"}};
  if (!qc.is_null()) cfg["quantization_config"] = qc;
  write_file_atomic(path_join(dir, "config.json"), cfg.dump());
  return dir;
}

TEST(QuantConfig, UnknownMethodsAreNamedWithTheSupportedOnes) {
  const std::string root = test::scratch_dir();
  // quant_method values of transformers' QuantizationMethod that we do not read.
  for (const char* m : {"hqq", "eetq", "aqlm", "quanto", "auto-round", "torchao", "bitnet", "vptq", "fbgemm_fp8"}) {
    const std::string dir = dir_with(root, m, {{"quant_method", m}, {"bits", 4}});
    const std::string e = error_of([&] { load_quant_config(dir); });
    EXPECT_NE(e.find(path_join(dir, "config.json") + " (quantization_config): quant_method \"" + m +
                     "\" is not supported (gptq, awq, bitsandbytes, fp8, compressed-tensors)"),
              std::string::npos)
        << e;
  }
  // Case does not matter (GPTQModel writes "GPTQ" in some versions).
  EXPECT_EQ(load_quant_config(dir_with(root, "upper", {{"quant_method", "GPTQ"}, {"bits", 4}, {"group_size", 128}}))
                .method,
            QuantConfig::Method::Gptq);
}

TEST(QuantConfig, MalformedFilesAreRefusedByName) {
  const std::string root = test::scratch_dir();
  const std::string bad_json = dir_with(root, "bad-json", nullptr);
  write_file_atomic(path_join(bad_json, "config.json"), std::string("{\"model_type\": \"qwen2\", "));
  EXPECT_NE(error_of([&] { load_quant_config(bad_json); }).find(path_join(bad_json, "config.json") + ": not valid JSON"),
            std::string::npos);
  // Fields of the wrong JSON type: "bits" as a string, quant_method as a number, the config as a list.
  for (const auto& [name, qc] : std::vector<std::pair<std::string, nlohmann::json>>{
           {"bits-string", {{"quant_method", "gptq"}, {"bits", "4"}, {"group_size", 128}}},
           {"method-number", {{"quant_method", 4}}},
           {"sym-string", {{"quant_method", "gptq"}, {"bits", 4}, {"group_size", 128}, {"sym", "yes"}}}}) {
    const std::string dir = dir_with(root, name, qc);
    const std::string e = error_of([&] { load_quant_config(dir); });
    EXPECT_NE(e.find(path_join(dir, "config.json") + ": malformed quantization config"), std::string::npos)
        << name << ": " << e;
  }
  const std::string list = dir_with(root, "list", nlohmann::json::array({1, 2}));
  EXPECT_NE(error_of([&] { load_quant_config(list); }).find("quantization config must be a JSON object"),
            std::string::npos);
}

// AutoGPTQ's own checkpoints keep the settings in quantize_config.json (no quant_method: GPTQ), config.json without
// quantization_config; a null quantization_config is none.
TEST(QuantConfig, AutoGptqQuantizeConfigJson) {
  const std::string root = test::scratch_dir();
  const std::string dir = dir_with(root, "autogptq", nullptr);
  write_file_atomic(path_join(dir, "quantize_config.json"),
                    std::string(R"({"bits": 4, "group_size": 64, "desc_act": true, "sym": false, "damp_percent": 0.01})"));
  const QuantConfig q = load_quant_config(dir);
  EXPECT_EQ(q.method, QuantConfig::Method::Gptq);
  EXPECT_EQ(std::string(q.method_name()), "gptq");
  EXPECT_EQ(q.bits, 4);
  EXPECT_EQ(q.group_size, 64);
  EXPECT_TRUE(q.desc_act);
  EXPECT_FALSE(q.sym);
  write_file_atomic(path_join(dir, "quantize_config.json"), std::string(R"({"bits": 5, "group_size": 64})"));
  EXPECT_NE(error_of([&] { load_quant_config(dir); })
                .find(path_join(dir, "quantize_config.json") + ": GPTQ with bits=5 is not supported (2, 3, 4 or 8)"),
            std::string::npos);
  const std::string plain = dir_with(root, "plain", nullptr);
  EXPECT_EQ(load_quant_config(plain).method, QuantConfig::Method::None);
  EXPECT_EQ(std::string(load_quant_config(plain).method_name()), "none");
}

}  // namespace
}  // namespace qwenq
