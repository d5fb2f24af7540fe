// Act-order GPTQ Linears with their rows sorted by group in memory (int_linear_sort_inputs_by_group, for the int8
// products of quant/int_dot_int8.h), against their oracles:
//   - ŵ: the sorted Linear dequantizes to the original's values bit for bit (the format's exact reader undoing the
//     order), for 2/3/4/8-bit GPTQ v1 and v2, partial last groups; the GPU's Q4 layout of it too (q4_unpack);
//   - the exact products (quant/packed_matvec.h) of the sorted Linear, forward and transposed, against the
//     original's within kExactRelTol of Σ|ŵ·x| (only the fp32 summation order changes);
//   - the int8 product of the sorted Linear equals, bit for bit, the int8 product of an in-order Linear packed from
//     the same codes in sorted order applied to x[:, perm] (the already-tested kernel on the same integers), and is
//     within kInt8RelErr of the exact product; the build's kernel, AVX2 and portable agree;
//   - what stays as it was (int_linear_for_products, the loader's choice, and int_linear_for_int8): a g_idx with
//     groups of unequal sizes (not sortable into contiguous groups), 3-bit codes, in-order weights and AWQ; a sorted
//     Linear cannot be written to a checkpoint.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "quant/format/qgemm_layout.h"
#include "quant/grid.h"
#include "quant/int_checkpoint.h"
#include "quant/int_dot_int8.h"
#include "quant/packed_matvec.h"

