// The int8 products of GGUF weights (quant/ggml_dot_int8.h) against their oracles:
//   - Q8_0 activations: the same bytes as quantize_ggml_row(Q8_0) (ggml's quantize_row_q8_0_ref, checked against
//     gguf-py by tests/oracle/test_gguf_oracle.py);
//   - Q8_K activations: ggml's quantize_row_q8_K_ref's properties: the x of largest |x| gets code −127, every code
//     within half a step of x / d and in [−127, 127], the 16-value sums, zero blocks;
//   - the dot products, AVX-512 VNNI, AVX2 (forced, on any CPU that has it) and portable: Σ_i ŵ_i · (d · a_i) in double, with ŵ from dequantize_ggml_row
//     (the exact reader) and the activations as quantized, within kDotRelTol of Σ|ŵ_i · d · a_i|, over random
//     bytes (every code and scale pattern), weights quantized from random floats, saturated blocks (the int32 sums
//     at their largest), Qwen2.5 row lengths and odd block counts;
//   - the row-parallel product: each y[m, n] equal (bits) to the single dot, for M across the 64-row passes, with
//     Llama's interleaved q/k rows;
//   - against the exact product (fp32 x times ŵ): the activations' 8-bit rounding, within kInt8RelErr;
//   - a NaN or inf activation: NaN out for its row, the other rows untouched.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "quant/ggml_blocks.h"
#include "quant/ggml_dot_int8.h"
#include "quant/packed_matvec.h"

