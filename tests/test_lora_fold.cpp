// QWENQ_LORA_FOLD=1's pieces on the CPU (kernels/qgemm.h, kernels/convert.h, trainer/lora_cuda_buffers.h):
//   - f32_to_bf16_strided_ref: each written element is core/dtype.h's f32_to_bf16 of scale·x (one fp32 product), the
//     padding columns [cols, padded) are +0 and the columns past them are not touched;
//   - qgemm_int4_dense_lowrank_ref against the same sum in double over the unpacked weight rounded to bf16 and B
//     rounded to bf16, within the summation-order tolerance of tests/test_qgemm_ref.cpp (8·u·sqrt(L)·Σ|a·w|); the
//     columns of xa past rb are not read; act-order and bad ranks are refused;
//   - qgemm_int4_t_dense_lowrank_ref (the backward's [dy | g]·[Ŵ ; A]) the same way, written and accumulated; the
//     columns of dya past rb are not read; act-order and Kp != K are refused;
//   - the memory the fold adds: qgemm_dense_scratch_bytes' ra columns (forward) or rows (transposed),
//     lora_cuda_fold_cols, act16's width in the trainer's buffer table.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "kernels/convert.h"
#include "kernels/qgemm.h"
#include "quant/int_checkpoint.h"
#include "quant/nf4.h"
#include "tests/support/scoped_env.h"
#include "tests/support/test_errors.h"
#include "trainer/lora_cuda_buffers.h"
#include "trainer/qwen_config.h"
#include "trainer/random_model.h"

namespace qwenq {
namespace {

constexpr double kSumTol = 8.0;  // multiples of u·sqrt(L)·Σ|a·w|
constexpr double kU = 1.0 / 16777216.0;

TEST(LoraFold, StridedConversionRoundsScaleTimesX) {
  const int64_t rows = 5, cols = 7, ld = 12;
  Rng rng(3);
  std::vector<float> x(rows * cols);
  for (float& v : x) v = rng.uniform(-3.0f, 3.0f);
  x[4] = 1.00390625f;  // 1 + 2^-8: a tie for bf16 at scale 1
  for (const float scale : {1.0f, 2.0f, 0.3f}) {
    std::vector<uint16_t> y(static_cast<size_t>(rows * ld), 0xABCD);
    f32_to_bf16_strided_ref(x.data(), rows, cols, cols, scale, y.data(), ld);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < ld; ++c) {
        const uint16_t want = c < cols ? f32_to_bf16(scale * x[r * cols + c]) : uint16_t{0xABCD};
        ASSERT_EQ(y[r * ld + c], want) << "scale " << scale << " row " << r << " col " << c;
      }
  }
  // A NaN is taken as it is, not multiplied (a GPU multiply would drop its payload): quieted, payload kept.
  uint32_t bits = 0x7F812345u;
  float nan;
  std::memcpy(&nan, &bits, 4);
  uint16_t one = 0;
  f32_to_bf16_strided_ref(&nan, 1, 1, 1, 2.0f, &one, 1);
  EXPECT_EQ(one, 0x7FC1);
  std::vector<uint16_t> y(64);
  // Columns [cols, padded) become +0, the ones past padded stay.
  std::vector<uint16_t> z(static_cast<size_t>(rows * ld), 0xABCD);
  f32_to_bf16_strided_ref(x.data(), rows, cols, cols + 3, 1.f, z.data(), ld);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = cols; c < ld; ++c) ASSERT_EQ(z[r * ld + c], c < cols + 3 ? 0 : 0xABCD) << r << "," << c;
  test::expect_error([&] { f32_to_bf16_strided_ref(x.data(), rows, cols, cols, 1.f, y.data(), cols - 1); },
                     {"f32_to_bf16_strided_ref", "ld=6"});
  test::expect_error([&] { f32_to_bf16_strided_ref(x.data(), rows, cols, cols - 1, 1.f, y.data(), ld); },
                     {"f32_to_bf16_strided_ref", "padded=6"});
}

