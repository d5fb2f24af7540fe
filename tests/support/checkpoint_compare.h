// Two model directories against each other, for the tests whose oracle is a second route to the same file.
#pragma once

#include <string>

namespace qwenq::test {

// Every tensor of the checkpoints in directories a and b: the same names, dtypes, shapes and bytes.
void expect_same_tensors(const std::string& a, const std::string& b);
// `dequantize` of a and of b (to F32, into "<dir>-dense") give the same tensors: the same ŵ whatever the layout.
void expect_same_dequantized(const std::string& a, const std::string& b);

}  // namespace qwenq::test
