// The int8 products of GPTQ weights (quant/int_dot_int8.h) against their oracles:
//   - the activations: per block of 32, d = max|x| / 127, every code within half a step of x / d and in
//     [−127, 127], stored in the words' order (4-bit: 0 2 4 6 1 3 5 7), the group sums S_g;
//   - the product, AVX-512 VNNI and portable: Σ_k ŵ[n, k] · (d · a_k) in double with ŵ from dequantize_int_linear
//     (the formats' exact reader), within kDotRelTol of Σ|ŵ · d · a|, over random codes, zero points and scales
//     (4- and 8-bit, GPTQ v1 with zero points up to 2^bits, v2, AWQ repacked), saturated words (the int32 sums at
//     their largest, the AVX2 kernel's int16 pair sums at theirs), column tails (an 8-bit half vector), partial
//     last groups, per-channel grids, a real Qwen2.5 shape; the build's kernel, the AVX2 kernel (run on any CPU
//     that has it, whatever the build's target) and the portable twin equal bit for bit, and the same bits at 1 and
//     2 threads and across the 64-row passes;
//   - AWQ repacked to GPTQ v2: the same ŵ, bit for bit;
//   - against the exact product (fp32 x times ŵ): the activations' 8-bit rounding, within kInt8RelErr;
//   - a NaN or inf activation: NaN out for its row, the other rows untouched; unsupported weights refused by name.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "quant/grid.h"
#include "quant/int_checkpoint.h"
#include "quant/int_dot_int8.h"
#include "quant/packed_matvec.h"
#include "support/scoped_threads.h"

