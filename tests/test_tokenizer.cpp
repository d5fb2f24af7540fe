// Tokenizer tests: the llama.cpp Qwen2 test vectors, ChatML, WikiText round trips, llama2.c's encode loop
// as an independent oracle for the SentencePiece-style path, save_hf round trips, NFC, and clear errors.
// Hugging Face itself is the oracle in tests/oracle/test_tokenizer_oracle.py.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/gguf.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_tokenizers.h"
#include "trainer/tokenizer.h"
#include "trainer/unicode_text.h"

namespace qwenq {
namespace {

using test::error_of;

std::string qwen_dir() { return test::shared_data_dir() + "/qwen2-tokenizer"; }

const Tokenizer& qwen() {
  static const Tokenizer tok = Tokenizer::from_dir(qwen_dir());
  return tok;
}

const Tokenizer& stories() {
  static const Tokenizer tok = Tokenizer::from_llama2c(test::shared_data_dir() + "/stories260K/tok512.bin");
  return tok;
}

std::vector<std::string> split_keep_newlines(const std::string& text) {
  std::vector<std::string> lines;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    end = end == std::string::npos ? text.size() : end + 1;
    lines.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  return lines;
}

// ---- Qwen2 byte-level BPE ------------------------------------------------------------------------------

// llama.cpp's test-tokenizer-0 format: every input is followed by "\n__ggml_vocab_test__\n"; the .out file
// has one line of space-separated ids per input (HF encode with add_special_tokens=False).
TEST(QwenTokenizer, LlamaCppTestVectors) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string inp = read_file(qwen_dir() + "/testvectors/ggml-vocab-qwen2.gguf.inp");
  const std::string outp = read_file(qwen_dir() + "/testvectors/ggml-vocab-qwen2.gguf.out");
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> inputs;
  for (size_t pos = 0; pos < inp.size();) {
    const size_t at = inp.find(sep, pos);
    ASSERT_NE(at, std::string::npos) << "input " << inputs.size() << " is not terminated";
    inputs.push_back(inp.substr(pos, at - pos));
    pos = at + sep.size();
  }
  std::vector<std::vector<int32_t>> expected;
  for (const std::string& line : split_keep_newlines(outp)) {
    std::vector<int32_t> ids;
    size_t p = 0;
    while (p < line.size()) {
      while (p < line.size() && (line[p] == ' ' || line[p] == '\n')) ++p;
      if (p < line.size()) {
        size_t q;
        ids.push_back(std::stoi(line.substr(p), &q));
        p += q;
      }
    }
    expected.push_back(ids);
  }
  ASSERT_EQ(inputs.size(), expected.size());
  ASSERT_EQ(inputs.size(), 46u);
  int matched = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::vector<int32_t> got = qwen().encode(inputs[i], false);
    EXPECT_EQ(got, expected[i]) << "test vector " << i << ": '" << inputs[i] << "'";
    matched += got == expected[i];
    EXPECT_EQ(qwen().decode(got), inputs[i]) << "round trip of vector " << i;
  }
  EXPECT_EQ(matched, 46);
}

TEST(QwenTokenizer, DocumentedExamplesAndSpecials) {
  QWENQ_REQUIRE_SHARED_DATA();
  const Tokenizer& t = qwen();
  EXPECT_EQ(t.encode("Hello world"), (std::vector<int32_t>{9707, 1879}));
  EXPECT_EQ(t.encode(" Hello world"), (std::vector<int32_t>{21927, 1879}));
  EXPECT_EQ(t.vocab_size(), 151646);
  EXPECT_TRUE(t.is_byte_level());
  EXPECT_EQ(t.bos_id(), -1);
  EXPECT_FALSE(t.adds_bos());
  EXPECT_EQ(t.eos_id(), 151645);
  EXPECT_EQ(t.pad_id(), 151643);
  EXPECT_EQ(t.token_id("<|im_start|>"), 151644);
  EXPECT_EQ(t.token_id("Hello"), 9707);
  EXPECT_EQ(t.token_id("no such token"), -1);
  EXPECT_TRUE(t.is_special(151645));
  EXPECT_FALSE(t.is_special(9707));
  EXPECT_EQ(t.encode("<|im_start|>hi<|im_end|>"), (std::vector<int32_t>{151644, 6023, 151645}));
  // parse_special=false: the special token's text is ordinary text (HF split_special_tokens=True).
  EXPECT_EQ(t.encode("<|im_start|>hi", true, false), (std::vector<int32_t>{27, 91, 318, 4906, 91, 29, 6023}));
  EXPECT_EQ(t.decode({151644, 9707, 151645}), "<|im_start|>Hello<|im_end|>");
  EXPECT_EQ(t.decode({151644, 9707, 151645}, true), "Hello");
  // Token 255 is one byte of a UTF-8 sequence: decode_token gives the raw byte, decode a U+FFFD.
  EXPECT_EQ(t.decode_token(9707), "Hello");
  EXPECT_EQ(t.decode({9707, 255}), "Hello\xEF\xBF\xBD");
  EXPECT_EQ(t.decode({9707, 151900}), "Hello") << "ids without a token (embedding padding) are skipped";
  // NFC: a decomposed é encodes like the composed one.
  EXPECT_EQ(t.encode("caf\x65\xCC\x81"), t.encode("caf\xC3\xA9"));
}

