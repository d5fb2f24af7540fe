// GPTQ v1/v2 and AWQ GEMM Linear tensors: pack -> safetensors -> read -> dequantize reproduces the fake-quant
// weights exactly, bad files are named, and (IntCheckpointOracle) files for the numpy oracle
// tests/oracle/test_int_checkpoint_oracle.py, which dequantizes them from the published layouts.
#include <gtest/gtest.h>

#include <cstdlib>
#include <numeric>

#include "core/files.h"
#include "core/rng.h"
#include "quant/int_checkpoint.h"
#include "tests/support/test_paths.h"

namespace qwenq {
namespace {

using test::error_of;
constexpr uint64_t kSeed = 7011;

struct Case {
  const char* name;
  IntLayout layout;
  int bits;
  int64_t N, K, group;
  bool sym, act_order;
};

// Real-ish shapes kept small; K=172 is stories260K's intermediate size (a partial last group).
const Case kCases[] = {
    {"gptq_v1_sym_g64_actorder", IntLayout::GptqV1, 4, 64, 256, 64, true, true},
    {"gptq_v2_asym_g128", IntLayout::GptqV2, 4, 96, 384, 128, false, false},
    {"gptq_v2_asym_perchannel_8bit", IntLayout::GptqV2, 8, 32, 128, -1, false, false},
    {"gptq_v1_sym_2bit_g32", IntLayout::GptqV1, 2, 48, 160, 32, true, false},
    {"awq_g64_K172", IntLayout::AwqGemm, 4, 64, 172, 64, false, false},
};

struct Built {
  PackedIntLinear packed;
  std::vector<float> fake_quant;  // [N, K]
};

Built build(const Case& c) {
  Rng rng(kSeed + c.N * 131 + c.K);
  std::vector<float> W(c.N * c.K);
  for (auto& w : W) w = static_cast<float>(rng.normal() * 0.05);
  const GridRule rule = c.layout == IntLayout::AwqGemm ? GridRule::Awq : GridRule::Gptq;
  GroupGrid grid = find_grid(W.data(), c.N, c.K, c.bits, c.group, c.sym, rule);
  std::vector<int32_t> g_idx(c.K);
  for (int64_t k = 0; k < c.K; ++k) g_idx[k] = static_cast<int32_t>(k / grid.group);
  if (c.act_order) {  // a scattered but valid map: shuffle which rows belong to which group
    for (int64_t k = c.K - 1; k > 0; --k) std::swap(g_idx[k], g_idx[rng.below(k + 1)]);
  }
  // Codes on the grid of each row's group (what GPTQ with act-order produces).
  std::vector<uint8_t> codes(c.K * c.N);
  for (int64_t k = 0; k < c.K; ++k) {
    for (int64_t n = 0; n < c.N; ++n) {
      const int64_t g = g_idx[k];
      codes[k * c.N + n] = quantize_value(W[n * c.K + k], grid.scale[g * c.N + n], grid.zero[g * c.N + n], grid.maxq());
    }
  }
  if (c.layout == IntLayout::GptqV1) {
    for (auto& z : grid.zero) EXPECT_GE(z, 1) << "sym grids never have zero point 0";
  }
  Built b;
  b.packed = pack_int_linear(codes.data(), grid, g_idx.data(), c.layout);
  b.fake_quant = dequantize_codes(codes.data(), grid, g_idx.data());
  return b;
}

std::string write_case(const std::string& dir, const Case& c, const Built& b) {
  SafetensorsWriter w;
  add_int_linear(w, "model.layers.0.mlp.up_proj", b.packed);
  w.add("expected_dequantized", DType::F32, {c.N, c.K}, b.fake_quant.data());
  w.set_metadata("layout", int_layout_name(c.layout));
  w.set_metadata("bits", std::to_string(c.bits));
  w.set_metadata("group_size", std::to_string(c.group));
  std::string case_dir = dir + "/" + c.name;
  EXPECT_EQ(std::system(("mkdir -p '" + case_dir + "'").c_str()), 0) << case_dir;
  w.write(case_dir + "/model.safetensors");
  return case_dir;
}

TEST(IntCheckpoint, RoundTripIsExact) {
  const std::string dir = test::scratch_dir();
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name);
    Built b = build(c);
    ASSERT_EQ(dequantize_int_linear(b.packed), b.fake_quant) << "in memory";
    std::string case_dir = write_case(dir, c, b);
    Checkpoint ckpt(case_dir);
    PackedIntLinear back = read_int_linear(ckpt, "model.layers.0.mlp.up_proj", c.layout, c.bits, c.group, c.K, c.N);
    EXPECT_EQ(dequantize_int_linear(back), b.fake_quant) << "through safetensors";
  }
}