namespace qwenq {
namespace {

constexpr uint64_t kSeed = 9173;
// The int8 sums are exact; what is left is fp32 rounding of one term per block and their sum.
constexpr double kDotRelTol = 2e-6;
// Relative L2 error of the int8 product against the exact one on normal activations: 8-bit codes per block of 32 or
// 256 values (measured ~0.5-0.9 %).
constexpr double kInt8RelErr = 0.02;

const GgmlType kTypes[] = {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1,
                           GgmlType::IQ4_NL, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K,
                           GgmlType::Q6_K, GgmlType::IQ4_XS};

std::string type_name(GgmlType t) { return ggml_type_info(static_cast<uint32_t>(t))->name; }

std::vector<float> normals(Rng& rng, int64_t n, float scale = 1.0f) {
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = scale * static_cast<float>(rng.normal());
  return x;
}

void put_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

// A row of K values of type t from random bytes, with finite fp16 scales (and Q4_1/Q5_1 mins) of ~0.01 (every code
// and sub-block scale pattern; Q6_K's int8 scales of either sign). saturate: every code at its largest.
std::vector<uint8_t> random_row(GgmlType t, int64_t K, Rng& rng, bool saturate = false) {
  const GgmlTypeInfo* info = ggml_type_info(static_cast<uint32_t>(t));
  std::vector<uint8_t> row(static_cast<size_t>(ggml_row_bytes(t, K)));
  for (auto& b : row) b = saturate ? 0xFF : static_cast<uint8_t>(rng.next_u64());
  for (int64_t b = 0; b < K / info->block; ++b) {
    uint8_t* blk = row.data() + b * info->bytes;
    const float d = rng.uniform(1e-3f, 1e-2f), dmin = rng.uniform(1e-3f, 1e-2f);
    if (t == GgmlType::Q6_K) {
      put_f16(blk + 208, d);
      if (saturate) std::memset(blk + 192, 127, 16);
    } else if (t == GgmlType::Q2_K) {
      put_f16(blk + 80, d);
      put_f16(blk + 82, dmin);
    } else if (t == GgmlType::Q3_K) {
      put_f16(blk + 108, d);
    } else {
      put_f16(blk, d);
      if (t == GgmlType::Q4_K || t == GgmlType::Q5_K || t == GgmlType::Q4_1 || t == GgmlType::Q5_1)
        put_f16(blk + 2, dmin);  // dmin, or the block's m
      if (saturate && t == GgmlType::Q8_0) std::memset(blk + 2, 127, 32);
    }
  }
  return row;
}

// Σ ŵ_i · d·a_i and Σ |ŵ_i · d·a_i| in double.
std::pair<double, double> oracle_dot(GgmlType t, const uint8_t* w, const GgmlInt8Rows& a, int64_t m) {
  std::vector<float> what(static_cast<size_t>(a.K));
  dequantize_ggml_row(t, w, a.K, what.data());
  double sum = 0.0, abs_sum = 0.0;
  for (int64_t k = 0; k < a.K; ++k) {
    const double x = static_cast<double>(a.d[static_cast<size_t>(m * (a.K / a.block) + k / a.block)]) *
                     a.q[static_cast<size_t>(m * a.K + k)];
    sum += static_cast<double>(what[static_cast<size_t>(k)]) * x;
    abs_sum += std::fabs(static_cast<double>(what[static_cast<size_t>(k)]) * x);
  }
  return {sum, abs_sum};
}

void expect_dots_match_oracle(GgmlType t, const std::vector<uint8_t>& row, const std::vector<float>& x, int64_t K,
                              const std::string& what) {
  GgmlInt8Rows a;
  quantize_int8_rows(ggml_int8_activation_type(t), x.data(), 1, K, &a);
  const auto [ref, scale] = oracle_dot(t, row.data(), a, 0);
  const double tol = kDotRelTol * scale + 1e-30;
  EXPECT_NEAR(ggml_int8_dot(t, row.data(), a, 0), ref, tol) << what;
  EXPECT_NEAR(ggml_int8_dot_portable(t, row.data(), a, 0), ref, tol) << what << " (portable)";
}

TEST(GgmlInt8, Q8_0ActivationsAreQuantizeGgmlRowsBytes) {
  Rng rng(kSeed);
  const int64_t K = 96;
  std::vector<float> x = normals(rng, 2 * K);
  std::fill(x.begin() + 32, x.begin() + 64, 0.0f);  // a zero block: d = 0, codes 0
  x[100] = 50.0f;                                      // an outlier sets its block's step
  GgmlInt8Rows a;
  quantize_int8_rows(GgmlType::Q8_0, x.data(), 2, K, &a);
  for (int64_t m = 0; m < 2; ++m) {
    std::vector<uint8_t> ref(static_cast<size_t>(ggml_row_bytes(GgmlType::Q8_0, K)));
    quantize_ggml_row(GgmlType::Q8_0, x.data() + m * K, K, ref.data());
    for (int64_t b = 0; b < K / 32; ++b) {
      uint16_t h;
      std::memcpy(&h, ref.data() + 34 * b, 2);
      EXPECT_EQ(a.d[static_cast<size_t>(m * 3 + b)], f16_to_f32(h)) << "row " << m << " block " << b;
      for (int i = 0; i < 32; ++i)
        ASSERT_EQ(a.q[static_cast<size_t>(m * K + 32 * b + i)], static_cast<int8_t>(ref[34 * b + 2 + i]))
            << "row " << m << " value " << 32 * b + i;
    }
  }
  EXPECT_EQ(a.d[1], 0.0f);
}

TEST(GgmlInt8, Q8_KActivationsFollowGgmlsRule) {
  Rng rng(kSeed + 1);
  const int64_t K = 512;
  std::vector<float> x = normals(rng, K);
  std::fill(x.begin() + 256, x.end(), 0.0f);
  x[37] = -4.5f;  // the largest |x| of block 0: iscale = −127/max, so its code is −127 and d = −max/127 > 0
  GgmlInt8Rows a;
  quantize_int8_rows(GgmlType::Q8_K, x.data(), 1, K, &a);
  ASSERT_EQ(a.block, 256);
  EXPECT_FLOAT_EQ(a.d[0], 1.0f / (-127.0f / -4.5f));
  EXPECT_EQ(a.q[37], -127);
  for (int64_t k = 0; k < 256; ++k) {
    EXPECT_LE(std::abs(a.q[static_cast<size_t>(k)]), 127);
    EXPECT_LE(std::fabs(x[static_cast<size_t>(k)] - a.d[0] * a.q[static_cast<size_t>(k)]), 0.5001f * a.d[0]) << k;
  }
  EXPECT_EQ(a.d[1], 0.0f);
  for (int64_t k = 256; k < K; ++k) EXPECT_EQ(a.q[static_cast<size_t>(k)], 0);
  for (int64_t s = 0; s < K / 16; ++s) {
    int sum = 0;
    for (int i = 0; i < 16; ++i) sum += a.q[static_cast<size_t>(16 * s + i)];
    EXPECT_EQ(a.bsums[static_cast<size_t>(s)], sum) << "sum " << s;
  }
  // A positive largest value: its code is −127 too, and d negative (ggml's sign convention).
  std::vector<float> y(256, 0.25f);
  y[3] = 2.0f;
  quantize_int8_rows(GgmlType::Q8_K, y.data(), 1, 256, &a);
  EXPECT_EQ(a.q[3], -127);
  EXPECT_LT(a.d[0], 0.0f);
}

void check_dots_against_oracle() {
  Rng rng(kSeed + 2);
  for (GgmlType t : kTypes) {
    const bool k_quant = ggml_type_info(static_cast<uint32_t>(t))->block == 256;
    // Qwen2.5 row lengths (0.5B hidden 896 is not a multiple of 256: the k-quants skip it) and odd block counts.
    std::vector<int64_t> lengths = k_quant ? std::vector<int64_t>{256, 768, 3584, 4864}
                                           : std::vector<int64_t>{32, 96, 896, 3584, 4864};
    for (int64_t K : lengths) {
      const std::string what = type_name(t) + " K=" + std::to_string(K);
      expect_dots_match_oracle(t, random_row(t, K, rng), normals(rng, K), K, what + " random bytes");
      const std::vector<float> src = normals(rng, K, 0.05f);
      std::vector<uint8_t> quantized(static_cast<size_t>(ggml_row_bytes(t, K)));
      quantize_ggml_row(t, src.data(), K, quantized.data());
      expect_dots_match_oracle(t, quantized, normals(rng, K), K, what + " quantized weights");
      // Saturated: every code and scale at its largest against activations all at ±127.
      expect_dots_match_oracle(t, random_row(t, K, rng, true), std::vector<float>(static_cast<size_t>(K), 3.0f), K,
                               what + " saturated");
    }
  }
}

void check_matvec_is_the_row_dot() {
  Rng rng(kSeed + 3);
  for (GgmlType t : kTypes) {
    const int64_t N = 37, K = 512, D = 8;  // 37 rows, q/k-style interleaving of heads of 8 rows (the last partial)
    std::vector<uint8_t> data;
    for (int64_t n = 0; n < N; ++n) {
      const std::vector<uint8_t> row = random_row(t, K, rng);
      data.insert(data.end(), row.begin(), row.end());
    }
    for (int64_t rope : {int64_t{0}, D}) {
      const GgmlLinear w{t, data.data(), rope ? 32 : N, K, rope};
      for (int64_t M : {1, 3, 70}) {
        const std::vector<float> x = normals(rng, M * K);
        std::vector<float> y(static_cast<size_t>(M * w.N));
        ggml_linear_matvec_int8(w, x.data(), M, y.data());
        GgmlInt8Rows a;
        quantize_int8_rows(ggml_int8_activation_type(t), x.data(), M, K, &a);
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < w.N; ++n)
            ASSERT_EQ(y[static_cast<size_t>(m * w.N + n)],
                      ggml_int8_dot(t, data.data() + w.stored_row(n) * ggml_row_bytes(t, K), a, m))
                << type_name(t) << " M=" << M << " m=" << m << " n=" << n << " rope=" << rope;
      }
    }
  }
}

TEST(GgmlInt8, DotsMatchTheExactWeightsTimesTheQuantizedActivations) { check_dots_against_oracle(); }
TEST(GgmlInt8, MatvecIsTheRowDotForAnyRowCount) { check_matvec_is_the_row_dot(); }

// The AVX2 kernels (the run-time choice of builds without VNNI) on any CPU that has AVX2, in place of the VNNI ones:
// the same oracle and the same bits for any row count.
TEST(GgmlInt8, Avx2KernelsMatchTheOracleAndTheRowDot) {
  if (!ggml_int8_force_avx2(true)) GTEST_SKIP() << "no AVX2/FMA/F16C on this CPU";
  struct Reset {
    ~Reset() { ggml_int8_force_avx2(false); }
  } reset;
  check_dots_against_oracle();
  check_matvec_is_the_row_dot();
}

TEST(GgmlInt8, StaysWithinTheActivationRoundingOfTheExactProduct) {
  Rng rng(kSeed + 4);
  const int64_t N = 64, K = 1024, M = 5;
  for (GgmlType t : kTypes) {
    const std::vector<float> W = normals(rng, N * K, 0.02f);
    const std::vector<uint8_t> data = quantize_ggml(t, W.data(), N, K);
    const GgmlLinear w{t, data.data(), N, K, 0};
    const std::vector<float> x = normals(rng, M * K);
    std::vector<float> exact(static_cast<size_t>(M * N)), approx(exact.size());
    ggml_linear_matvec(w, x.data(), M, exact.data());
    ggml_linear_matvec_int8(w, x.data(), M, approx.data());
    double err = 0.0, norm = 0.0;
    for (size_t i = 0; i < exact.size(); ++i) {
      err += (approx[i] - exact[i]) * static_cast<double>(approx[i] - exact[i]);
      norm += exact[i] * static_cast<double>(exact[i]);
    }
    const double rel = std::sqrt(err / norm);
    EXPECT_LT(rel, kInt8RelErr) << type_name(t);
    EXPECT_GT(rel, 0.0) << type_name(t) << ": the activations were not rounded";
  }
}

// A NaN or an inf in the activations makes the products it enters NaN (the exact product's NaN or inf), not the
// arbitrary codes ggml's float-to-int8 casts would give.
TEST(GgmlInt8, NonFiniteActivationsGiveNaN) {
  Rng rng(kSeed + 5);
  for (GgmlType t : kTypes) {
    const int64_t K = 512;
    const std::vector<uint8_t> row = random_row(t, K, rng);
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
      std::vector<float> x = normals(rng, 2 * K);
      x[K + 300] = bad;  // row 1 only
      GgmlInt8Rows a;
      quantize_int8_rows(ggml_int8_activation_type(t), x.data(), 2, K, &a);
      EXPECT_TRUE(std::isfinite(ggml_int8_dot(t, row.data(), a, 0))) << type_name(t);
      EXPECT_TRUE(std::isnan(ggml_int8_dot(t, row.data(), a, 1))) << type_name(t) << " " << bad;
      EXPECT_TRUE(std::isnan(ggml_int8_dot_portable(t, row.data(), a, 1))) << type_name(t) << " " << bad;
    }
  }
}

TEST(GgmlInt8, RefusesOtherTypesAndShapes) {
  std::vector<uint8_t> data(static_cast<size_t>(ggml_row_bytes(GgmlType::F16, 256)));
  const GgmlLinear w{GgmlType::F16, data.data(), 1, 256, 0};
  std::vector<float> x(256), y(1);
  try {
    ggml_linear_matvec_int8(w, x.data(), 1, y.data());
    FAIL() << "F16 accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("not type 1"), std::string::npos) << e.what();
  }
  for (GgmlType t : kTypes) EXPECT_TRUE(ggml_int8_product_supported(t)) << type_name(t);
  EXPECT_FALSE(ggml_int8_product_supported(GgmlType::BF16));
  GgmlInt8Rows a;
  EXPECT_THROW(quantize_int8_rows(GgmlType::Q8_K, x.data(), 1, 100, &a), std::exception);
}

}  // namespace
}  // namespace qwenq