TEST(QwenTokenizer, ChatTemplateTwoMessages) {
  QWENQ_REQUIRE_SHARED_DATA();
  const Tokenizer& t = qwen();
  ASSERT_TRUE(t.has_chat_template());
  const std::string two = t.apply_chat_template({{"user", "Hi!"}, {"assistant", "Hello."}}, false);
  EXPECT_EQ(two,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHi!<|im_end|>\n"
            "<|im_start|>assistant\nHello.<|im_end|>\n");
  const std::string sys = t.apply_chat_template({{"system", "Be brief."}, {"user", "Hi!"}}, true);
  EXPECT_EQ(sys, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n");
  const std::vector<int32_t> ids = t.encode(two);
  EXPECT_EQ(ids.front(), 151644);
  EXPECT_EQ(t.decode(ids), two);
}

std::string write_tiny_byte_level_dir(const std::string& dir, const std::string& chat_template) {
  return test::write_byte_tokenizer_dir(dir, chat_template);
}

TEST(QwenTokenizer, ChatTemplateVariants) {
  const std::string dir = test::scratch_dir();
  // Qwen2.5's template (abridged: what matters is the default system prompt it spells).
  const std::string q25 =
      "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
      "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a "
      "helpful assistant.<|im_end|>\\n' }}{%- endif %}...{{- '<|im_start|>assistant\\n' }}";
  Tokenizer a = Tokenizer::from_dir(write_tiny_byte_level_dir(dir, q25));
  EXPECT_EQ(a.apply_chat_template({{"user", "x"}}, true),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(a.encode("<|im_start|>x"), (std::vector<int32_t>{257, 'x'}));  // byte b has id b here
  // Plain ChatML without a default system prompt.
  const std::string plain =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
      "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
  Tokenizer b = Tokenizer::from_dir(write_tiny_byte_level_dir(dir, plain));
  EXPECT_EQ(b.apply_chat_template({{"user", "x"}}, false), "<|im_start|>user\nx<|im_end|>\n");
  // Anything else is refused, naming the file.
  Tokenizer c = Tokenizer::from_dir(write_tiny_byte_level_dir(dir, "{{ bos_token }}[INST] {{ m }} [/INST]"));
  const std::string err = error_of([&] { c.apply_chat_template({{"user", "x"}}, true); });
  EXPECT_NE(err.find("tokenizer_config.json: the chat template is not ChatML"), std::string::npos) << err;
}

TEST(QwenTokenizer, WikiTextRoundTrip) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string text = read_file(test::shared_data_dir() + "/wikitext2/wiki.test.raw");
  const std::vector<std::string> lines = split_keep_newlines(text);
  ASSERT_EQ(lines.size(), 2891u);
  size_t tokens = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::vector<int32_t> ids = qwen().encode(lines[i]);
    tokens += ids.size();
    ASSERT_EQ(qwen().decode(ids), unicode::to_nfc(lines[i])) << "line " << i + 1;
  }
  const std::vector<int32_t> whole = qwen().encode(text);
  EXPECT_EQ(qwen().decode(whole), unicode::to_nfc(text));
  EXPECT_GT(tokens, 250000u);
}

