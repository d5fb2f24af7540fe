// SFT data pipeline: exact template strings, loss masks checked by decoding the masked tokens, malformed-record
// errors and skip_bad, truncation stats, the seeded split, packed/padded batches (targets at segment
// boundaries) and the resumable iterator; then the real Alpaca demo file with the real Qwen2 tokenizer.
//
// Most tests use a tiny byte-level tokenizer written here: token id b is the byte b (no merges), plus
// <|endoftext|>=256, <|im_start|>=257, <|im_end|>=258 (EOS), so tokens map one-to-one onto bytes of the text.
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <iostream>
#include <set>

#include "core/error.h"
#include "core/files.h"
#include "kernels/loss.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_tokenizers.h"
#include "trainer/sft_data.h"
#include "trainer/unicode_text.h"

namespace qwenq {
namespace {

using test::error_of;

const char* kPlainChatml =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

Tokenizer tiny_tokenizer(const std::string& dir, const std::string& chat_template) {
  return test::byte_tokenizer(dir, chat_template);
}

std::string masked_text(const SftExample& ex, const Tokenizer& tok) {
  std::vector<int32_t> ids;
  for (size_t t = 0; t < ex.tokens.size(); ++t)
    if (ex.loss_mask[t]) ids.push_back(ex.tokens[t]);
  return tok.decode(ids);
}

std::string write(const std::string& dir, const std::string& name, const std::string& text) {
  const std::string path = dir + "/" + name;
  write_file_atomic(path, text);
  return path;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// An example of `len` tokens whose values encode (id, position) and whose mask is given by `loss_from`.
SftExample synthetic(int32_t id, int64_t len, int64_t loss_from) {
  SftExample ex;
  for (int64_t t = 0; t < len; ++t) {
    ex.tokens.push_back(id * 1000 + static_cast<int32_t>(t));
    ex.loss_mask.push_back(t >= loss_from ? 1 : 0);
  }
  return ex;
}

// ---- templates and masks ---------------------------------------------------------------------------------

TEST(SftTemplates, AlpacaWithAndWithoutInput) {
  const std::string no_input =
      "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n"
      "\n"
      "### Instruction:\n"
      "Name a color.\n"
      "\n"
      "### Response:\n";
  EXPECT_EQ(alpaca_prompt("Name a color.", ""), no_input);
  const std::string with_input =
      "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
      "response that appropriately completes the request.\n"
      "\n"
      "### Instruction:\n"
      "Translate to French.\n"
      "\n"
      "### Input:\n"
      "cat\n"
      "\n"
      "### Response:\n";
  EXPECT_EQ(alpaca_prompt("Translate to French.", "cat"), with_input);

  const Tokenizer tok = tiny_tokenizer(test::scratch_dir(), "");
  SftRecord rec;
  rec.format = SftFormat::kAlpaca;
  rec.instruction = "Translate to French.";
  rec.input = "cat";
  rec.output = "chat";
  const SftExample ex = format_sft_record(rec, tok);
  ASSERT_EQ(ex.tokens.size(), ex.loss_mask.size());
  EXPECT_EQ(tok.decode(ex.tokens), with_input + "chat<|im_end|>");
  EXPECT_EQ(masked_text(ex, tok), "chat<|im_end|>");
  EXPECT_EQ(ex.tokens.back(), 258);
  // Exactly the last 5 positions (4 output bytes + EOS) are targets.
  const size_t n = ex.tokens.size();
  for (size_t t = 0; t < n; ++t) EXPECT_EQ(ex.loss_mask[t], t >= n - 5 ? 1 : 0) << "position " << t;

  rec.input = "";
  rec.instruction = "Name a color.";
  rec.output = "Blue.";
  const SftExample ex2 = format_sft_record(rec, tok);
  EXPECT_EQ(tok.decode(ex2.tokens), no_input + "Blue.<|im_end|>");
  EXPECT_EQ(masked_text(ex2, tok), "Blue.<|im_end|>");
}

TEST(SftTemplates, ChatThreeMessagesMasksAssistantAndImEnd) {
  const Tokenizer tok = tiny_tokenizer(test::scratch_dir(), kPlainChatml);
  SftRecord rec;
  rec.format = SftFormat::kChat;
  rec.messages = {{"system", "Be brief."}, {"user", "Hi!"}, {"assistant", "Hello."}};
  const SftExample ex = format_sft_record(rec, tok);
  EXPECT_EQ(tok.decode(ex.tokens),
            "<|im_start|>system\nBe brief.<|im_end|>\n"
            "<|im_start|>user\nHi!<|im_end|>\n"
            "<|im_start|>assistant\nHello.<|im_end|>\n");
  EXPECT_EQ(masked_text(ex, tok), "Hello.<|im_end|>");
  EXPECT_EQ(ex.tokens.back(), '\n');
  EXPECT_EQ(ex.loss_mask.back(), 0) << "the newline after <|im_end|> is not a target";
  EXPECT_EQ(ex.loss_mask[ex.tokens.size() - 2], 1) << "<|im_end|> is a target";

  // Two assistant turns: both spans, nothing of the user turn between them.
  rec.messages = {{"user", "a"}, {"assistant", "b"}, {"user", "c"}, {"assistant", "d"}};
  const SftExample ex2 = format_sft_record(rec, tok);
  EXPECT_EQ(masked_text(ex2, tok), "b<|im_end|>d<|im_end|>");
  EXPECT_EQ(tok.decode(ex2.tokens),
            "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"
            "<|im_start|>user\nc<|im_end|>\n<|im_start|>assistant\nd<|im_end|>\n");
}

TEST(SftTemplates, TextHasLossEverywhereButTheFirstToken) {
  const Tokenizer tok = tiny_tokenizer(test::scratch_dir(), "");
  SftRecord rec;
  rec.format = SftFormat::kText;
  rec.text = "abc";
  const SftExample ex = format_sft_record(rec, tok);
  EXPECT_EQ(ex.tokens, (std::vector<int32_t>{'a', 'b', 'c', 258}));
  EXPECT_EQ(ex.loss_mask, (std::vector<uint8_t>{0, 1, 1, 1}));
  std::vector<int32_t> targets(ex.tokens.size());
  sft_example_targets(ex, targets.data());
  EXPECT_EQ(targets, (std::vector<int32_t>{'b', 'c', 258, kIgnoreIndex}));
}

TEST(SftTemplates, ChatWithoutTemplateIsRefused) {
  const std::string dir = test::scratch_dir();
  const Tokenizer tok = tiny_tokenizer(dir, "");
  const std::string path = write(dir, "chat.jsonl", R"({"messages":[{"role":"user","content":"x"},{"role":"assistant","content":"y"}]})");
  const std::string err = error_of([&] { load_sft_dataset(path, tok, {}); });
  EXPECT_TRUE(contains(err, path + ":1: chat records need a tokenizer with a chat template")) << err;
}

TEST(SftTemplates, ChatWithStories260KTokenizerIsRefused) {
  QWENQ_REQUIRE_SHARED_DATA();
  const Tokenizer tok = Tokenizer::from_llama2c(test::shared_data_dir() + "/stories260K/tok512.bin");
  SftRecord rec;
  rec.format = SftFormat::kChat;
  rec.where = "x.jsonl:7";
  rec.messages = {{"user", "x"}, {"assistant", "y"}};
  const std::string err = error_of([&] { format_sft_record(rec, tok); });
  EXPECT_TRUE(contains(err, "x.jsonl:7: chat records need a tokenizer with a chat template")) << err;
  // Alpaca works: BOS first (never a target), response + </s> masked.
  rec.format = SftFormat::kAlpaca;
  rec.instruction = "Tell a story.";
  rec.output = "Once upon a time";
  const SftExample ex = format_sft_record(rec, tok);
  EXPECT_EQ(ex.tokens.front(), tok.bos_id());
  EXPECT_EQ(ex.tokens.back(), tok.eos_id());
  EXPECT_EQ(ex.loss_mask.front(), 0);
  std::vector<int32_t> resp;
  for (size_t t = 0; t < ex.tokens.size(); ++t)
    if (ex.loss_mask[t] && ex.tokens[t] != tok.eos_id()) resp.push_back(ex.tokens[t]);
  EXPECT_EQ(resp, tok.encode("Once upon a time", false));
}

// ---- reading ------------------------------------------------------------------------------------------------

TEST(SftRead, MalformedRecordsNameFileAndLine) {
  const std::string dir = test::scratch_dir();
  const std::string good = R"({"instruction":"i","output":"o"})";
  struct Case {
    std::string body, where, why;
  };
  const std::vector<Case> cases = {
      {good + "\n\n{not json\n", ":3: not valid JSON", ""},
      {good + "\n" + R"({"instruction":"i"})" + "\n", ":2: missing field \"output\"", ""},
      {good + "\n" + R"({"instruction":"i","output":5})" + "\n", ":2: field \"output\" is number, expected a string", ""},
      {good + "\n[1,2]\n", ":2: expected a JSON object, got array", ""},
      {R"({"messages":[{"role":"user","content":"x"}]})", ":1: no assistant message", ""},
      {R"({"messages":[{"role":"bot","content":"x"}]})", ":1: messages[0]: role \"bot\" is not system", ""},
      {R"({"prompt":"x"})", ":1: cannot tell the record format", ""},
  };
  for (const Case& c : cases) {
    const std::string path = write(dir, "data.jsonl", c.body);
    SftDataStats st;
    const std::string err = error_of([&] { read_sft_records(path, SftFormat::kAuto, false, &st); });
    EXPECT_TRUE(contains(err, path + c.where)) << "expected \"" << c.where << "\" in: " << err;
  }
  // A JSON array names the 1-based record index.
  const std::string path = write(dir, "data.json", "[" + good + ",\n" + R"({"instruction":"i","output":null})" + "]");
  SftDataStats st;
  const std::string err = error_of([&] { read_sft_records(path, SftFormat::kAuto, false, &st); });
  EXPECT_TRUE(contains(err, path + ": record 2: field \"output\" is null")) << err;
  // A forced format checks its own fields.
  const std::string text_path = write(dir, "t.jsonl", R"({"text":"x"})");
  const std::string forced = error_of([&] { read_sft_records(text_path, SftFormat::kAlpaca, false, &st); });
  EXPECT_TRUE(contains(forced, text_path + ":1: missing field \"instruction\"")) << forced;
}

TEST(SftRead, SkipBadCountsAndReportsLines) {
  const std::string dir = test::scratch_dir();
  const std::string path = write(dir, "d.jsonl",
                                 "{\"text\":\"a\"}\n"
                                 "oops\n"
                                 "{\"text\":\"b\"}\n"
                                 "{\"text\":3}\n"
                                 "\n"
                                 "{\"txt\":\"c\"}\r\n"
                                 "{\"text\":\"d\"}\n");
  SftDataStats st;
  const std::vector<SftRecord> recs = read_sft_records(path, SftFormat::kAuto, true, &st);
  ASSERT_EQ(recs.size(), 3u);
  EXPECT_EQ(recs[2].text, "d");
  EXPECT_EQ(recs[2].where, path + ":7");
  EXPECT_EQ(st.format, SftFormat::kText);
  EXPECT_EQ(st.skipped, 3);
  ASSERT_EQ(st.first_skipped.size(), 3u);
  EXPECT_TRUE(contains(st.first_skipped[0], path + ":2: not valid JSON")) << st.first_skipped[0];
  EXPECT_TRUE(contains(st.first_skipped[1], path + ":4: field \"text\" is number")) << st.first_skipped[1];
  EXPECT_TRUE(contains(st.first_skipped[2], path + ":6: missing field \"text\"")) << st.first_skipped[2];
  // The dataset summary carries the count and the first lines.
  const Tokenizer tok = tiny_tokenizer(dir, "");
  SftDataOptions opt;
  opt.skip_bad = true;
  const SftDataset ds = load_sft_dataset(path, tok, opt);
  EXPECT_EQ(ds.stats.records, 3);
  EXPECT_TRUE(contains(ds.stats.summary(), "3 malformed skipped; first: " + path + ":2:")) << ds.stats.summary();
}

TEST(SftRead, FormatDetectedFromFirstRecord) {
  const std::string dir = test::scratch_dir();
  const Tokenizer tok = tiny_tokenizer(dir, kPlainChatml);
  const std::string chat = write(dir, "c.jsonl",
                                 R"({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]})"
                                 "\n");
  const SftDataset ds = load_sft_dataset(chat, tok, {});
  EXPECT_EQ(ds.stats.format, SftFormat::kChat);
  ASSERT_EQ(ds.train.size(), 1u);
  EXPECT_EQ(masked_text(ds.train[0], tok), "a<|im_end|>");
  const std::string alpaca = write(dir, "a.json", R"([{"instruction":"i","input":null,"output":"o","extra":1}])");
  EXPECT_EQ(load_sft_dataset(alpaca, tok, {}).stats.format, SftFormat::kAlpaca);
  EXPECT_EQ(parse_sft_format("chat"), SftFormat::kChat);
  EXPECT_TRUE(contains(error_of([] { parse_sft_format("sharegpt"); }), "unknown data format \"sharegpt\" (expected auto, text, alpaca, chat, prompt-completion or preference)"));
}

TEST(SftRead, EmptyDatasetIsAnError) {
  const std::string dir = test::scratch_dir();
  SftDataStats st;
  for (const std::string& body : {std::string(""), std::string("\n  \n"), std::string("[]")}) {
    const std::string path = write(dir, body == "[]" ? "e.json" : "e.jsonl", body);
    const std::string err = error_of([&] { read_sft_records(path, SftFormat::kAuto, true, &st); });
    EXPECT_TRUE(contains(err, path + ": empty dataset")) << err;
  }
  const std::string path = write(dir, "bad.jsonl", "x\ny\n");
  const std::string err = error_of([&] { read_sft_records(path, SftFormat::kAuto, true, &st); });
  EXPECT_TRUE(contains(err, path + ": empty dataset (no usable records; 2 malformed skipped)")) << err;
}

// JSON lines or a JSON array, told apart by the content whatever the extension, as Hugging Face's "json" loader
// (datasets' packaged_modules/json: pyarrow's JSON-lines reader first, then json.load of the whole file) reads them.
TEST(SftRead, JsonOrJsonLinesToldApartByContent) {
  const std::string dir = test::scratch_dir();
  const std::string a = R"({"instruction": "i1", "output": "o1"})", b = R"({"instruction": "i2", "output": "o2"})";
  SftDataStats st;
  const auto read = [&](const std::string& name, const std::string& body) {
    return read_sft_records(write(dir, name, body), SftFormat::kAuto, false, &st);
  };
  struct Case {
    std::string name, body, first_where;
  };
  const std::vector<Case> cases = {
      {"lines.json", a + "\n" + b + "\n", ":1"},                    // JSON lines in a .json file (was refused)
      {"array.jsonl", "[\n  " + a + ",\n  " + b + "\n]\n", ": record 1"},  // an array in a .jsonl file (was refused)
      {"lines", "\n" + a + "\r\n" + b, ":2"},
      {"array.txt", " [" + a + ", " + b + "]", ": record 1"},
      {"bom.json", "\xEF\xBB\xBF[" + a + ", " + b + "]", ": record 1"},
      {"bom.jsonl", "\xEF\xBB\xBF" + a + "\n" + b + "\n", ":1"},
  };
  for (const Case& c : cases) {
    const std::vector<SftRecord> recs = read(c.name, c.body);
    ASSERT_EQ(recs.size(), 2u) << c.name;
    EXPECT_EQ(recs[0].instruction, "i1") << c.name;
    EXPECT_EQ(recs[1].output, "o2") << c.name;
    EXPECT_EQ(recs[0].where, dir + "/" + c.name + c.first_where);
    EXPECT_EQ(st.format, SftFormat::kAlpaca);
  }
  EXPECT_EQ(read("one.json", a + "\n").size(), 1u);  // one record on one line: JSON lines of one
  // One object over several lines is no set of records: one error, not "line 1 is not JSON".
  const std::string obj = write(dir, "obj.json", "{\n  \"data\": [" + a + "]\n}\n");
  EXPECT_EQ(error_of([&] { read_sft_records(obj, SftFormat::kAuto, true, &st); }),
            obj + ": expected JSON lines or a JSON array of records, got one JSON object over several lines");
  // A cut array is named as one bad JSON file.
  const std::string cut = write(dir, "cut.jsonl", "[" + a + ",\n" + b.substr(0, 10));
  EXPECT_TRUE(contains(error_of([&] { read_sft_records(cut, SftFormat::kAuto, true, &st); }), cut + ": not valid JSON"));
}

// Alpaca's optional "input" and LLaMA-Factory's "system" and "history": null or absent is nothing, anything but
// the documented type is named.
TEST(SftRead, AlpacaOptionalFieldsAreCheckedByType) {
  const std::string dir = test::scratch_dir();
  const std::string path = write(dir, "a.jsonl",
                                 R"({"instruction": "i", "output": "o", "input": null, "system": null})" "\n"
                                 R"({"instruction": "i", "output": "o", "input": "x", "system": "S"})" "\n");
  SftDataStats st;
  const std::vector<SftRecord> recs = read_sft_records(path, SftFormat::kAuto, false, &st);
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[0].input, "");
  EXPECT_EQ(recs[0].system, "");
  EXPECT_EQ(recs[1].input, "x");
  EXPECT_EQ(recs[1].system, "S");
  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"instruction": "i", "output": "o", "input": 3})", "field \"input\" is number, expected a string"},
      {R"({"instruction": "i", "output": "o", "input": ["x"]})", "field \"input\" is array, expected a string"},
      {R"({"instruction": "i", "output": "o", "system": {"role": "system"}})", "field \"system\" is object, expected a string"},
      {R"({"instruction": "i", "output": "o", "history": {"q": "r"}})", "field \"history\" is object, expected an array"},
      {R"({"instruction": "i", "output": "o", "history": "q"})", "field \"history\" is string, expected an array"},
  };
  for (const auto& [line, why] : bad) {
    write(dir, "a.jsonl", std::string(R"({"instruction": "i", "output": "o"})") + "\n" + line + "\n");
    EXPECT_EQ(error_of([&] { read_sft_records(path, SftFormat::kAuto, false, &st); }),
              path + ":2: " + why + " (pass --skip-bad to skip such records)");
  }
}