namespace qwenq {
namespace {

constexpr uint64_t kSeed = 9203;
// The exact products sum the same fp32 terms in another order: a few ulps of Σ|ŵ·x| per output.
constexpr double kExactRelTol = 1e-5;
// As tests/test_int_int8.cpp: the activations' 8-bit rounding, relative L2 (measured ~0.5 %).
constexpr double kInt8RelErr = 0.02;

struct ActOrder {
  PackedIntLinear p;
  std::vector<uint8_t> codes;  // [K, N] in input order
  GroupGrid grid;
  std::vector<int32_t> g_idx;
};

// Random codes, zero points and fp16 scales; g_idx as GPTQ's desc_act writes it: inputs visited in a random order
// (the Hessian's), the i-th visited in group i / group.
ActOrder act_order_linear(IntLayout layout, int bits, int64_t N, int64_t K, int64_t group, uint64_t seed) {
  Rng rng(seed);
  ActOrder a;
  a.grid.bits = bits;
  a.grid.K = K;
  a.grid.N = N;
  a.grid.group = group;
  const int64_t G = a.grid.num_groups(), maxq = a.grid.maxq();
  a.grid.scale.resize(static_cast<size_t>(G * N));
  a.grid.zero.resize(static_cast<size_t>(G * N));
  for (auto& s : a.grid.scale) s = f16_to_f32(f32_to_f16(rng.uniform(2e-3f, 2e-2f)));
  const int64_t lo = layout == IntLayout::GptqV1 ? 1 : 0;
  for (auto& z : a.grid.zero) z = static_cast<uint8_t>(lo + static_cast<int64_t>(rng.below(static_cast<uint64_t>(maxq - lo + 1))));
  a.codes.resize(static_cast<size_t>(K * N));
  for (auto& q : a.codes) q = static_cast<uint8_t>(rng.below(static_cast<uint64_t>(maxq + 1)));
  std::vector<int32_t> visit(static_cast<size_t>(K));
  std::iota(visit.begin(), visit.end(), 0);
  for (int64_t k = K - 1; k > 0; --k) std::swap(visit[k], visit[rng.below(static_cast<uint64_t>(k + 1))]);
  a.g_idx.resize(static_cast<size_t>(K));
  for (int64_t i = 0; i < K; ++i) a.g_idx[visit[i]] = static_cast<int32_t>(i / group);
  a.p = pack_int_linear(a.codes.data(), a.grid, a.g_idx.data(), layout);
  return a;
}

std::vector<float> normals(Rng& rng, int64_t n) {
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = static_cast<float>(rng.normal());
  return x;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// |got − want| within tol · Σ_k |ŵ[n, k]·x[m, k]| for every output (W [N, K], x [M, K]).
void expect_close_products(const std::vector<float>& got, const std::vector<float>& want, const std::vector<float>& W,
                           const std::vector<float>& x, int64_t M, int64_t N, int64_t K, double tol) {
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double mag = 0.0;
      for (int64_t k = 0; k < K; ++k) mag += std::fabs(double(W[n * K + k]) * x[m * K + k]);
      ASSERT_NEAR(got[m * N + n], want[m * N + n], tol * mag + 1e-30) << "row " << m << " output " << n;
    }
  }
}

struct Shape {
  IntLayout layout;
  int bits;
  int64_t N, K, group;
};

const Shape kShapes[] = {
    {IntLayout::GptqV1, 4, 48, 256, 64},   {IntLayout::GptqV2, 4, 40, 160, 64},  // 160: a last group of 32
    {IntLayout::GptqV1, 8, 24, 192, 32},   {IntLayout::GptqV2, 2, 32, 128, 32},
    {IntLayout::GptqV2, 3, 32, 192, 64},   {IntLayout::GptqV1, 4, 896, 896, 128},  // Qwen2.5-0.5B q_proj
};

TEST(IntSortedInputs, SameWeightsAndExactProducts) {
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(std::string(int_layout_name(s.layout)) + " " + std::to_string(s.bits) + "-bit N" +
                 std::to_string(s.N) + " K" + std::to_string(s.K) + " g" + std::to_string(s.group));
    const ActOrder a = act_order_linear(s.layout, s.bits, s.N, s.K, s.group, kSeed + s.K + s.bits);
    ASSERT_FALSE(int_linear_groups_in_order(a.p));
    const PackedIntLinear sorted = int_linear_sort_inputs_by_group(a.p);
    // The loader's choice: sorted for the grouped kernels, except 3-bit codes (one input at a time either way).
    EXPECT_EQ(int_linear_for_products(a.p).perm.size(), s.bits == 3 ? size_t{0} : static_cast<size_t>(s.K));
    ASSERT_EQ(sorted.perm.size(), static_cast<size_t>(s.K));
    EXPECT_TRUE(int_linear_groups_in_order(sorted));
    std::vector<int32_t> seen(sorted.perm);
    std::sort(seen.begin(), seen.end());
    for (int64_t k = 0; k < s.K; ++k) ASSERT_EQ(seen[k], k) << "perm is not a permutation";
    for (int64_t i = 1; i < s.K; ++i) {  // stable: a group's inputs keep their order
      if (sorted.g_idx[i] == sorted.g_idx[i - 1]) {
        ASSERT_LT(sorted.perm[i - 1], sorted.perm[i]);
      }
    }

    const std::vector<float> W = dequantize_int_linear(a.p);
    EXPECT_TRUE(same_bits(dequantize_int_linear(sorted), W)) << "the sorted Linear's ŵ";
    if (s.bits == 4) {
      EXPECT_TRUE(same_bits(q4_unpack(q4_from_int_linear(sorted).view()), W)) << "its Q4 layout";
    }

    Rng rng(kSeed + 1);
    const int64_t M = 5;
    const std::vector<float> x = normals(rng, M * s.K);
    std::vector<float> y(static_cast<size_t>(M * s.N)), y_sorted(y.size());
    int_linear_matvec(a.p, x.data(), M, y.data());
    int_linear_matvec(sorted, x.data(), M, y_sorted.data());
    expect_close_products(y_sorted, y, W, x, M, s.N, s.K, kExactRelTol);
    if (s.bits == 3) continue;  // no transposed packed product for 3-bit codes
    const std::vector<float> dy = normals(rng, M * s.N);
    std::vector<float> dx(static_cast<size_t>(M * s.K)), dx_sorted(dx.size());
    int_linear_matvec_t(a.p, dy.data(), M, dx.data());
    int_linear_matvec_t(sorted, dy.data(), M, dx_sorted.data());
    // dx = dy·Ŵ is the product with Ŵᵀ [K, N]: the tolerance's magnitudes from it.
    std::vector<float> Wt(W.size());
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t k = 0; k < s.K; ++k) Wt[k * s.N + n] = W[n * s.K + k];
    expect_close_products(dx_sorted, dx, Wt, dy, M, s.K, s.N, kExactRelTol);
  }
}

