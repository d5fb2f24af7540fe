// Model loading, configuration errors, import of the real stories260K and its perplexity.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>

#include "core/error.h"
#include "core/files.h"
#include "tests/support/scoped_env.h"
#include "tests/support/test_paths.h"
#include "trainer/llama2c_import.h"
#include "trainer/model_dir.h"
#include "trainer/perplexity.h"
#include "trainer/qwen_config.h"
#include "trainer/qwen_model.h"
#include "trainer/random_model.h"
#include "trainer/text_data.h"
#include "trainer/tokenizer.h"

namespace qwenq {
namespace {

// Golden perplexity of stories260K on the first 1,024 tokens of tinystories_val.txt (four 256-token windows,
// BOS first), computed by Hugging Face transformers on the imported directory: tests/oracle/stories_golden.py.
// Both sides compute in fp32; only summation order differs.
constexpr double kStoriesGoldenPpl = 4.056757757563922;
constexpr double kStoriesPplRelTol = 1e-5;

using test::error_of;

const char* kGoodConfig = R"({"model_type":"qwen2","vocab_size":100,"hidden_size":64,"intermediate_size":128,
  "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"rope_theta":1000000.0,
  "rms_norm_eps":1e-6,"tie_word_embeddings":true})";

TEST(QwenConfig, ParsesQwen2Fields) {
  QwenConfig c = parse_qwen_config(kGoodConfig, "config.json");
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(c.rope.type, RopeType::Default);
}

TEST(QwenConfig, Qwen3HasQkNormNoBiasAndExplicitHeadDim) {
  QwenConfig c = parse_qwen_config(
      R"({"model_type":"qwen3","vocab_size":100,"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
          "num_attention_heads":4,"num_key_value_heads":2,"head_dim":32})",
      "q3/config.json");
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.q_dim(), 128);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_TRUE(c.qk_norm);
}

TEST(QwenConfig, ClearErrors) {
  EXPECT_NE(error_of([] { parse_qwen_config("{not json", "m/config.json"); }).find("m/config.json: not valid JSON"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              parse_qwen_config(R"({"model_type":"qwen2","vocab_size":100,"hidden_size":64})", "m/config.json");
            }).find("m/config.json: missing required field \"intermediate_size\""),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_qwen_config(R"({"model_type":"mistral"})", "m/config.json"); })
                .find("model_type \"mistral\" is not supported"),
            std::string::npos);
  std::string dynamic = kGoodConfig;
  dynamic.insert(1, R"("rope_scaling":{"type":"dynamic","factor":4.0},)");
  EXPECT_NE(error_of([&] { parse_qwen_config(dynamic, "m/config.json"); }).find("rope_scaling of type \"dynamic\""),
            std::string::npos);
  EXPECT_NE(error_of([] {
              parse_qwen_config(R"({"model_type":"qwen2","vocab_size":100,"hidden_size":64,"intermediate_size":128,
                "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":3})",
                                "m/config.json");
            }).find("not a multiple of num_key_value_heads 3"),
            std::string::npos);
}

TEST(ModelDir, ResolvesHuggingFaceCacheOffline) {
  const std::string root = test::scratch_dir();
  const std::string snap = root + "/hub/models--Qwen--Tiny/snapshots/abc123";
  ASSERT_EQ(std::system(("mkdir -p " + snap + " " + root + "/hub/models--Qwen--Tiny/refs").c_str()), 0);
  write_file_atomic(snap + "/config.json", std::string(kGoodConfig));
  write_file_atomic(root + "/hub/models--Qwen--Tiny/refs/main", std::string("abc123\n"));
  setenv("HF_HUB_CACHE", (root + "/hub").c_str(), 1);
  EXPECT_EQ(resolve_model_dir("Qwen/Tiny"), snap);
  std::string err = error_of([] { resolve_model_dir("Qwen/Missing"); });
  EXPECT_NE(err.find("cannot find model 'Qwen/Missing'"), std::string::npos) << err;
  EXPECT_NE(err.find("models--Qwen--Missing"), std::string::npos) << err;
  unsetenv("HF_HUB_CACHE");
}