// out[m, o] = Σ_{i < L} a[m, i]·w(i, o) + Σ_{j < rb} a[m, L + j]·f(j, o) in double over bf16 rows a of stride ld
// (O outputs per row); abs_sum gets Σ|each product|. The forward: i over Kp, o over N, w = bf16(ŵ[o, i]) and
// f = bf16(B[o, j]); the input gradient: i over N, o over Kp, w = bf16(ŵ[i, o]) and f = bf16(A[j, o]).
template <typename W, typename F>
std::vector<double> rows_times(const std::vector<uint16_t>& a, int64_t ld, int64_t M, int64_t O, int64_t L, int64_t rb,
                               W w, F f, std::vector<double>* abs_sum) {
  std::vector<double> out(static_cast<size_t>(M * O), 0.0);
  abs_sum->assign(out.size(), 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t o = 0; o < O; ++o) {
      double acc = 0, mag = 0;
      for (int64_t i = 0; i < L + rb; ++i) {
        const double t = static_cast<double>(bf16_to_f32(a[m * ld + i])) * (i < L ? w(i, o) : f(i - L, o));
        acc += t, mag += std::fabs(t);
      }
      out[m * O + o] = acc;
      (*abs_sum)[m * O + o] = mag;
    }
  return out;
}

std::vector<uint16_t> dense_bf16(const Q4Layout& q) {
  std::vector<uint16_t> wb(static_cast<size_t>(q.N * q.Kp));
  q4_dequantize_bf16_ref(q.view(), wb.data());
  return wb;
}

// The fold's layouts of both tests: GPTQ with rb = ra, AWQ with zero columns (rb < ra), NF4 with N = 17.
struct FoldCase {
  const char* name;
  Q4Layout q;
  int64_t ra, rb;
};
std::vector<FoldCase> fold_cases() {
  return {{"gptq r16", q4_from_int_linear(q4_synthetic_int_linear(IntLayout::GptqV1, 256, 40, 128, false, 7)), 16, 16},
          {"awq r13", q4_from_int_linear(q4_synthetic_int_linear(IntLayout::AwqGemm, 192, 24, 64, false, 8)), 16, 13},
          {"nf4 r4 N=17", q4_from_nf4(q4_synthetic_nf4(17, 128, false, 64, true, 9), 17, 128), 8, 4}};
}

TEST(LoraFold, LowRankReferenceIsTheDenseProductPlusTheTerm) {
  for (const FoldCase& c : fold_cases()) {
    SCOPED_TRACE(c.name);
    const int64_t M = 3, ld = c.q.Kp + c.ra;
    Rng rng(21);
    std::vector<uint16_t> xa(static_cast<size_t>(M * ld));
    for (uint16_t& v : xa) v = f32_to_bf16(rng.uniform(-1.0f, 1.0f));  // nonzero past rb too: must not be read
    std::vector<float> B(static_cast<size_t>(c.q.N * c.rb));
    for (float& v : B) v = rng.uniform(-0.5f, 0.5f);
    std::vector<float> y(static_cast<size_t>(M * c.q.N));
    qgemm_int4_dense_lowrank_ref(c.q.view(), xa.data(), Q4LowRank{c.ra, B.data(), c.rb}, M, y.data());
    std::vector<double> mag;
    const std::vector<uint16_t> wb = dense_bf16(c.q);
    const std::vector<double> want = rows_times(
        xa, ld, M, c.q.N, c.q.Kp, c.rb, [&](int64_t i, int64_t n) { return bf16_to_f32(wb[n * c.q.Kp + i]); },
        [&](int64_t j, int64_t n) { return bf16_round(B[n * c.rb + j]); }, &mag);
    double worst = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      const double tol = kSumTol * kU * std::sqrt(static_cast<double>(c.q.Kp + c.rb)) * mag[i];
      worst = std::max(worst, std::fabs(y[i] - want[i]) / tol);
    }
    EXPECT_LE(worst, 1.0) << "outside the summation-order tolerance";
    // The term matters: without it the outputs move by far more than the tolerance.
    std::vector<float> zero_b(B.size(), 0.0f), y0(y.size());
    qgemm_int4_dense_lowrank_ref(c.q.view(), xa.data(), Q4LowRank{c.ra, zero_b.data(), c.rb}, M, y0.data());
    double moved = 0;
    for (size_t i = 0; i < y.size(); ++i) moved = std::max(moved, static_cast<double>(std::fabs(y[i] - y0[i])));
    EXPECT_GT(moved, 1e-3);
  }
  const Q4Layout act = q4_from_int_linear(q4_synthetic_int_linear(IntLayout::GptqV2, 256, 8, 128, true, 3));
  const Q4Layout plain = q4_from_int_linear(q4_synthetic_int_linear(IntLayout::GptqV1, 256, 8, 128, false, 3));
  std::vector<uint16_t> xa(static_cast<size_t>(2 * (256 + 16)));
  std::vector<float> B(8 * 16), y(16);
  const auto call = [&](const Q4Layout& q, int64_t ra, int64_t rb) {
    return [&q, &xa, &B, &y, ra, rb] {
      qgemm_int4_dense_lowrank_ref(q.view(), xa.data(), Q4LowRank{ra, B.data(), rb}, 2, y.data());
    };
  };
  test::expect_error(call(act, 16, 16), {"qgemm_int4_dense_lowrank_ref", "act-order"});
  test::expect_error(call(plain, 12, 12), {"ra=12", "multiple of 8"});
  test::expect_error(call(plain, 8, 9), "rb=9");
}

