// Where tests find shared data and scratch space.
#pragma once

#include <string>

#include "tests/support/test_errors.h"  // error_of, expect_error

namespace qwenq::test {

// The build's folders, as configured (QWENQ_SOURCE_DIR, QWENQ_BINARY_DIR, QWENQ_SHARED_DIR), unless the
// environment names others: QWENQ_TEST_SOURCE_DIR, QWENQ_TEST_BINARY_DIR, QWENQ_TEST_SHARED_DIR (a test binary
// built on one machine and run on another, e.g. scripts/gpu_check.sh's prebuilt binaries).
std::string source_dir();
std::string binary_dir();
// data/ of the shared folder (../shared/data next to the source tree by default), or "" when absent (tests then
// GTEST_SKIP with a clear message).
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