TEST(SftRead, SkipBadKeepsTheFirstFiveReasons) {
  const std::string dir = test::scratch_dir();
  std::string body = "{\"text\": \"a\"}\n";
  for (int i = 0; i < 7; ++i) body += "{\"text\": " + std::to_string(i) + "}\n";
  const std::string path = write(dir, "d.jsonl", body);
  SftDataStats st;
  EXPECT_EQ(read_sft_records(path, SftFormat::kAuto, true, &st).size(), 1u);
  EXPECT_EQ(st.skipped, 7);
  ASSERT_EQ(st.first_skipped.size(), static_cast<size_t>(SftDataStats::kMaxReported));
  EXPECT_EQ(st.first_skipped.back(), path + ":6: field \"text\" is number, expected a string");
}

// ---- truncation and split ----------------------------------------------------------------------------------

TEST(SftData, TruncationStats) {
  const std::string dir = test::scratch_dir();
  const Tokenizer tok = tiny_tokenizer(dir, "");
  // Text lengths 3, 10, 20 -> 4, 11, 21 tokens with EOS.
  const std::string path = write(dir, "t.jsonl", "{\"text\":\"abc\"}\n{\"text\":\"0123456789\"}\n{\"text\":\"" +
                                                     std::string(20, 'x') + "\"}\n");
  SftDataOptions opt;
  opt.max_len = 8;
  const SftDataset ds = load_sft_dataset(path, tok, opt);
  EXPECT_EQ(ds.stats.records, 3);
  EXPECT_EQ(ds.stats.truncated, 2);
  EXPECT_EQ(ds.stats.truncated_tokens, (11 - 8) + (21 - 8));
  EXPECT_EQ(ds.stats.longest, 21);
  EXPECT_EQ(ds.stats.tokens, 4 + 8 + 8);
  EXPECT_EQ(ds.stats.loss_tokens, 3 + 7 + 7);
  for (const SftExample& ex : ds.train) {
    EXPECT_LE(ex.tokens.size(), 8u);
    EXPECT_EQ(ex.tokens.size(), ex.loss_mask.size());
  }
  // An Alpaca example whose output is cut off entirely is dropped and counted.
  const std::string a = write(dir, "a.jsonl", "{\"instruction\":\"i\",\"output\":\"o\"}\n{\"instruction\":\"" +
                                                  std::string(100, 'i') + "\",\"output\":\"o\"}\n");
  opt.max_len = static_cast<int64_t>(alpaca_prompt("i", "").size()) + 2;  // the first record fits exactly
  const SftDataset ds2 = load_sft_dataset(a, tok, opt);
  EXPECT_EQ(ds2.stats.records, 1);
  EXPECT_EQ(ds2.stats.dropped_no_loss, 1);
  EXPECT_EQ(ds2.stats.truncated, 1);
  ASSERT_EQ(ds2.train.size(), 1u);
  EXPECT_EQ(masked_text(ds2.train[0], tok), "o<|im_end|>");
}