TEST(QwenTokenizer, ConcurrentEncodeIsConsistent) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string text = read_file(test::shared_data_dir() + "/wikitext2/wiki.test.raw").substr(0, 200000);
  const std::vector<int32_t> ref = qwen().encode(text);
  std::vector<int32_t> r1, r2;
  std::thread t1([&] { r1 = qwen().encode(text); });
  std::thread t2([&] { r2 = Tokenizer(qwen()).encode(text); });
  t1.join();
  t2.join();
  EXPECT_EQ(r1, ref);
  EXPECT_EQ(r2, ref);
}

TEST(QwenTokenizer, SaveHfRoundTrip) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string dir = test::scratch_dir();
  qwen().save_hf(dir);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"}) {
    EXPECT_TRUE(file_exists(dir + "/" + f)) << f;
  }
  const Tokenizer back = Tokenizer::from_dir(dir);  // reads the tokenizer.json we wrote
  EXPECT_EQ(back.vocab_size(), qwen().vocab_size());
  EXPECT_EQ(back.eos_id(), qwen().eos_id());
  const std::string text = read_file(test::shared_data_dir() + "/wikitext2/wiki.test.raw").substr(0, 100000) +
                           "<|im_start|>user\nCafe\xCC\x81 123 'll<|im_end|>";
  EXPECT_EQ(back.encode(text), qwen().encode(text));
  EXPECT_EQ(back.apply_chat_template({{"user", "x"}}, true), qwen().apply_chat_template({{"user", "x"}}, true));
}

// A tokenizer written into a GGUF file's tokenizer.ggml.* keys (no tensors) and read back.
Tokenizer gguf_round_trip(const Tokenizer& t, int64_t n_vocab, const std::string& dir) {
  GgufWriter w;
  w.set("general.architecture", GgufValue::str("qwen2"));
  t.write_gguf(w, n_vocab, -1, -1);
  const std::string path = dir + "/tok.gguf";
  w.write(path);
  return Tokenizer::from_model(path);
}

TEST(QwenTokenizer, GgufRoundTrip) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string dir = test::scratch_dir();
  const Tokenizer back = gguf_round_trip(qwen(), 151936, dir);  // Qwen2.5's padded embedding rows
  EXPECT_TRUE(back.is_byte_level());
  EXPECT_EQ(back.vocab_size(), 151936);  // the padding ids exist as "[PAD<i>]" placeholders
  EXPECT_EQ(back.token_text(151935), "");
  EXPECT_EQ(back.eos_id(), qwen().eos_id());
  EXPECT_EQ(back.adds_bos(), qwen().adds_bos());
  EXPECT_TRUE(back.is_special(back.token_id("<|im_start|>")));
  const std::string text = read_file(test::shared_data_dir() + "/wikitext2/wiki.test.raw").substr(0, 100000) +
                           "<|im_start|>user\nCafe\xCC\x81 123 'll<|im_end|>";
  EXPECT_EQ(back.encode(text), qwen().encode(text));
  EXPECT_EQ(back.apply_chat_template({{"user", "x"}}, true), qwen().apply_chat_template({{"user", "x"}}, true));
  // The keys llama.cpp reads: gpt2 model, qwen2 pre-tokenizer, one merge string per rank, control types.
  GgufFile f(dir + "/tok.gguf");
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(f.get_string("tokenizer.ggml.pre"), "qwen2");
  EXPECT_EQ(f.get("tokenizer.ggml.merges").strs.size(), 151387u);
  EXPECT_EQ(f.get("tokenizer.ggml.merges").strs.front(), "\xC4\xA0 \xC4\xA0");  // "Ġ Ġ", merges.txt's first line
  EXPECT_EQ(f.get("tokenizer.ggml.token_type").ints[151644], 3);  // <|im_start|>: CONTROL
  EXPECT_EQ(f.get("tokenizer.ggml.token_type").ints[151935], 5);  // padding: UNUSED
  EXPECT_EQ(f.get("tokenizer.ggml.tokens").strs[151935], "[PAD151935]");
}

// ---- SentencePiece-style BPE (llama2.c stories260K) -----------------------------------------------------

// A straightforward transcription of llama2.c's encode() (run.c), reading tok512.bin itself: an oracle
// independent of our merge tables.
struct Llama2cOracle {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::map<std::string, int> index;

