// Fixtures of the SFT and preference data tests (tests/test_dpo.cpp, tests/test_kto.cpp): a plain ChatML template for
// the byte tokenizer of test_tokenizers.h, a data file written into a directory, an example's counted tokens decoded,
// and data options that keep every record.
#pragma once

#include <string>

#include "trainer/sft_data.h"
#include "trainer/tokenizer.h"

namespace qwenq::test {

// "<|im_start|>{role}\n{content}<|im_end|>\n" per message, "<|im_start|>assistant\n" as the generation prompt.
extern const char* const kPlainChatml;
// Writes `text` to dir/name; returns that path.
std::string write_in_dir(const std::string& dir, const std::string& name, const std::string& text);
// The tokens of `ex` whose loss_mask is 1, decoded.
std::string masked_text(const SftExample& ex, const Tokenizer& tok);
// max_len 512, no held-out share.
SftDataOptions no_split();

}  // namespace qwenq::test