// An empty "text" is its EOS alone: nothing predicts it. It is dropped and counted as empty, not as a record that
// "lost its response to truncation" (none was cut), and a file of nothing else says so.
TEST(SftData, EmptyTextRecordsAreDroppedAsEmpty) {
  const std::string dir = test::scratch_dir();
  const Tokenizer tok = tiny_tokenizer(dir, "");
  SftRecord rec;
  rec.format = SftFormat::kText;
  const SftExample eos = format_sft_record(rec, tok);
  EXPECT_EQ(eos.tokens, std::vector<int32_t>{tok.eos_id()});
  EXPECT_EQ(eos.loss_mask, std::vector<uint8_t>{0});

  const std::string path = write(dir, "t.jsonl", "{\"text\": \"\"}\n{\"text\": \"ab\"}\n{\"text\": \"\"}\n");
  SftDataOptions opt;
  opt.max_len = 8;
  const SftDataset ds = load_sft_dataset(path, tok, opt);
  EXPECT_EQ(ds.stats.records, 1);
  EXPECT_EQ(ds.stats.dropped_empty, 2);
  EXPECT_EQ(ds.stats.dropped_no_loss, 0);
  EXPECT_TRUE(contains(ds.stats.summary(), ", 2 dropped (empty: no token to predict)")) << ds.stats.summary();
  EXPECT_FALSE(contains(ds.stats.summary(), "truncation")) << ds.stats.summary();

  const std::string empty = write(dir, "e.jsonl", "{\"text\": \"\"}\n{\"text\": \"\"}\n");
  EXPECT_EQ(error_of([&] { load_sft_dataset(empty, tok, opt); }),
            empty + ": empty dataset (every record is empty: no token to predict)");
  // A prompt cut to max_len is still named as such.
  const std::string mixed = write(dir, "m.jsonl", "{\"prompt\": \"" + std::string(40, 'p') + "\", \"completion\": \"c\"}\n");
  EXPECT_EQ(error_of([&] { load_sft_dataset(mixed, tok, opt); }),
            mixed + ": empty dataset (every example lost its response to max_len 8)");
}

