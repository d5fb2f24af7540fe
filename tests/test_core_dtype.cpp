// bf16 / fp16 <-> fp32 conversions against independent oracles.
//
// fp16: the CPU's F16C instructions (or the compiler's _Float16) when available, and always a slow reference
// written with double arithmetic (nearbyint rounds ties to even), over all 65,536 halves and a seeded sweep of
// ten million fp32 values aimed at the subnormal, overflow and tie boundaries.
// bf16: hand-made round-to-nearest-even ties, NaN/inf, all 65,536 values, and an integer-only reference.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"

namespace qwenq {
namespace {

float bits_to_f32(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

uint32_t f32_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

bool half_is_nan(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }
bool bf16_is_nan(uint16_t h) { return (h & 0x7f80u) == 0x7f80u && (h & 0x7fu) != 0; }

// ---- slow, obviously-correct references -------------------------------------------------------------------

float ref_f16_to_f32(uint16_t h) {
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  double v;
  if (exp == 0x1f) {
    v = mant ? std::nan("") : INFINITY;
  } else if (exp == 0) {
    v = std::ldexp(static_cast<double>(mant), -24);
  } else {
    v = std::ldexp(1024.0 + mant, exp - 25);
  }
  return static_cast<float>(std::copysign(v, (h & 0x8000) ? -1.0 : 1.0));
}

uint16_t ref_f32_to_f16(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double x = std::fabs(static_cast<double>(f));
  if (std::isnan(f)) return sign | 0x7e00;
  if (x >= 65520.0) return sign | 0x7c00;                // halfway between 65504 and 2^16 rounds to even = inf
  if (x < std::ldexp(1.0, -14)) {                         // subnormal range: units of 2^-24
    const double q = std::nearbyint(std::ldexp(x, 24));  // may round up to 1024 = smallest normal; bits agree
    return sign | static_cast<uint16_t>(q);
  }
  int k;
  std::frexp(x, &k);  // x = m * 2^k, m in [0.5, 1)
  int e = k - 1;      // x in [2^e, 2^(e+1))
  double q = std::nearbyint(std::ldexp(x, 10 - e));  // in [1024, 2048]
  if (q == 2048.0) q = 1024.0, ++e;
  if (e > 15) return sign | 0x7c00;
  return sign | static_cast<uint16_t>(((e + 15) << 10) | (static_cast<int>(q) - 1024));
}

uint16_t ref_f32_to_bf16(uint32_t bits) {
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // any NaN (only NaN-ness is compared)
  uint32_t top = bits >> 16;
  const uint32_t rest = bits & 0xffffu;
  if (rest > 0x8000u || (rest == 0x8000u && (top & 1u))) ++top;
  return static_cast<uint16_t>(top);
}

// ---- hardware / compiler oracles ----------------------------------------------------------------------------

#if defined(__F16C__)
constexpr bool kHaveHw = true;
uint16_t hw_f32_to_f16(float f) { return _cvtss_sh(f, 0); }  // 0 = round to nearest even
float hw_f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }
#elif defined(__aarch64__) || defined(__FLT16_MAX__)
#if defined(__aarch64__)
// ARM's storage type: the conversions are FCVT in the FPCR's rounding mode (nearest even). GCC 12's C++ has no
// _Float16 there (cross-compiled with aarch64-linux-gnu-g++, 2026-12-05).
using HwHalf = __fp16;
#else
using HwHalf = _Float16;
#endif
constexpr bool kHaveHw = true;
uint16_t hw_f32_to_f16(float f) {
  const HwHalf h = static_cast<HwHalf>(f);
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}
float hw_f16_to_f32(uint16_t b) {
  HwHalf h;
  std::memcpy(&h, &b, 2);
  return static_cast<float>(h);
}
#else
constexpr bool kHaveHw = false;
uint16_t hw_f32_to_f16(float f) { return ref_f32_to_f16(f); }
float hw_f16_to_f32(uint16_t h) { return ref_f16_to_f32(h); }
#endif

// Checks one fp32 value against both oracles; returns false (after one failure message) on mismatch.
bool check_f32_to_f16(float f) {
  const uint16_t got = f32_to_f16(f);
  if (std::isnan(f)) {
    EXPECT_TRUE(half_is_nan(got)) << "NaN 0x" << std::hex << f32_bits(f) << " became 0x" << got;
    return half_is_nan(got);
  }
  const uint16_t want = ref_f32_to_f16(f), hw = hw_f32_to_f16(f);
  EXPECT_EQ(want, hw) << "the two oracles disagree on 0x" << std::hex << f32_bits(f);
  EXPECT_EQ(got, want) << "f32_to_f16(0x" << std::hex << f32_bits(f) << " = " << f << ")";
  return got == want && want == hw;
}

TEST(DType, NamesAndSizes) {
  DType t;
  ASSERT_TRUE(dtype_from_name("BF16", &t));
  EXPECT_EQ(t, DType::BF16);
  EXPECT_EQ(dtype_size(t), 2u);
  EXPECT_STREQ(dtype_name(DType::I64), "I64");
  EXPECT_EQ(dtype_size(DType::F64), 8u);
  EXPECT_EQ(dtype_size(DType::BOOL), 1u);
  ASSERT_TRUE(dtype_from_name("F8_E4M3", &t));  // FP8 checkpoints' weights (quant/fp8.h)
  EXPECT_EQ(t, DType::F8_E4M3);
  EXPECT_EQ(dtype_size(t), 1u);
  EXPECT_FALSE(dtype_from_name("F8_E5M2", &t));
  EXPECT_FALSE(dtype_from_name("U16", &t));
  EXPECT_FALSE(dtype_from_name("bf16", &t));
}

TEST(DTypeF16, OracleIsAvailable) {
  if (!kHaveHw) GTEST_SKIP() << "no F16C or _Float16 on this compiler/target; only the double reference ran";
  EXPECT_EQ(hw_f32_to_f16(1.0f), 0x3c00);
}

TEST(DTypeF16, AllHalvesConvertExactlyAndRoundTrip) {
  int failures = 0;
  for (uint32_t i = 0; i < 65536 && failures < 10; ++i) {
    const uint16_t h = static_cast<uint16_t>(i);
    const float f = f16_to_f32(h);
    if (half_is_nan(h)) {
      EXPECT_TRUE(std::isnan(f)) << "half NaN 0x" << std::hex << h;
      EXPECT_TRUE(half_is_nan(f32_to_f16(f))) << "half NaN 0x" << std::hex << h << " lost its NaN-ness";
      failures += !std::isnan(f);
      continue;
    }
    const bool ok = f32_bits(f) == f32_bits(ref_f16_to_f32(h)) && f32_bits(f) == f32_bits(hw_f16_to_f32(h)) &&
                    f32_to_f16(f) == h;
    EXPECT_TRUE(ok) << "half 0x" << std::hex << h << ": f16_to_f32 gave 0x" << f32_bits(f) << ", reference 0x"
                    << f32_bits(ref_f16_to_f32(h)) << ", hardware 0x" << f32_bits(hw_f16_to_f32(h))
                    << ", round trip 0x" << f32_to_f16(f);
    failures += !ok;
  }
}

TEST(DTypeF16, BoundaryValues) {
  const uint32_t boundaries[] = {
      0x00000000, 0x00000001, 0x007fffff, 0x00800000,  // fp32 zero, subnormals, smallest normal
      0x33000000,                                      // 2^-25: tie between 0 and the smallest half subnormal
      0x33400000, 0x33c00000,                          // 1.5 and 3 * 2^-25 (2^-24 units, ties)
      0x387fc000, 0x387fe000, 0x38800000,              // largest half subnormal, tie to smallest normal, 2^-14
      0x3f800000, 0x3f801000, 0x3f803000,              // 1.0 and its ties
      0x477fe000, 0x477fefff, 0x477ff000, 0x47800000,  // 65504, just below 65520, 65520 (-> inf), 65536
      0x7f7fffff, 0x7f800000, 0x7f800001, 0x7fc00000, 0x7fffffff,
  };
  int failures = 0;
  for (uint32_t b : boundaries) {
    for (int d = -16; d <= 16 && failures < 10; ++d) {
      const uint32_t v = b + static_cast<uint32_t>(d);
      failures += !check_f32_to_f16(bits_to_f32(v));
      failures += !check_f32_to_f16(bits_to_f32(v | 0x80000000u));
    }
  }
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);
  EXPECT_EQ(f32_to_f16(65519.996f), 0x7bff);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);
  EXPECT_EQ(f32_to_f16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
}

TEST(DTypeF16, TenMillionSeededValues) {
  Rng rng(20240601);
  int failures = 0;
  const int kCount = 10000000;
  for (int i = 0; i < kCount && failures < 10; ++i) {
    uint32_t bits = static_cast<uint32_t>(rng.next_u64());
    switch (i % 4) {
      case 0:  // any bit pattern
        break;
      case 1:  // exponent within [2^-27, 2^17): below the subnormals up to past overflow
        bits = (bits & 0x807fffffu) | (static_cast<uint32_t>(100 + rng.below(45)) << 23);
        break;
      default: {  // same range with the low k bits a tie pattern or its neighbours (k = 13: normal, >13: subnormal)
        bits = (bits & 0x807fffffu) | (static_cast<uint32_t>(100 + rng.below(45)) << 23);
        const uint32_t k = 13 + static_cast<uint32_t>(rng.below(12));
        const uint32_t low_mask = (1u << k) - 1u;
        const uint32_t tie = 1u << (k - 1);
        const uint32_t pattern[] = {tie, tie - 1, tie + 1};
        bits = (bits & ~low_mask) | pattern[rng.below(3)];
        break;
      }
    }
    failures += !check_f32_to_f16(bits_to_f32(bits));
  }
  EXPECT_EQ(failures, 0);
}

TEST(DTypeBF16, RoundToNearestEvenTies) {
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0x3F808000u)), 0x3F80);  // tie, even stays
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0x3F818000u)), 0x3F82);  // tie, odd rounds up to even
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0x3F808001u)), 0x3F81);  // just above the tie
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0x3F807FFFu)), 0x3F80);  // just below the tie
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0xBF818000u)), 0xBF82);  // sign does not matter
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0x7F7FFFFFu)), 0x7F80);  // FLT_MAX rounds up to inf (as torch does)
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0x00008000u)), 0x0000);  // subnormal tie to even zero
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0x00018000u)), 0x0002);
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
}