  explicit Llama2cOracle(const std::string& path) {
    const std::string d = read_file(path);
    size_t off = 4;
    while (off < d.size()) {
      float s;
      int32_t len;
      std::memcpy(&s, d.data() + off, 4);
      std::memcpy(&len, d.data() + off + 4, 4);
      off += 8;
      index.emplace(d.substr(off, len), static_cast<int>(pieces.size()));
      pieces.push_back(d.substr(off, len));
      scores.push_back(s);
      off += len;
    }
  }

  int lookup(const std::string& s) const {
    auto it = index.find(s);
    return it == index.end() ? -1 : it->second;
  }

  std::vector<int32_t> encode(const std::string& text) const {
    std::vector<int32_t> tokens{1};
    if (!text.empty()) tokens.push_back(lookup(" "));
    std::string buf;
    for (size_t i = 0; i < text.size(); ++i) {
      if ((text[i] & 0xC0) != 0x80) buf.clear();
      buf.push_back(text[i]);
      if (i + 1 < text.size() && (text[i + 1] & 0xC0) == 0x80 && buf.size() < 4) continue;
      const int id = lookup(buf);
      if (id != -1) {
        tokens.push_back(id);
      } else {
        for (unsigned char b : buf) tokens.push_back(b + 3);
      }
      buf.clear();
    }
    while (true) {
      float best_score = -1e10f;
      int best_id = -1, best_idx = -1;
      for (size_t i = 0; i + 1 < tokens.size(); ++i) {
        const int id = lookup(pieces[tokens[i]] + pieces[tokens[i + 1]]);
        if (id != -1 && scores[id] > best_score) {
          best_score = scores[id];
          best_id = id;
          best_idx = static_cast<int>(i);
        }
      }
      if (best_idx == -1) break;
      tokens[best_idx] = best_id;
      tokens.erase(tokens.begin() + best_idx + 1);
    }
    return tokens;
  }
};

std::vector<std::string> stories_samples() {
  std::vector<std::string> s = {"Once upon a time",
                                "Once upon a time, there was a little girl named Lily.",
                                "",
                                " ",
                                "  two  spaces  ",
                                "Tim said, \"Let's play!\" She smiled.\nThe end.",
                                "caf\xC3\xA9 na\xC3\xAFve \xE2\x80\x9Cquoted\xE2\x80\x9D \xE2\x80\x94 dash",
                                "emoji \xF0\x9F\x98\x80 and \xE4\xBD\xA0\xE5\xA5\xBD",
                                "tab\tand\r\nCRLF",
                                "<0x41> literal"};
  const std::string tiny = read_file(test::shared_data_dir() + "/tinystories/tinystories_val.txt");
  const std::vector<std::string> lines = split_keep_newlines(tiny);
  for (size_t i = 0; i < lines.size() && i < 400; ++i) {
    std::string l = lines[i];
    if (!l.empty() && l.back() == '\n') l.pop_back();
    if (!l.empty()) s.push_back(l);
  }
  return s;
}

TEST(StoriesTokenizer, MatchesLlama2cEncodeLoop) {
  QWENQ_REQUIRE_SHARED_DATA();
  const Llama2cOracle oracle(test::shared_data_dir() + "/stories260K/tok512.bin");
  const Tokenizer& t = stories();
  EXPECT_EQ(t.vocab_size(), 512);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.unk_id(), 0);
  EXPECT_TRUE(t.adds_bos());
  EXPECT_FALSE(t.is_byte_level());
  EXPECT_EQ(t.encode("Once upon a time"), oracle.encode("Once upon a time"));
  EXPECT_EQ(t.encode("Once upon a time"), (std::vector<int32_t>{1, 403, 407, 261, 378}));
  int n = 0;
  for (const std::string& s : stories_samples()) {
    EXPECT_EQ(t.encode(s), oracle.encode(s)) << "'" << s << "'";
    ++n;
  }
  EXPECT_GT(n, 200);
}

TEST(StoriesTokenizer, DecodeLikeHuggingFace) {
  QWENQ_REQUIRE_SHARED_DATA();
  const Tokenizer& t = stories();
  for (const std::string& s : stories_samples()) {
    EXPECT_EQ(t.decode(t.encode(s), true), s) << "'" << s << "'";
  }
  EXPECT_EQ(t.decode(t.encode("Once upon")), "<s> Once upon");
  EXPECT_EQ(t.decode_token(403), " Once");
  EXPECT_EQ(t.decode_token(3 + 0x41), "A");
  EXPECT_EQ(t.decode({3 + 0xE4, 3 + 0xBD}), "\xEF\xBF\xBD\xEF\xBF\xBD") << "one U+FFFD per byte of a broken run";
  EXPECT_EQ(t.token_id("\xE2\x96\x81Once"), 403);
  EXPECT_EQ(t.token_id("<s>"), 1);
}