TEST(SftSplit, DeterministicDisjointNeverEmpty) {
  std::vector<int64_t> tr1, ev1, tr2, ev2;
  split_sft_indices(100, 7, 0.1, 0, &tr1, &ev1);
  split_sft_indices(100, 7, 0.1, 0, &tr2, &ev2);
  EXPECT_EQ(ev1, ev2);
  EXPECT_EQ(tr1, tr2);
  EXPECT_EQ(ev1.size(), 10u);
  std::set<int64_t> all(tr1.begin(), tr1.end());
  for (int64_t i : ev1) EXPECT_TRUE(all.insert(i).second) << "index " << i << " in both splits";
  EXPECT_EQ(all.size(), 100u);
  EXPECT_EQ(*all.begin(), 0);
  EXPECT_EQ(*all.rbegin(), 99);
  split_sft_indices(100, 8, 0.1, 0, &tr2, &ev2);
  EXPECT_NE(ev1, ev2) << "another seed, another split";
  // Tiny fractions still give one eval example; counts are exact; train never empty.
  split_sft_indices(5, 1, 0.01, 0, &tr1, &ev1);
  EXPECT_EQ(ev1.size(), 1u);
  split_sft_indices(2, 1, 0.9, 0, &tr1, &ev1);
  EXPECT_EQ(ev1.size(), 1u);
  EXPECT_EQ(tr1.size(), 1u);
  split_sft_indices(10, 1, 0, 3, &tr1, &ev1);
  EXPECT_EQ(ev1.size(), 3u);
  split_sft_indices(10, 1, 0, 0, &tr1, &ev1);
  EXPECT_TRUE(ev1.empty());
  EXPECT_EQ(tr1.size(), 10u);
  EXPECT_TRUE(contains(error_of([&] { split_sft_indices(1, 1, 0.5, 0, &tr1, &ev1); }), "at least 2 examples"));
  EXPECT_TRUE(contains(error_of([&] { split_sft_indices(10, 1, 0.5, 2, &tr1, &ev1); }), "not both"));
  EXPECT_TRUE(contains(error_of([&] { split_sft_indices(10, 1, 0, 10, &tr1, &ev1); }), "leaves no training"));
}

