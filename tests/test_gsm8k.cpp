// `qwen-quant gsm8k` (trainer/gsm8k.h): Python's random module reproduced for lm-eval's few-shot draws, the prompt,
// stop strings, both extractions and the exact-match normalization against goldens printed by CPython 3.11 running
// lm-eval's regexes and filter logic (re.findall, group_select, take_first, regexes_to_ignore, lower), and a whole
// evaluation against greedy generation of the same prompts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <vector>

#include "core/files.h"
#include "tests/support/safetensors_edit.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_tokenizers.h"
#include "trainer/generate.h"
#include "trainer/gsm8k.h"
#include "trainer/python_random.h"

namespace qwenq {
namespace {

TEST(PythonRandom, EqualsCPython) {
  // random.Random(1234): getrandbits(32) x3; randrange(10**9) x2; sample(range(7473), 5) x3; sample(range(20), 5) x2.
  PythonRandom r(1234);
  EXPECT_EQ(r.getrandbits(32), 4150886329u);
  EXPECT_EQ(r.getrandbits(32), 3342196574u);
  EXPECT_EQ(r.getrandbits(32), 1892932127u);
  PythonRandom r2(1234);
  EXPECT_EQ(r2.randbelow(1000000000), 835549143u);
  EXPECT_EQ(r2.randbelow(1000000000), 473233031u);
  PythonRandom r3(1234);  // GSM8K's train split has 7473 records: the redraw method
  EXPECT_EQ(r3.sample(7473, 5), (std::vector<int64_t>{6374, 3610, 957, 61, 742}));
  EXPECT_EQ(r3.sample(7473, 5), (std::vector<int64_t>{7462, 6610, 4769, 286, 5501}));
  EXPECT_EQ(r3.sample(7473, 5), (std::vector<int64_t>{5677, 687, 806, 6279, 2905}));
  PythonRandom r4(1234);  // 20 <= setsize 21: the pool method
  EXPECT_EQ(r4.sample(20, 5), (std::vector<int64_t>{14, 3, 0, 2, 1}));
  EXPECT_EQ(r4.sample(20, 5), (std::vector<int64_t>{2, 3, 11, 7, 0}));
  PythonRandom r5(42);  // k = 8 > 5: setsize 21 + 4^⌈log4 24⌉ = 85 < 100: the redraw method
  EXPECT_EQ(r5.sample(3, 3), (std::vector<int64_t>{2, 0, 1}));
  EXPECT_EQ(r5.sample(100, 8), (std::vector<int64_t>{94, 35, 31, 28, 17, 13, 86, 69}));
  PythonRandom r6(7);  // 22 > setsize 21: the redraw method where repeats are likely (they are redrawn)
  for (const std::vector<int64_t>& want : {std::vector<int64_t>{10, 4, 12, 20, 1}, std::vector<int64_t>{2, 17, 3, 11, 18},
                                           std::vector<int64_t>{1, 16, 6, 2, 13}, std::vector<int64_t>{13, 2, 7, 17, 1}}) {
    EXPECT_EQ(r6.sample(22, 5), want);
  }
  EXPECT_EQ(PythonRandom((uint64_t{1} << 40) + 5).getrandbits(32), 2166296868u);  // a two-word key
  EXPECT_EQ(PythonRandom(0).getrandbits(32), 3626764237u);
}

TEST(Gsm8k, ExtractionsAndNormalizationEqualLmEvalsInPython) {
  struct Case {
    const char* output;
    const char* strict;
    const char* flexible;
  };
  const Case cases[] = {
      {" Janet has 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\nShe makes 9 * $2 = $<<9*2=18>>18.\n#### 18", "18", "18"},
      {" The answer is 1,234.5 dollars.", "[invalid]", "1,234.5"},
      {" #### -7 and #### 8", "-7", "8"},
      {" no numbers here", "[invalid]", "[invalid]"},
      {" 5 apples and $3.50.", "[invalid]", "$3.50."},
      {" #### - 4", "[invalid]", "4"},
      {" x 7", "[invalid]", "7"},
      {" costs $1,000.\n", "[invalid]", "$1,000."},
      {" 12.\n", "[invalid]", "12."},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(gsm8k_strict_match(c.output), c.strict) << c.output;
    EXPECT_EQ(gsm8k_flexible_extract(c.output), c.flexible) << c.output;
  }
  const std::pair<const char*, const char*> norm[] = {
      {"Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72"},
      {"$1,000.", "1000"},
      {"5.\n", "5\n"},
      {"ABC", "abc"},
      {"[invalid]", "[invalid]"},
      {"a #### b #### 3.5.", "3.5"},
      {"7..", "7."},
      {"x.\n\n", "x.\n\n"},
  };
  for (const auto& [in, out] : norm) EXPECT_EQ(gsm8k_normalize(in), out) << in;
  EXPECT_TRUE(gsm8k_exact_match("$1,000.", "It costs 1000 dollars.\n#### 1,000"));
  EXPECT_FALSE(gsm8k_exact_match("[invalid]", "#### 5"));
}

TEST(Gsm8k, PromptAndStopsAreLmEvals) {
  const Gsm8kItem a{"What is 1+1?", "1+1=2\n#### 2"}, b{"And 2+2?", "#### 4"}, q{"How many?", "#### 3"};
  EXPECT_EQ(gsm8k_prompt({}, q), "Question: How many?\nAnswer:");
  EXPECT_EQ(gsm8k_prompt({&a, &b}, q),
            "Question: What is 1+1?\nAnswer: 1+1=2\n#### 2\n\nQuestion: And 2+2?\nAnswer: #### 4\n\n"
            "Question: How many?\nAnswer:");
  const std::vector<std::string> stops = {"Question:", "</s>", "<|im_end|>"};
  EXPECT_EQ(cut_at_stops(" 3 apples.\n\nQuestion: next", stops), " 3 apples.\n\n");
  EXPECT_EQ(cut_at_stops(" a</s>b<|im_end|>", stops), " a");
  EXPECT_EQ(cut_at_stops(" nothing to cut", stops), " nothing to cut");
}

TEST(Gsm8k, ReaderNamesBadRecords) {
  const std::string dir = test::scratch_dir();
  const auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir + "/" + name) << text;
    return dir + "/" + name;
  };
  const std::vector<Gsm8kItem> ok = read_gsm8k(write("ok.jsonl", "{\"question\": \"q\", \"answer\": \"#### 1\", \"x\": 2}\n\n"));
  ASSERT_EQ(ok.size(), 1u);
  EXPECT_EQ(ok[0].answer, "#### 1");
  const std::string no_answer = write("a.jsonl", "{\"question\": \"q\", \"answer\": \"1\"}\n{\"question\": \"q\"}\n");
  test::expect_error([&] { read_gsm8k(no_answer); }, {no_answer + ":2", "\"answer\" missing or not a string"});
  const std::string bad = write("b.jsonl", "{\"question\": 3, \"answer\": \"1\"}\n");
  test::expect_error([&] { read_gsm8k(bad); }, {bad + ":1", "\"question\""});
  const std::string empty = write("e.jsonl", "\n");
  test::expect_error([&] { read_gsm8k(empty); }, {empty, "no GSM8K records"});
}

