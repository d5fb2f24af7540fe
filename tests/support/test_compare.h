// Comparisons of float arrays that tests share.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

namespace qwenq::test {

// ‖got − want‖₂ / ‖want‖₂ over the elements of want, in double.
inline double relative_l2(const std::vector<float>& got, const std::vector<float>& want) {
  double d = 0, n = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double e = static_cast<double>(got[i]) - want[i];
    d += e * e;
    n += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(d / n);
}

// max |got − want| / max |want| (in double; +inf when the sizes differ). For two computations of the same values whose
// fp32 sums run in different orders, such as a packed Linear's small-M product (quant/packed_matvec.h) against the
// GEMM on its dequantized weights: they agree to kSumOrderTol, while a wrong weight is off by far more.
inline double max_rel_diff(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) return INFINITY;
  double d = 0, m = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    d = std::max(d, std::fabs(static_cast<double>(got[i]) - want[i]));
    m = std::max(m, std::fabs(static_cast<double>(want[i])));
  }
  return d / m;
}
constexpr double kSumOrderTol = 1e-5;

}  // namespace qwenq::test
