// kernels/gemm_bf16.h's products with a 4-bit Q4 weight (qgemm_int4_forward_bf16, qgemm_int4_backward_input_bf16):
// bit for bit the dense bf16 products on the weight's fp32 values (q4_unpack, the format readers' values), on both
// paths of this CPU, for every kind (Int, Nf4, Fp4), groups of 8 to one per K, padded layouts (K % 8, N % 4; garbage
// codes and NaN metas in the pads, tests/support/dora_cases.h, so a read past K or N shows), tile and
// slice edges and Qwen2.5-0.5B's shapes, with and without a row permutation (act-order); refusals. And
// quant/format/qgemm_layout.h's per-product Q4 forms (q4_transient_int_linear, q4_transient_nf4): the repack's words,
// meta and perm, word for word, or no form at all.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "kernels/gemm_bf16.h"
#include "quant/format/qgemm_layout.h"
#include "quant/int_checkpoint.h"
#include "quant/nf4.h"
#include "tests/support/bf16_paths.h"
#include "tests/support/dora_cases.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_random.h"

namespace qwenq {
namespace {

void expect_same_bits(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], 4) != 0) {
      FAIL() << what << ": element " << i << " is " << got[i] << ", the dense product on the fp32 values gives "
             << want[i];
    }
  }
}

// Both products of one layout against the dense ones on q4_unpack's values, both paths, with and without a bias.
void check_products(const Q4Layout& q, int64_t M, const std::string& name) {
  const Q4View w = q.view();
  const std::vector<float> W = q4_unpack(w);
  const std::vector<float> x = test::normal_vector(M * w.K, 11), dy = test::normal_vector(M * w.N, 12);
  const std::vector<float> bias = test::normal_vector(w.N, 13);
  for (bool portable : test::bf16_gemm_paths()) {
    test::PortableScope scope(portable);
    const std::string what = name + " M=" + std::to_string(M) + (portable ? " portable" : " avx512_bf16");
    for (const float* b : {static_cast<const float*>(nullptr), bias.data()}) {
      std::vector<float> got(M * w.N, -7.f), want(M * w.N, 7.f);
      qgemm_int4_forward_bf16(w, x.data(), M, b, DType::F32, got.data());
      linear_forward_bf16(x.data(), M, w.K, W.data(), DType::F32, w.N, b, DType::F32, want.data());
      expect_same_bits(got, want, what + (b ? " forward + bias" : " forward"));
    }
    std::vector<float> got(M * w.K, -7.f), want(M * w.K, 7.f);
    qgemm_int4_backward_input_bf16(w, dy.data(), M, got.data());
    linear_backward_input_bf16(dy.data(), M, w.N, W.data(), DType::F32, w.K, want.data());
    expect_same_bits(got, want, what + " backward");
  }
}

TEST(GemmBf16Q4, EveryKindAndPaddedLayoutIsTheDenseProductOfItsValues) {
  struct Case {
    int64_t M, K, N, group;
  };
  // Tile edges as tests/test_gemm_bf16.cpp's (M around 12, N around 32, K around the 256-value slices), a group of
  // 8 (a new meta every word-row), one group per K, and padded layouts (K % 8 != 0, N % 4 != 0).
  const Case cases[] = {{1, 8, 4, 8},     {13, 13, 6, 16},   {12, 256, 32, 64},   {25, 264, 33, 8},
                        {5, 520, 100, 520}, {2, 1001, 65, 128}, {11, 96, 31, 32}};
  for (Q4Kind kind : {Q4Kind::Int, Q4Kind::Nf4, Q4Kind::Fp4}) {
    for (const Case& c : cases) {
      for (bool permuted : {false, true}) {  // permuted: layout row r holds a random input perm[r] (act-order)
        const Q4Layout q = test::padded_q4(kind, c.N, c.K, c.group, permuted, 100 + c.K);  // NaN metas in the pads
        check_products(q, c.M, std::string(q4_kind_name(kind)) + " K=" + std::to_string(c.K) + " N=" +
                                   std::to_string(c.N) + " g=" + std::to_string(c.group) + (permuted ? " perm" : ""));
      }
    }
  }
}

