#include "tests/support/test_tokenizers.h"

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "trainer/unicode_text.h"

namespace qwenq::test {

namespace {

// GPT-2's byte -> printable code point map: printable Latin-1 bytes map to themselves, the others to 256+k.
uint32_t byte_symbol(int b) {
  auto printable = [](int x) { return (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255); };
  if (printable(b)) return static_cast<uint32_t>(b);
  int k = 0;
  for (int x = 0; x < b; ++x) k += !printable(x);
  return static_cast<uint32_t>(256 + k);
}

}  // namespace

std::string write_byte_tokenizer_dir(const std::string& dir, const std::string& chat_template) {
  make_dirs(dir);
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) {
    std::string sym;
    unicode::append_utf8(&sym, byte_symbol(b));
    vocab[sym] = b;
  }
  write_file_atomic(dir + "/vocab.json", vocab.dump());
  write_file_atomic(dir + "/merges.txt", "#version: 0.2\n");
  nlohmann::json cfg;
  const char* specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  for (int i = 0; i < 3; ++i) cfg["added_tokens_decoder"][std::to_string(256 + i)] = {{"content", specials[i]}, {"special", true}};
  cfg["eos_token"] = "<|im_end|>";
  cfg["tokenizer_class"] = "Qwen2Tokenizer";
  if (!chat_template.empty()) cfg["chat_template"] = chat_template;
  write_file_atomic(dir + "/tokenizer_config.json", cfg.dump());
  return dir;
}

Tokenizer byte_tokenizer(const std::string& dir, const std::string& chat_template) {
  return Tokenizer::from_dir(write_byte_tokenizer_dir(dir, chat_template));
}

}  // namespace qwenq::test
