// The CPU twins of quant/quantize_step.h: the padded fp32 conversion against core's to_f32, RTN into buffers
// against find_grid + quantize_rtn (and a hand-computed group), the first NF4/FP4 level against nf4_quantize and
// against the code books element by element, the non-finite and argument refusals; all of it the same bytes (and
// the same first non-finite element named) at 1, 2 and 4 threads on shapes of several parallel chunks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "quant/format/nf4_pack.h"
#include "quant/grid.h"
#include "quant/nf4.h"
#include "quant/quantize_step.h"
#include "tests/support/quantize_step_cases.h"
#include "tests/support/scoped_threads.h"
#include "tests/support/test_errors.h"

namespace qwenq {
namespace {

using test::error_of;

constexpr uint64_t kSeed = 20261130;

uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

TEST(QuantizeStepRef, WeightToF32IsToF32PaddedWithPositiveZeros) {
  const int64_t N0 = 5, K0 = 7, N = 8, K = 12;
  Rng rng(kSeed);
  std::vector<uint16_t> h16(N0 * K0);
  for (auto& h : h16) h = static_cast<uint16_t>(rng.next_u64());  // every pattern: subnormals, inf, NaN payloads
  h16[0] = 0x0001;                                                  // the smallest f16 subnormal
  h16[1] = 0x8000;                                                  // -0
  std::vector<float> f32(N0 * K0);
  for (auto& f : f32) f = static_cast<float>(rng.normal());
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    const void* src = dt == DType::F32 ? static_cast<const void*>(f32.data()) : h16.data();
    std::vector<float> W(N * K, 1.0f), expect(N0 * K0);
    weight_to_f32_ref(dt, src, N0, K0, N, K, W.data());
    to_f32(dt, src, expect.data(), expect.size());
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k)
        EXPECT_EQ(bits_of(W[n * K + k]), n < N0 && k < K0 ? bits_of(expect[n * K0 + k]) : 0u)
            << dtype_name(dt) << " [" << n << ", " << k << "]";
  }
  EXPECT_EQ(bits_of([&] { float w[1]; weight_to_f32_ref(DType::F16, h16.data(), 1, 1, 1, 1, w); return w[0]; }()),
            bits_of(std::ldexp(1.0f, -24)));
}

TEST(QuantizeStepRef, WeightToF32Refusals) {
  float W[4];
  const uint16_t h[4] = {};
  test::expect_error([&] { weight_to_f32_ref(DType::I32, h, 1, 1, 1, 1, W); }, {"weight_to_f32", "I32"});
  test::expect_error([&] { weight_to_f32_ref(DType::BF16, h, 2, 2, 1, 4, W); }, {"[2, 2]", "[1, 4]"});
}

// A hand-computed group: W = {-1, 0.5, 0.25, 2}, 4 bits, GPTQ sym: hi = 2, lo = -2, scale = fp16(4/15) =
// 1092·2^-12 = 0.2666015625, zero 8; w/scale = -3.7509, 1.8755, 0.9377, 7.5018 -> -4, 2, 1, 8 -> codes 4, 10, 9, 15.
TEST(QuantizeStepRef, RtnOfAHandComputedGroup) {
  const float W[4] = {-1.f, 0.5f, 0.25f, 2.f};
  float scale;
  uint8_t zero, codes[4];
  rtn_quantize_ref(W, 1, 4, 4, 4, true, GridRule::Gptq, &scale, &zero, codes);
  EXPECT_EQ(scale, 0.2666015625f);
  EXPECT_EQ(zero, 8);
  const uint8_t expect[4] = {4, 10, 9, 15};
  for (int k = 0; k < 4; ++k) EXPECT_EQ(codes[k], expect[k]) << k;
}

// GPTQ-rule asym on [0, 1e-9]: (hi - lo)/15 rounds to fp16 zero, so the 1e-5 floor replaces it and -lo/0 = NaN
// becomes zero point 0 (grid.cpp's guarded cast).
TEST(QuantizeStepRef, RtnOfAnFp16UnderflowingPositiveGroup) {
  const float W[4] = {0.f, 1e-9f, 0.f, 4e-10f};
  float scale;
  uint8_t zero, codes[4];
  rtn_quantize_ref(W, 1, 4, 4, -1, false, GridRule::Gptq, &scale, &zero, codes);
  EXPECT_EQ(scale, f16_to_f32(f32_to_f16(1e-5f)));
  EXPECT_EQ(zero, 0);
  for (int k = 0; k < 4; ++k) EXPECT_EQ(codes[k], 0) << k;
}

