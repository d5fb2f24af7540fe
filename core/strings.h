// Suffix tests on strings (C++17 has no std::string::ends_with; C++20's has these semantics).
#pragma once

#include <string_view>

namespace qwenq {

// s ends with suffix; s == suffix and an empty suffix count.
inline bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// s is suffix preceded by at least one character: "model.gguf" has the proper suffix ".gguf", ".gguf" alone has not.
inline bool has_proper_suffix(std::string_view s, std::string_view suffix) {
  return s.size() > suffix.size() && ends_with(s, suffix);
}

}  // namespace qwenq
