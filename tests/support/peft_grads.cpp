#include "tests/support/peft_grads.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "kernels/loss.h"
#include "lora/peft_io.h"

namespace qwenq::test {

void oracle_sequences(const SafetensorsFile& f, std::vector<std::vector<int32_t>>* seqs, std::vector<int32_t>* targets) {
  const TensorView& ids = f.get("input_ids");
  const TensorView& lens = f.get("lengths");
  const TensorView& masks = f.get("masks");
  int64_t off = 0;
  for (int64_t i = 0; i < lens.numel(); ++i) {
    const int32_t n = lens.as<int32_t>()[i];
    seqs->emplace_back(ids.as<int32_t>() + off, ids.as<int32_t>() + off + n);
    for (int32_t t = 0; t < n; ++t)  // position t predicts token t + 1 when that one is scored
      targets->push_back(t + 1 < n && masks.as<int32_t>()[off + t + 1] ? seqs->back()[t + 1] : kIgnoreIndex);
    off += n;
  }
}

GradComparison expect_peft_grads_close(const LoraAdapter& grads, const SafetensorsFile& expected,
                                       const std::string& prefix, double tol) {
  GradComparison c;
  for (size_t i = 0; i < grads.slots().size(); ++i) {  // every adapted Linear, each MoE expert's too
    const LoraSlot& sl = grads.slots()[i];
    for (int which = 0; which < (grads.use_dora() ? 3 : 2); ++which) {  // A, B, DoRA's m
      const std::string name = which == 2 ? peft_magnitude_name(sl) + ".weight" : peft_tensor_name(sl, which);
      SCOPED_TRACE(name);
      const TensorView& want = expected.get(prefix + name + ".grad");
      const LoraWeights& g = grads.weights(i);
      const std::vector<float>& got = which == 2 ? g.m : which ? g.B : g.A;
      EXPECT_EQ(static_cast<int64_t>(got.size()), want.numel());
      if (static_cast<int64_t>(got.size()) != want.numel()) continue;
      double scale = 0, worst = 0;
      for (int64_t j = 0; j < want.numel(); ++j) {
        scale = std::max(scale, (double)std::fabs(want.as<float>()[j]));
        worst = std::max(worst, (double)std::fabs(got[j] - want.as<float>()[j]));
      }
      EXPECT_LE(worst, tol * scale) << "max |ours - torch| = " << worst << ", max |torch| = " << scale;
      if (scale > 0) c.worst_rel = std::max(c.worst_rel, worst / scale);
      c.nonzero += scale > 0;
      ++c.compared;
    }
  }
  return c;
}

}  // namespace qwenq::test
