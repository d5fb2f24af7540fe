#include "tests/support/checkpoint_compare.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/files.h"
#include "core/safetensors.h"
#include "trainer/perplexity.h"
#include "trainer/quantize_model.h"
#include "trainer/qwen_model.h"
#include "trainer/tokenizer.h"

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

std::string dequantized_copy(const std::string& dir) {
  DequantizeOptions d;
  d.model_dir = dir;
  d.out_dir = dir + "-dense";
  d.dtype = DType::F32;
  d.overwrite = true;
  d.quiet = true;
  dequantize_model(d);
  return d.out_dir;
}

void expect_same_dequantized(const std::string& a, const std::string& b) {
  expect_same_tensors(dequantized_copy(a), dequantized_copy(b));
}

double flipped_fraction(const std::string& a, const std::string& b, bool first_group_only) {
  QwenModel ma(a), mb(b);
  int64_t differ = 0, total = 0;
  for (int64_t l = 0; l < (first_group_only ? 1 : ma.config().num_layers); ++l) {
    for (const DecoderLinear& s : kDecoderLinears) {
      if (first_group_only && s.group != BlockLinear::QKV) continue;
      const std::vector<float> wa = ma.linear_weight(l, s.group, s.index).dequantize();
      const std::vector<float> wb = mb.linear_weight(l, s.group, s.index).dequantize();
      EXPECT_EQ(wa.size(), wb.size());
      for (size_t i = 0; i < wa.size() && i < wb.size(); ++i) differ += wa[i] != wb[i];
      total += static_cast<int64_t>(wa.size());
    }
  }
  return static_cast<double>(differ) / static_cast<double>(total);
}

double perplexity_on(const std::string& dir, const std::string& text_path) {
  std::vector<int32_t> ids = Tokenizer::from_dir(dir).encode(read_file(text_path));
  ids.resize(std::min<size_t>(ids.size(), 8 * 128));
  PerplexityOptions po;
  po.seq_len = 128;
  po.quiet = true;
  return evaluate_perplexity(QwenModel(dir), ids, po).perplexity;
}

}  // namespace qwenq::test