TEST(GemmBf16Q4, QwenShapesFromTheSourceFormats) {
  // Qwen2.5-0.5B's MLP at 37 tokens: GPTQ group 128 (also act-order) and NF4 with double quantization, through their
  // repacks.
  const PackedIntLinear gptq = q4_synthetic_int_linear(IntLayout::GptqV1, 896, 4864, 128, false, 5);
  check_products(q4_from_int_linear(gptq), 37, "gptq 896 -> 4864");
  const PackedIntLinear act = q4_synthetic_int_linear(IntLayout::GptqV1, 4864, 896, 128, true, 8);
  check_products(q4_from_int_linear(act), 37, "gptq act-order 4864 -> 896");
  const Nf4Tensor nf4 = q4_synthetic_nf4(896, 4864, false, 64, true, 6);
  check_products(q4_from_nf4(nf4, 896, 4864), 37, "nf4 4864 -> 896");
}

TEST(GemmBf16Q4, RefusesWhatItCannotMultiply) {
  const PackedIntLinear act = q4_synthetic_int_linear(IntLayout::GptqV1, 64, 16, 32, true, 7);
  Q4Layout q = q4_from_int_linear(act);
  ASSERT_FALSE(q.perm.empty());
  std::vector<float> x(2 * 64, 1.f), y(2 * 16);
  q.perm[5] = q.perm[9];  // not a permutation
  const std::string repeated =
      "qgemm_int4_forward_bf16: perm[9] = " + std::to_string(q.perm[9]) + " is outside [0, 64) or repeats an input";
  test::expect_error([&] { qgemm_int4_forward_bf16(q.view(), x.data(), 2, nullptr, DType::F32, y.data()); },
                     repeated.c_str());
  q.perm[5] = 64;
  test::expect_error([&] { qgemm_int4_backward_input_bf16(q.view(), y.data(), 2, x.data()); },
                     "qgemm_int4_backward_input_bf16: perm[5] = 64 is outside [0, 64)");
  Q4View plain = q.view();
  plain.perm = nullptr;
  test::expect_error([&] { qgemm_int4_backward_input_bf16(plain, y.data(), 0, x.data()); },
                              "qgemm_int4_backward_input_bf16: M=0 rows (K=64 N=16)");
  test::expect_error([&] { qgemm_int4_forward_bf16(plain, x.data(), 2, nullptr, DType::F32, x.data() + 3); },
                              "qgemm_int4_forward_bf16: the output overlaps the input");
  plain.group = 12;
  test::expect_error([&] { qgemm_int4_forward_bf16(plain, x.data(), 2, nullptr, DType::F32, y.data()); },
                              "group 12 is not a positive multiple of 8");
}

void expect_same_form(const Q4Transient& t, const Q4Layout& q, const std::string& what) {
  ASSERT_TRUE(t.has_form()) << what;
  const Q4View v = t.view;
  EXPECT_EQ(v.kind, q.kind) << what;
  EXPECT_EQ(v.K, q.K) << what;
  EXPECT_EQ(v.N, q.N) << what;
  EXPECT_EQ(v.Kp, q.Kp) << what;
  EXPECT_EQ(v.Np, q.Np) << what;
  EXPECT_EQ(v.group, q.group) << what;
  EXPECT_EQ(v.perm == nullptr, q.perm.empty()) << what;
  if (v.perm != nullptr) {
    EXPECT_EQ(std::vector<int32_t>(v.perm, v.perm + v.K), q.perm) << what;
  }
  EXPECT_EQ(std::vector<uint32_t>(v.qweight, v.qweight + q.qweight.size()), q.qweight) << what;
  EXPECT_EQ(std::vector<uint32_t>(v.meta, v.meta + q.meta.size()), q.meta) << what;
}

TEST(Q4Transient, IntFormsAreTheRepackWordForWord) {
  for (IntLayout layout : {IntLayout::GptqV1, IntLayout::GptqV2, IntLayout::AwqGemm}) {
    for (int64_t group : {int64_t{8}, int64_t{32}, int64_t{128}, int64_t{-1}}) {
      for (auto [K, N] : {std::pair<int64_t, int64_t>{256, 64}, {136, 24}, {896, 40}}) {
        if (group > 0 && K % group != 0) continue;
        const PackedIntLinear p = q4_synthetic_int_linear(layout, K, N, group, false, 31 + K);
        const std::string what = std::string(int_layout_name(layout)) + " K=" + std::to_string(K) +
                                 " N=" + std::to_string(N) + " g=" + std::to_string(group);
        const Q4Transient t = q4_transient_int_linear(p);
        expect_same_form(t, q4_from_int_linear(p), what);
        if (layout != IntLayout::AwqGemm) {
          EXPECT_EQ(static_cast<const void*>(t.view.qweight), static_cast<const void*>(p.qweight.data()))
              << what << ": GPTQ's words are Q4's, borrowed";
        }
      }
    }
  }
}