// ---- batches ------------------------------------------------------------------------------------------------

TEST(SftBatch, PackingSegmentsPositionsAndTargets) {
  // Lengths 5, 4, 6, 12 (truncated to seq_len 8), 3 in file order; seq_len 8, two rows per batch.
  std::vector<SftExample> exs = {synthetic(1, 5, 2), synthetic(2, 4, 1), synthetic(3, 6, 3), synthetic(4, 12, 0),
                                 synthetic(5, 3, 1)};
  SftBatchOptions opt;
  opt.seq_len = 8;
  opt.batch_size = 2;
  opt.shuffle = false;
  opt.epochs = 1;
  SftBatchIterator it(exs, opt);
  EXPECT_EQ(it.truncated_to_seq_len(), 1);
  SftBatch b;
  ASSERT_TRUE(it.next(&b));
  // Row 0: ex1 (5) — ex2 (4) does not fit; row 1: ex2 (4) — ex3 (6) does not fit -> batch full.
  EXPECT_EQ(b.cu_rows, (std::vector<int32_t>{0, 5, 9}));
  EXPECT_EQ(b.packed.cu_seqlens, (std::vector<int32_t>{0, 5, 9}));
  EXPECT_EQ(b.num_examples, 2);
  EXPECT_EQ(b.packed.positions, (std::vector<int32_t>{0, 1, 2, 3, 4, 0, 1, 2, 3}));
  const int32_t I = kIgnoreIndex;
  // ex1: mask from 2 -> targets at inputs 1..3; last token of the segment -100. ex2: mask from 1.
  EXPECT_EQ(b.targets, (std::vector<int32_t>{I, 1002, 1003, 1004, I, 2001, 2002, 2003, I}));
  EXPECT_EQ(b.num_targets, 6);
  ASSERT_TRUE(it.next(&b));
  // Row 0: ex3 (6); row 1: ex4 truncated to 8.
  EXPECT_EQ(b.cu_rows, (std::vector<int32_t>{0, 6, 14}));
  EXPECT_EQ(b.first_index, 2);
  EXPECT_EQ(b.targets[5], I) << "no target across the boundary into the next example";
  EXPECT_EQ(b.packed.tokens[6], 4000);
  EXPECT_EQ(b.targets[13], I);
  ASSERT_TRUE(it.next(&b));
  EXPECT_EQ(b.cu_rows, (std::vector<int32_t>{0, 3}));
  EXPECT_EQ(b.packed.tokens, (std::vector<int32_t>{5000, 5001, 5002}));
  EXPECT_FALSE(it.next(&b)) << "one epoch only";

  // Several short examples share one row; every row <= seq_len and every segment intact.
  std::vector<SftExample> small;
  for (int i = 0; i < 9; ++i) small.push_back(synthetic(i + 1, 2 + i % 3, 1));
  opt.seq_len = 7;
  opt.shuffle = true;
  SftBatchIterator it2(small, opt);
  int64_t seen = 0;
  while (it2.next(&b)) {
    for (int64_t r = 0; r < b.rows(); ++r) EXPECT_LE(b.cu_rows[r + 1] - b.cu_rows[r], 7);
    for (int64_t s = 0; s < b.packed.num_seqs(); ++s) {
      const int32_t lo = b.packed.cu_seqlens[s], hi = b.packed.cu_seqlens[s + 1];
      EXPECT_EQ(b.targets[hi - 1], I);
      for (int32_t p = lo; p < hi; ++p) {
        EXPECT_EQ(b.packed.positions[p], p - lo);
        EXPECT_EQ(b.packed.tokens[p] / 1000, b.packed.tokens[lo] / 1000) << "one example per segment";
      }
    }
    seen += b.num_examples;
  }
  EXPECT_EQ(seen, 9);
}