TEST(LoraFold, TransposedLowRankReferenceIsTheInputGradientPlusTheTerm) {
  for (const FoldCase& c : fold_cases()) {
    SCOPED_TRACE(c.name);
    const int64_t M = 3, ld = c.q.N + c.ra, K = c.q.Kp;
    Rng rng(22);
    std::vector<uint16_t> dya(static_cast<size_t>(M * ld));
    for (uint16_t& v : dya) v = f32_to_bf16(rng.uniform(-1.0f, 1.0f));  // nonzero past rb too: must not be read
    std::vector<float> A(static_cast<size_t>(c.rb * K));
    for (float& v : A) v = rng.uniform(-0.5f, 0.5f);
    std::vector<double> mag;
    const std::vector<uint16_t> wb = dense_bf16(c.q);
    const std::vector<double> want = rows_times(
        dya, ld, M, K, c.q.N, c.rb, [&](int64_t n, int64_t k) { return bf16_to_f32(wb[n * K + k]); },
        [&](int64_t j, int64_t k) { return bf16_round(A[j * K + k]); }, &mag);
    std::vector<float> prior(static_cast<size_t>(M * K));
    for (float& v : prior) v = rng.uniform(-2.0f, 2.0f);
    for (const bool accumulate : {false, true}) {
      SCOPED_TRACE(accumulate ? "accumulated" : "written");
      std::vector<float> dx = prior;
      qgemm_int4_t_dense_lowrank_ref(c.q.view(), dya.data(), Q4LowRankT{c.ra, A.data(), c.rb}, M, dx.data(),
                                     accumulate);
      double worst = 0;
      for (size_t i = 0; i < dx.size(); ++i) {
        const double base = accumulate ? prior[i] : 0.0;
        // One more rounding when the sum is added to dx: u·|dx|.
        const double tol = kSumTol * kU * std::sqrt(static_cast<double>(c.q.N + c.rb)) * mag[i] +
                           (accumulate ? 2 * kU * std::fabs(base + want[i]) : 0.0);
        worst = std::max(worst, std::fabs(dx[i] - (base + want[i])) / tol);
      }
      EXPECT_LE(worst, 1.0) << "outside the summation-order tolerance";
    }
    // The term matters: without it the outputs move by far more than the tolerance.
    std::vector<float> zero_a(A.size(), 0.0f), dx(prior.size()), dx0(prior.size());
    qgemm_int4_t_dense_lowrank_ref(c.q.view(), dya.data(), Q4LowRankT{c.ra, A.data(), c.rb}, M, dx.data(), false);
    qgemm_int4_t_dense_lowrank_ref(c.q.view(), dya.data(), Q4LowRankT{c.ra, zero_a.data(), c.rb}, M, dx0.data(),
                                   false);
    double moved = 0;
    for (size_t i = 0; i < dx.size(); ++i) moved = std::max(moved, static_cast<double>(std::fabs(dx[i] - dx0[i])));
    EXPECT_GT(moved, 1e-3);
  }
  const Q4Layout act = q4_from_int_linear(q4_synthetic_int_linear(IntLayout::GptqV2, 256, 8, 128, true, 3));
  const Q4Layout padded = q4_from_int_linear(q4_synthetic_int_linear(IntLayout::AwqGemm, 100, 8, 64, false, 3));
  const Q4Layout plain = q4_from_int_linear(q4_synthetic_int_linear(IntLayout::GptqV1, 256, 8, 128, false, 3));
  ASSERT_GT(padded.Kp, padded.K);
  std::vector<uint16_t> dya(static_cast<size_t>(2 * (8 + 16)));
  std::vector<float> A(16 * 256), dx(2 * 256);
  const auto call = [&](const Q4Layout& q, int64_t ra, int64_t rb) {
    return [&q, &dya, &A, &dx, ra, rb] {
      qgemm_int4_t_dense_lowrank_ref(q.view(), dya.data(), Q4LowRankT{ra, A.data(), rb}, 2, dx.data(), false);
    };
  };
  test::expect_error(call(act, 16, 16), {"qgemm_int4_t_dense_lowrank_ref", "act-order"});
  test::expect_error(call(padded, 16, 16), {"qgemm_int4_t_dense_lowrank_ref", "Kp=104 != K=100"});
  test::expect_error(call(plain, 12, 12), {"ra=12", "multiple of 8"});
  test::expect_error(call(plain, 8, 9), "rb=9");
}

