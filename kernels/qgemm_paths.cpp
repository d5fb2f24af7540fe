// The environment switches of the 4-bit CUDA paths (kernels/qgemm.h). Compiled in every build: the memory plan
// (trainer/memory_plan.cpp) and the device line (kernels/device.cpp) read them without CUDA too.
#include <limits>

#include "core/env_switch.h"
#include "kernels/qgemm.h"

namespace qwenq {

bool qgemm_decode_mma_enabled() { return env_switch("QWENQ_DECODE_MMA") != 0; }

int64_t qgemm_dense_min_m() {
  switch (env_switch("QWENQ_QGEMM_DENSE")) {
    case 0: return std::numeric_limits<int64_t>::max();
    case 1: return kQgemmDecodeMaxM + 1;
    default: return kQgemmDenseMinM;
  }
}

// qgemm_dense_min_m() is at least kQgemmDecodeMaxM + 1: the decode regime never takes the dense path.
bool qgemm_dense_for(int64_t M) { return M >= qgemm_dense_min_m(); }

}  // namespace qwenq
