// Multiple-choice scoring (trainer/multiple_choice.h): lm-eval's encoding of a context and a choice, the records and
// their refusals, and every choice's log-likelihood against a sum over forward_logits written here, for every batch
// size. tests/oracle/test_multiple_choice_oracle.py checks the same against transformers on stories260K.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/files.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_tokenizers.h"
#include "trainer/multiple_choice.h"

namespace qwenq {
namespace {

std::vector<int32_t> bytes_ids(const std::string& s) {
  std::vector<int32_t> ids;
  for (unsigned char c : s) ids.push_back(c);
  return ids;
}

TEST(MultipleChoice, ContextWhitespaceMovesIntoTheContinuation) {
  const Tokenizer tok = test::byte_tokenizer(test::scratch_dir() + "/mc-tok", "");
  ChoiceTokens t = encode_choice(tok, "The cat \n", "sat");
  EXPECT_EQ(t.context, bytes_ids("The cat"));
  EXPECT_EQ(t.continuation, bytes_ids(" \nsat"));
  t = encode_choice(tok, "  ", "x");  // nothing left of the context: the EOS token stands in
  EXPECT_EQ(t.context, std::vector<int32_t>{tok.eos_id()});
  EXPECT_EQ(t.continuation, bytes_ids("  x"));
}

TEST(MultipleChoice, RecordsAndTheirRefusals) {
  const std::string dir = test::scratch_dir();
  write_file_atomic(dir + "/ok.jsonl",
                    "{\"context\": \"a\", \"choices\": [\" b\", \" c\"], \"label\": \"1\"}\n\n"
                    "{\"question\": \"Q?\", \"choices\": {\"text\": [\"x\", \"y\", \"z\"], \"label\": [\"1\", \"2\", "
                    "\"3\"]}, \"answerKey\": \"3\"}\n");
  const std::vector<ChoiceItem> items = read_choice_items(dir + "/ok.jsonl");
  ASSERT_EQ(items.size(), 2u);
  EXPECT_EQ(items[0].label, 1);
  EXPECT_EQ(items[0].delimiter, "");
  EXPECT_EQ(items[1].where, dir + "/ok.jsonl:3");
  EXPECT_EQ(items[1].context, "Question: Q?\nAnswer:");
  EXPECT_EQ(items[1].delimiter, " ");
  EXPECT_EQ(items[1].choices, (std::vector<std::string>{"x", "y", "z"}));
  EXPECT_EQ(items[1].label, 2);
  const struct {
    std::string line, error;
  } bad[] = {
      {R"({"context": "a", "choices": ["b", "c"], "label": 2})", ":1: \"label\" 2 is not one of the 2 choices"},
      {R"({"context": "a", "choices": ["b", "c"], "label": "x"})", ":1: \"label\" \"x\" is not an index"},
      {R"({"context": "a", "choices": ["b"], "label": 0})", ":1: \"choices\" must be a list of at least two strings"},
      {R"({"context": "a", "choices": ["b", 3], "label": 0})", ":1: \"choices\" must hold strings"},
      {R"({"prompt": "a"})", ":1: expected {\"context\": string"},
      {R"({"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"})",
       ":1: answerKey \"C\" is not one of the choice labels"},
      {R"({"question": "q", "choices": {"text": ["a", "b"], "label": ["A"]}, "answerKey": "A"})",
       "\"choices.label\" must be a list of at least two strings"},
      {"{\"context\": ", ":1: not valid JSON: "},
  };
  for (const auto& b : bad) {
    write_file_atomic(dir + "/bad.jsonl", b.line + "\n");
    test::expect_error([&] { read_choice_items(dir + "/bad.jsonl"); }, {dir + "/bad.jsonl", b.error});
  }
  write_file_atomic(dir + "/empty.jsonl", "\n\n");
  test::expect_error([&] { read_choice_items(dir + "/empty.jsonl"); }, "empty.jsonl: no items");
}

// The log-likelihood of a continuation after a context, from the whole sequence's logits (one sequence, no packing).
double brute_force_loglik(const QwenModel& m, const ChoiceTokens& t) {
  std::vector<int32_t> seq = t.context;
  seq.insert(seq.end(), t.continuation.begin(), t.continuation.end());
  const std::vector<float> logits = m.forward_logits(PackedBatch::from_sequences({seq}));
  const int64_t V = m.config().vocab_size;
  double ll = 0;
  for (size_t k = 0; k < t.continuation.size(); ++k) {
    const float* l = logits.data() + (t.context.size() - 1 + k) * V;
    double z = 0;
    for (int64_t v = 0; v < V; ++v) z += std::exp(static_cast<double>(l[v]));
    ll += static_cast<double>(l[t.continuation[k]]) - std::log(z);
  }
  return ll;
}

TEST(MultipleChoice, LogLikelihoodsEqualTheBruteForceForEveryBatchSize) {
  const std::string dir = test::scratch_dir() + "/mc-model";
  const std::string model_dir = test::make_random_model(dir + "/m", "tiny256", DType::F32, 9, /*layers=*/2);
  const QwenModel m(model_dir);
  const Tokenizer tok = Tokenizer::from_model(model_dir);
  std::vector<ChoiceItem> items(3);
  items[0] = {"i0", "Once upon a time ", "", {"there was", "a cat", "zq"}, 0};
  items[1] = {"i1", "Question: Why?\nAnswer:", " ", {"Because", "No"}, 1};
  items[2] = {"i2", "", "", {"Hello there", "Hi"}, 1};  // an empty context: EOS first
  const ChoiceResult ref = evaluate_choices(m, tok, items, 4096, /*quiet=*/true);
  int64_t hits = 0, tokens = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    double best = -1e300;
    int64_t pred = 0;
    for (size_t c = 0; c < items[i].choices.size(); ++c) {
      const ChoiceTokens t = encode_choice(tok, items[i].context, items[i].delimiter + items[i].choices[c]);
      tokens += static_cast<int64_t>(t.context.size() + t.continuation.size()) - 1;  // the last is only predicted
      const double ll = brute_force_loglik(m, t);
      EXPECT_NEAR(ref.items[i].loglik[c], ll, 1e-4) << i << " " << c;  // fp32 NLLs, packed vs one sequence
      if (ll > best) best = ll, pred = static_cast<int64_t>(c);
    }
    EXPECT_EQ(ref.items[i].pred, pred) << i;
    hits += pred == items[i].label;
  }
  EXPECT_EQ(ref.tokens, tokens);
  EXPECT_DOUBLE_EQ(ref.acc, static_cast<double>(hits) / 3);
  for (int64_t batch : {int64_t{1}, int64_t{20}, int64_t{40}}) {  // one choice per forward .. several
    const ChoiceResult r = evaluate_choices(m, tok, items, batch, true);
    for (size_t i = 0; i < items.size(); ++i) {
      for (size_t c = 0; c < items[i].choices.size(); ++c)
        EXPECT_NEAR(r.items[i].loglik[c], ref.items[i].loglik[c], 1e-5) << batch << " " << i << " " << c;
    }
  }
}

// Inputs longer than the model's context keep their last max_position_embeddings tokens (lm-eval's left truncation:
// the continuation's last token is predicted, never input, so max + 1 tokens of context and continuation take part).
TEST(MultipleChoice, LongInputsKeepTheirLastTokensAsLmEval) {
  const std::string dir = test::scratch_dir() + "/mc-trunc";
  const std::string model_dir = test::make_random_model(dir + "/m", "tiny256", DType::F32, 10, /*layers=*/2);
  const std::string cfg = path_join(model_dir, "config.json");
  std::string text = read_file(cfg);
  const size_t at = text.find("\"max_position_embeddings\": ");
  ASSERT_NE(at, std::string::npos);
  const size_t v0 = at + 27, v1 = text.find_first_of(",}", v0);
  text.replace(v0, v1 - v0, "12");
  write_file_atomic(cfg, text);
  const QwenModel m(model_dir);
  ASSERT_EQ(m.config().max_position_embeddings, 12);
  const Tokenizer tok = Tokenizer::from_model(model_dir);
  std::vector<ChoiceItem> items(1);
  items[0] = {"i0", "a long context of many more than twelve bytes", "", {" xyz", " q"}, 0};
  const ChoiceResult r = evaluate_choices(m, tok, items, 4096, true);
  for (size_t c = 0; c < 2; ++c) {
    const ChoiceTokens t = encode_choice(tok, items[0].context, items[0].choices[c]);
    std::vector<int32_t> full = t.context;
    full.insert(full.end(), t.continuation.begin(), t.continuation.end());
    ChoiceTokens kept;  // the last 13 tokens: 12 inputs, the continuation's last one predicted
    kept.context.assign(full.end() - 13, full.end() - static_cast<std::ptrdiff_t>(t.continuation.size()));
    kept.continuation = t.continuation;
    EXPECT_NEAR(r.items[0].loglik[c], brute_force_loglik(m, kept), 1e-4) << c;
  }
  EXPECT_EQ(r.tokens, 24);  // two choices, 12 inputs each
  items[0].choices = {std::string(13, 'z'), "a"};  // a continuation longer than the context is refused
  test::expect_error([&] { evaluate_choices(m, tok, items, 4096, true); }, {"i0: choice 0 is 13 tokens", "(12)"});
}

}  // namespace
}  // namespace qwenq