TEST(SftBatch, PaddingOneExamplePerRow) {
  std::vector<SftExample> exs = {synthetic(1, 5, 1), synthetic(2, 3, 1), synthetic(3, 7, 1)};
  SftBatchOptions opt;
  opt.mode = SftBatchMode::kPadding;
  opt.seq_len = 6;
  opt.batch_size = 2;
  opt.shuffle = false;
  opt.epochs = 1;
  SftBatchIterator it(exs, opt);
  SftBatch b;
  ASSERT_TRUE(it.next(&b));
  EXPECT_EQ(b.cu_rows, (std::vector<int32_t>{0, 5, 8}));
  EXPECT_EQ(b.packed.cu_seqlens, b.cu_rows);
  EXPECT_EQ(b.padded_len, 5);
  ASSERT_TRUE(it.next(&b));
  EXPECT_EQ(b.rows(), 1);
  EXPECT_EQ(b.packed.num_tokens(), 6) << "truncated to seq_len";
  EXPECT_EQ(b.padded_len, 6);
  EXPECT_FALSE(it.next(&b));
}

TEST(SftBatch, ResumeReproducesBatchesAndEpochsReshuffle) {
  std::vector<SftExample> exs;
  for (int i = 0; i < 23; ++i) exs.push_back(synthetic(i + 1, 2 + (i * 7) % 9, 1));
  SftBatchOptions opt;
  opt.seq_len = 16;
  opt.batch_size = 2;
  opt.seed = 42;
  SftBatchIterator it(exs, opt);
  EXPECT_NE(it.epoch_order(0), it.epoch_order(1)) << "each epoch is reshuffled";
  std::vector<SftBatch> run;
  std::vector<SftBatchIterator::State> states;
  std::vector<int64_t> per_epoch(4, 0);
  while (true) {
    states.push_back(it.state());
    SftBatch b;
    ASSERT_TRUE(it.next(&b));
    if (b.epoch >= 3) break;
    per_epoch[static_cast<size_t>(b.epoch)] += b.num_examples;
    run.push_back(std::move(b));
  }
  EXPECT_EQ(per_epoch[0], 23);
  EXPECT_EQ(per_epoch[1], 23);
  EXPECT_EQ(per_epoch[2], 23);
  for (size_t k : {size_t(0), size_t(3), run.size() / 2, run.size() - 1}) {
    SftBatchIterator resumed(exs, opt);
    resumed.restore(states[k]);
    for (size_t j = k; j < run.size(); ++j) {
      SftBatch b;
      ASSERT_TRUE(resumed.next(&b));
      EXPECT_EQ(b.packed.tokens, run[j].packed.tokens) << "resumed at batch " << k << ", batch " << j;
      EXPECT_EQ(b.targets, run[j].targets);
      EXPECT_EQ(b.packed.cu_seqlens, run[j].packed.cu_seqlens);
      EXPECT_EQ(b.cu_rows, run[j].cu_rows);
    }
  }
  SftBatchIterator other(std::vector<SftExample>(exs.begin(), exs.begin() + 5), opt);
  EXPECT_TRUE(contains(error_of([&] { other.restore(states[3]); }), "cursor is for 23 examples"));
}