TEST(DTypeBF16, NanAndInfinity) {
  EXPECT_EQ(f32_to_bf16(INFINITY), 0x7F80);
  EXPECT_EQ(f32_to_bf16(-INFINITY), 0xFF80);
  // NaNs whose payload sits only in the low 16 bits must not collapse to inf.
  for (uint32_t b : {0x7F800001u, 0x7F80FFFFu, 0x7FC00000u, 0xFF800001u, 0x7FFFFFFFu}) {
    EXPECT_TRUE(bf16_is_nan(f32_to_bf16(bits_to_f32(b)))) << std::hex << b;
  }
  EXPECT_TRUE(std::isnan(bf16_to_f32(0x7FC0)));
  EXPECT_TRUE(std::isinf(bf16_to_f32(0xFF80)));
}

TEST(DTypeBF16, AllValuesRoundTrip) {
  int failures = 0;
  for (uint32_t i = 0; i < 65536 && failures < 10; ++i) {
    const uint16_t h = static_cast<uint16_t>(i);
    const float f = bf16_to_f32(h);
    EXPECT_EQ(f32_bits(f), static_cast<uint32_t>(h) << 16);
    if (bf16_is_nan(h)) {
      failures += !bf16_is_nan(f32_to_bf16(f));
      EXPECT_TRUE(bf16_is_nan(f32_to_bf16(f))) << std::hex << h;
    } else {
      failures += f32_to_bf16(f) != h;
      EXPECT_EQ(f32_to_bf16(f), h) << std::hex << h;
    }
  }
}