// What evaluate_gsm8k must produce for item i: the prompt of the given draws, greedy tokens without stop strings
// (generate, tested against transformers elsewhere), decoded skipping special tokens and cut at the stops.
std::string expected_output(const QwenModel& model, const Tokenizer& tok, const std::string& prompt,
                            const Gsm8kOptions& opt) {
  SamplingOptions so;
  so.max_new_tokens = opt.max_new_tokens;
  so.repetition_penalty = opt.repetition_penalty;
  for (int32_t id : {tok.eos_id(), model.config().eos_token_id})
    if (id >= 0) so.stop_ids.push_back(id);
  std::vector<int32_t> out = generate(model, tok.encode(prompt, false), so);
  if (!out.empty() && std::find(so.stop_ids.begin(), so.stop_ids.end(), out.back()) != so.stop_ids.end()) out.pop_back();
  return cut_at_stops(tok.decode(out, true), opt.stops);
}

TEST(Gsm8k, EvaluationIsGreedyGenerationExtractedAndScored) {
  const std::string dir = test::make_tiny_model(test::scratch_dir() + "/tiny", 9);
  // The digits' rows of the (tied) embedding scaled up, so that the random model writes numbers and the extraction
  // has something to find.
  const Tokenizer tok = Tokenizer::from_model(dir);
  std::vector<int32_t> digits;
  for (char d = '0'; d <= '9'; ++d) digits.push_back(tok.token_id(std::string(1, d)));
  test::rewrite_safetensors(path_join(dir, "model.safetensors"),
                            [&](const std::string& name, const TensorView& v, std::vector<uint8_t> bytes,
                                SafetensorsWriter& w) {
                              if (name == "model.embed_tokens.weight") {
                                float* f = reinterpret_cast<float*>(bytes.data());
                                for (int32_t id : digits)
                                  for (int64_t c = 0; c < v.shape[1]; ++c) f[id * v.shape[1] + c] *= 5.0f;
                              }
                              w.add_owned(name, v.dtype, v.shape, std::move(bytes));
                            });
  QwenModel model(dir);
  std::vector<Gsm8kItem> pool;
  for (int i = 0; i < 8; ++i) pool.push_back({"shot " + std::to_string(i), "s" + std::to_string(i) + "\n#### " +
                                                                               std::to_string(i)});
  std::vector<Gsm8kItem> items = {{"one", "#### 1"}, {"two", "#### 2"}, {"three", "#### 3"}};
  Gsm8kOptions opt;
  opt.fewshot = 2;
  opt.max_new_tokens = 24;
  opt.quiet = true;
  // Python: random.Random(1234).sample(range(8), 2) three times: [7, 0], [0, 7], [0, 5].
  const int draws[3][2] = {{7, 0}, {0, 7}, {0, 5}};
  std::vector<std::string> prompts(3), want(3);
  for (int i = 0; i < 3; ++i) {
    prompts[i] = gsm8k_prompt({&pool[draws[i][0]], &pool[draws[i][1]]}, items[i]);
    want[i] = expected_output(model, tok, prompts[i], opt);
  }
  // Item 1's answer is its output's flexible extraction: a match that is not vacuous; the others match nothing.
  ASSERT_NE(gsm8k_flexible_extract(want[1]), "[invalid]") << ::testing::PrintToString(want);
  items[1].answer = "It is that.\n#### " + gsm8k_flexible_extract(want[1]);
  const Gsm8kResult r = evaluate_gsm8k(model, tok, items, pool, opt);
  ASSERT_EQ(r.items.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(r.items[i].prompt, prompts[i]);
    EXPECT_EQ(r.items[i].output, want[i]);
    EXPECT_EQ(r.items[i].flexible, gsm8k_flexible_extract(want[i]));
    EXPECT_EQ(r.items[i].strict, gsm8k_strict_match(want[i]));
    EXPECT_EQ(r.items[i].flexible_ok, i == 1);
    EXPECT_LE(r.items[i].new_tokens, opt.max_new_tokens);
  }
  EXPECT_DOUBLE_EQ(r.flexible, 1.0 / 3.0);
  EXPECT_NEAR(r.flexible_stderr, std::sqrt(1.0 / 3 * 2.0 / 3 / 2), 1e-12);
  EXPECT_EQ(r.strict, 0.0);
  // With a repetition penalty (the model's generation_config.json under lm-eval's hf backend): the penalized greedy
  // tokens, which differ from the plain ones on at least one item.
  Gsm8kOptions pen = opt;
  pen.repetition_penalty = 3.f;
  const Gsm8kResult rp = evaluate_gsm8k(model, tok, items, pool, pen);
  int differ = 0;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(rp.items[i].output, expected_output(model, tok, prompts[i], pen)) << i;
    differ += rp.items[i].output != want[i];
  }
  EXPECT_GE(differ, 1);
  opt.limit = 2;
  EXPECT_EQ(evaluate_gsm8k(model, tok, items, pool, opt).items.size(), 2u);
  opt.fewshot = 9;
  test::expect_error([&] { evaluate_gsm8k(model, tok, items, pool, opt); }, "--fewshot 9 needs as many");
  opt.fewshot = 0;
  test::expect_error([&] { evaluate_gsm8k(model, tok, {}, pool, opt); }, "no items to score");
}

