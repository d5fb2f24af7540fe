// The Q4 layout (quant/format/qgemm_layout.h): repacking every source format and unpacking it again gives,
// bit for bit, the fp32 weights of the source format's own reader; act-order, padding and awkward sizes
// included; configurations the layout cannot hold are refused with a message naming the values.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "quant/format/qgemm_layout.h"
#include "quant/int_checkpoint.h"
#include "quant/nf4.h"

namespace qwenq {
namespace {

// Bitwise equality of two fp32 arrays (so +0 vs -0 and NaN payloads count), reporting the first mismatch.
void expect_bits_equal(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], 4) != 0) {
      FAIL() << what << ": element " << i << " is " << got[i] << ", the format's reader gives " << want[i];
    }
  }
}

struct IntCase {
  IntLayout layout;
  int64_t K, N, group;
  bool act_order;
};

std::string name_of(const IntCase& c) {
  return std::string(int_layout_name(c.layout)) + " K=" + std::to_string(c.K) + " N=" + std::to_string(c.N) +
         " g=" + std::to_string(c.group) + (c.act_order ? " act-order" : "");
}

TEST(QgemmLayout, IntRepackIsLossless) {
  const std::vector<IntCase> cases = {
      {IntLayout::GptqV1, 256, 64, 128, false},  {IntLayout::GptqV2, 256, 64, 128, false},
      {IntLayout::AwqGemm, 256, 64, 128, false}, {IntLayout::GptqV1, 512, 40, 64, true},
      {IntLayout::GptqV2, 896, 24, 128, true},   {IntLayout::GptqV2, 384, 16, 32, true},
      {IntLayout::GptqV1, 200, 16, 64, false},   // K not a multiple of the group: a last group of 8 rows
      {IntLayout::GptqV2, 200, 8, 64, true},     // ... with act-order
      {IntLayout::AwqGemm, 172, 8, 64, false},   // K not a multiple of 8: padded to 176 in the layout
      {IntLayout::AwqGemm, 13, 16, 64, false},   // fewer rows than one group
      {IntLayout::GptqV2, 136, 8, -1, false},    // one group (group_size -1)
      {IntLayout::AwqGemm, 100, 8, 32, false},   // K % 8 = 4, last group 4 rows
  };
  uint64_t seed = 1000;
  for (const IntCase& c : cases) {
    const PackedIntLinear p = q4_synthetic_int_linear(c.layout, c.K, c.N, c.group, c.act_order, ++seed);
    const Q4Layout q = q4_from_int_linear(p);
    EXPECT_EQ(q.kind, Q4Kind::Int);
    EXPECT_EQ(q.Kp % 8, 0);
    EXPECT_EQ(q.Np % 4, 0);
    EXPECT_EQ(q.perm.empty(), !c.act_order) << name_of(c);
    expect_bits_equal(q4_unpack(q.view()), dequantize_int_linear(p), name_of(c) + " seed " + std::to_string(seed));
  }
}

TEST(QgemmLayout, ActOrderRowsAreSortedByGroup) {
  const PackedIntLinear p = q4_synthetic_int_linear(IntLayout::GptqV2, 512, 16, 128, true, 7);
  const Q4Layout q = q4_from_int_linear(p);
  ASSERT_EQ(q.perm.size(), 512u);
  std::vector<int> seen(512, 0);
  for (int64_t kk = 0; kk < 512; ++kk) {
    EXPECT_EQ(p.g_idx[q.perm[kk]], kk / 128) << "layout row " << kk;
    ++seen[q.perm[kk]];
    if (kk % 128 != 0) {
      EXPECT_LT(q.perm[kk - 1], q.perm[kk]) << "stable within a group";
    }
  }
  for (int v : seen) EXPECT_EQ(v, 1);
}

TEST(QgemmLayout, StaticGroupsGIdxNeedsNoPermutation) {
  // desc_act with static_groups writes g_idx = k / group: the layout keeps the natural order.
  const PackedIntLinear p = q4_synthetic_int_linear(IntLayout::GptqV1, 256, 8, 64, false, 8);
  EXPECT_TRUE(q4_from_int_linear(p).perm.empty());
}

