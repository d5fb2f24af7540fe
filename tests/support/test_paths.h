// Where tests find shared data and scratch space.
#pragma once

#include <string>

#include "tests/support/test_errors.h"  // error_of, expect_error

namespace qwenq::test {

// ../shared/data next to the source tree, or "" when absent (tests then GTEST_SKIP with a clear message).
std::string shared_data_dir();
// A fresh, empty scratch directory under the build tree, named after the running test.
std::string scratch_dir();

}  // namespace qwenq::test

// Skips the current test when the shared data is absent.
#define QWENQ_REQUIRE_SHARED_DATA()                                                               \
  do {                                                                                            \
    if (::qwenq::test::shared_data_dir().empty())                                                 \
      GTEST_SKIP() << "../shared/data not found (only a development checkout has it); skipping"; \
  } while (0)
