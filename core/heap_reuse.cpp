#include "core/heap_reuse.h"

#include <cstdlib>
#include <cstring>

#include "core/env_switch.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace qwenq {

namespace {

constexpr int kMmapThreshold = 1 << 30;  // blocks below 1 GiB from the heap
constexpr int kTrimThreshold = 256 << 20;  // up to 256 MiB of free heap top kept

bool user_tuned_malloc() {
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") != nullptr || std::getenv("MALLOC_TRIM_THRESHOLD_") != nullptr) return true;
  const char* t = std::getenv("GLIBC_TUNABLES");
  return t != nullptr && std::strstr(t, "glibc.malloc.") != nullptr;
}

}  // namespace

bool keep_heap_for_reuse() {
  static const bool done = [] {
#if defined(__GLIBC__)
    if (env_switch("QWENQ_HEAP_REUSE") == 0 || user_tuned_malloc()) return false;
    return mallopt(M_MMAP_THRESHOLD, kMmapThreshold) == 1 && mallopt(M_TRIM_THRESHOLD, kTrimThreshold) == 1;
#else
    return false;
#endif
  }();
  return done;
}

}  // namespace qwenq
