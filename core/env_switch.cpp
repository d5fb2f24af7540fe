#include "core/env_switch.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace qwenq {

int env_switch(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) return -1;
  if (std::strcmp(v, "0") == 0) return 0;
  if (std::strcmp(v, "1") == 0) return 1;
  return -1;
}

int64_t env_int(const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  errno = 0;
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  QWENQ_CHECK(errno == 0 && end != v && *end == '\0' && x >= lo && x <= hi,
              name << "=" << v << ": expected an integer in [" << lo << ", " << hi << "] (unset: " << fallback << ")");
  return static_cast<int64_t>(x);
}

}  // namespace qwenq
