// CPU twins of kernels/sum_reduce.cu (contracts and precision in sum_reduce.h): sequential double sums in index
// order, the loops of trainer/awq_model.cpp's loss and quant/awq.cpp's awq_activation_mean, bit for bit.
#include <cmath>

#include "core/error.h"
#include "kernels/sum_reduce.h"

namespace qwenq {

void sum_sq_diff_ref(const float* a, const float* b, int64_t n, double* sum) {
  QWENQ_CHECK(n >= 0, "sum_sq_diff_ref: negative size " << n);
  QWENQ_CHECK(sum != nullptr, "sum_sq_diff_ref: null sum");
  if (n == 0) return;
  QWENQ_CHECK(a != nullptr && b != nullptr, "sum_sq_diff_ref: null input");
  double acc = *sum;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    acc += d * d;
  }
  *sum = acc;
}

void column_abs_sum_ref(const float* x, int64_t T, int64_t K, double* sum) {
  QWENQ_CHECK(T >= 0 && K >= 1, "column_abs_sum_ref: bad shape [" << T << ", " << K << "]");
  QWENQ_CHECK(sum != nullptr, "column_abs_sum_ref: null sum");
  if (T == 0) return;
  QWENQ_CHECK(x != nullptr, "column_abs_sum_ref: null input");
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t k = 0; k < K; ++k) sum[k] += std::fabs(x[t * K + k]);
  }
}

}  // namespace qwenq