// Where a repo id is looked up, in huggingface_hub's order (its constants.py): HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE,
// HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub, HOME/.cache/huggingface/hub; each cache here holds the repo under its
// own commit, so the snapshot found names the cache used. A leading ~ is HOME; an empty variable is unset.
TEST(ModelDir, HubCacheFollowsHuggingfaceHubsOrder) {
  const std::string root = test::scratch_dir();
  const auto make_cache = [&](const std::string& hub, const std::string& commit) {
    const std::string repo = hub + "/models--Qwen--Order";
    EXPECT_EQ(std::system(("mkdir -p " + repo + "/snapshots/" + commit + " " + repo + "/refs").c_str()), 0);
    write_file_atomic(repo + "/snapshots/" + commit + "/config.json", std::string(kGoodConfig));
    write_file_atomic(repo + "/refs/main", commit + "\n");
    return repo + "/snapshots/" + commit;
  };
  const std::string home = make_cache(root + "/home/.cache/huggingface/hub", "home");
  const std::string xdg = make_cache(root + "/xdg/huggingface/hub", "xdg");
  const std::string hf_home = make_cache(root + "/hfhome/hub", "hfhome");
  const std::string legacy = make_cache(root + "/legacy", "legacy");
  const std::string hub = make_cache(root + "/hub", "hub");
  test::ScopedEnv h("HOME", (root + "/home").c_str());
  test::ScopedEnv x("XDG_CACHE_HOME", nullptr), f("HF_HOME", nullptr);
  test::ScopedEnv l("HUGGINGFACE_HUB_CACHE", nullptr), c("HF_HUB_CACHE", nullptr);
  EXPECT_EQ(resolve_model_dir("Qwen/Order"), home);
  ::setenv("XDG_CACHE_HOME", (root + "/xdg").c_str(), 1);
  EXPECT_EQ(resolve_model_dir("Qwen/Order"), xdg);
  ::setenv("HF_HOME", (root + "/hfhome").c_str(), 1);
  EXPECT_EQ(resolve_model_dir("Qwen/Order"), hf_home);
  ::setenv("HUGGINGFACE_HUB_CACHE", (root + "/legacy").c_str(), 1);
  EXPECT_EQ(resolve_model_dir("Qwen/Order"), legacy);
  ::setenv("HF_HUB_CACHE", (root + "/hub").c_str(), 1);
  EXPECT_EQ(resolve_model_dir("Qwen/Order"), hub);
  ::setenv("HF_HUB_CACHE", "", 1);  // empty: the next one down
  EXPECT_EQ(resolve_model_dir("Qwen/Order"), legacy);
  // ~ is HOME, in every variable: HOME = root, so ~/legacy and ~/hfhome are the caches above.
  ::setenv("HOME", root.c_str(), 1);
  ::setenv("HUGGINGFACE_HUB_CACHE", "~/legacy", 1);
  EXPECT_EQ(resolve_model_dir("Qwen/Order"), legacy);
  ::unsetenv("HUGGINGFACE_HUB_CACHE");
  ::setenv("HF_HOME", "~/hfhome", 1);
  EXPECT_EQ(resolve_model_dir("Qwen/Order"), hf_home);
  ::unsetenv("HF_HOME");
  ::setenv("XDG_CACHE_HOME", "~/xdg", 1);
  EXPECT_EQ(resolve_model_dir("Qwen/Order"), xdg);
}

TEST(ModelLoad, MissingTensorAndWrongShapeAreNamed) {
  const std::string dir = test::scratch_dir() + "/m";
  RandomModelOptions o;
  o.out_dir = dir;
  write_random_model(o);
  QwenModel ok(dir);  // loads
  // A config that disagrees with the weights: one layer more -> a missing tensor.
  std::string cfg = read_file(dir + "/config.json");
  std::string bigger = cfg;
  bigger.replace(bigger.find("\"num_hidden_layers\": 2"), 22, "\"num_hidden_layers\": 3");
  write_file_atomic(dir + "/config.json", bigger);
  EXPECT_NE(error_of([&] { QwenModel m(dir); }).find("tensor 'model.layers.2.input_layernorm.weight' not found"),
            std::string::npos);
  std::string wider = cfg;
  wider.replace(wider.find("\"intermediate_size\": 128"), 24, "\"intermediate_size\": 256");
  write_file_atomic(dir + "/config.json", wider);
  std::string err = error_of([&] { QwenModel m(dir); });
  EXPECT_NE(err.find("model.safetensors: tensor 'model.layers.0.mlp.gate_proj.weight' has shape [128, 64]"),
            std::string::npos)
      << err;
}

