// Formatting helpers for TensorView shapes, used in error messages and logs; tensor_to_f32.
#include "core/tensor.h"

#include <algorithm>

#include "core/threads.h"

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
  // By every thread in pieces of 64K elements (a 7B Linear is 68M values, widened for every Linear GPTQ and AWQ
  // quantize); to_f32 of a piece is the whole call's on that piece.
  constexpr int64_t kPiece = int64_t{1} << 16;
  const int64_t n = static_cast<int64_t>(out.size());
  if (n <= kPiece) {  // also any dtype's refusal for an empty tensor, as before
    to_f32(t.dtype, t.data, out.data(), out.size());
    return out;
  }
  const size_t esize = dtype_size(t.dtype);
  parallel_for((n + kPiece - 1) / kPiece, 1, [&](int64_t p0, int64_t p1) {
    const int64_t i0 = p0 * kPiece, i1 = std::min(n, p1 * kPiece);
    to_f32(t.dtype, static_cast<const char*>(t.data) + i0 * esize, out.data() + i0, static_cast<size_t>(i1 - i0));
  });
  return out;
}

}  // namespace qwenq
