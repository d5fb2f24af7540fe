// kernels/rope_table: each rope type's fp32 table against the formulas re-derived here in double (the YaRN paper's
// ramp between interpolated and extrapolated frequencies, Llama 3.1's wavelength bands), the band edges of real
// configurations worked out by hand, the attention factor, and the refusals. That the fp32 operation order is
// transformers' own is checked end to end by tests/oracle/test_rope_scaling_oracle.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/rope_table.h"
#include "tests/support/test_errors.h"

namespace qwenq {
namespace {

// The fp32 table against the double formula: a handful of fp32 roundings (powf within 1 ulp, reciprocal, the
// products and the sum of the yarn blend, llama3's smoothing), each at most 2^-24 relative: 8 ulps of headroom.
constexpr double kTableRelTol = 1e-6;
constexpr double kPi = 3.14159265358979323846;

#define EXPECT_ERROR_CONTAINS(stmt, text) test::expect_error([&] { stmt; }, text)

double default_f64(double theta, int64_t i, int64_t D) { return std::pow(theta, -2.0 * i / D); }

// YaRN (Peng et al. 2023, "dynamic NTK-by-parts"): frequencies that turn fewer than beta_slow times over the
// original context are interpolated (divided by the factor), more than beta_fast times kept, a linear ramp over
// the dimension index in between; the index of r turns is d(r) = D·ln(L / (2π r)) / (2 ln θ).
std::vector<double> yarn_f64(const RopeSpec& s, int64_t D) {
  const auto d = [&](double r) {
    return D * std::log(s.original_max_position_embeddings / (2 * kPi * r)) / (2 * std::log(s.theta));
  };
  const double low = std::max(std::floor(d(s.beta_fast)), 0.0);
  const double high = std::min(std::ceil(d(s.beta_slow)), static_cast<double>(D - 1));
  const double width = high > low ? high - low : 0.001;
  std::vector<double> out;
  for (int64_t i = 0; i < D / 2; ++i) {
    const double ramp = std::clamp((i - low) / width, 0.0, 1.0);  // 0: extrapolate (keep), 1: interpolate
    const double keep = default_f64(s.theta, i, D);
    out.push_back(keep / s.factor * ramp + keep * (1 - ramp));
  }
  return out;
}

// Llama 3.1: wavelength λ = 2π/f; λ < L/high_freq_factor kept, λ > L/low_freq_factor divided by the factor, and in
// between a blend whose weight on the kept frequency grows linearly in L/λ from low_freq_factor to high_freq_factor.
std::vector<double> llama3_f64(const RopeSpec& s, int64_t D) {
  const double L = static_cast<double>(s.original_max_position_embeddings);
  std::vector<double> out;
  for (int64_t i = 0; i < D / 2; ++i) {
    const double f = default_f64(s.theta, i, D), wavelen = 2 * kPi / f;
    if (wavelen < L / s.high_freq_factor) {
      out.push_back(f);
    } else if (wavelen > L / s.low_freq_factor) {
      out.push_back(f / s.factor);
    } else {
      const double w = (L / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      out.push_back((1 - w) * f / s.factor + w * f);
    }
  }
  return out;
}

void expect_table_near(const std::vector<float>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_NEAR(got[i], want[i], kTableRelTol * want[i]) << "inv_freq[" << i << "]";
}

RopeSpec yarn_spec(double theta, double factor, int64_t context) {
  RopeSpec s = rope_spec_default(theta);
  s.type = RopeType::Yarn;
  s.factor = factor;
  s.original_max_position_embeddings = context;
  s.attention_factor = yarn_default_attention_factor(factor, 0, 0);
  return s;
}

RopeSpec llama3_spec(double theta, double factor, int64_t context) {
  RopeSpec s = rope_spec_default(theta);
  s.type = RopeType::Llama3;
  s.factor = factor;
  s.original_max_position_embeddings = context;
  return s;
}

TEST(RopeTable, DefaultAndLinearMatchTheFormula) {
  for (double theta : {10000.0, 500000.0, 1e6})
    for (int64_t D : {2, 8, 64, 128}) {
      SCOPED_TRACE(testing::Message() << "theta=" << theta << " D=" << D);
      std::vector<double> want;
      for (int64_t i = 0; i < D / 2; ++i) want.push_back(default_f64(theta, i, D));
      const RopeTable t = rope_table(rope_spec_default(theta), D);
      expect_table_near(t.inv_freq, want);
      EXPECT_EQ(t.attention_scaling, 1.f);
      RopeSpec linear = rope_spec_default(theta);
      linear.type = RopeType::Linear;
      linear.factor = 4;
      for (double& w : want) w /= 4;
      const RopeTable l = rope_table(linear, D);
      expect_table_near(l.inv_freq, want);
      EXPECT_EQ(l.attention_scaling, 1.f);
    }
}

TEST(RopeTable, YarnMatchesTheFormula) {
  struct Case {
    double theta, factor;
    int64_t context, D;
    double beta_fast, beta_slow, attention;
  };
  // Qwen2.5/Qwen3 (θ 1e6, 32K, D 128, factor 4), small contexts whose ramp covers most of a small head, non-default
  // betas, an explicit attention factor, a factor below 1 (no attention scaling).
  for (const Case& c : {Case{1e6, 4, 32768, 128, 32, 1, 0}, Case{1e6, 4, 32768, 64, 32, 1, 0},
                        Case{100, 4, 32, 32, 32, 1, 0}, Case{100, 2, 32, 32, 2, 1, 0},
                        Case{10000, 8, 4096, 128, 16, 2, 1.5}, Case{1e6, 0.5, 1024, 16, 32, 1, 0}}) {
    SCOPED_TRACE(testing::Message() << "theta=" << c.theta << " factor=" << c.factor << " L=" << c.context
                                    << " D=" << c.D);
    RopeSpec s = yarn_spec(c.theta, c.factor, c.context);
    s.beta_fast = c.beta_fast;
    s.beta_slow = c.beta_slow;
    if (c.attention > 0) s.attention_factor = c.attention;
    const RopeTable t = rope_table(s, c.D);
    expect_table_near(t.inv_freq, yarn_f64(s, c.D));
    const double want_scale = c.attention > 0 ? c.attention : c.factor > 1 ? 0.1 * std::log(c.factor) + 1 : 1.0;
    EXPECT_EQ(t.attention_scaling, static_cast<float>(want_scale));
  }
}

TEST(RopeTable, YarnBandEdgesOfQwen7B) {
  // θ 1e6, D 128, L 32768: d(32) = 128·ln(32768/(64π)) / (2 ln 1e6) = 23.6 -> low 23; d(1) = 128·ln(32768/(2π))
  // / (2 ln 1e6) = 39.65 -> high 40. Below low the frequencies are kept bit for bit, from high on they are exactly
  // 1 / (4·θ^(2i/D)).
  const RopeTable yarn = rope_table(yarn_spec(1e6, 4, 32768), 128);
  const RopeTable plain = rope_table(rope_spec_default(1e6), 128);
  for (int64_t i = 0; i < 64; ++i) {
    const float pos_freq = std::pow(1e6f, static_cast<float>(2 * i) / 128.f);
    if (i <= 23) {
      EXPECT_EQ(yarn.inv_freq[i], plain.inv_freq[i]) << i;
    }
    if (i >= 40) {
      EXPECT_EQ(yarn.inv_freq[i], 1.0f / (4.0f * pos_freq)) << i;
    }
    if (i > 23 && i < 40) {
      EXPECT_LT(yarn.inv_freq[i], plain.inv_freq[i]) << i;
      EXPECT_GT(yarn.inv_freq[i], plain.inv_freq[i] / 4) << i;
    }
  }
  EXPECT_FLOAT_EQ(yarn.attention_scaling, 1.1386294f);  // 0.1·ln 4 + 1
}

TEST(RopeTable, YarnZeroWidthRamp) {
  // L = 4 < 2π: d(1) < 0, so low = high = 0 and transformers widens the ramp to 0.001: only i = 0 is kept.
  const RopeSpec s = yarn_spec(10000, 4, 4);
  const RopeTable t = rope_table(s, 16);
  const RopeTable plain = rope_table(rope_spec_default(10000), 16);
  EXPECT_EQ(t.inv_freq[0], plain.inv_freq[0]);
  for (int64_t i = 1; i < 8; ++i) EXPECT_NEAR(t.inv_freq[i], plain.inv_freq[i] / 4, kTableRelTol * plain.inv_freq[i]) << i;
  expect_table_near(t.inv_freq, yarn_f64(s, 16));
}

TEST(RopeTable, Llama3MatchesTheFormula) {
  for (double theta : {10000.0, 500000.0})
    for (int64_t D : {16, 64, 128})
      for (int64_t context : {64, 8192}) {
        SCOPED_TRACE(testing::Message() << "theta=" << theta << " D=" << D << " L=" << context);
        RopeSpec s = llama3_spec(theta, 8, context);
        expect_table_near(rope_table(s, D).inv_freq, llama3_f64(s, D));
        s.low_freq_factor = 2;
        s.high_freq_factor = 3;
        expect_table_near(rope_table(s, D).inv_freq, llama3_f64(s, D));
        EXPECT_EQ(rope_table(s, D).attention_scaling, 1.f);
      }
}

TEST(RopeTable, Llama3BandsOfLlama31) {
  // Llama 3.1 8B: θ 5e5, D 128, L 8192, factor 8, bands 1/4: λ_i = 2π·θ^(i/64) < 2048 for i <= 28 (kept),
  // > 8192 for i >= 35 (divided by 8), smoothed for 29..34.
  const RopeTable t = rope_table(llama3_spec(5e5, 8, 8192), 128);
  const RopeTable plain = rope_table(rope_spec_default(5e5), 128);
  for (int64_t i = 0; i < 64; ++i) {
    if (i <= 28) {
      EXPECT_EQ(t.inv_freq[i], plain.inv_freq[i]) << i;
    }
    if (i >= 35) {
      EXPECT_EQ(t.inv_freq[i], plain.inv_freq[i] / 8.0f) << i;
    }
    if (i > 28 && i < 35) {
      EXPECT_LT(t.inv_freq[i], plain.inv_freq[i]) << i;
      EXPECT_GT(t.inv_freq[i], plain.inv_freq[i] / 8) << i;
    }
  }
}

TEST(RopeTable, YarnDefaultAttentionFactor) {
  EXPECT_DOUBLE_EQ(yarn_default_attention_factor(4, 0, 0), 0.1 * std::log(4.0) + 1);
  EXPECT_DOUBLE_EQ(yarn_default_attention_factor(1, 0, 0), 1.0);
  EXPECT_DOUBLE_EQ(yarn_default_attention_factor(0.5, 0, 0), 1.0);
  EXPECT_DOUBLE_EQ(yarn_default_attention_factor(40, 1, 1), 1.0);  // DeepSeek-V3's mscale = mscale_all_dim
  EXPECT_DOUBLE_EQ(yarn_default_attention_factor(40, 2, 1), (0.2 * std::log(40.0) + 1) / (0.1 * std::log(40.0) + 1));
  EXPECT_DOUBLE_EQ(yarn_default_attention_factor(40, 2, 0), 0.1 * std::log(40.0) + 1);  // both needed
}

TEST(RopeTable, Refusals) {
  EXPECT_ERROR_CONTAINS(rope_table(rope_spec_default(1e4), 7, "t"), "t: head dim D=7 must be even");
  EXPECT_ERROR_CONTAINS(rope_table(rope_spec_default(-1), 8, "t"), "t: rope theta must be > 0, got -1");
  RopeSpec linear = rope_spec_default(1e4);
  linear.type = RopeType::Linear;
  linear.factor = 0;
  EXPECT_ERROR_CONTAINS(rope_table(linear, 8, "t"), "t: rope_scaling linear factor must be > 0, got 0");
  RopeSpec yarn = yarn_spec(1e4, 4, 0);
  EXPECT_ERROR_CONTAINS(rope_table(yarn, 8, "t"), "t: rope_scaling yarn needs original_max_position_embeddings > 0");
  yarn = yarn_spec(1e4, 4, 64);
  yarn.attention_factor = 0;
  EXPECT_ERROR_CONTAINS(rope_table(yarn, 8, "t"), "t: rope_scaling yarn attention_factor must be > 0, got 0");
  yarn = yarn_spec(1e4, 4, 64);
  yarn.beta_slow = -1;
  EXPECT_ERROR_CONTAINS(rope_table(yarn, 8, "t"), "t: rope_scaling yarn beta_fast and beta_slow must be > 0");
  RopeSpec llama3 = llama3_spec(5e5, 8, 8192);
  llama3.high_freq_factor = 1;
  EXPECT_ERROR_CONTAINS(rope_table(llama3, 8, "t"), "t: rope_scaling llama3 needs 0 < low_freq_factor < high_freq_factor");
  linear.factor = 2;
  linear.attention_factor = 1.5;
  EXPECT_ERROR_CONTAINS(rope_table(linear, 8, "t"), "t: rope_scaling linear has no attention_factor, got 1.5");
}

}  // namespace
}  // namespace qwenq