TEST(QuantizeStepRef, RtnEqualsFindGridAndQuantizeRtn) {
  struct Case {
    int64_t N, K;
    int bits;
    int64_t group;
    bool sym;
    GridRule rule;
  };
  const Case cases[] = {{9, 64, 4, 32, true, GridRule::Gptq},  {13, 100, 3, 32, false, GridRule::Gptq},
                        {8, 48, 2, -1, false, GridRule::Gptq}, {11, 40, 8, 16, true, GridRule::Gptq},
                        {10, 96, 4, 32, false, GridRule::Awq}, {12, 70, 4, 64, true, GridRule::Awq},
                        {1, 128, 4, 128, true, GridRule::Gptq}};
  for (const Case& c : cases) {
    const std::vector<float> W = test::awkward_weights(c.N, c.K, kSeed + c.K);
    const GroupGrid g = find_grid(W.data(), c.N, c.K, c.bits, c.group, c.sym, c.rule);
    const std::vector<uint8_t> expect = quantize_rtn(W.data(), g);
    std::vector<float> scale(g.scale.size());
    std::vector<uint8_t> zero(g.zero.size()), codes(c.N * c.K);
    rtn_quantize_ref(W.data(), c.N, c.K, c.bits, c.group, c.sym, c.rule, scale.data(), zero.data(), codes.data());
    const std::string what = "N=" + std::to_string(c.N) + " K=" + std::to_string(c.K) + " bits=" +
                             std::to_string(c.bits) + " G=" + std::to_string(c.group);
    EXPECT_EQ(std::memcmp(scale.data(), g.scale.data(), scale.size() * 4), 0) << what;
    EXPECT_EQ(zero, g.zero) << what;
    EXPECT_EQ(codes, expect) << what;
    // Past the awkward rows, each code reconstructs its weight within half a step, plus what the fp16 rounding of
    // the scale (2^-11 relative, times up to maxq steps) moves the clamped ends of the range.
    for (int64_t n = 8; n < c.N; ++n)
      for (int64_t k = 0; k < c.K; ++k) {
        const int64_t gi = k / g.group * c.N + n;
        const float w = W[n * c.K + k], s = scale[gi];
        const float q = dequantize_value(codes[k * c.N + n], s, zero[gi]);
        EXPECT_LE(std::fabs(q - w), s * (0.5f + 0.001f * g.maxq())) << what << " [" << n << ", " << k << "]";
      }
  }
}

TEST(QuantizeStepRef, RtnRefusesNonFiniteWeightsAndBadArguments) {
  std::vector<float> W(3 * 8, 0.1f);
  W[1 * 8 + 2] = NAN;
  std::vector<float> scale(3);
  std::vector<uint8_t> zero(3), codes(24);
  test::expect_error([&] { rtn_quantize_ref(W.data(), 3, 8, 4, 8, true, GridRule::Gptq, scale.data(), zero.data(),
                                            codes.data()); },
                     {"rtn_quantize", "weight [1, 2] is nan", "finite"});
  W[1 * 8 + 2] = 0.f;
  test::expect_error([&] { rtn_quantize_ref(W.data(), 3, 8, 9, 8, true, GridRule::Gptq, scale.data(), zero.data(),
                                            codes.data()); },
                     {"bits must be in 2..8, got 9"});
  test::expect_error([&] { rtn_quantize_ref(W.data(), 3, 8, 4, 0, true, GridRule::Gptq, scale.data(), zero.data(),
                                            codes.data()); },
                     {"group size must be positive or -1, got 0"});
}

// The first level against nf4_quantize (whose file layout the bnb oracle tests pin) and against the code books
// applied by hand: n odd, a partial last block, a zero block, a subnormal absmax (the division fallback).
TEST(QuantizeStepRef, Nf4BlocksAgreeWithNf4QuantizeAndTheCodeBooks) {
  for (bool fp4 : {false, true}) {
    for (int64_t B : {32, 64, 256}) {
      const int64_t n = 8 * 97 + 3 * B + 5;  // awkward rows of 97, a partial last block, odd
      std::vector<float> w = test::awkward_weights(8, 97, kSeed + B);
      w.resize(n);
      Rng rng(kSeed + 7);
      for (size_t i = 8 * 97; i < w.size(); ++i) w[i] = static_cast<float>(rng.normal()) * 0.05f;
      for (int64_t i = 8 * 97; i < 8 * 97 + B && i < n; ++i) w[i] = 0.f;  // a zero (aligned?) stretch
      const int64_t nb = (n + B - 1) / B;
      std::vector<uint8_t> packed(nf4_packed_bytes(n));
      std::vector<float> absmax(nb);
      nf4_quantize_blocks_ref(w.data(), n, B, fp4, packed.data(), absmax.data());
      Nf4Options o;
      o.fp4 = fp4;
      o.blocksize = B;
      const Nf4Tensor t = nf4_quantize(w.data(), n, o);
      EXPECT_EQ(packed, t.packed) << "fp4=" << fp4 << " B=" << B;
      EXPECT_EQ(std::memcmp(absmax.data(), t.absmax.data(), nb * 4), 0) << "fp4=" << fp4 << " B=" << B;
      EXPECT_EQ(packed.back() & 0x0F, 0) << "odd n pads the last low nibble with 0";
      std::vector<uint8_t> codes(n);
      nf4_unpack(packed.data(), n, codes.data());
      for (int64_t i = 0; i < n; ++i) {
        const float a = absmax[i / B];
        float x = std::isfinite(1.0f / a) ? w[i] * (1.0f / a) : w[i] / a;
        x = std::min(1.0f, std::max(-1.0f, x));
        const uint8_t expect = a == 0.f ? (fp4 ? kFp4ZeroCode : kNf4ZeroCode) : fp4 ? fp4_code_of(x) : nf4_code_of(x);
        ASSERT_EQ(codes[i], expect) << "fp4=" << fp4 << " B=" << B << " i=" << i;
      }
    }
  }
}