namespace qwenq {
namespace {

constexpr uint64_t kSeed = 5821;
// The integer sums are exact; what is left is the fp32 rounding of one term per block and per group.
constexpr double kDotRelTol = 2e-6;
// Relative L2 error of the int8 product against the exact one on normal activations (8-bit codes per block of 32;
// measured ~0.5 %).
constexpr double kInt8RelErr = 0.02;

struct Case {
  const char* name;
  IntLayout layout;
  int bits;
  int64_t N, K, group;  // group -1: one group per column
  int64_t M;
  bool saturate = false;
};

const Case kCases[] = {
    {"qwen2.5-0.5b_up_gptq_v1_g128", IntLayout::GptqV1, 4, 4864, 896, 128, 5},
    {"gptq_v2_g32_N40_tail", IntLayout::GptqV2, 4, 40, 96, 32, 3},
    {"gptq_v1_partial_group_N24", IntLayout::GptqV1, 4, 24, 160, 64, 2},
    {"gptq_v1_perchannel_N8", IntLayout::GptqV1, 4, 8, 224, -1, 1},
    {"gptq_v1_saturated", IntLayout::GptqV1, 4, 48, 256, 128, 4, true},
    {"gptq_v2_8bit_perchannel", IntLayout::GptqV2, 8, 24, 160, -1, 2},
    {"gptq_v1_8bit_g64_N136", IntLayout::GptqV1, 8, 136, 256, 64, 7},
    {"gptq_v2_8bit_saturated", IntLayout::GptqV2, 8, 32, 128, 32, 1, true},
    {"gptq_v1_8bit_N36_half_vector", IntLayout::GptqV1, 8, 36, 128, 32, 3},
    {"awq_g128_N136", IntLayout::AwqGemm, 4, 136, 896, 128, 4},
    {"awq_g64_N64", IntLayout::AwqGemm, 4, 64, 192, 64, 6},
};

// Random codes, zero points (v1: 1 .. 2^bits − 1, and for 4 bits some fields then set to all ones, which v1 readers
// take as 2^bits, as another packer's zero 0 leaves them) and fp16 scales of ~0.01; saturate: codes at 2^bits − 1
// and zero points 0 (v1: 1).
PackedIntLinear random_linear(const Case& c) {
  Rng rng(kSeed + static_cast<uint64_t>(c.N * 131 + c.K * 7 + c.bits));
  GroupGrid grid;
  grid.bits = c.bits;
  grid.K = c.K;
  grid.N = c.N;
  grid.group = c.group < 0 ? c.K : c.group;
  const int64_t G = grid.num_groups(), maxq = grid.maxq();
  grid.scale.resize(static_cast<size_t>(G * c.N));
  grid.zero.resize(static_cast<size_t>(G * c.N));
  for (auto& s : grid.scale) s = f16_to_f32(f32_to_f16(rng.uniform(2e-3f, 2e-2f)));
  const bool v1 = c.layout == IntLayout::GptqV1;
  for (auto& z : grid.zero) {
    const int64_t lo = v1 ? 1 : 0;
    z = static_cast<uint8_t>(c.saturate ? lo : lo + static_cast<int64_t>(rng.below(static_cast<uint64_t>(maxq - lo + 1))));
  }
  std::vector<uint8_t> codes(static_cast<size_t>(c.K * c.N));
  for (auto& q : codes) q = static_cast<uint8_t>(c.saturate ? maxq : static_cast<int64_t>(rng.below(maxq + 1)));
  PackedIntLinear p = pack_int_linear(codes.data(), grid, nullptr, c.layout);
  if (v1 && c.bits == 4 && !c.saturate)
    for (auto& w : p.qzeros)
      if (rng.below(4) == 0) w = static_cast<int32_t>(static_cast<uint32_t>(w) | (0xFu << (4 * rng.below(8))));
  return p;
}

std::vector<float> normals(Rng& rng, int64_t n, float scale = 1.0f) {
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = scale * static_cast<float>(rng.normal());
  return x;
}

// Activation code of input k of row m in natural order.
int code_of(const IntInt8Rows& a, int64_t m, int64_t k) {
  const int64_t slot = a.bits == 4 ? (k & ~int64_t{7}) + (k % 2) * 4 + (k % 8) / 2 : k;
  return a.q[static_cast<size_t>(m * a.K + slot)];
}

TEST(IntInt8, ActivationsAreBlockwiseEightBitCodesInTheWordsOrder) {
  for (const Case& c : kCases) {
    if (c.layout == IntLayout::AwqGemm) continue;
    SCOPED_TRACE(c.name);
    const PackedIntLinear p = random_linear(c);
    Rng rng(kSeed + 1);
    std::vector<float> x = normals(rng, c.M * c.K);
    if (c.saturate) std::fill(x.begin(), x.end(), 3.0f);
    for (int64_t k = 64; k < std::min<int64_t>(c.K, 96); ++k) x[static_cast<size_t>(k)] = 0.0f;  // a zero block
    IntInt8Rows a;
    quantize_int_activations(p, x.data(), c.M, &a);
    const int64_t nb = c.K / 32, G = p.num_groups(), bpg = p.group / 32;
    for (int64_t m = 0; m < c.M; ++m) {
      std::vector<double> gsum(static_cast<size_t>(G), 0.0);
      for (int64_t b = 0; b < nb; ++b) {
        double amax = 0.0;
        for (int64_t k = 32 * b; k < 32 * b + 32; ++k) amax = std::max(amax, std::fabs(double(x[m * c.K + k])));
        const float d = a.d[static_cast<size_t>(m * nb + b)];
        ASSERT_EQ(d, static_cast<float>(amax) / 127.0f) << "row " << m << " block " << b;
        int64_t sum = 0;
        for (int64_t k = 32 * b; k < 32 * b + 32; ++k) {
          const int q = code_of(a, m, k);
          ASSERT_LE(std::abs(q), 127);
          if (amax > 0) ASSERT_LE(std::fabs(x[m * c.K + k] * (127.0 / amax) - q), 0.5 + 1e-5) << "input " << k;
          else ASSERT_EQ(q, 0);
          sum += q;
        }
        gsum[static_cast<size_t>(b / bpg)] += double(d) * double(sum);
      }
      for (int64_t g = 0; g < G; ++g) {
        const float got = a.gsum[static_cast<size_t>(m * G + g)];
        EXPECT_NEAR(got, gsum[static_cast<size_t>(g)], 1e-5 * (1.0 + std::fabs(gsum[static_cast<size_t>(g)])));
      }
    }
  }
}

TEST(IntInt8, AwqRepackedToGptqV2DequantizesToTheSameBits) {
  for (const Case& c : kCases) {
    if (c.layout != IntLayout::AwqGemm) continue;
    SCOPED_TRACE(c.name);
    const PackedIntLinear awq = random_linear(c);
    EXPECT_FALSE(int_int8_product_supported(awq));
    const PackedIntLinear gptq = int_linear_to_gptq_v2(awq);
    EXPECT_EQ(gptq.layout, IntLayout::GptqV2);
    EXPECT_TRUE(int_int8_product_supported(gptq)) << int_int8_unsupported_reason(gptq);
    const std::vector<float> wa = dequantize_int_linear(awq), wg = dequantize_int_linear(gptq);
    ASSERT_EQ(wa.size(), wg.size());
    EXPECT_EQ(std::memcmp(wa.data(), wg.data(), wa.size() * sizeof(float)), 0);
  }
}

// Σ_k ŵ[n, k] · d_b · a_k in double, and Σ |…| for the tolerance.
void oracle(const std::vector<float>& W, const IntInt8Rows& a, int64_t N, std::vector<double>* y,
            std::vector<double>* mag) {
  const int64_t K = a.K;
  y->assign(static_cast<size_t>(a.M * N), 0.0);
  mag->assign(static_cast<size_t>(a.M * N), 0.0);
  for (int64_t m = 0; m < a.M; ++m) {
    std::vector<double> xq(static_cast<size_t>(K));
    for (int64_t k = 0; k < K; ++k) xq[k] = double(a.d[static_cast<size_t>(m * (K / 32) + k / 32)]) * code_of(a, m, k);
    for (int64_t n = 0; n < N; ++n) {
      double s = 0.0, s_abs = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const double t = double(W[static_cast<size_t>(n * K + k)]) * xq[k];
        s += t;
        s_abs += std::fabs(t);
      }
      (*y)[static_cast<size_t>(m * N + n)] = s;
      (*mag)[static_cast<size_t>(m * N + n)] = s_abs;
    }
  }
}

TEST(IntInt8, ProductsMatchTheDoubleOracleAndEachOther) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name);
    const PackedIntLinear p = int_linear_to_gptq_v2(random_linear(c));
    const std::vector<float> W = dequantize_int_linear(p);
    Rng rng(kSeed + 2);
    std::vector<float> x = normals(rng, c.M * c.K);
    if (c.saturate) std::fill(x.begin(), x.end(), 3.0f);  // every code 127 against every weight code at its top
    IntInt8Rows a;
    quantize_int_activations(p, x.data(), c.M, &a);
    std::vector<double> ref, mag;
    oracle(W, a, c.N, &ref, &mag);
    std::vector<float> fast(static_cast<size_t>(c.M * c.N)), portable(fast.size()), one_thread(fast.size()),
        avx2(fast.size());
    int_linear_matvec_int8(p, a, fast.data());
    int_linear_matvec_int8_portable(p, a, portable.data());
    if (int_linear_matvec_int8_avx2(p, a, avx2.data())) {
      EXPECT_EQ(std::memcmp(avx2.data(), portable.data(), avx2.size() * sizeof(float)), 0) << "AVX2 vs portable";
    } else {
      std::printf("[ note ] no AVX2/FMA/F16C on this CPU: the AVX2 kernel is not checked\n");
    }
    {
      test::ScopedThreads threads(1);
      int_linear_matvec_int8(p, a, one_thread.data());
    }
    for (size_t i = 0; i < fast.size(); ++i) {
      ASSERT_NEAR(fast[i], ref[i], kDotRelTol * mag[i] + 1e-30) << "row " << i / c.N << " column " << i % c.N;
    }
    EXPECT_EQ(std::memcmp(fast.data(), portable.data(), fast.size() * sizeof(float)), 0) << "vector vs portable";
    EXPECT_EQ(std::memcmp(fast.data(), one_thread.data(), fast.size() * sizeof(float)), 0) << "2 vs 1 threads";
  }
}

