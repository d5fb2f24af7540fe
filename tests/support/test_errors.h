// Checking the one clear error (qwenq::Error) that bad input must give: its message as a string, or a gtest
// expectation that it names every given piece. Header-only (templates); tests/support/test_paths.h includes it.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "core/error.h"

namespace qwenq::test {

// The message of the qwenq::Error that f() throws, or "<no error>" when it returns normally.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

// Expects fn() to throw qwenq::Error whose message contains every piece of `parts` (a failure when it returns).
template <typename F>
void expect_error(F&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one containing '" << parts.front() << "'";
  } catch (const Error& e) {
    const std::string what = e.what();
    for (const auto& p : parts) EXPECT_NE(what.find(p), std::string::npos) << "'" << p << "' not in: " << what;
  }
}

// The same for one piece (a const char*, so that a braced list {"a", "b"} picks the overload above unambiguously).
template <typename F>
void expect_error(F&& fn, const char* part) {
  expect_error(std::forward<F>(fn), std::vector<std::string>{part});
}

}  // namespace qwenq::test