TEST(StoriesTokenizer, SaveHfRoundTrip) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string dir = test::scratch_dir();
  stories().save_hf(dir);
  const Tokenizer back = Tokenizer::from_dir(dir);
  EXPECT_FALSE(back.is_byte_level());
  EXPECT_EQ(back.vocab_size(), 512);
  EXPECT_EQ(back.bos_id(), 1);
  EXPECT_TRUE(back.adds_bos());
  for (const std::string& s : stories_samples()) {
    EXPECT_EQ(back.encode(s), stories().encode(s)) << "'" << s << "'";
    EXPECT_EQ(back.decode(back.encode(s)), stories().decode(stories().encode(s)));
  }
  const std::string whole = read_file(test::shared_data_dir() + "/tinystories/tinystories_val.txt").substr(0, 50000);
  EXPECT_EQ(back.encode(whole), stories().encode(whole));
  const std::string err = error_of([&] { back.apply_chat_template({{"user", "x"}}, true); });
  EXPECT_NE(err.find("has no chat template"), std::string::npos) << err;
}

TEST(StoriesTokenizer, GgufRoundTrip) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string dir = test::scratch_dir();
  const Tokenizer back = gguf_round_trip(stories(), 512, dir);
  EXPECT_FALSE(back.is_byte_level());
  EXPECT_EQ(back.bos_id(), 1);
  EXPECT_EQ(back.eos_id(), 2);
  EXPECT_TRUE(back.adds_bos());
  for (const std::string& s : stories_samples()) EXPECT_EQ(back.encode(s), stories().encode(s)) << "'" << s << "'";
  const std::string whole = read_file(test::shared_data_dir() + "/tinystories/tinystories_val.txt").substr(0, 50000);
  EXPECT_EQ(back.encode(whole), stories().encode(whole));
  // llama.cpp's SentencePiece keys: scores that order the merges, byte and control types.
  GgufFile f(dir + "/tok.gguf");
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(f.get("tokenizer.ggml.token_type").ints[1], 3);   // <s>
  EXPECT_EQ(f.get("tokenizer.ggml.token_type").ints[0], 2);   // <unk>
  EXPECT_EQ(f.get("tokenizer.ggml.token_type").ints[3], 6);   // <0x00>
  EXPECT_FALSE(f.has("tokenizer.ggml.merges"));
}

