// The environment switches of the opt-in 4-bit paths (kernels/qgemm.h). Compiled in every build: the memory plan
// (trainer/memory_plan.cpp) and the device line (kernels/device.cpp) read them without CUDA too.
#include <cstdlib>
#include <cstring>

#include "kernels/qgemm.h"

namespace qwenq {
namespace {

bool env_is_one(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, "1") == 0;
}

}  // namespace

bool qgemm_decode_mma_enabled() { return env_is_one("QWENQ_DECODE_MMA"); }
bool qgemm_dense_enabled() { return env_is_one("QWENQ_QGEMM_DENSE"); }

}  // namespace qwenq
