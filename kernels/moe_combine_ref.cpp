// The CPU twin of kernels/moe_combine.h: the fused multiply-adds in the header's order, tokens in parallel.
#include <cmath>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/moe_combine.h"

namespace qwenq {

void moe_combine_check(const char* name, int64_t R, int64_t C, const int32_t* rows, int64_t T, int64_t k,
                       const float* s, const float* sw) {
  QWENQ_CHECK(R >= 0 && C > 0 && T >= 0 && k >= 1, name << ": bad shape R=" << R << " C=" << C << " T=" << T
                                                         << " k=" << k);
  QWENQ_CHECK((s == nullptr) == (sw == nullptr), name << ": the shared expert's output and its gate go together");
  for (int64_t i = 0; i < T * k; ++i) {
    QWENQ_CHECK(rows[i] >= 0 && rows[i] < R, name << ": row " << rows[i] << " of choice " << i % k << " of token "
                                                  << i / k << " is outside the experts' " << R << " rows");
  }
}

void moe_combine_ref(const float* y, int64_t R, int64_t C, const int32_t* rows, const float* w, int64_t T, int64_t k,
                     const float* s, const float* sw, float* out) {
  const char* name = "moe_combine_ref";
  if (T > 0) QWENQ_CHECK(y != nullptr && rows != nullptr && w != nullptr && out != nullptr, name << ": null pointer");
  moe_combine_check(name, R, C, rows, T, k, s, sw);
  parallel_for(T, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float* o = out + t * C;
      for (int64_t c = 0; c < C; ++c) o[c] = 0.f;
      for (int64_t j = 0; j < k; ++j) {
        const float* src = y + static_cast<int64_t>(rows[t * k + j]) * C;
        const float wj = w[t * k + j];
        for (int64_t c = 0; c < C; ++c) o[c] = std::fma(wj, src[c], o[c]);
      }
      if (s != nullptr) {
        for (int64_t c = 0; c < C; ++c) o[c] = std::fma(sw[t], s[t * C + c], o[c]);
      }
    }
  });
}

}  // namespace qwenq
