// The CPU twins of kernels/moe_combine_backward.h, tokens in parallel. The float arithmetic is one rounding per
// operation (this file is compiled with -ffp-contract=off): dy, ds and the scatter add are the CUDA twin's bits, and
// dw, dg are the CPU block's (trainer/moe_block.cpp's moe_block_backward: the same double sum, column by column).
#include "core/error.h"
#include "core/threads.h"
#include "kernels/moe_combine_backward.h"

namespace qwenq {

void moe_combine_backward_check(const char* name, int64_t R, int64_t C, const int32_t* rows, int64_t T, int64_t k,
                                const float* s, const float* sw, const float* ds, const float* dg) {
  QWENQ_CHECK(R >= 0 && C > 0 && T >= 0 && k >= 1, name << ": bad shape R=" << R << " C=" << C << " T=" << T
                                                         << " k=" << k);
  const bool none = s == nullptr && sw == nullptr && ds == nullptr && dg == nullptr;
  const bool all = s != nullptr && sw != nullptr && ds != nullptr && dg != nullptr;
  QWENQ_CHECK(none || all, name << ": the shared expert's output, gate and gradients go together (s, sw, ds, dg "
                                << "all given or all null)");
  for (int64_t i = 0; i < T * k; ++i) {
    QWENQ_CHECK(rows[i] >= 0 && rows[i] < R, name << ": row " << rows[i] << " of choice " << i % k << " of token "
                                                  << i / k << " is outside the experts' " << R << " rows");
  }
}

void moe_combine_backward_ref(const float* dout, const float* y, int64_t R, int64_t C, const int32_t* rows,
                              const float* w, int64_t T, int64_t k, const float* s, const float* sw, float* dy,
                              float* dw, float* ds, float* dg) {
  const char* name = "moe_combine_backward_ref";
  if (T > 0) {
    QWENQ_CHECK(dout != nullptr && y != nullptr && rows != nullptr && w != nullptr && dy != nullptr && dw != nullptr,
                name << ": null pointer");
  }
  moe_combine_backward_check(name, R, C, rows, T, k, s, sw, ds, dg);
  parallel_for(T, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* d = dout + t * C;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t r = rows[t * k + j];
        const float wj = w[t * k + j];
        const float* src = y + r * C;
        float* dst = dy + r * C;
        double dot = 0;
        for (int64_t c = 0; c < C; ++c) {
          dst[c] = wj * d[c];
          dot += static_cast<double>(d[c]) * src[c];
        }
        dw[t * k + j] = static_cast<float>(dot);
      }
      if (s != nullptr) {
        const float g = sw[t];
        const float* st = s + t * C;
        float* dst = ds + t * C;
        double dot = 0;
        for (int64_t c = 0; c < C; ++c) {
          dst[c] = g * d[c];
          dot += static_cast<double>(d[c]) * st[c];
        }
        dg[t] = static_cast<float>(dot) * g * (1.f - g);
      }
    }
  });
}

void moe_scatter_add_ref(const float* dx, int64_t R, int64_t C, const int32_t* rows, int64_t T, int64_t k, float* dn) {
  const char* name = "moe_scatter_add_ref";
  if (T > 0) QWENQ_CHECK(dx != nullptr && rows != nullptr && dn != nullptr, name << ": null pointer");
  moe_combine_backward_check(name, R, C, rows, T, k, nullptr, nullptr, nullptr, nullptr);
  parallel_for(T, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float* dst = dn + t * C;
      for (int64_t j = 0; j < k; ++j) {
        const float* src = dx + static_cast<int64_t>(rows[t * k + j]) * C;
        for (int64_t c = 0; c < C; ++c) dst[c] += src[c];
      }
    }
  });
}

}  // namespace qwenq
