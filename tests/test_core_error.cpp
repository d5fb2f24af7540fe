// QWENQ_CHECK's message is what users read; the check's location is kept in location() and shown in what() only
// under QWENQ_DEBUG (core/error.h).
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "core/error.h"

namespace qwenq {
namespace {

// Sets or clears QWENQ_DEBUG for one scope and restores what was there.
class ScopedDebugEnv {
 public:
  explicit ScopedDebugEnv(const char* value) {
    if (const char* old = std::getenv("QWENQ_DEBUG")) old_ = old, had_ = true;
    if (value) setenv("QWENQ_DEBUG", value, 1);
    else unsetenv("QWENQ_DEBUG");
  }
  ~ScopedDebugEnv() {
    if (had_) setenv("QWENQ_DEBUG", old_.c_str(), 1);
    else unsetenv("QWENQ_DEBUG");
  }

 private:
  std::string old_;
  bool had_ = false;
};

Error error_of_check(int n) {
  try {
    QWENQ_CHECK(n > 0, "model.safetensors: bad size " << n);
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "the check did not throw";
  return Error("");
}

Error error_of_fail() {
  try {
    QWENQ_FAIL("config.json: no model_type");
  } catch (const Error& e) {
    return e;
  }
  return Error("");
}

TEST(CoreError, UsersReadTheMessageAlone) {
  ScopedDebugEnv env(nullptr);
  const Error e = error_of_check(-3);
  EXPECT_EQ(std::string(e.what()), "model.safetensors: bad size -3");
  EXPECT_EQ(e.location().rfind("check `n > 0` failed in error_of_check at test_core_error.cpp:", 0), 0u)
      << e.location();
  for (const char* off : {"", "0"}) {
    ScopedDebugEnv set(off);
    EXPECT_EQ(std::string(error_of_check(0).what()), "model.safetensors: bad size 0") << "QWENQ_DEBUG=" << off;
  }
}

TEST(CoreError, DebugShowsWhereTheCheckIs) {
  ScopedDebugEnv env("1");
  const Error e = error_of_check(0);
  EXPECT_EQ(std::string(e.what()), "model.safetensors: bad size 0 [" + e.location() + "]");
  const Error f = error_of_fail();
  EXPECT_EQ(f.location().rfind("in error_of_fail at test_core_error.cpp:", 0), 0u) << f.location();
  EXPECT_EQ(std::string(f.what()), "config.json: no model_type [" + f.location() + "]");
}

TEST(CoreError, ErrorsBuiltFromAMessageHaveNoLocation) {
  ScopedDebugEnv env("1");
  const Error e("plain");
  EXPECT_EQ(std::string(e.what()), "plain");
  EXPECT_TRUE(e.location().empty());
}

}  // namespace
}  // namespace qwenq