// lm-eval's hf backend keeps the last max_length - max_gen_toks prompt tokens (tok_batch_encode's
// left_truncate_len), max_length being config.json's max_position_embeddings; the model's final stop id is not part
// of the output, and an output cut by max_new_tokens keeps its last token.
TEST(Gsm8k, LongPromptKeepsItsLastTokensAndStopIdsLeaveTheOutput) {
  const Tokenizer tok = test::byte_tokenizer(test::scratch_dir() + "/tok", "");
  QwenConfig config;
  config.max_position_embeddings = 16;
  config.eos_token_id = tok.token_id("<|endoftext|>");
  const std::vector<Gsm8kItem> items = {{"How many eggs does Janet sell each day?", "#### 42"}, {"Q?", "#### 7"}};
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int32_t> stops_seen;
  const Gsm8kGenerateFn gen = [&](const std::vector<int32_t>& prompt, const SamplingOptions& so) {
    prompts.push_back(prompt);
    stops_seen = so.stop_ids;
    std::vector<int32_t> out = tok.encode(prompts.size() == 1 ? " 42" : " 7 ", false);
    if (prompts.size() == 2) out.push_back(config.eos_token_id);  // generation ended by the config's eos
    return out;
  };
  Gsm8kOptions opt;
  opt.max_new_tokens = 6;
  opt.quiet = true;
  const Gsm8kResult r = evaluate_gsm8k(gen, config, tok, items, {}, opt);
  ASSERT_EQ(prompts.size(), 2u);
  const std::vector<int32_t> full = tok.encode(gsm8k_prompt({}, items[0]), false);
  ASSERT_GT(full.size(), 10u);
  EXPECT_EQ(prompts[0], std::vector<int32_t>(full.end() - 10, full.end()));  // 16 - 6 tokens, the last ones
  EXPECT_EQ(r.items[0].prompt_tokens, 10);
  EXPECT_EQ(r.items[0].prompt, gsm8k_prompt({}, items[0]));  // reported whole
  const std::vector<int32_t> short_prompt = tok.encode("Question: Q?\nAnswer:", false);  // 20 bytes: cut as well
  EXPECT_EQ(prompts[1], std::vector<int32_t>(short_prompt.end() - 10, short_prompt.end()));
  EXPECT_EQ(stops_seen, (std::vector<int32_t>{tok.eos_id(), config.eos_token_id}));
  EXPECT_EQ(r.items[0].output, " 42");
  EXPECT_EQ(r.items[0].new_tokens, 3);
  EXPECT_EQ(r.items[1].output, " 7 ");
  EXPECT_EQ(r.items[1].new_tokens, 4);
  EXPECT_EQ(r.items[0].flexible, "42");
  EXPECT_EQ(r.items[1].flexible, "7");
  EXPECT_EQ(r.flexible, 1.0);
  EXPECT_EQ(r.strict, 0.0);
  opt.max_new_tokens = 16;  // lm-eval asserts max_ctx_len > 0
  test::expect_error([&] { evaluate_gsm8k(gen, config, tok, items, {}, opt); }, "--max-new-tokens 16 leaves no room");
}