// ---- real data ----------------------------------------------------------------------------------------------

TEST(SftRealData, AlpacaDemoWithQwen2Tokenizer) {
  QWENQ_REQUIRE_SHARED_DATA();
  const Tokenizer tok = Tokenizer::from_dir(test::shared_data_dir() + "/qwen2-tokenizer");
  const std::string path = test::shared_data_dir() + "/alpaca/alpaca_en_demo.json";
  SftDataOptions opt;
  opt.max_len = 512;
  opt.eval_count = 50;
  opt.seed = 1;
  const SftDataset ds = load_sft_dataset(path, tok, opt);
  std::cout << "[ INFO ] " << ds.stats.summary() << "\n";
  EXPECT_EQ(ds.stats.format, SftFormat::kAlpaca);
  EXPECT_EQ(ds.stats.records + ds.stats.dropped_no_loss, 999);
  EXPECT_EQ(ds.stats.skipped, 0);
  EXPECT_EQ(ds.stats.eval_examples, 50);
  EXPECT_EQ(ds.stats.train_examples, ds.stats.records - 50);
  // The first record, formatted alone: masked tokens decode to its output + <|im_end|> (the tokenizer's EOS).
  SftDataStats st;
  const std::vector<SftRecord> recs = read_sft_records(path, SftFormat::kAuto, false, &st);
  ASSERT_EQ(recs.size(), 999u);
  const SftExample ex = format_sft_record(recs[0], tok);
  EXPECT_EQ(masked_text(ex, tok), recs[0].output + "<|im_end|>");
  EXPECT_EQ(tok.decode(ex.tokens), alpaca_prompt(recs[0].instruction, recs[0].input) + recs[0].output + "<|im_end|>");
  // Pack the training split into 2 x 1024 batches: one epoch covers every training example once.
  SftBatchOptions bo;
  bo.seq_len = 1024;
  bo.batch_size = 2;
  bo.epochs = 1;
  SftBatchIterator it(ds.train, bo);
  SftBatch b;
  int64_t batches = 0, examples = 0, tokens = 0, targets = 0;
  while (it.next(&b)) {
    ++batches;
    examples += b.num_examples;
    tokens += b.packed.num_tokens();
    targets += b.num_targets;
  }
  EXPECT_EQ(examples, ds.stats.train_examples);
  std::cout << "[ INFO ] packed " << examples << " training examples into " << batches << " batches of 2 x 1024: "
            << tokens << " tokens (" << 100.0 * static_cast<double>(tokens) / static_cast<double>(batches * 2048)
            << "% full), " << targets << " targets\n";
}

