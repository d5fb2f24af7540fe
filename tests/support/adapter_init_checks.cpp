#include "tests/support/adapter_init_checks.h"

#include <gtest/gtest.h>

#include <cmath>

#include "trainer/lora_model.h"

namespace qwenq::test {

LoraConfig all_linear_lora(int64_t r, double alpha) {
  LoraConfig c;
  c.r = r;
  c.alpha = alpha;
  c.target_modules = parse_lora_targets("all-linear");
  return c;
}

QuantizeOptions small_quantize_options(const std::string& model, const std::string& out, QuantizeOptions::Method method) {
  QuantizeOptions q;
  q.method = method;
  q.model_dir = model;
  q.out_dir = out;
  q.quiet = true;
  q.group_size = 32;
  return q;
}

double mean_logit_error(const QwenModel& m, const LoraAdapter& adapter, const std::vector<float>& ref,
                        const PackedBatch& batch) {
  const std::vector<float> got = lora_forward_logits(m, adapter, batch);
  double e = 0;
  for (size_t i = 0; i < ref.size(); ++i) e += std::fabs(double(got[i]) - ref[i]);
  return e / static_cast<double>(ref.size());
}

void expect_padding_untouched(const LoraAdapter& a, int64_t layers, int64_t intermediate, int64_t padded) {
  const int64_t r = a.uniform_rank();
  for (int64_t l = 0; l < layers; ++l) {
    const LoraWeights& up = a.at(l, LoraTarget::UpProj);
    for (int64_t n = intermediate; n < padded; ++n)
      for (int64_t j = 0; j < r; ++j) EXPECT_EQ(up.B[n * r + j], 0.f) << "layer " << l << " up_proj B row " << n;
    const LoraWeights& down = a.at(l, LoraTarget::DownProj);
    for (int64_t j = 0; j < r; ++j)
      for (int64_t k = intermediate; k < padded; ++k)
        EXPECT_EQ(down.A[j * padded + k], 0.f) << "layer " << l << " down_proj A column " << k;
  }
}

}  // namespace qwenq::test
