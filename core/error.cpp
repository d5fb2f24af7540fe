#include "core/error.h"

#include <cstdlib>
#include <cstring>

namespace qwenq {

void throw_check_failure(const std::string& message, const char* stmt, const char* func, const char* file,
                         int line) {
  const char* base = std::strrchr(file, '/');
  std::ostringstream where;
  if (std::strcmp(stmt, "false") != 0) where << "check `" << stmt << "` failed ";  // QWENQ_FAIL has no condition
  where << "in " << func << " at " << (base ? base + 1 : file) << ":" << line;
  const std::string location = where.str();
  throw Error(error_locations_shown() ? message + " [" + location + "]" : message, location);
}

bool error_locations_shown() {
  const char* v = std::getenv("QWENQ_DEBUG");  // read at each throw: errors are rare, and tests may set it
  return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
}

}  // namespace qwenq