TEST(IntInt8, RowsAcrossPassesAndTheExactProduct) {
  const Case c{"qwen2.5-0.5b_k_gptq_v2", IntLayout::GptqV2, 4, 128, 896, 128, 70};
  const PackedIntLinear p = random_linear(c);
  Rng rng(kSeed + 3);
  const std::vector<float> x = normals(rng, c.M * c.K);
  std::vector<float> y(static_cast<size_t>(c.M * c.N)), exact(y.size());
  int_linear_matvec_int8(p, x.data(), c.M, y.data());
  int_linear_matvec(p, x.data(), c.M, exact.data());
  double err = 0.0, norm = 0.0;
  for (int64_t m = 0; m < c.M; ++m) {
    std::vector<float> row(static_cast<size_t>(c.N));
    int_linear_matvec_int8(p, x.data() + m * c.K, 1, row.data());  // one row alone: the same bits
    ASSERT_EQ(std::memcmp(row.data(), y.data() + m * c.N, row.size() * sizeof(float)), 0) << "row " << m;
  }
  for (size_t i = 0; i < y.size(); ++i) {
    err += (double(y[i]) - exact[i]) * (double(y[i]) - exact[i]);
    norm += double(exact[i]) * exact[i];
  }
  EXPECT_LT(std::sqrt(err / norm), kInt8RelErr);
  EXPECT_GT(std::sqrt(err / norm), 0.0);  // the activations were rounded: not the exact product
}

