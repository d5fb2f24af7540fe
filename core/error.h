// One error family for the whole project.
//
// QWENQ_CHECK(cond, msg) throws qwenq::Error when `cond` is false. The message is built with a stream
// (QWENQ_CHECK(n > 0, "bad size " << n << " in " << path)) and carries the failed statement, function, file
// and line so that a user report points straight at the check. The library never calls exit(); tools catch
// qwenq::Error at main() and print its what() as one line.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace qwenq {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Builds "message (check `stmt` failed in func at file:line)". Out of line to keep call sites small.
[[noreturn]] void throw_check_failure(const std::string& message, const char* stmt, const char* func,
                                      const char* file, int line);

}  // namespace qwenq

#define QWENQ_CHECK(cond, msg)                                                             \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      std::ostringstream qwenq_check_os_;                                                  \
      qwenq_check_os_ << msg;                                                              \
      ::qwenq::throw_check_failure(qwenq_check_os_.str(), #cond, __func__, __FILE__, __LINE__); \
    }                                                                                      \
  } while (0)

// Unconditional failure with the same decoration.
#define QWENQ_FAIL(msg) QWENQ_CHECK(false, msg)
