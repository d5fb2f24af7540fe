// A non-owning view of a dense, row-major tensor: pointer, dtype and shape. Views point into mmapped
// checkpoints or into buffers owned elsewhere; they never free anything.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace qwenq {

struct TensorView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  int rank() const { return static_cast<int>(shape.size()); }
  template <typename T>
  const T* as() const {
    return static_cast<const T*>(data);
  }
};

// "[896, 4864]"
std::string shape_str(const std::vector<int64_t>& shape);

// The values of t widened to fp32 (any DType core/dtype.h converts).
std::vector<float> tensor_to_f32(const TensorView& t);

}  // namespace qwenq
