// The environment switches of the 4-bit CUDA paths (kernels/qgemm.h). Compiled in every build: the memory plan
// (trainer/memory_plan.cpp) and the device line (kernels/device.cpp) read them without CUDA too.
#include <algorithm>
#include <limits>

#include "core/env_switch.h"
#include "kernels/qgemm.h"

namespace qwenq {

bool qgemm_decode_mma_enabled() { return env_switch("QWENQ_DECODE_MMA") != 0; }

// Opt-in until it has run on a GPU (then the default, as the BF16 decode product became).
bool qgemm_decode_mma_f32_enabled() { return env_switch("QWENQ_DECODE_MMA_F32") == 1 && qgemm_decode_mma_enabled(); }

int64_t qgemm_dense_min_m() {
  switch (env_switch("QWENQ_QGEMM_DENSE")) {
    case 0: return std::numeric_limits<int64_t>::max();
    case 1: return kQgemmDecodeMaxM + 1;
    default: return kQgemmDenseMinM;
  }
}

// qgemm_dense_min_m() is at least kQgemmDecodeMaxM + 1: the decode regime never takes the dense path.
bool qgemm_dense_for(int64_t M) { return M >= qgemm_dense_min_m(); }

int64_t qgemm_dense_chunks(int64_t N, int64_t Kp) {
  // Opt-in until it has run on a GPU (then the default; the fused decode and dense paths went the same way). A small
  // weight dequantizes in a few µs: the extra launches and events would cost about what they hide.
  if (env_switch("QWENQ_QGEMM_OVERLAP") != 1) return 1;
  return N * Kp >= kQgemmOverlapMinElems ? kQgemmOverlapChunks : 1;
}

int64_t qgemm_dense_chunk(int64_t total, int64_t chunks, int64_t unit) {
  const int64_t per = (total + chunks - 1) / chunks;
  return (per + unit - 1) / unit * unit;
}

int64_t qgemm_dense_scratch_bytes(int64_t N, int64_t Kp, int64_t ra) {
  const int64_t chunks = qgemm_dense_chunks(N, Kp);
  if (chunks == 1) return std::max(N * (Kp + ra), (N + ra) * Kp) * 2;
  // bf16 buffers of one piece each: two when the cut makes more than one piece (the last may be shorter); with a
  // folded low-rank term a forward piece has ra more columns, a transposed one ra more rows.
  const auto held = [chunks](int64_t total, int64_t unit, int64_t per_unit, int64_t extra) {
    const int64_t piece = qgemm_dense_chunk(total, chunks, unit);
    return (piece < total ? 2 : 1) * (piece * per_unit + extra) * 2;
  };
  return std::max(held(Kp / 8, kQgemmDqWordRows, N * 8, N * ra), held(N, kQgemmDqCols, Kp, ra * Kp));
}

void qgemm_lowrank_check(const Q4View& w, int64_t ra, int64_t rb, const float* factor, bool transposed, const char* fn) {
  QWENQ_CHECK(w.perm == nullptr, fn << ": the weight has act-order (a permutation): "
                                    << (transposed ? "dx's columns would need the scatter" : "xa would need the gather")
                                    << " (K=" << w.K << " N=" << w.N << ")");
  QWENQ_CHECK(!transposed || w.Kp == w.K,
              fn << ": Kp=" << w.Kp << " != K=" << w.K << ": dx's columns would need the scatter (N=" << w.N << ")");
  QWENQ_CHECK(ra > 0 && ra % 8 == 0 && rb >= 1 && rb <= ra && factor != nullptr,
              fn << ": ra=" << ra << " must be a positive multiple of 8, rb=" << rb << " in [1, ra], the factor not null");
}

// Opt-in until it has run on a GPU.
bool qgemm_lora_fold_enabled() { return env_switch("QWENQ_LORA_FOLD") == 1; }

}  // namespace qwenq