TEST(Q4Transient, Nf4FormsAreTheRepackWordForWord) {
  for (bool fp4 : {false, true}) {
    for (bool dq : {false, true}) {
      for (int64_t bs : {int64_t{64}, int64_t{128}}) {
        for (auto [N, K] : {std::pair<int64_t, int64_t>{12, 128}, {36, 256}, {4, 896}}) {
          const Nf4Tensor t = q4_synthetic_nf4(N, K, fp4, bs, dq, 41 + N);
          expect_same_form(q4_transient_nf4(t, N, K), q4_from_nf4(t, N, K),
                           std::string(fp4 ? "fp4" : "nf4") + (dq ? " dq" : "") + " bs=" + std::to_string(bs) +
                               " N=" + std::to_string(N) + " K=" + std::to_string(K));
        }
      }
    }
  }
}

// Act-order GPTQ as loaded models hold it (rows sorted by group, int_linear_sort_inputs_by_group): the repack's words,
// meta and perm, GPTQ's words and perm borrowed; its products are the dense ones on its values (both paths).
TEST(Q4Transient, SortedActOrderKeepsItsRowsAndPerm) {
  for (IntLayout layout : {IntLayout::GptqV1, IntLayout::GptqV2}) {
    for (int64_t group : {int64_t{8}, int64_t{32}, int64_t{128}}) {
      const PackedIntLinear act = q4_synthetic_int_linear(layout, 256, 40, group, true, 61 + group);
      const PackedIntLinear sorted = int_linear_sort_inputs_by_group(act);
      ASSERT_FALSE(sorted.perm.empty());
      const std::string what = std::string(int_layout_name(layout)) + " g=" + std::to_string(group);
      const Q4Transient t = q4_transient_int_linear(sorted);
      expect_same_form(t, q4_from_int_linear(act), what);
      EXPECT_EQ(static_cast<const void*>(t.view.qweight), static_cast<const void*>(sorted.qweight.data())) << what;
      EXPECT_EQ(t.view.perm, sorted.perm.data()) << what;
      Q4Layout owned;  // check_products takes a layout: the transient's words, meta and perm copied into one
      owned.kind = t.view.kind;
      owned.K = owned.Kp = t.view.K;
      owned.N = owned.Np = t.view.N;
      owned.group = t.view.group;
      owned.qweight.assign(t.view.qweight, t.view.qweight + t.view.K / kQ4CodesPerWord * t.view.N);
      owned.meta = t.meta;
      owned.perm = sorted.perm;
      check_products(owned, 19, what);
    }
  }
}

TEST(Q4Transient, NoFormWhereTheWordsCannotBeMoved) {
  // Act-order rows in the file's order (a repack would have to sort them).
  const PackedIntLinear act = q4_synthetic_int_linear(IntLayout::GptqV1, 64, 16, 32, true, 51);
  EXPECT_FALSE(q4_transient_int_linear(act).has_form());
  // Not 4-bit.
  PackedIntLinear three = q4_synthetic_int_linear(IntLayout::GptqV2, 64, 16, 32, false, 52);
  three.bits = 3;
  EXPECT_FALSE(q4_transient_int_linear(three).has_form());
  // AWQ with K % 8 != 0 (its words pack N), a group that is not whole words.
  EXPECT_FALSE(q4_transient_int_linear(q4_synthetic_int_linear(IntLayout::AwqGemm, 12, 16, 4, false, 53)).has_form());
  EXPECT_FALSE(q4_transient_int_linear(q4_synthetic_int_linear(IntLayout::AwqGemm, 24, 16, 12, false, 54)).has_form());
  // bitsandbytes blocks across rows (K % blocksize != 0), N % 4 != 0.
  EXPECT_FALSE(q4_transient_nf4(q4_synthetic_nf4(4, 96, false, 64, false, 55), 4, 96).has_form());
  EXPECT_FALSE(q4_transient_nf4(q4_synthetic_nf4(6, 128, false, 64, false, 56), 6, 128).has_form());
}

}  // namespace
}  // namespace qwenq