// A llama GGUF vocabulary (control tokens <unk>, <s>, </s> outside the regular pieces) with add_bos_token false and
// add_eos_token true, saved with save_hf. Hugging Face tokenizers numbers an added token that model.vocab lacks
// after the vocabulary whatever id the file gives it (</s> became 511), so the control tokens must be in
// model.vocab too, as Llama's own tokenizer.json lists them; the post-processor is the one transformers'
// LlamaTokenizerFast.update_post_processor builds: "$A:0 </s>:0", pair "$A:0 </s>:0 $B:1 </s>:1" (the second
// sequence's specials take type id 1). tests/oracle/test_tokenizer_oracle.py checks both against Hugging Face.
TEST(StoriesTokenizer, SaveHfFromLlamaGgufWithEos) {
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string dir = test::scratch_dir();
  GgufWriter w;
  w.set("general.architecture", GgufValue::str("llama"));
  stories().write_gguf(w, 512, -1, -1);
  w.set("tokenizer.ggml.add_bos_token", GgufValue::boolean(false));
  w.set("tokenizer.ggml.add_eos_token", GgufValue::boolean(true));
  w.write(dir + "/tok.gguf");
  const Tokenizer g = Tokenizer::from_model(dir + "/tok.gguf");
  EXPECT_EQ(g.encode("Once upon"), (std::vector<int32_t>{403, 407, 2}));
  ASSERT_EQ(std::system(("mkdir -p '" + dir + "/hf'").c_str()), 0);
  g.save_hf(dir + "/hf");
  const auto tj = nlohmann::ordered_json::parse(read_file(dir + "/hf/tokenizer.json"));
  const auto& vocab = tj["model"]["vocab"];
  EXPECT_EQ(vocab.size(), 512u);
  EXPECT_EQ(vocab.value("<unk>", -1), 0);
  EXPECT_EQ(vocab.value("<s>", -1), 1);
  EXPECT_EQ(vocab.value("</s>", -1), 2);
  const auto eos = [](int type_id) { return nlohmann::ordered_json{{"SpecialToken", {{"id", "</s>"}, {"type_id", type_id}}}}; };
  const auto seq = [](const char* id, int type_id) { return nlohmann::ordered_json{{"Sequence", {{"id", id}, {"type_id", type_id}}}}; };
  EXPECT_EQ(tj["post_processor"]["single"], nlohmann::ordered_json::array({seq("A", 0), eos(0)}));
  EXPECT_EQ(tj["post_processor"]["pair"], nlohmann::ordered_json::array({seq("A", 0), eos(0), seq("B", 1), eos(1)}));
  const auto cfg = nlohmann::json::parse(read_file(dir + "/hf/tokenizer_config.json"));
  EXPECT_EQ(cfg["add_bos_token"], false);
  EXPECT_EQ(cfg["add_eos_token"], true);
  EXPECT_EQ(cfg["tokenizer_class"], "LlamaTokenizerFast");
  // Read back: the same ids; saved again from that tokenizer.json, it is written verbatim.
  const Tokenizer back = Tokenizer::from_dir(dir + "/hf");
  EXPECT_EQ(back.encode("Once upon <s>x</s>"), g.encode("Once upon <s>x</s>"));
  ASSERT_EQ(std::system(("mkdir -p '" + dir + "/again'").c_str()), 0);
  back.save_hf(dir + "/again");
  EXPECT_EQ(read_file(dir + "/again/tokenizer.json"), read_file(dir + "/hf/tokenizer.json"));
  // Qwen's added tokens follow its vocabulary in id order: they stay out of model.vocab, as in Qwen's own file.
  qwen().save_hf(dir + "/again");
  EXPECT_EQ(nlohmann::json::parse(read_file(dir + "/again/tokenizer.json"))["model"]["vocab"].size(), 151643u);
}

// ---- Unicode --------------------------------------------------------------------------------------------

TEST(Unicode, NfcCases) {
  EXPECT_EQ(unicode::to_nfc("e\xCC\x81"), "\xC3\xA9");                            // e + acute -> é
  EXPECT_EQ(unicode::to_nfc("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8"), "\xEA\xB0\x81");  // jamo -> 각
  EXPECT_EQ(unicode::to_nfc("a\xCC\xA3\xCC\x87"), "\xE1\xBA\xA1\xCC\x87");      // a + dot below + dot above
  EXPECT_EQ(unicode::to_nfc("a\xCC\x87\xCC\xA3"), "\xE1\xBA\xA1\xCC\x87");      // reordered first
  EXPECT_EQ(unicode::to_nfc("\xE2\x84\xAB"), "\xC3\x85");                         // Angstrom sign -> Å (singleton)
  EXPECT_EQ(unicode::to_nfc("abc \xC3\xA9\xFF"), "abc \xC3\xA9\xFF");             // invalid byte kept
  EXPECT_FALSE(unicode::may_need_nfc("plain ASCII and caf\xC3\xA9"));
  EXPECT_EQ(unicode::sanitize_utf8("a\xE2\x82" "b\xFF"), "a\xEF\xBF\xBD" "b\xEF\xBF\xBD");
}

// ---- Errors ---------------------------------------------------------------------------------------------

