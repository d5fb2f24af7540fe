// Two model directories against each other, for the tests whose oracle is a second route to the same file.
#pragma once

#include <string>

namespace qwenq::test {

// Every tensor of the checkpoints in directories a and b: the same names, dtypes, shapes and bytes.
void expect_same_tensors(const std::string& a, const std::string& b);
// `dequantize` of a quantized model directory to F32 into "<dir>-dense" (replaced if present); returns that path.
std::string dequantized_copy(const std::string& dir);
// `dequantize` of a and of b (dequantized_copy) give the same tensors: the same ŵ whatever the layout.
void expect_same_dequantized(const std::string& a, const std::string& b);

// Fraction of the dequantized decoder weights of two quantized directories that differ: every Linear, or with
// first_group_only those of layer 0's q, k and v (the first group GPTQ solves).
double flipped_fraction(const std::string& a, const std::string& b, bool first_group_only = false);
// The CPU perplexity of the model in `dir` on the first 8 windows of 128 tokens of `text_path`.
double perplexity_on(const std::string& dir, const std::string& text_path);

}  // namespace qwenq::test
