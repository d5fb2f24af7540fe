// Formatting helpers for TensorView shapes, used in error messages and logs.
#include "core/tensor.h"

namespace qwenq {

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  s += "]";
  return s;
}

}  // namespace qwenq