TEST(QgemmLayout, PaddingDequantizesToZero) {
  const PackedIntLinear p = q4_synthetic_int_linear(IntLayout::AwqGemm, 172, 8, 64, false, 9);
  const Q4Layout q = q4_from_int_linear(p);
  ASSERT_EQ(q.Kp, 176);
  for (int64_t kk = 172; kk < 176; ++kk) {
    for (int64_t n = 0; n < q.N; ++n) {
      const uint32_t code = (q.qweight[kk / 8 * q.Np + n] >> (4 * (kk % 8))) & 15u;
      const float v = q4_dequant(q.kind, code, q.meta[kk / q.group * q.Np + n]);
      EXPECT_EQ(v, 0.0f) << "pad row " << kk << " column " << n;
      EXPECT_FALSE(std::signbit(v));
    }
  }
  const Q4Layout r = q4_from_nf4(q4_synthetic_nf4(17, 64, false, 64, true, 10), 17, 64);
  ASSERT_EQ(r.Np, 20);
  for (int64_t n = 17; n < 20; ++n)
    for (int64_t kk = 0; kk < 64; ++kk) {
      const uint32_t code = (r.qweight[kk / 8 * r.Np + n] >> (4 * (kk % 8))) & 15u;
      EXPECT_EQ(q4_dequant(r.kind, code, r.meta[kk / r.group * r.Np + n]), 0.0f);
    }
}

struct Nf4Case {
  int64_t N, K, blocksize;
  bool fp4, dq;
};

TEST(QgemmLayout, Nf4RepackIsLossless) {
  const std::vector<Nf4Case> cases = {
      {64, 128, 64, false, false}, {64, 128, 64, false, true}, {48, 256, 64, true, true},
      {32, 896, 4096, false, true},  // blocks straddle rows: layout group gcd(896, 4096) = 128
      {17, 200, 64, false, true},    // awkward N (padded to 20) and K % 64 != 0: layout group gcd = 8
      {9, 96, 32, true, false},      {5, 4864, 256, false, true},
  };
  uint64_t seed = 2000;
  for (const Nf4Case& c : cases) {
    const Nf4Tensor t = q4_synthetic_nf4(c.N, c.K, c.fp4, c.blocksize, c.dq, ++seed);
    const Q4Layout q = q4_from_nf4(t, c.N, c.K);
    EXPECT_EQ(q.kind, c.fp4 ? Q4Kind::Fp4 : Q4Kind::Nf4);
    const std::string what = std::string(t.quant_type()) + " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K) +
                             " B=" + std::to_string(c.blocksize) + (c.dq ? " DQ" : "");
    expect_bits_equal(q4_unpack(q.view()), nf4_dequantize(t), what);
  }
}

TEST(QgemmLayout, Nf4FromARealQuantization) {
  // Through bnb-style quantization of Gaussian weights (not just random codes), with double quantization.
  const int64_t N = 24, K = 320;
  std::vector<float> w(N * K);
  for (size_t i = 0; i < w.size(); ++i) w[i] = std::sin(0.37f * static_cast<float>(i)) * 0.05f;
  Nf4Options opts;
  opts.double_quant = true;
  const Nf4Tensor t = nf4_quantize(w.data(), N * K, opts);
  expect_bits_equal(q4_unpack(q4_from_nf4(t, N, K).view()), nf4_dequantize(t), "nf4_quantize DQ");
}

void expect_error(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected an error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(QgemmLayout, RejectsWhatItCannotHold) {
  // A group that is not a multiple of 8 would put two groups in one word.
  expect_error([] { q4_from_int_linear(q4_synthetic_int_linear(IntLayout::GptqV2, 200, 8, 100, false, 1)); },
               "group size 100 is not a multiple of 8");
  // NF4 with gcd(K, blocksize) = 4.
  expect_error([] { q4_from_nf4(q4_synthetic_nf4(8, 172, false, 64, false, 2), 8, 172); }, "gcd(K=172, blocksize=64) = 4");
  // Non-4-bit GPTQ.
  PackedIntLinear p8 = q4_synthetic_int_linear(IntLayout::GptqV2, 64, 8, 32, false, 3);
  p8.bits = 8;
  expect_error([&] { q4_from_int_linear(p8); }, "only 4-bit codes");
  // A g_idx whose groups are not `group` rows each.
  PackedIntLinear odd = q4_synthetic_int_linear(IntLayout::GptqV2, 128, 8, 32, true, 4);
  for (auto& g : odd.g_idx) g = g == 1 ? 0 : g;  // group 0 gets 64 rows, group 1 none
  odd.g_idx[5] = 1;
  expect_error([&] { q4_from_int_linear(odd); }, "does not put exactly 32 rows");
  // Shape mismatch for NF4.
  expect_error([] { q4_from_nf4(q4_synthetic_nf4(8, 64, false, 64, false, 5), 8, 32); }, "does not hold 512 weights");
  // A view with bad padding.
  Q4Layout q = q4_from_int_linear(q4_synthetic_int_linear(IntLayout::AwqGemm, 64, 8, 32, false, 6));
  Q4View v = q.view();
  v.Kp = 72;
  expect_error([&] { q4_check(v, "test view"); }, "Kp=72 is not K=64 rounded up");
}

}  // namespace
}  // namespace qwenq