TEST(TokenizerErrors, BadFilesAreNamed) {
  const std::string dir = test::scratch_dir();
  ASSERT_EQ(std::system(("mkdir -p '" + dir + "/a' '" + dir + "/b' '" + dir + "/c' '" + dir + "/d'").c_str()), 0);
  write_file_atomic(dir + "/a/tokenizer.json", "{\"model\": [");
  std::string err = error_of([&] { Tokenizer::from_dir(dir + "/a"); });
  EXPECT_NE(err.find("a/tokenizer.json: not valid JSON"), std::string::npos) << err;

  write_tiny_byte_level_dir(dir + "/b", "<|im_start|>");
  write_file_atomic(dir + "/b/tokenizer_config.json", "not json");
  err = error_of([&] { Tokenizer::from_dir(dir + "/b"); });
  EXPECT_NE(err.find("b/tokenizer_config.json: not valid JSON"), std::string::npos) << err;

  write_file_atomic(dir + "/c/merges.txt", "#version: 0.2\n");
  err = error_of([&] { Tokenizer::from_dir(dir + "/c"); });
  EXPECT_NE(err.find("c/vocab.json: missing"), std::string::npos) << err;

  err = error_of([&] { Tokenizer::from_dir(dir + "/d"); });
  EXPECT_NE(err.find("no tokenizer found"), std::string::npos) << err;

  write_file_atomic(dir + "/cut.bin", std::string("\x07\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00\x00<u", 14));
  err = error_of([&] { Tokenizer::from_llama2c(dir + "/cut.bin"); });
  EXPECT_NE(err.find("cut.bin: file ends inside token 0"), std::string::npos) << err;
}

// vocab.json is read by a SAX reader: every value that is not an integer id is refused, naming the file and
// what was found instead.
TEST(TokenizerErrors, VocabJsonWrongValueTypes) {
  const std::string dir = test::scratch_dir() + "/vocab-types";
  const std::pair<const char*, const char*> cases[] = {
      {"{\"a\": null}", "found null"},        {"{\"a\": true}", "found a boolean"},
      {"{\"a\": 1.5}", "found a float"},      {"{\"a\": \"1\"}", "found a string"},
      {"{\"a\": [1]}", "found an array"},     {"{\"a\": {\"b\": 1}}", "found an object"},
      {"[1, 2]", "found an array"},            {"7", "expected a JSON object {token: id}"},
      {"{}", "expected a non-empty JSON object"}, {"{\"a\": -3}", "token 'a' has an invalid id -3"},
  };
  for (const auto& [vocab, why] : cases) {
    test::write_byte_tokenizer_dir(dir, "");
    write_file_atomic(dir + "/vocab.json", vocab);
    const std::string err = error_of([&] { Tokenizer::from_dir(dir); });
    EXPECT_NE(err.find("vocab-types/vocab.json: "), std::string::npos) << vocab << " -> " << err;
    EXPECT_NE(err.find(why), std::string::npos) << vocab << " -> " << err;
  }
}

// Where the chat template comes from: tokenizer_config.json's string, its list of named templates (the
// "default" one; transformers' convention), chat_template.jinja, chat_template.json. All four give the same
// rendering of the same template; the refusals name the file. transformers itself is the oracle for the list
// and the .jinja file in tests/oracle/test_tokenizer_features_oracle.py.
TEST(TokenizerSources, ChatTemplateFiles) {
  const std::string root = test::scratch_dir() + "/chat-sources";
  const std::string chatml =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
      "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
  const std::vector<ChatMessage> msgs = {{"user", "x"}, {"assistant", "y"}};
  const std::string want = "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\ny<|im_end|>\n<|im_start|>assistant\n";
  EXPECT_EQ(test::byte_tokenizer(root + "/string", chatml).apply_chat_template(msgs, true), want);

  auto with_config = [&](const std::string& dir, const nlohmann::json& chat_template) {
    test::write_byte_tokenizer_dir(dir, "");
    nlohmann::json cfg = nlohmann::json::parse(read_file(dir + "/tokenizer_config.json"));
    cfg["chat_template"] = chat_template;
    write_file_atomic(dir + "/tokenizer_config.json", cfg.dump());
    return dir;
  };
  const nlohmann::json named = nlohmann::json::array(
      {{{"name", "tool_use"}, {"template", "{{ 'not this one' }}"}}, {{"name", "default"}, {"template", chatml}}});
  EXPECT_EQ(Tokenizer::from_dir(with_config(root + "/list", named)).apply_chat_template(msgs, true), want);

  const std::string jinja = test::write_byte_tokenizer_dir(root + "/jinja", "");
  write_file_atomic(jinja + "/chat_template.jinja", chatml);
  Tokenizer tj = Tokenizer::from_dir(jinja);
  EXPECT_TRUE(tj.has_chat_template());
  EXPECT_EQ(tj.apply_chat_template(msgs, true), want);

  const std::string json = test::write_byte_tokenizer_dir(root + "/json", "");
  write_file_atomic(json + "/chat_template.json", nlohmann::json{{"chat_template", chatml}}.dump());
  EXPECT_EQ(Tokenizer::from_dir(json).apply_chat_template(msgs, true), want);

  const std::string none = test::write_byte_tokenizer_dir(root + "/none", "");
  EXPECT_FALSE(Tokenizer::from_dir(none).has_chat_template());

  const nlohmann::json no_default = nlohmann::json::array({{{"name", "tool_use"}, {"template", chatml}}});
  std::string err = error_of([&] { Tokenizer::from_dir(with_config(root + "/nodefault", no_default)); });
  EXPECT_NE(err.find("nodefault/tokenizer_config.json: chat_template is a list without a \"default\" entry"),
            std::string::npos) << err;
  for (const char* bad : {"{\"chat_template\": 3}", "[\"x\"]", "{\"template\": \"x\"}"}) {
    write_file_atomic(json + "/chat_template.json", bad);
    err = error_of([&] { Tokenizer::from_dir(json); });
    EXPECT_NE(err.find("json/chat_template.json: expected {\"chat_template\": \"...\"}"), std::string::npos)
        << bad << " -> " << err;
  }
}

