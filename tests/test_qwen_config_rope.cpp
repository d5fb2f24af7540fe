// config.json's rope_scaling read as transformers 4.51.3 reads it (trainer/qwen_config.cpp): which type, which
// factor (yarn's replacement by max_position_embeddings / original_max_position_embeddings, and its one warning),
// the default attention factor, and one clear error for each refused type and each missing or bad field.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "core/files.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_paths.h"
#include "trainer/qwen_config.h"

namespace qwenq {
namespace {

// A Qwen2 config with the given extra fields (a JSON fragment ending in a comma) before the required ones.
std::string qwen2_config(const std::string& extra, const std::string& model_type = "qwen2") {
  return "{" + extra + R"("model_type":")" + model_type + R"(","vocab_size":100,"hidden_size":64,
    "intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2})";
}

QwenConfig parse(const std::string& extra, const std::string& model_type = "qwen2") {
  return parse_qwen_config(qwen2_config(extra, model_type), "m/config.json");
}

void expect_refused(const std::string& extra, const std::string& text, const std::string& model_type = "qwen2") {
  test::expect_error([&] { parse(extra, model_type); }, {"m/config.json: ", text});
}

TEST(QwenConfigRope, QwenModelCardYarnUsesTransformersFactorAndWarns) {
  // The Qwen2.5/Qwen3 model cards' YaRN block on a config whose max_position_embeddings stays 32768:
  // transformers 4.51.3 computes factor 32768 / 32768 = 1 (no scaling at all).
  const QwenConfig c = parse(R"("max_position_embeddings":32768,
    "rope_scaling":{"type":"yarn","factor":4.0,"original_max_position_embeddings":32768},)");
  EXPECT_EQ(c.rope.type, RopeType::Yarn);
  EXPECT_EQ(c.rope.factor, 1.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 32768);
  EXPECT_EQ(c.rope.attention_factor, 1.0);
  EXPECT_EQ(c.rope.beta_fast, 32.0);
  EXPECT_EQ(c.rope.beta_slow, 1.0);
  for (const char* part : {"warning: m/config.json: rope_scaling yarn uses factor 1 = max_position_embeddings 32768 / "
                           "original_max_position_embeddings 32768, not its factor 4",
                           "transformers 4.51.3", "huggingface/transformers#38224"})
    EXPECT_NE(c.rope_warning.find(part), std::string::npos) << c.rope_warning;

  // max_position_embeddings = 4 x 32768 makes both factors 4: no warning.
  const QwenConfig d = parse(R"("max_position_embeddings":131072,
    "rope_scaling":{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":32768},)");
  EXPECT_EQ(d.rope.factor, 4.0);
  EXPECT_DOUBLE_EQ(d.rope.attention_factor, 0.1 * std::log(4.0) + 1);
  EXPECT_TRUE(d.rope_warning.empty()) << d.rope_warning;
}

TEST(QwenConfigRope, YarnWithoutOriginalContextUsesFactorAndMaxPositions) {
  const QwenConfig c = parse(R"("max_position_embeddings":4096,"rope_scaling":{"type":"yarn","factor":8.0},)");
  EXPECT_EQ(c.rope.factor, 8.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c.rope.attention_factor, 0.1 * std::log(8.0) + 1);
  EXPECT_TRUE(c.rope_warning.empty());
}

TEST(QwenConfigRope, YarnOptionalFields) {
  QwenConfig c = parse(R"("rope_scaling":{"type":"yarn","factor":4.0,"attention_factor":1.5,"beta_fast":16,
    "beta_slow":2},)");
  EXPECT_EQ(c.rope.attention_factor, 1.5);
  EXPECT_EQ(c.rope.beta_fast, 16.0);
  EXPECT_EQ(c.rope.beta_slow, 2.0);
  // transformers: `beta_fast or 32`, so 0 and null are the defaults; a null attention_factor is computed.
  c = parse(R"("rope_scaling":{"type":"yarn","factor":4.0,"attention_factor":null,"beta_fast":0,"beta_slow":null},)");
  EXPECT_EQ(c.rope.beta_fast, 32.0);
  EXPECT_EQ(c.rope.beta_slow, 1.0);
  EXPECT_DOUBLE_EQ(c.rope.attention_factor, 0.1 * std::log(4.0) + 1);
  c = parse(R"("rope_scaling":{"type":"yarn","factor":40.0,"mscale":1.0,"mscale_all_dim":1.0},)");
  EXPECT_EQ(c.rope.attention_factor, 1.0);
}

TEST(QwenConfigRope, LinearLlama3DefaultAndTypeKeys) {
  QwenConfig c = parse(R"("rope_scaling":{"rope_type":"linear","factor":2.0},)");
  EXPECT_EQ(c.rope.type, RopeType::Linear);
  EXPECT_EQ(c.rope.factor, 2.0);
  // configuration_qwen2.py copies "type" over "rope_type".
  c = parse(R"("rope_scaling":{"rope_type":"yarn","type":"linear","factor":2.0},)");
  EXPECT_EQ(c.rope.type, RopeType::Linear);
  c = parse(R"("rope_theta":500000.0,"max_position_embeddings":131072,"rope_scaling":{"rope_type":"llama3",
    "factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192},)",
            "llama");
  EXPECT_EQ(c.rope.type, RopeType::Llama3);
  EXPECT_EQ(c.rope.theta, 500000.0);
  EXPECT_EQ(c.rope.factor, 8.0);
  EXPECT_EQ(c.rope.low_freq_factor, 1.0);
  EXPECT_EQ(c.rope.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.rope.attention_factor, 1.0);
  EXPECT_EQ(parse(R"("rope_scaling":{"type":"default"},)").rope.type, RopeType::Default);
  EXPECT_EQ(parse(R"("rope_scaling":null,)").rope.type, RopeType::Default);
  // transformers' LlamaConfig default context is 2048 (YaRN without original_max_position_embeddings reads it).
  EXPECT_EQ(parse("", "llama").max_position_embeddings, 2048);
  EXPECT_EQ(parse("").max_position_embeddings, 32768);
}

TEST(QwenConfigRope, RefusedTypes) {
  expect_refused(R"("rope_scaling":{"type":"dynamic","factor":2.0},)",
                 "rope_scaling of type \"dynamic\" is not supported (its frequencies depend on the running sequence length)");
  for (const char* type : {"longrope", "mrope", "ntk"})
    expect_refused(std::string(R"("rope_scaling":{"rope_type":")") + type + R"(","factor":2.0},)",
                   std::string("rope_scaling of type \"") + type +
                       "\" is not supported (supported: default, linear, yarn, llama3)");
  expect_refused(R"("rope_scaling":{"factor":2.0},)", "rope_scaling has no \"rope_type\" (or \"type\")");
  expect_refused(R"("rope_scaling":{"type":null,"factor":2.0},)", "field \"rope_scaling.type\" must be a string");
  expect_refused(R"("rope_scaling":"yarn",)", "field \"rope_scaling\" must be an object or null");
  expect_refused(R"("rope_scaling":{"type":"yarn","factor":4.0,"truncate":false},)",
                 "field \"rope_scaling.truncate\" false is not supported");
  expect_refused(R"("rope_parameters":{"rope_type":"yarn","factor":4.0},)", "rope_parameters.rope_type \"yarn\"");
}

TEST(QwenConfigRope, MissingAndBadFields) {
  expect_refused(R"("rope_scaling":{"type":"yarn"},)",
                 "missing required field \"rope_scaling.factor\" (rope_scaling of type \"yarn\")");
  expect_refused(R"("rope_scaling":{"type":"linear","factor":null},)",
                 "missing required field \"rope_scaling.factor\" (rope_scaling of type \"linear\")");
  expect_refused(R"("rope_scaling":{"type":"yarn","factor":"4"},)", "field \"rope_scaling.factor\" must be a number, got \"4\"");
  expect_refused(R"("rope_scaling":{"type":"linear","factor":-2},)", "field \"rope_scaling.factor\" must be > 0, got -2");
  const std::string llama3 = R"("rope_scaling":{"rope_type":"llama3","factor":8.0,"high_freq_factor":4.0,)";
  expect_refused(llama3 + R"("original_max_position_embeddings":8192},)",
                 "missing required field \"rope_scaling.low_freq_factor\" (rope_scaling of type \"llama3\")", "llama");
  expect_refused(llama3 + R"("low_freq_factor":1.0},)", "missing required field \"rope_scaling.original_max_position_embeddings\"",
                 "llama");
  expect_refused(llama3 + R"("low_freq_factor":4.0,"original_max_position_embeddings":8192},)",
                 "field \"rope_scaling.high_freq_factor\" 4 must be greater than \"rope_scaling.low_freq_factor\" 4",
                 "llama");
  expect_refused(R"("rope_scaling":{"type":"yarn","factor":4.0,"original_max_position_embeddings":0},)",
                 "field \"rope_scaling.original_max_position_embeddings\" must be a positive integer, got 0");
  expect_refused(R"("rope_scaling":{"type":"yarn","factor":4.0,"attention_factor":-1},)",
                 "field \"rope_scaling.attention_factor\" must be > 0, got -1");
  expect_refused(R"("rope_scaling":{"type":"yarn","factor":4.0,"beta_fast":-3},)",
                 "fields \"rope_scaling.beta_fast\" and \"beta_slow\" must be > 0");
  expect_refused(R"("rope_theta":0,)", "field \"rope_theta\" must be > 0, got 0");
}

TEST(QwenConfigRope, LoadWarnsOncePerConfig) {
  const std::string dir = test::scratch_dir() + "/rope_warning";
  make_dirs(dir);
  write_file_atomic(path_join(dir, "config.json"),
             qwen2_config(R"("max_position_embeddings":64,
               "rope_scaling":{"type":"yarn","factor":2.0,"original_max_position_embeddings":16},)"));
  testing::internal::CaptureStderr();
  const QwenConfig a = load_qwen_config(dir), b = load_qwen_config(dir);
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(a.rope.factor, 4.0);
  const std::string line = "rope_scaling yarn uses factor 4 = max_position_embeddings 64 / "
                           "original_max_position_embeddings 16, not its factor 2";
  const size_t first = err.find(line);
  ASSERT_NE(first, std::string::npos) << err;
  EXPECT_EQ(err.find(line, first + 1), std::string::npos) << "warned twice: " << err;
}

}  // namespace
}  // namespace qwenq
