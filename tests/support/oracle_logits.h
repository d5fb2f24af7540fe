// The oracle tests' common last step: the logits the Python side saved (expected.safetensors in the fixture
// directory: "input_ids" I32 [T], "logits" F32 [T, V]) against the model's own forward on those ids.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/files.h"
#include "core/safetensors.h"
#include "trainer/qwen_model.h"

namespace qwenq::test {

struct LogitGap {
  double worst = INFINITY;  // max |ours - expected|
  double scale = 0;         // max |expected|
};

inline LogitGap logits_against_expected(const QwenModel& model, const std::string& dir) {
  SafetensorsFile expected(path_join(dir, "expected.safetensors"));
  const TensorView& ids = expected.get("input_ids");
  const TensorView& want = expected.get("logits");
  const std::vector<int32_t> seq(ids.as<int32_t>(), ids.as<int32_t>() + ids.numel());
  const std::vector<float> got = model.forward_logits(PackedBatch::from_sequences({seq}));
  LogitGap g;
  if (static_cast<int64_t>(got.size()) != want.numel()) {
    ADD_FAILURE() << dir << ": " << got.size() << " logits, expected.safetensors holds " << want.numel();
    return g;
  }
  g.worst = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    g.scale = std::max(g.scale, static_cast<double>(std::fabs(want.as<float>()[i])));
    g.worst = std::max(g.worst, static_cast<double>(std::fabs(got[i] - want.as<float>()[i])));
  }
  return g;
}

}  // namespace qwenq::test
