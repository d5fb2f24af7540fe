// Tiny tokenizers written by tests.
#pragma once

#include <string>

#include "trainer/tokenizer.h"

namespace qwenq::test {

// A byte-level tokenizer in `dir` (created if need be): token id b is the byte b (the 256 GPT-2 byte symbols, no merges), plus
// <|endoftext|>=256, <|im_start|>=257, <|im_end|>=258 (EOS), so ids map one-to-one onto the bytes of a text;
// chat_template "" = none. Returns the directory.
std::string write_byte_tokenizer_dir(const std::string& dir, const std::string& chat_template);
Tokenizer byte_tokenizer(const std::string& dir, const std::string& chat_template);

}  // namespace qwenq::test