TEST(ModelForward, PackedBatchEqualsSequencesOneByOne) {
  const std::string dir = test::scratch_dir() + "/m";
  RandomModelOptions o;
  o.out_dir = dir;
  o.dtype = DType::F32;
  write_random_model(o);
  QwenModel model(dir);
  std::vector<std::vector<int32_t>> seqs = {{1, 2, 3}, {7}, {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11}};
  std::vector<float> packed = model.forward_logits(PackedBatch::from_sequences(seqs));
  size_t off = 0;
  for (const auto& s : seqs) {
    std::vector<float> one = model.forward_logits(PackedBatch::from_sequences({s}));
    for (size_t i = 0; i < one.size(); ++i) ASSERT_NEAR(one[i], packed[off + i], 1e-5f);
    off += one.size();
  }
  EXPECT_NE(error_of([&] { model.forward_logits(PackedBatch::from_sequences({{1, 320}})); })
                .find("token id 320 at position 1 is outside the vocabulary [0, 320)"),
            std::string::npos);
}

// block_forward_to (the GPTQ passes): the input `at` sees is block_forward's hook's input for that group, bit for bit,
// in dense and MoE layers, and nothing runs past it: the hook-driven block_forward of the same x sees every group,
// while block_forward_to's x is left before the residual of the attention (QKV, O) or of the MLP (GateUp, Down).
TEST(ModelForward, BlockForwardToStopsAtTheGroupsInput) {
  for (const std::string preset : {"tiny", "tiny-moe-shared"}) {
    SCOPED_TRACE(preset);
    const std::string dir = test::scratch_dir() + "/" + preset;
    RandomModelOptions o;
    o.out_dir = dir;
    o.preset = preset;
    o.dtype = DType::F32;
    write_random_model(o);
    QwenModel model(dir);
    const QwenConfig& c = model.config();
    const PackedBatch b = PackedBatch::from_sequences({{1, 2, 3, 4, 5}, {7, 9}});
    std::vector<float> x;
    model.embed_batch(b, &x);
    for (int64_t l = 0; l < c.num_layers; ++l) {
      std::vector<float> seen[4], y = x;
      model.block_forward(l, b, y.data(), [&](BlockLinear at, const float* in, int64_t T) {
        seen[static_cast<int>(at)].assign(in, in + T * block_linear_inputs(c, at));
      });
      for (BlockLinear g : {BlockLinear::QKV, BlockLinear::O, BlockLinear::GateUp, BlockLinear::Down}) {
        SCOPED_TRACE("layer " + std::to_string(l) + " group " + std::to_string(static_cast<int>(g)));
        std::vector<float> w = x, got;
        if (c.is_moe_layer(l) && g == BlockLinear::Down) {
          EXPECT_NE(error_of([&] { model.block_forward_to(l, b, w.data(), g, [](const float*, int64_t) {}); })
                        .find("mixture-of-experts layer"),
                    std::string::npos);
          continue;
        }
        int calls = 0;
        model.block_forward_to(l, b, w.data(), g, [&](const float* in, int64_t T) {
          ++calls;
          got.assign(in, in + T * block_linear_inputs(c, g));
        });
        EXPECT_EQ(calls, 1);
        EXPECT_EQ(got, seen[static_cast<int>(g)]);
        // Stopped: x has at most the attention's residual added (after O's input nothing of the block ran).
        if (g == BlockLinear::QKV || g == BlockLinear::O) EXPECT_EQ(w, x);
        else EXPECT_NE(w, y);
      }
      x = y;
    }
  }
}

