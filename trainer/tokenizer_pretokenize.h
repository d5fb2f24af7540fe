// The Qwen2 pre-tokenizer, a hand-written scanner equivalent to the regex (Oniguruma semantics, first
// alternative that matches wins, greedy quantifiers with backtracking):
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// Every code point is covered by some alternative, so the pieces tile the input. Why by hand: std::regex
// has no \p{L} and is slow. \s is Unicode White_Space (what Oniguruma uses); the case-insensitive contraction
// letters follow Unicode simple case folding, so U+017F (long s) matches 's' like Oniguruma does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace qwenq::tokenizer_detail {

// Appends the [begin, end) byte ranges of the pieces of s[0, n) to *pieces (not cleared). Invalid UTF-8
// bytes count as punctuation-like "other" code points.
void pretokenize_qwen2(const char* s, size_t n, std::vector<std::pair<uint32_t, uint32_t>>* pieces);

}  // namespace qwenq::tokenizer_detail