TEST(QuantizeStepRef, Nf4BlocksRefuseNonFiniteWeightsAndBadBlocks) {
  std::vector<float> w(64, 0.1f);
  w[5] = INFINITY;
  std::vector<uint8_t> packed(32);
  std::vector<float> absmax(2);
  test::expect_error([&] { nf4_quantize_blocks_ref(w.data(), 64, 32, false, packed.data(), absmax.data()); },
                     {"nf4_quantize: weight 5 is inf", "finite"});
  w[5] = 0.f;
  test::expect_error([&] { nf4_quantize_blocks_ref(w.data(), 64, 48, false, packed.data(), absmax.data()); },
                     {"blocksize 48 is not a power of two"});
}

// The real 0.5B down_proj shape [896, 4864] stored as bf16 and padded to [904, 4872]: conversion, RTN and the first
// NF4 level at 1, 2 and 4 threads give the same bytes; NaNs in two chunks are refused naming the first one.
TEST(QuantizeStepRef, ResultsAndRefusalsDoNotDependOnTheThreadCount) {
  const int64_t N0 = 896, K0 = 4864, N = 904, K = 4872;
  Rng rng(kSeed + 21);
  std::vector<uint16_t> stored(N0 * K0);
  for (auto& v : stored) v = f32_to_bf16(static_cast<float>(rng.normal()) * 0.02f);
  std::vector<std::vector<float>> W;
  std::vector<std::vector<uint8_t>> codes, zeros, packed;
  std::vector<std::vector<float>> scales, absmax;
  for (int threads : {1, 2, 4}) {
    test::ScopedThreads scoped(threads);
    W.emplace_back(N * K, -1.f);
    weight_to_f32_ref(DType::BF16, stored.data(), N0, K0, N, K, W.back().data());
    const int64_t cells = (K + 127) / 128 * N;
    scales.emplace_back(cells);
    zeros.emplace_back(cells);
    codes.emplace_back(N * K);
    rtn_quantize_ref(W.back().data(), N, K, 4, 128, false, GridRule::Gptq, scales.back().data(), zeros.back().data(),
                     codes.back().data());
    packed.emplace_back(nf4_packed_bytes(N * K));
    absmax.emplace_back((N * K + 63) / 64);
    nf4_quantize_blocks_ref(W.back().data(), N * K, 64, false, packed.back().data(), absmax.back().data());
  }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      ASSERT_EQ(bits_of(W[0][n * K + k]), n < N0 && k < K0 ? uint32_t{stored[n * K0 + k]} << 16 : 0u)
          << "[" << n << ", " << k << "]";
  for (size_t r = 1; r < W.size(); ++r) {
    EXPECT_EQ(std::memcmp(W[r].data(), W[0].data(), W[0].size() * 4), 0) << "run " << r;
    EXPECT_EQ(std::memcmp(scales[r].data(), scales[0].data(), scales[0].size() * 4), 0) << "run " << r;
    EXPECT_EQ(zeros[r], zeros[0]) << "run " << r;
    EXPECT_EQ(codes[r], codes[0]) << "run " << r;
    EXPECT_EQ(packed[r], packed[0]) << "run " << r;
    EXPECT_EQ(std::memcmp(absmax[r].data(), absmax[0].data(), absmax[0].size() * 4), 0) << "run " << r;
  }
  std::vector<float> bad = W[0];
  bad[800 * K + 4000] = INFINITY;
  bad[300 * K + 17] = NAN;
  for (int threads : {1, 4}) {
    test::ScopedThreads scoped(threads);
    test::expect_error([&] { rtn_quantize_ref(bad.data(), N, K, 4, 128, true, GridRule::Gptq, scales[0].data(),
                                              zeros[0].data(), codes[0].data()); },
                       {"rtn_quantize: weight [300, 17] is nan"});
    test::expect_error([&] {
                         nf4_quantize_blocks_ref(bad.data(), N * K, 64, true, packed[0].data(), absmax[0].data());
                       },
                       {"nf4_quantize: weight " + std::to_string(300 * K + 17) + " is nan"});
  }
}

}  // namespace
}  // namespace qwenq