// added_tokens.json (transformers' legacy file) and special roles: its tokens are added (special when a role or
// additional_special_tokens names them), but only when tokenizer_config.json has no added_tokens_decoder; a role
// naming a vocabulary token makes that token special (cut out of text, dropped by skip_special).
TEST(TokenizerSources, AddedTokensJsonAndRoles) {
  const std::string root = test::scratch_dir();  // (each call starts the test's scratch folder afresh)
  const std::string dir = test::write_byte_tokenizer_dir(root + "/added-json", "");
  nlohmann::json cfg = {{"tokenizer_class", "Qwen2Tokenizer"}, {"eos_token", "<|im_end|>"}, {"pad_token", "!"},
                        {"additional_special_tokens", {"<|im_start|>"}}};
  write_file_atomic(dir + "/tokenizer_config.json", cfg.dump());
  write_file_atomic(dir + "/added_tokens.json", R"({"<|im_start|>": 257, "<|im_end|>": 258, "<tool>": 259})");
  Tokenizer t = Tokenizer::from_dir(dir);
  EXPECT_EQ(t.token_id("<tool>"), 259);
  EXPECT_FALSE(t.is_special(259));
  EXPECT_TRUE(t.is_special(257));
  EXPECT_TRUE(t.is_special(258));
  EXPECT_EQ(t.eos_id(), 258);
  EXPECT_EQ(t.pad_id(), '!');
  EXPECT_TRUE(t.is_special('!'));  // the vocabulary token the pad role names
  EXPECT_EQ(t.encode("a<tool>!<|im_end|>"), (std::vector<int32_t>{'a', 259, '!', 258}));
  EXPECT_EQ(t.decode({'a', 259, '!', 258}, /*skip_special=*/true), "a<tool>");
  EXPECT_EQ(t.encode("<|im_start|>", true, /*parse_special=*/false),
            (std::vector<int32_t>{'<', '|', 'i', 'm', '_', 's', 't', 'a', 'r', 't', '|', '>'}));

  const std::string err_dir = test::write_byte_tokenizer_dir(root + "/added-json-bad", "");
  write_file_atomic(err_dir + "/tokenizer_config.json", R"({"tokenizer_class": "Qwen2Tokenizer"})");
  write_file_atomic(err_dir + "/added_tokens.json", R"({"<tool>": "259"})");
  const std::string err = error_of([&] { Tokenizer::from_dir(err_dir); });
  EXPECT_NE(err.find("added-json-bad/added_tokens.json: id of '<tool>' is not an integer"), std::string::npos) << err;

  // Next to an added_tokens_decoder the file is not read (transformers ignores it there too).
  cfg["added_tokens_decoder"] = {{"257", {{"content", "<|im_start|>"}, {"special", true}}},
                                 {"258", {{"content", "<|im_end|>"}, {"special", true}}}};
  write_file_atomic(dir + "/tokenizer_config.json", cfg.dump());
  Tokenizer u = Tokenizer::from_dir(dir);
  EXPECT_EQ(u.token_id("<tool>"), -1);
  EXPECT_EQ(u.encode("<tool>").size(), 6u);
}

}  // namespace
}  // namespace qwenq
