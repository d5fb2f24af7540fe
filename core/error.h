// One error family for the whole project.
//
// QWENQ_CHECK(cond, msg) throws qwenq::Error when `cond` is false. The message is built with a stream
// (QWENQ_CHECK(n > 0, "bad size " << n << " in " << path)) and is what users read: it names the file or flag and
// the problem. The error also carries where the check is (failed statement, function, file and line) in
// location(); what() appends it as " [check `...` failed in func at file:line]" only when the environment
// variable QWENQ_DEBUG is set (not empty, not "0") at the throw, so a bug report can point straight at the check
// without internal names reaching every user. The library never calls exit(); tools catch qwenq::Error at main()
// and print its what() as one line.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace qwenq {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
  Error(const std::string& what, std::string location) : std::runtime_error(what), location_(std::move(location)) {}
  // "check `stmt` failed in func at file:line" for a failed QWENQ_CHECK ("in func at file:line" for QWENQ_FAIL);
  // empty for an error built from a message alone.
  const std::string& location() const { return location_; }

 private:
  std::string location_;
};

// True when QWENQ_DEBUG is set to anything but "" or "0": errors then show their location in what().
bool error_locations_shown();

// Throws Error(message, location), with what() = message, plus " [location]" when error_locations_shown().
// Out of line to keep call sites small.
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
