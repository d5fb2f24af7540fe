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

std::vector<float> tensor_to_f32(const TensorView& t) {
  std::vector<float> out(t.numel());
  to_f32(t.dtype, t.data, out.data(), out.size());
  return out;
}

}  // namespace qwenq
