// Comparisons of float arrays that tests share.
#pragma once

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

}  // namespace qwenq::test