TEST(IntCheckpoint, BadTensorsAreNamed) {
  const std::string dir = test::scratch_dir();
  const Case& c = kCases[0];
  Built b = build(c);
  std::string case_dir = write_case(dir, c, b);
  Checkpoint ckpt(case_dir);
  const std::string p = "model.layers.0.mlp.up_proj";
  std::string err = error_of([&] { read_int_linear(ckpt, p, c.layout, c.bits, 32, c.K, c.N); });
  EXPECT_NE(err.find("tensor 'model.layers.0.mlp.up_proj.qzeros' has shape [4, 8], expected [8, 8]"), std::string::npos)
      << err;
  err = error_of([&] { read_int_linear(ckpt, p, c.layout, c.bits, c.group, c.K, c.N + 8); });
  EXPECT_NE(err.find("qweight' has shape [32, 64], expected [32, 72]"), std::string::npos) << err;
  err = error_of([&] { read_int_linear(ckpt, "model.layers.1.mlp.up_proj", c.layout, c.bits, c.group, c.K, c.N); });
  EXPECT_NE(err.find("tensor 'model.layers.1.mlp.up_proj.qweight' not found"), std::string::npos) << err;

  // g_idx pointing past the last group.
  b.packed.g_idx[17] = 99;
  SafetensorsWriter w;
  add_int_linear(w, p, b.packed);
  ASSERT_EQ(std::system(("mkdir -p '" + dir + "/bad'").c_str()), 0);
  w.write(dir + "/bad/model.safetensors");
  err = error_of([&] { read_int_linear(Checkpoint(dir + "/bad"), p, c.layout, c.bits, c.group, c.K, c.N); });
  EXPECT_NE(err.find("model.layers.0.mlp.up_proj.g_idx[17] = 99 is outside [0, 4)"), std::string::npos) << err;
}

TEST(IntCheckpoint, RefusesWhatALayoutCannotHold) {
  const int64_t N = 16, K = 64;
  std::vector<float> W(N * K, 0.01f);
  W[0] = -1.f;  // asym grid of group 0, column 0 -> zero point 15 is fine; make a group whose zero is 0:
  for (int64_t k = 0; k < K; ++k) W[1 * K + k] = 0.5f + 0.01f * k;  // all positive -> lo = 0 -> zero 0
  GroupGrid grid = find_grid(W.data(), N, K, 4, 32, false, GridRule::Gptq);
  std::vector<uint8_t> codes = quantize_rtn(W.data(), grid);
  EXPECT_NE(error_of([&] { pack_int_linear(codes.data(), grid, nullptr, IntLayout::GptqV1); })
                .find("GPTQ v1 cannot store a zero point of 0 (group 0, column 1)"),
            std::string::npos);
  std::vector<int32_t> scattered(K);
  std::iota(scattered.begin(), scattered.end(), 0);
  for (auto& g : scattered) g = (g * 7 % K) / 32;
  EXPECT_NE(error_of([&] { pack_int_linear(codes.data(), grid, scattered.data(), IntLayout::AwqGemm); })
                .find("act-order (desc_act) cannot be stored"),
            std::string::npos);
}

TEST(IntCheckpointOracle, WritesLayersForTheOracle) {
  const char* dir = std::getenv("QWENQ_ORACLE_INT_DIR");
  if (!dir) GTEST_SKIP() << "QWENQ_ORACLE_INT_DIR not set (run tests/oracle/test_int_checkpoint_oracle.py)";
  for (const Case& c : kCases) write_case(dir, c, build(c));
}

}  // namespace
}  // namespace qwenq