// The memory the fold adds, with and without the switch and the overlap's pieces.
TEST(LoraFold, TheScratchAndAct16CountTheAdapterColumns) {
  const test::ScopedEnv overlap("QWENQ_QGEMM_OVERLAP", nullptr);
  // k_proj [512, 3584]: the transposed copy's ra rows (528 x 3584) outweigh the forward's ra columns (512 x 3600).
  EXPECT_EQ(qgemm_dense_scratch_bytes(512, 3584, 16), (512 + 16) * 3584 * 2);
  // gate_proj [18944, 3584]: the forward's columns outweigh the transposed copy's rows.
  EXPECT_EQ(qgemm_dense_scratch_bytes(18944, 3584, 16), 18944 * (3584 + 16) * 2);
  EXPECT_EQ(qgemm_dense_scratch_bytes(512, 3584), 512 * 3584 * 2);
  {
    const test::ScopedEnv on("QWENQ_QGEMM_OVERLAP", "1");
    // 18944 x 3584: four pieces along K (3584 / 8 = 448 word-rows, pieces of 128): two buffers of N·(8·128 + ra).
    EXPECT_EQ(qgemm_dense_scratch_bytes(18944, 3584, 16), std::max<int64_t>(2 * (18944 * 8 * 128 + 18944 * 16) * 2,
                                                                          qgemm_dense_scratch_bytes(18944, 3584)));
    EXPECT_GT(qgemm_dense_scratch_bytes(18944, 3584, 16), qgemm_dense_scratch_bytes(18944, 3584));
    // 896 x 18944 cut along N for the transposed product (pieces of 256 rows, the last has A's 16 more) and along
    // K for the forward (pieces of 608 word-rows): two buffers of (256 + 16) x 18944, more than 896 x (4864 + 16).
    EXPECT_EQ(qgemm_dense_scratch_bytes(896, 18944, 16), 2 * (256 + 16) * 18944 * 2);
    EXPECT_GT(2 * (256 + 16) * 18944, 2 * 896 * (4864 + 16));
  }
  const QwenConfig c = qwen_preset("tiny");
  ASSERT_GT(c.intermediate_size, std::max(c.hidden_size, c.num_heads * c.head_dim));  // act16's width
  const auto act16_words = [&](int64_t r) {
    for (const LoraCudaBuffer& b : lora_cuda_batch_buffers(c, c.num_layers, r, true, true, false))
      if (b.id == LoraCudaBufferId::Act16) return b.words;
    return int64_t{-1};
  };
  {
    const test::ScopedEnv off("QWENQ_LORA_FOLD", nullptr);
    EXPECT_FALSE(qgemm_lora_fold_enabled());
    EXPECT_EQ(lora_cuda_fold_cols(13), 0);
    EXPECT_EQ(act16_words(13), c.intermediate_size / 2);
  }
  const test::ScopedEnv on("QWENQ_LORA_FOLD", "1");
  EXPECT_TRUE(qgemm_lora_fold_enabled());
  EXPECT_EQ(lora_cuda_fold_cols(13), 16);
  EXPECT_EQ(lora_cuda_fold_cols(16), 16);
  EXPECT_EQ(lora_cuda_fold_cols(64), 64);
  EXPECT_EQ(act16_words(13), (c.intermediate_size + 16) / 2);
}

}  // namespace
}  // namespace qwenq
