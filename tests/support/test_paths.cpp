#include "tests/support/test_paths.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdlib>
#include <string>

namespace qwenq::test {

namespace {

std::string configured(const char* env, const char* built_in) {
  const char* v = std::getenv(env);
  return v != nullptr && *v != '\0' ? std::string(v) : std::string(built_in);
}

}  // namespace

std::string source_dir() { return configured("QWENQ_TEST_SOURCE_DIR", QWENQ_SOURCE_DIR); }
std::string binary_dir() { return configured("QWENQ_TEST_BINARY_DIR", QWENQ_BINARY_DIR); }

std::string shared_data_dir() {
  std::string dir = configured("QWENQ_TEST_SHARED_DIR", QWENQ_SHARED_DIR) + "/data";
  struct stat st;
  return stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode) ? dir : std::string();
}

std::string scratch_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string dir = binary_dir() + "/test_scratch/" + info->test_suite_name() + "." + info->name();
  std::string cmd = "rm -rf '" + dir + "' && mkdir -p '" + dir + "'";
  if (std::system(cmd.c_str()) != 0) ADD_FAILURE() << "cannot create " << dir;
  return dir;
}

}  // namespace qwenq::test