TEST(IntInt8, NonFiniteActivationPoisonsOnlyItsRow) {
  const Case c{"gptq_v1_g64", IntLayout::GptqV1, 4, 32, 128, 64, 3};
  const PackedIntLinear p = random_linear(c);
  Rng rng(kSeed + 4);
  std::vector<float> x = normals(rng, c.M * c.K);
  std::vector<float> clean(static_cast<size_t>(c.M * c.N)), y(clean.size());
  int_linear_matvec_int8(p, x.data(), c.M, clean.data());
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    x[static_cast<size_t>(c.K + 70)] = bad;  // row 1
    int_linear_matvec_int8(p, x.data(), c.M, y.data());
    for (int64_t n = 0; n < c.N; ++n) {
      EXPECT_TRUE(std::isnan(y[static_cast<size_t>(c.N + n)])) << n;
      EXPECT_EQ(y[static_cast<size_t>(n)], clean[static_cast<size_t>(n)]);
      EXPECT_EQ(y[static_cast<size_t>(2 * c.N + n)], clean[static_cast<size_t>(2 * c.N + n)]);
    }
  }
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(IntInt8, UnsupportedWeightsAreNamed) {
  PackedIntLinear act = random_linear({"act", IntLayout::GptqV1, 4, 16, 64, 32, 1});
  std::swap(act.g_idx[0], act.g_idx[40]);
  EXPECT_NE(int_int8_unsupported_reason(act).find("act-order"), std::string::npos);
  const PackedIntLinear three = random_linear({"3bit", IntLayout::GptqV2, 3, 32, 96, 32, 1});
  EXPECT_NE(int_int8_unsupported_reason(three).find("3-bit"), std::string::npos);
  const PackedIntLinear g16 = random_linear({"g16", IntLayout::GptqV2, 4, 16, 64, 16, 1});
  EXPECT_NE(int_int8_unsupported_reason(g16).find("multiples of 32"), std::string::npos);
  const PackedIntLinear awq = random_linear({"awq", IntLayout::AwqGemm, 4, 16, 64, 32, 1});
  EXPECT_NE(int_int8_unsupported_reason(awq).find("AWQ"), std::string::npos);
  std::vector<float> x(64, 1.0f), y(16);
  EXPECT_NE(error_of([&] { int_linear_matvec_int8(act, x.data(), 1, y.data()); }).find("act-order"),
            std::string::npos);
  IntInt8Rows a;
  const PackedIntLinear ok = random_linear({"ok", IntLayout::GptqV2, 4, 16, 64, 32, 1});
  const PackedIntLinear ok8 = random_linear({"ok8", IntLayout::GptqV2, 8, 16, 64, 32, 1});
  quantize_int_activations(ok, x.data(), 1, &a);
  EXPECT_NE(error_of([&] { int_linear_matvec_int8(ok8, a, y.data()); }).find("quantized for 4-bit"),
            std::string::npos);
}

}  // namespace
}  // namespace qwenq
