// kernels/sum_reduce.h's CPU twins against oracles:
//   - sum_sq_diff_ref and column_abs_sum_ref against long-double sums of the same terms (kSumReduceRelTol, the
//     bound any summation order of non-negative double terms meets), over awkward sizes and a real Qwen width;
//   - exactly, where every term and partial sum is an integer (small integer inputs);
//   - both accumulate into their output (chunk by chunk = all at once, within the tolerance);
//   - column_abs_sum_ref / T rounded to fp32 is awq_activation_mean bit for bit (the GPU AWQ path's x̄ rests on it),
//     and sum_sq_diff_ref from 0 is the CPU AWQ loss loop's sum (the same expression in the same order);
//   - bad arguments give one clear error.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/sum_reduce.h"
#include "quant/awq.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_random.h"

namespace qwenq {
namespace {

constexpr uint64_t kSeed = 7301;

long double sum_sq_diff_oracle(const std::vector<float>& a, const std::vector<float>& b) {
  long double s = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const long double d = static_cast<long double>(a[i]) - b[i];
    s += d * d;
  }
  return s;
}

TEST(SumReduce, SumSqDiffMatchesALongDoubleSum) {
  for (int64_t n : {1, 2, 3, 17, 127, 65535, 65537, 896 * 33, (1 << 20) + 7}) {
    const auto a = test::normal_vector(n, kSeed + n, 3.f), b = test::normal_vector(n, kSeed + 2 * n, 3.f);
    double got = 0.0;
    sum_sq_diff_ref(a.data(), b.data(), n, &got);
    const long double want = sum_sq_diff_oracle(a, b);
    EXPECT_LE(std::fabs(static_cast<long double>(got) - want), kSumReduceRelTol(n) * want) << "n " << n;
  }
}

TEST(SumReduce, SumSqDiffIsExactOnIntegersAndAccumulates) {
  const int64_t n = 1001;
  std::vector<float> a(n), b(n);
  double want = 2.5;  // the starting value: the ref adds to it
  for (int64_t i = 0; i < n; ++i) {
    a[i] = static_cast<float>(i % 13);
    b[i] = static_cast<float>((i * 7) % 11) - 5.f;
    want += (a[i] - b[i]) * (a[i] - b[i]);  // small integers: every sum is exact
  }
  double got = 2.5;
  sum_sq_diff_ref(a.data(), b.data(), n, &got);
  EXPECT_EQ(got, want);
  // Chunk by chunk into one sum, as the GPU driver accumulates its chunks.
  double chunked = 2.5;
  for (int64_t i0 = 0; i0 < n; i0 += 300) sum_sq_diff_ref(a.data() + i0, b.data() + i0, std::min<int64_t>(300, n - i0), &chunked);
  EXPECT_EQ(chunked, want);
  double untouched = 1.0;
  sum_sq_diff_ref(nullptr, nullptr, 0, &untouched);
  EXPECT_EQ(untouched, 1.0) << "n = 0 adds nothing and reads nothing";
}

TEST(SumReduce, SumSqDiffIsTheAwqLossLoop) {
  // trainer/awq_model.cpp's loss before it used the twin: acc = 0; acc += d·d with d = double(a) − b.
  const int64_t n = 4099;
  const auto a = test::normal_vector(n, kSeed + 5, 0.7f), b = test::normal_vector(n, kSeed + 6, 0.7f);
  double loop = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    loop += d * d;
  }
  double got = 0.0;
  sum_sq_diff_ref(a.data(), b.data(), n, &got);
  EXPECT_EQ(got, loop);
}

TEST(SumReduce, ColumnAbsSumMatchesALongDoubleSumAndTheAwqMean) {
  struct Shape {
    int64_t T, K;
  };
  for (const Shape sh : {Shape{1, 1}, Shape{3, 17}, Shape{127, 33}, Shape{257, 896}, Shape{513, 100}}) {
    const auto x = test::normal_vector(sh.T * sh.K, kSeed + sh.T * 31 + sh.K, 2.f);
    std::vector<double> sum(static_cast<size_t>(sh.K), 0.0);
    column_abs_sum_ref(x.data(), sh.T, sh.K, sum.data());
    const std::vector<float> mean = awq_activation_mean(x.data(), sh.T, sh.K);
    for (int64_t k = 0; k < sh.K; ++k) {
      long double want = 0;
      for (int64_t t = 0; t < sh.T; ++t) want += std::fabs(static_cast<long double>(x[t * sh.K + k]));
      EXPECT_LE(std::fabs(static_cast<long double>(sum[k]) - want), kSumReduceRelTol(sh.T) * want)
          << "T " << sh.T << " K " << sh.K << " k " << k;
      EXPECT_EQ(static_cast<float>(sum[k] / sh.T), mean[k]) << "T " << sh.T << " K " << sh.K << " k " << k;
    }
  }
}

TEST(SumReduce, ColumnAbsSumAccumulatesOverRowChunks) {
  const int64_t T = 40, K = 6;
  std::vector<float> x(T * K);
  for (int64_t i = 0; i < T * K; ++i) x[i] = static_cast<float>((i % 9) - 4);  // integers: exact sums
  std::vector<double> whole(K, 1.0), chunked(K, 1.0);
  column_abs_sum_ref(x.data(), T, K, whole.data());
  column_abs_sum_ref(x.data(), 15, K, chunked.data());
  column_abs_sum_ref(x.data() + 15 * K, T - 15, K, chunked.data());
  for (int64_t k = 0; k < K; ++k) {
    double want = 1.0;
    for (int64_t t = 0; t < T; ++t) want += std::fabs(x[t * K + k]);
    EXPECT_EQ(whole[k], want) << "k " << k;
    EXPECT_EQ(chunked[k], want) << "k " << k;
  }
}

TEST(SumReduce, BadArgumentsAreRefused) {
  double s = 0.0;
  float v = 1.f;
  EXPECT_NE(test::error_of([&] { sum_sq_diff_ref(&v, &v, -1, &s); }).find("sum_sq_diff_ref: negative size -1"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { sum_sq_diff_ref(&v, nullptr, 1, &s); }).find("sum_sq_diff_ref: null input"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { column_abs_sum_ref(&v, 1, 0, &s); }).find("column_abs_sum_ref: bad shape [1, 0]"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { column_abs_sum_ref(&v, 1, 1, nullptr); }).find("column_abs_sum_ref: null sum"),
            std::string::npos);
}

}  // namespace
}  // namespace qwenq
