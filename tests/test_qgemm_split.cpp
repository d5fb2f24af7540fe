// F32 activations for the bf16 tensor cores (kernels/bf16_split.h, qgemm_split_x3_ref in kernels/qgemm.h): each
// fp32 value as three bf16 pieces h + m + l. The oracle is exact arithmetic: the pieces' sum in double must be the
// value itself (each piece and each sum of two fp32-representable values of 24 bits is exact in double), and the
// 3M-row product of the pieces, its row blocks added as the GPU's split-K reduction adds them, must be the fp32
// product of x (qgemm_int4_ref on F32 x) within the summation-order tolerance of tests/test_qgemm_ref.cpp, while x
// rounded to bf16 (what --bf16-activations does) must be far outside it: the test sees a lost piece.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "kernels/bf16_split.h"
#include "kernels/device.h"
#include "kernels/qgemm.h"
#include "quant/int_checkpoint.h"
#include "quant/nf4.h"
#include "tests/support/scoped_env.h"
#include "tests/support/test_errors.h"

namespace qwenq {
namespace {

constexpr double kQgemmSumTol = 8.0;  // multiples of u·sqrt(L)·Σ|x·w|, as tests/test_qgemm_ref.cpp
constexpr double kU = 1.0 / 16777216.0;

float from_bits(uint32_t b) {
  float v;
  std::memcpy(&v, &b, 4);
  return v;
}

double sum_of(const uint16_t p[3]) {
  return static_cast<double>(bf16_to_f32(p[0])) + bf16_to_f32(p[1]) + bf16_to_f32(p[2]);
}

// Values over the whole normal range (random 24-bit significands, exponents -110..126, both signs), the edges of
// bf16's range and round-to-even ties: the three pieces sum to the value exactly, h is the value rounded to bf16
// (core/dtype.h's f32_to_bf16) unless that is infinite, and each piece is at most 2^-8 of the one before (half a bf16
// unit of it or less).
TEST(QgemmSplitX3, PiecesSumToTheValueExactly) {
  std::vector<float> values = {0.0f, 1.0f, -1.0f, 3.14159265f, 1.0f / 3.0f, std::numeric_limits<float>::min(),
                               std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
                               from_bits(0x3F808000u),   // 1 + 2^-8: a tie, rounds to even (down)
                               from_bits(0x3F818000u),   // a tie that rounds up
                               from_bits(0x3F80FFFFu),   // all low bits set
                               from_bits(0x7F7F7FFFu),   // just below bf16's largest finite value's rounding edge
                               from_bits(0x7F7F8000u),   // rounds to bf16 Inf: h is clamped to 0x7F7F
                               from_bits(0xFF7FC123u), from_bits(0x0B800001u)};  // 2^-104 (1 + 2^-23)
  Rng rng(2026);
  for (int i = 0; i < 20000; ++i) {
    const uint32_t sign = static_cast<uint32_t>(rng.below(2)) << 31;
    const uint32_t exponent = static_cast<uint32_t>(17 + rng.below(237));  // 2^-110 .. 2^126
    values.push_back(from_bits(sign | exponent << 23 | static_cast<uint32_t>(rng.below(1u << 23))));
  }
  int64_t low_bits = 0;
  for (const float v : values) {
    uint16_t p[3];
    split_bf16x3(v, p);
    ASSERT_EQ(sum_of(p), static_cast<double>(v)) << "v = " << v << " (bits " << std::hex << [&] {
      uint32_t b;
      std::memcpy(&b, &v, 4);
      return b;
    }() << ")";
    const uint16_t rounded = f32_to_bf16(v);
    if ((rounded & 0x7FFF) == 0x7F80) {  // past bf16's range: h is its largest finite value, m is up to 2^120
      ASSERT_EQ(p[0], (rounded & 0x8000) | 0x7F7F) << v;
      continue;
    }
    ASSERT_EQ(p[0], rounded) << v;
    ASSERT_LE(std::fabs(bf16_to_f32(p[1])), std::ldexp(std::fabs(bf16_to_f32(p[0])), -8)) << v;
    ASSERT_LE(std::fabs(bf16_to_f32(p[2])), std::ldexp(std::fabs(bf16_to_f32(p[1])), -8)) << v;
    low_bits += p[2] != 0;
  }
  EXPECT_GT(low_bits, 10000) << "the third piece was almost never needed: the values are too easy";
}

// Zeros, infinities and NaN (kernels/bf16_split.h's edges); values below 2^-110 lose at most bf16's subnormal unit.
TEST(QgemmSplitX3, EdgesAndTinyValues) {
  const auto split = [](float v) {
    std::vector<uint16_t> p(3);
    split_bf16x3(v, p.data());
    return p;
  };
  EXPECT_EQ(split(0.0f), (std::vector<uint16_t>{0, 0, 0}));
  EXPECT_EQ(split(-0.0f), (std::vector<uint16_t>{0x8000, 0, 0}));
  EXPECT_EQ(split(std::numeric_limits<float>::infinity()), (std::vector<uint16_t>{0x7F80, 0, 0}));
  EXPECT_EQ(split(-std::numeric_limits<float>::infinity()), (std::vector<uint16_t>{0xFF80, 0, 0}));
  EXPECT_EQ(split(std::numeric_limits<float>::quiet_NaN()), (std::vector<uint16_t>{0x7FC0, 0, 0}));
  EXPECT_EQ(split(from_bits(0xFF812345u)), (std::vector<uint16_t>{0x7FC0, 0, 0}));  // a negative signalling NaN
  Rng rng(7);
  for (int i = 0; i < 2000; ++i) {
    const float v = from_bits(static_cast<uint32_t>(rng.below(27u << 23)));  // below 2^-100, subnormals included
    uint16_t p[3];
    split_bf16x3(v, p);
    EXPECT_LE(std::fabs(sum_of(p) - v), std::ldexp(1.0, -133)) << v;
  }
}

// The staging layout: piece p of x[m, perm[kk]] at row p·M + m, zeros in the padding columns, every entry written.
TEST(QgemmSplitX3, RowsArePiecesGatheredAndPadded) {
  const int64_t M = 3, K = 13, width = 16;
  Rng rng(11);
  std::vector<float> x(M * K);
  for (float& v : x) v = rng.uniform(-2.0f, 2.0f);
  std::vector<int32_t> perm(K);
  for (int64_t k = 0; k < K; ++k) perm[k] = static_cast<int32_t>((5 * k + 3) % K);  // 5 is invertible mod 13
  for (const bool gather : {false, true}) {
    SCOPED_TRACE(gather ? "with perm" : "without perm");
    std::vector<uint16_t> out(static_cast<size_t>(3 * M * width), 0xABCD);
    qgemm_split_x3_ref(x.data(), M, K, gather ? perm.data() : nullptr, width, out.data());
    for (int64_t m = 0; m < M; ++m)
      for (int64_t kk = 0; kk < width; ++kk) {
        const uint16_t got[3] = {out[(0 * M + m) * width + kk], out[(1 * M + m) * width + kk],
                                 out[(2 * M + m) * width + kk]};
        if (kk >= K) {
          EXPECT_EQ(got[0] | got[1] | got[2], 0) << "padding column " << kk << " of row " << m;
          continue;
        }
        const float v = x[m * K + (gather ? perm[kk] : kk)];
        uint16_t want[3];
        split_bf16x3(v, want);
        EXPECT_EQ(got[0], want[0]) << m << "," << kk;
        EXPECT_EQ(got[1], want[1]) << m << "," << kk;
        EXPECT_EQ(got[2], want[2]) << m << "," << kk;
        EXPECT_EQ(sum_of(got), static_cast<double>(v));
      }
  }
  std::vector<uint16_t> out(static_cast<size_t>(3 * M * width));
  test::expect_error([&] { qgemm_split_x3_ref(x.data(), M, K, nullptr, K - 1, out.data()); },
                     {"qgemm_split_x3_ref", "width=12", "width >= K"});
  perm[4] = static_cast<int32_t>(K);
  test::expect_error([&] { qgemm_split_x3_ref(x.data(), M, K, perm.data(), width, out.data()); },
                     {"qgemm_split_x3_ref", "perm[4]=13", "outside [0, 13)"});
}

// The GPU path's arithmetic on the CPU (one split, no permutation, no padding: the GPU tests cover those): the 3M
// piece rows through the bf16 product, then per output ((0 + h) + m) + l
// in fp32, the reduction's order for one split. Against the fp32 product of x: within the summation-order
// tolerance; x rounded to bf16 instead misses by far more (the test would see a dropped or misplaced piece).
TEST(QgemmSplitX3, TheRowBlocksSumToTheFp32Product) {
  struct Case {
    const char* name;
    Q4Layout q;
  };
  const int64_t M = 3, K = 896, N = 136;
  const std::vector<Case> cases = {
      {"gptq", q4_from_int_linear(q4_synthetic_int_linear(IntLayout::GptqV1, K, N, 128, false, 3))},
      {"awq", q4_from_int_linear(q4_synthetic_int_linear(IntLayout::AwqGemm, K, N, 64, false, 4))},
      {"nf4-dq", q4_from_nf4(q4_synthetic_nf4(N, K, false, 64, true, 5), N, K)}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::vector<float> W = q4_unpack(c.q.view());
    Rng rng(40);
    std::vector<float> x(M * K);
    for (float& v : x) v = rng.uniform(-1.0f, 1.0f);
    std::vector<uint16_t> pieces(static_cast<size_t>(3 * M * K));
    qgemm_split_x3_ref(x.data(), M, K, nullptr, K, pieces.data());
    std::vector<float> y3(3 * M * N), want(M * N), rounded(M * N);
    qgemm_int4_ref(c.q.view(), pieces.data(), DType::BF16, 3 * M, y3.data());
    qgemm_int4_ref(c.q.view(), x.data(), DType::F32, M, want.data());
    std::vector<uint16_t> xb(x.size());
    for (size_t i = 0; i < x.size(); ++i) xb[i] = f32_to_bf16(x[i]);
    qgemm_int4_ref(c.q.view(), xb.data(), DType::BF16, M, rounded.data());
    double worst = 0, worst_rounded = 0;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        float y = 0.0f;
        for (int p = 0; p < 3; ++p) y += y3[(p * M + m) * N + n];
        double abs_sum = 0;
        for (int64_t k = 0; k < K; ++k) abs_sum += std::fabs(static_cast<double>(x[m * K + k]) * W[n * K + k]);
        const double tol = kQgemmSumTol * kU * std::sqrt(static_cast<double>(K)) * abs_sum;
        worst = std::max(worst, std::fabs(static_cast<double>(y) - want[m * N + n]) / tol);
        const double miss = std::fabs(static_cast<double>(rounded[m * N + n]) - want[m * N + n]);
        worst_rounded = std::max(worst_rounded, miss / tol);
      }
    std::printf("%s: worst |Δ| / tolerance: pieces %.3f, x rounded to bf16 %.1f\n", c.name, worst, worst_rounded);
    EXPECT_LE(worst, 1.0) << "the pieces' product is outside the fp32 summation-order tolerance";
    // Measured: pieces 0.013-0.015, rounded 15-18 (2026-12-05).
    EXPECT_GT(worst_rounded, 5.0) << "x rounded to bf16 stays within 5x the tolerance: the test cannot tell";
  }
}

// QWENQ_DECODE_MMA_F32=1 (kernels/qgemm_paths.cpp): opt-in, and only with the tensor-core decode product on; the
// device line names it.
TEST(QgemmSplitX3, TheSwitchIsOptInAndNeedsTheDecodeProduct) {
  const test::ScopedEnv wgmma("QWENQ_WGMMA", nullptr), mma("QWENQ_DECODE_MMA", nullptr);
  {
    const test::ScopedEnv f32("QWENQ_DECODE_MMA_F32", nullptr);
    EXPECT_FALSE(qgemm_decode_mma_f32_enabled());
    EXPECT_EQ(choose_device("cpu").description, "device: cpu (requested)");
  }
  const test::ScopedEnv f32("QWENQ_DECODE_MMA_F32", "1");
  EXPECT_TRUE(qgemm_decode_mma_f32_enabled());
  EXPECT_EQ(choose_device("cpu").description,
            "device: cpu (requested); QWENQ_DECODE_MMA_F32=1 has no effect on the CPU");
  const DeviceChoice a = choose_device("auto");
  if (a.device == Device::Cuda) {
    EXPECT_NE(a.description.find("QWENQ_DECODE_MMA_F32=1: the exact 4-bit decode product on tensor cores"),
              std::string::npos)
        << a.description;
  }
  {
    const test::ScopedEnv off("QWENQ_DECODE_MMA", "0");
    EXPECT_FALSE(qgemm_decode_mma_f32_enabled()) << "the F32 split needs the tensor-core decode product";
  }
  const test::ScopedEnv other("QWENQ_DECODE_MMA_F32", "yes");  // not 0 or 1: the default, off
  EXPECT_FALSE(qgemm_decode_mma_f32_enabled());
}

}  // namespace
}  // namespace qwenq
