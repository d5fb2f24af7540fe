// DoRA adapters (use_dora; lora/lora_adapter.h, trainer/lora_merge.h): the magnitude vectors in PEFT's file
// layout (round trip, every refusal), the merge W' = (m/n) ⊙ (W + s·B A) against a plain double evaluation, and
// the magnitudes in the layout of the unmerged GPU path. The PEFT oracle is tests/oracle/test_dora_oracle.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/files.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "lora/lora_adapter.h"
#include "lora/peft_io.h"
#include "tests/support/safetensors_edit.h"
#include "tests/support/test_paths.h"
#include "trainer/lora_inference.h"
#include "trainer/lora_merge.h"
#include "trainer/qwen_config.h"

namespace qwenq {
namespace {

using test::error_of;
using test::scratch_dir;

// W' from fp32 inputs, evaluated in double here and in fp32 (norm in double) by merge_lora_weights: a few fp32
// roundings of each entry, relative to the row's largest entry.
constexpr double kMergeTol = 1e-6;

LoraDims dims2() { return LoraDims{64, 128, 64, 32, 2}; }

LoraConfig dora_config(int64_t r = 4) {
  LoraConfig c;
  c.r = r;
  c.alpha = 8;
  c.use_dora = true;
  c.target_modules = parse_lora_targets("all-linear");
  return c;
}

// Seeded A, nonzero B and magnitudes in (0.5, 1.5).
LoraAdapter random_dora(const LoraDims& dims, uint64_t seed) {
  LoraAdapter a(dims, dora_config());
  a.init_peft(seed);
  Rng rng(seed + 1);
  for (int64_t l = 0; l < dims.num_layers; ++l) {
    for (LoraTarget t : a.targets()) {
      for (float& v : a.at(l, t).B) v = static_cast<float>(rng.normal() * 0.1);
      for (float& v : a.at(l, t).m) v = rng.uniform(0.5f, 1.5f);
    }
  }
  return a;
}

using test::rewrite_adapter_weights;

TEST(Dora, ConfigRoundTripAndMagnitudeShapes) {
  const LoraConfig c = dora_config();
  const auto j = nlohmann::json::parse(lora_config_to_json(c));
  EXPECT_EQ(j.at("use_dora"), true);
  EXPECT_TRUE(parse_lora_config_json(j.dump(), "f").use_dora);
  LoraConfig plain = c;
  plain.use_dora = false;
  EXPECT_FALSE(parse_lora_config_json(lora_config_to_json(plain), "f").use_dora);
  const LoraAdapter a(dims2(), c);
  EXPECT_EQ(a.at(1, LoraTarget::KProj).m.size(), 32u);
  EXPECT_EQ(a.at(0, LoraTarget::DownProj).m.size(), 64u);
  const LoraAdapter p(dims2(), plain);
  EXPECT_TRUE(p.at(0, LoraTarget::QProj).m.empty());
  EXPECT_EQ(a.num_parameters(), p.num_parameters() + 2 * (64 + 32 + 32 + 64 + 128 + 128 + 64));
  EXPECT_EQ(peft_magnitude_name(3, LoraTarget::UpProj), "base_model.model.model.layers.3.mlp.up_proj.lora_magnitude_vector");
}

TEST(Dora, SaveLoadRoundTripBitExact) {
  const std::string dir = path_join(scratch_dir(), "dora");
  const LoraAdapter a = random_dora(dims2(), 5);
  save_peft_adapter(dir, a);
  {
    SafetensorsFile f(path_join(dir, "adapter_model.safetensors"));
    const TensorView& m = f.get(peft_magnitude_name(1, LoraTarget::VProj));
    EXPECT_EQ(m.dtype, DType::F32);
    EXPECT_EQ(m.shape, (std::vector<int64_t>{32}));
    EXPECT_EQ(f.names().size(), 2u * 7 * 3);
  }
  const LoraAdapter b = load_peft_adapter(dir, dims2());
  ASSERT_TRUE(b.use_dora());
  for (int64_t l = 0; l < 2; ++l) {
    for (LoraTarget t : a.targets()) {
      EXPECT_EQ(a.at(l, t).A, b.at(l, t).A);
      EXPECT_EQ(a.at(l, t).B, b.at(l, t).B);
      EXPECT_EQ(a.at(l, t).m, b.at(l, t).m);
    }
  }
}

TEST(Dora, LoadRefusals) {
  const std::string dir = path_join(scratch_dir(), "dora");
  const std::string file = path_join(dir, "adapter_model.safetensors");
  const std::string victim = peft_magnitude_name(1, LoraTarget::OProj);
  const LoraAdapter a = random_dora(dims2(), 6);
  const auto fresh = [&] { save_peft_adapter(dir, a, PeftSaveOptions{DType::F32, true}); };

  fresh();  // missing magnitude
  rewrite_adapter_weights(dir, [&](const std::string& name, const TensorView& v, std::vector<uint8_t> bytes,
                           SafetensorsWriter& w) {
    if (name != victim) w.add_owned(name, v.dtype, v.shape, std::move(bytes));
  });
  std::string e = error_of([&] { load_peft_adapter(dir, dims2()); });
  EXPECT_NE(e.find(victim + " is missing"), std::string::npos) << e;
  EXPECT_NE(e.find(file), std::string::npos) << e;
  EXPECT_NE(e.find("use_dora"), std::string::npos) << e;

  fresh();  // misshapen magnitude ([N, 1] instead of [N])
  rewrite_adapter_weights(dir, [&](const std::string& name, const TensorView& v, std::vector<uint8_t> bytes,
                           SafetensorsWriter& w) {
    w.add_owned(name, v.dtype, name == victim ? std::vector<int64_t>{v.shape[0], 1} : v.shape, std::move(bytes));
  });
  e = error_of([&] { load_peft_adapter(dir, dims2()); });
  EXPECT_NE(e.find("DoRA magnitude " + victim + " has shape [64, 1], expected [64]"), std::string::npos) << e;
  EXPECT_NE(e.find(file), std::string::npos) << e;

  fresh();  // a NaN in a magnitude
  rewrite_adapter_weights(dir, [&](const std::string& name, const TensorView& v, std::vector<uint8_t> bytes,
                           SafetensorsWriter& w) {
    if (name == victim) {
      const float nan = std::numeric_limits<float>::quiet_NaN();
      std::memcpy(bytes.data() + 4 * 7, &nan, 4);
    }
    w.add_owned(name, v.dtype, v.shape, std::move(bytes));
  });
  e = error_of([&] { load_peft_adapter(dir, dims2()); });
  EXPECT_NE(e.find(victim + " has the non-finite value nan at row 7"), std::string::npos) << e;

  fresh();  // magnitudes in a file whose config says use_dora = false
  auto cfg = nlohmann::json::parse(read_file(path_join(dir, "adapter_config.json")));
  cfg["use_dora"] = false;
  write_file_atomic(path_join(dir, "adapter_config.json"), cfg.dump());
  e = error_of([&] { load_peft_adapter(dir, dims2()); });
  EXPECT_NE(e.find("unexpected tensor base_model.model.model.layers.0."), std::string::npos) << e;
  EXPECT_NE(e.find(".lora_magnitude_vector"), std::string::npos) << e;
  EXPECT_NE(e.find("DoRA magnitudes without use_dora = true"), std::string::npos) << e;

  cfg["use_dora"] = "true";  // not a boolean
  write_file_atomic(path_join(dir, "adapter_config.json"), cfg.dump());
  e = error_of([&] { load_peft_adapter(dir, dims2()); });
  EXPECT_NE(e.find("\"use_dora\" must be true or false"), std::string::npos) << e;
  EXPECT_NE(e.find(path_join(dir, "adapter_config.json")), std::string::npos) << e;
}

TEST(Dora, MergeScalesEachRowByMagnitudeOverNorm) {
  const int64_t N = 24, K = 40, r = 3;
  const float s = 1.75f;
  Rng rng(41);
  LoraWeights lw;
  lw.N = N;
  lw.K = K;
  lw.r = r;
  for (int64_t i = 0; i < r * K; ++i) lw.A.push_back(rng.uniform(-1.f, 1.f));
  for (int64_t i = 0; i < N * r; ++i) lw.B.push_back(rng.uniform(-1.f, 1.f));
  for (int64_t i = 0; i < N; ++i) lw.m.push_back(rng.uniform(0.2f, 3.f));
  std::vector<float> W0(N * K);
  for (float& w : W0) w = rng.uniform(-1.f, 1.f);
  std::vector<float> W = W0;
  merge_lora_weights(W.data(), N, K, lw, s);
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> row(K);
    double ss = 0;
    for (int64_t k = 0; k < K; ++k) {
      row[k] = W0[n * K + k];
      for (int64_t j = 0; j < r; ++j) row[k] += double(s) * lw.B[n * r + j] * lw.A[j * K + k];
      ss += row[k] * row[k];
    }
    double worst = 0, scale = 0;
    for (int64_t k = 0; k < K; ++k) {
      const double want = lw.m[n] / std::sqrt(ss) * row[k];
      worst = std::max(worst, std::fabs(W[n * K + k] - want));
      scale = std::max(scale, std::fabs(want));
    }
    ASSERT_LE(worst, kMergeTol * scale) << "row " << n;
  }
  // The merged row's norm is m: DoRA's decomposition (direction of W + s·B A, length m).
  for (int64_t n = 0; n < N; ++n) {
    double ss = 0;
    for (int64_t k = 0; k < K; ++k) ss += double(W[n * K + k]) * W[n * K + k];
    EXPECT_NEAR(std::sqrt(ss), lw.m[n], kMergeTol * lw.m[n] * 10);
  }
}

// The unmerged GPU path's layout (trainer/lora_inference.h) carries each Linear's magnitude after its B, aligned and
// bit for bit; a magnitude of another size or with a non-finite value is refused naming the adapter and the tensor.
// (That the gains it yields give the merged model: tests/test_lora_inference.cpp's DoRA cases.)
TEST(Dora, InferenceLayoutCarriesTheMagnitudes) {
  LoraAdapter a = random_dora(dims2(), 7);
  QwenConfig cfg;
  cfg.hidden_size = 64;
  cfg.intermediate_size = 128;
  cfg.num_heads = 4;
  cfg.num_kv_heads = 2;
  cfg.head_dim = 16;
  cfg.num_layers = 2;
  const LoraInferenceLayout lay = lora_inference_layout(a, cfg, "/adapters/dora");
  ASSERT_EQ(lay.slots.size(), a.slots().size());
  for (size_t i = 0; i < lay.slots.size(); ++i) {
    const LoraArenaSlot& sl = lay.slots[i];
    const std::vector<float>& m = a.weights(i).m;
    ASSERT_EQ(static_cast<int64_t>(m.size()), sl.N);
    EXPECT_GE(sl.m_off, sl.b_off + sl.N * sl.r);
    EXPECT_EQ(sl.m_off % kLoraArenaAlignFloats, 0);
    EXPECT_TRUE(std::equal(m.begin(), m.end(), lay.arena.begin() + sl.m_off)) << "slot " << i;
  }
  LoraAdapter shorter = a;
  shorter.at(1, LoraTarget::UpProj).m.pop_back();
  std::string e = error_of([&] { lora_inference_layout(shorter, cfg, "/adapters/dora"); });
  EXPECT_NE(e.find("/adapters/dora: the DoRA magnitude base_model.model.model.layers.1.mlp.up_proj."
                   "lora_magnitude_vector holds 127 values"),
            std::string::npos)
      << e;
  a.at(0, LoraTarget::VProj).m[3] = std::numeric_limits<float>::infinity();
  e = error_of([&] { lora_inference_layout(a, cfg, "/adapters/dora"); });
  EXPECT_NE(e.find("lora_magnitude_vector [32] has the non-finite value inf at row 3"), std::string::npos) << e;
}

}  // namespace
}  // namespace qwenq