TEST(Gsm8k, StopStringsEndGenerationAndCutTheOutput) {
  QWENQ_REQUIRE_SHARED_DATA();  // stories260K writes varied text, where a stop string can fall mid-output
  const std::string dir = test::import_stories260k(test::scratch_dir() + "/stories");
  QwenModel model(dir);
  const Tokenizer tok = Tokenizer::from_model(dir);
  const std::vector<Gsm8kItem> items = {{"Lily went to the park.", "#### 1"}};
  Gsm8kOptions opt;
  opt.max_new_tokens = 40;
  opt.stops = {};
  opt.quiet = true;
  const Gsm8kResult full = evaluate_gsm8k(model, tok, items, {}, opt);
  const std::string raw = full.items[0].output;
  size_t k = 1;  // the first byte the output has not had before: the stop string
  while (k < raw.size() && raw.find(raw[k]) != k) ++k;
  ASSERT_LT(k, raw.size()) << raw;
  opt.stops = {"Question:", raw.substr(k, 1)};
  const Gsm8kResult cut = evaluate_gsm8k(model, tok, items, {}, opt);
  EXPECT_EQ(cut.items[0].output, raw.substr(0, k));
  EXPECT_EQ(cut.items[0].output, expected_output(model, tok, gsm8k_prompt({}, items[0]), opt));
  EXPECT_LT(cut.items[0].new_tokens, full.items[0].new_tokens);  // generation stopped there, not at 40 tokens
  EXPECT_EQ(full.items[0].new_tokens, 40);
}

}  // namespace
}  // namespace qwenq