TEST(TextData, JsonlJoinsRecordsAndNamesBadLines) {
  const std::string dir = test::scratch_dir();
  write_file_atomic(dir + "/a.jsonl", std::string("{\"text\": \"one\"}\n\n{\"text\": \"two\"}\n"));
  EXPECT_EQ(load_text_corpus(dir + "/a.jsonl"), "one\n\ntwo");
  write_file_atomic(dir + "/b.jsonl", std::string("{\"text\": \"one\"}\n{\"text\": \n"));
  EXPECT_NE(error_of([&] { load_text_corpus(dir + "/b.jsonl"); }).find("b.jsonl:2: not valid JSON"), std::string::npos);
  write_file_atomic(dir + "/c.jsonl", std::string("{\"body\": \"one\"}\n"));
  EXPECT_NE(error_of([&] { load_text_corpus(dir + "/c.jsonl"); }).find("c.jsonl:1: expected an object with a string field \"text\""),
            std::string::npos);
  write_file_atomic(dir + "/empty.txt", std::string("\n  \n"));
  EXPECT_NE(error_of([&] { load_text_corpus(dir + "/empty.txt"); }).find("empty.txt: file is empty"), std::string::npos);
}

// ctest runs each test in its own process, in parallel: every test imports into its own scratch directory.
class Stories : public ::testing::Test {
 protected:
  static std::string import_to(const std::string& dir, DType dtype = DType::F32) {
    Llama2cImportOptions o;
    o.checkpoint = test::shared_data_dir() + "/stories260K/stories260K.bin";
    o.tokenizer = test::shared_data_dir() + "/stories260K/tok512.bin";
    o.out_dir = dir;
    o.dtype = dtype;
    import_llama2c(o);
    return dir;
  }
};

TEST_F(Stories, PerplexityMatchesTransformersGolden) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string dir = import_to(test::scratch_dir() + "/fp32");
  QwenModel model(dir);
  Tokenizer tok = Tokenizer::from_dir(dir);
  EXPECT_EQ(model.config().num_layers, 5);
  EXPECT_EQ(model.config().head_dim, 8);
  std::vector<int32_t> ids = tok.encode(read_file(test::shared_data_dir() + "/tinystories/tinystories_val.txt"));
  ASSERT_GT(ids.size(), 1024u);
  ASSERT_EQ(ids[0], 1) << "BOS first";
  ids.resize(1024);
  PerplexityOptions opt;
  opt.seq_len = 256;
  opt.windows_per_batch = 2;
  opt.quiet = true;
  PerplexityResult r = evaluate_perplexity(model, ids, opt);
  EXPECT_EQ(r.windows, 4);
  EXPECT_EQ(r.scored_tokens, 4 * 255);
  EXPECT_NEAR(r.perplexity, kStoriesGoldenPpl, kStoriesGoldenPpl * kStoriesPplRelTol);
}

TEST_F(Stories, BfloatImportIsCloseToFp32) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string scratch = test::scratch_dir();
  const std::string bf_dir = import_to(scratch + "/bf16", DType::BF16);
  QwenModel f32(import_to(scratch + "/fp32")), bf16(bf_dir);
  std::vector<int32_t> ids = Tokenizer::from_dir(bf_dir).encode("Once upon a time, there was a little girl.");
  std::vector<float> nf, nb;
  f32.next_token_nll(PackedBatch::from_sequences({ids}), &nf);
  bf16.next_token_nll(PackedBatch::from_sequences({ids}), &nb);
  double sf = 0, sb = 0;
  for (size_t i = 0; i < nf.size(); ++i) sf += nf[i], sb += nb[i];
  EXPECT_NEAR(sb / sf, 1.0, 0.02);  // bf16 weights move the loss by well under 2%
}

TEST(Llama2cImport, TruncatedCheckpointIsNamed) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string dir = test::scratch_dir();
  std::string bin = read_file(test::shared_data_dir() + "/stories260K/stories260K.bin");
  write_file_atomic(dir + "/cut.bin", bin.substr(0, bin.size() / 2));
  Llama2cImportOptions o;
  o.checkpoint = dir + "/cut.bin";
  o.tokenizer = test::shared_data_dir() + "/stories260K/tok512.bin";
  o.out_dir = dir + "/out";
  std::string err = error_of([&] { import_llama2c(o); });
  EXPECT_NE(err.find("cut.bin: file ends inside tensor"), std::string::npos) << err;
  EXPECT_FALSE(dir_exists(dir + "/out")) << "no half-written output directory";
}

}  // namespace
}  // namespace qwenq