TEST(DTypeBF16, SeededSweepMatchesIntegerReference) {
  Rng rng(7);
  int failures = 0;
  for (int i = 0; i < 3000000 && failures < 10; ++i) {
    uint32_t bits = static_cast<uint32_t>(rng.next_u64());
    if (i % 2) bits = (bits & 0xffff0000u) | (0x8000u + static_cast<uint32_t>(rng.below(3)) - 1u);  // near ties
    const uint16_t got = f32_to_bf16(bits_to_f32(bits)), want = ref_f32_to_bf16(bits);
    const bool ok = bf16_is_nan(want) ? bf16_is_nan(got) : got == want;
    EXPECT_TRUE(ok) << "0x" << std::hex << bits << ": got 0x" << got << ", want 0x" << want;
    failures += !ok;
  }
}

TEST(DTypeConvert, BulkHelpersMatchScalarOnes) {
  const std::vector<float> src = {0.0f, -1.5f, 3.14159f, 65504.0f, 1e-6f, -7e4f, 1e30f};
  std::vector<uint16_t> h(src.size()), b(src.size());
  std::vector<float> back(src.size());
  from_f32(DType::F16, src.data(), h.data(), src.size());
  from_f32(DType::BF16, src.data(), b.data(), src.size());
  for (size_t i = 0; i < src.size(); ++i) {
    EXPECT_EQ(h[i], f32_to_f16(src[i]));
    EXPECT_EQ(b[i], f32_to_bf16(src[i]));
  }
  to_f32(DType::BF16, b.data(), back.data(), b.size());
  for (size_t i = 0; i < src.size(); ++i) EXPECT_EQ(f32_bits(back[i]), f32_bits(bf16_to_f32(b[i])));
  to_f32(DType::F32, src.data(), back.data(), src.size());
  EXPECT_EQ(back, src);
  int32_t ints[2] = {1, 2};
  EXPECT_THROW(to_f32(DType::I32, ints, back.data(), 2), Error);
}

}  // namespace
}  // namespace qwenq