TEST(IntSortedInputs, Int8ProductEqualsTheInOrderLinearOnGatheredActivations) {
  for (const Shape& s : kShapes) {
    if (s.bits != 4 && s.bits != 8) continue;
    SCOPED_TRACE(std::string(int_layout_name(s.layout)) + " " + std::to_string(s.bits) + "-bit K" + std::to_string(s.K));
    const ActOrder a = act_order_linear(s.layout, s.bits, s.N, s.K, s.group, kSeed + 7 * s.K + s.bits);
    EXPECT_FALSE(int_int8_product_supported(a.p));
    const PackedIntLinear p = int_linear_for_int8(a.p);
    ASSERT_EQ(p.perm.size(), static_cast<size_t>(s.K)) << "int_linear_for_int8 did not sort the rows";
    ASSERT_TRUE(int_int8_product_supported(p)) << int_int8_unsupported_reason(p);

    // The same integers as an in-order Linear: row i holds input perm[i]'s codes, its group's grid as before.
    std::vector<uint8_t> codes(a.codes.size());
    for (int64_t i = 0; i < s.K; ++i)
      std::memcpy(&codes[i * s.N], &a.codes[p.perm[i] * s.N], static_cast<size_t>(s.N));
    const PackedIntLinear in_order = pack_int_linear(codes.data(), a.grid, nullptr, s.layout);

    Rng rng(kSeed + 2);
    const int64_t M = 7;
    const std::vector<float> x = normals(rng, M * s.K);
    std::vector<float> xg(x.size());
    for (int64_t m = 0; m < M; ++m)
      for (int64_t i = 0; i < s.K; ++i) xg[m * s.K + i] = x[m * s.K + p.perm[i]];
    std::vector<float> y(static_cast<size_t>(M * s.N)), want(y.size()), exact(y.size());
    int_linear_matvec_int8(p, x.data(), M, y.data());
    int_linear_matvec_int8(in_order, xg.data(), M, want.data());
    EXPECT_TRUE(same_bits(y, want)) << "sorted Linear on x vs in-order Linear on x[:, perm]";

    IntInt8Rows q;
    quantize_int_activations(p, x.data(), M, &q);
    std::vector<float> portable(y.size()), avx2(y.size());
    int_linear_matvec_int8_portable(p, q, portable.data());
    EXPECT_TRUE(same_bits(portable, y)) << "portable twin";
    if (int_linear_matvec_int8_avx2(p, q, avx2.data())) {
      EXPECT_TRUE(same_bits(avx2, y)) << "AVX2 kernel";
    }

    int_linear_matvec(a.p, x.data(), M, exact.data());
    double err = 0.0, norm = 0.0;
    for (size_t i = 0; i < y.size(); ++i) {
      err += (double(y[i]) - exact[i]) * (double(y[i]) - exact[i]);
      norm += double(exact[i]) * exact[i];
    }
    EXPECT_LT(std::sqrt(err / norm), kInt8RelErr);
  }
}

TEST(IntSortedInputs, WhatIsLeftAsItWas) {
  // Groups of unequal sizes: sorted they are still not i / group, so the int8 switch leaves the Linear unsorted.
  ActOrder a = act_order_linear(IntLayout::GptqV2, 4, 16, 128, 32, kSeed + 3);
  for (auto& g : a.g_idx) g = g == 3 ? 2 : g;  // group 2 holds 64 inputs, group 3 none
  const PackedIntLinear uneven = pack_int_linear(a.codes.data(), a.grid, a.g_idx.data(), IntLayout::GptqV2);
  EXPECT_TRUE(int_linear_for_products(uneven).perm.empty());
  const PackedIntLinear kept = int_linear_for_int8(uneven);
  EXPECT_TRUE(kept.perm.empty());
  EXPECT_FALSE(int_int8_product_supported(kept));
  EXPECT_NE(int_int8_unsupported_reason(kept).find("act-order"), std::string::npos);
  EXPECT_TRUE(same_bits(dequantize_int_linear(int_linear_sort_inputs_by_group(uneven)), dequantize_int_linear(uneven)));

  // In-order GPTQ and AWQ: nothing to sort.
  const ActOrder b = act_order_linear(IntLayout::GptqV1, 4, 16, 128, 32, kSeed + 4);
  const PackedIntLinear plain = pack_int_linear(b.codes.data(), b.grid, nullptr, IntLayout::GptqV1);
  EXPECT_TRUE(int_linear_sort_inputs_by_group(plain).perm.empty());
  EXPECT_TRUE(int_linear_for_int8(plain).perm.empty());
  const PackedIntLinear awq = pack_int_linear(b.codes.data(), b.grid, nullptr, IntLayout::AwqGemm);
  EXPECT_TRUE(int_linear_sort_inputs_by_group(awq).perm.empty());

  // A sorted Linear is memory only.
  SafetensorsWriter w;
  try {
    add_int_linear(w, "model.layers.0.mlp.up_proj", int_linear_sort_inputs_by_group(b.p));
    ADD_FAILURE() << "add_int_linear wrote a sorted Linear";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("up_proj"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qwenq
