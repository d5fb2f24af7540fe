#include "tests/support/checkpoint_compare.h"

#include <gtest/gtest.h>

#include <cstring>

#include "core/safetensors.h"
#include "trainer/quantize_model.h"

namespace qwenq::test {

void expect_same_tensors(const std::string& a, const std::string& b) {
  const Checkpoint ca(a), cb(b);
  ASSERT_EQ(ca.names(), cb.names()) << a << " and " << b;
  for (const std::string& name : ca.names()) {
    const TensorView &x = ca.get(name), &y = cb.get(name);
    ASSERT_EQ(x.dtype, y.dtype) << name;
    ASSERT_EQ(x.shape, y.shape) << name;
    EXPECT_EQ(std::memcmp(x.data, y.data, x.nbytes()), 0) << name;
  }
}

void expect_same_dequantized(const std::string& a, const std::string& b) {
  for (const std::string& m : {a, b}) {
    DequantizeOptions d;
    d.model_dir = m;
    d.out_dir = m + "-dense";
    d.dtype = DType::F32;
    d.overwrite = true;
    d.quiet = true;
    dequantize_model(d);
  }
  expect_same_tensors(a + "-dense", b + "-dense");
}

}  // namespace qwenq::test
