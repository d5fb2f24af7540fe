#include "core/env_switch.h"

#include <cstdlib>
#include <cstring>

namespace qwenq {

int env_switch(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) return -1;
  if (std::strcmp(v, "0") == 0) return 0;
  if (std::strcmp(v, "1") == 0) return 1;
  return -1;
}

}  // namespace qwenq