TEST(SftRealData, ChatWithQwen2Template) {
  QWENQ_REQUIRE_SHARED_DATA();
  const Tokenizer tok = Tokenizer::from_dir(test::shared_data_dir() + "/qwen2-tokenizer");
  SftRecord rec;
  rec.format = SftFormat::kChat;
  rec.messages = {{"system", "Be brief."}, {"user", "Hi!"}, {"assistant", "Hello."}};
  const SftExample ex = format_sft_record(rec, tok);
  const std::string expected =
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n";
  EXPECT_EQ(tok.decode(ex.tokens), expected);
  EXPECT_EQ(ex.tokens, tok.encode(expected, false)) << "same tokens as encoding the whole rendered string";
  EXPECT_EQ(masked_text(ex, tok), "Hello.<|im_end|>");
  // Without a system message the template's default one is rendered and never in the loss.
  rec.messages = {{"user", "Hi!"}, {"assistant", "Hello."}, {"user", "Bye"}, {"assistant", "Bye!"}};
  const SftExample ex2 = format_sft_record(rec, tok);
  EXPECT_TRUE(contains(tok.decode(ex2.tokens), "You are a helpful assistant."));
  EXPECT_EQ(masked_text(ex2, tok), "Hello.<|im_end|>Bye!<|im_end|>");
}

}  // namespace
}  // namespace qwenq
