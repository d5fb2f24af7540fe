#include "core/error.h"

#include <cstring>

namespace qwenq {

void throw_check_failure(const std::string& message, const char* stmt, const char* func, const char* file,
                         int line) {
  const char* base = std::strrchr(file, '/');
  std::ostringstream os;
  os << message << " [";
  if (std::strcmp(stmt, "false") != 0) os << "check `" << stmt << "` failed ";  // QWENQ_FAIL has no condition
  os << "in " << func << " at " << (base ? base + 1 : file) << ":" << line << "]";
  throw Error(os.str());
}

}  // namespace qwenq
