// kernels/sum_reduce.h: the CUDA reductions against their CPU twins over a sweep of sizes: awkward ones (1, 3, 17,
// 127, one element either side of the 64K chunk, fewer rows than one slice of 256, a partial 32-column tile) and
// the AWQ search's real ones (T·C of a 512-token chunk of Qwen2.5-0.5B/7B for the loss; [T, K] inputs of width
// 896, 3584 and 18944 for the column sums).
//
// Tolerance: kSumReduceRelTol(m) = 4·m·2⁻⁵³ relative (sum_reduce.h: both sides sum the same non-negative double
// terms in different orders, each within (m − 1)·2⁻⁵³ of the exact sum; the squares may be fused on the GPU).
// Also: the sums accumulate into a non-zero starting value, the kernels never write past sum[K] (a guard value),
// two runs give the same bits (fixed order, no atomics), and n = 0 / T = 0 leave the sum untouched.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cuda_check.cuh"
#include "kernels/sum_reduce.h"
#include "tests/gpu/gpu_test.h"
#include "tests/support/test_random.h"

namespace qwenq {
namespace {

using test::DeviceBuffer;

TEST(SumReduceCuda, SumSqDiffMatchesTheTwin) {
  QWENQ_REQUIRE_GPU();
  for (int64_t n : {int64_t{1}, int64_t{3}, int64_t{17}, int64_t{127}, int64_t{65535}, int64_t{65536},
                    int64_t{65537}, int64_t{3 * 65536 + 5}, int64_t{512 * 896}, int64_t{512 * 3584},
                    (int64_t{1} << 22) + 3}) {
    const auto a = test::normal_vector(n, 11 + n, 2.f), b = test::normal_vector(n, 13 + n, 2.f);
    DeviceBuffer<float> da(a), db(b);
    const double start = 1.5;
    double want = start;
    sum_sq_diff_ref(a.data(), b.data(), n, &want);
    DeviceBuffer<double> dsum(std::vector<double>{start});
    sum_sq_diff_cuda(da.get(), db.get(), n, dsum.get());
    QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
    const double got = dsum.download()[0];
    EXPECT_LE(std::fabs(got - want), kSumReduceRelTol(n) * want) << "n " << n;
    DeviceBuffer<double> again(std::vector<double>{start});
    sum_sq_diff_cuda(da.get(), db.get(), n, again.get());
    QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
    const double got2 = again.download()[0];
    EXPECT_EQ(std::memcmp(&got, &got2, sizeof got), 0) << "n " << n << ": two runs differ";
  }
  // Chunk by chunk into one sum (the AWQ runner's use), and n = 0.
  const int64_t n = 200000;
  const auto a = test::normal_vector(n, 5, 1.f), b = test::normal_vector(n, 6, 1.f);
  DeviceBuffer<float> da(a), db(b);
  double want = 0.0;
  sum_sq_diff_ref(a.data(), b.data(), n, &want);
  DeviceBuffer<double> dsum(std::vector<double>{0.0});
  for (int64_t i0 = 0; i0 < n; i0 += 70001)
    sum_sq_diff_cuda(da.get() + i0, db.get() + i0, std::min<int64_t>(70001, n - i0), dsum.get());
  sum_sq_diff_cuda(da.get(), db.get(), 0, dsum.get());
  QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_LE(std::fabs(dsum.download()[0] - want), kSumReduceRelTol(n) * want);
}

TEST(SumReduceCuda, ColumnAbsSumMatchesTheTwin) {
  QWENQ_REQUIRE_GPU();
  struct Shape {
    int64_t T, K;
  };
  for (const Shape sh : {Shape{1, 1}, Shape{3, 17}, Shape{127, 33}, Shape{255, 31}, Shape{256, 32}, Shape{257, 896},
                         Shape{1000, 3584}, Shape{2048, 18944}, Shape{4097, 1536}, Shape{16385, 64}}) {
    const auto x = test::normal_vector(sh.T * sh.K, 17 * sh.T + sh.K, 3.f);
    const double start = 0.25, guard = -7.0;
    std::vector<double> want(static_cast<size_t>(sh.K), start);
    column_abs_sum_ref(x.data(), sh.T, sh.K, want.data());
    std::vector<double> init(static_cast<size_t>(sh.K), start);
    init.push_back(guard);
    DeviceBuffer<float> dx(x);
    DeviceBuffer<double> dsum(init), again(init);
    column_abs_sum_cuda(dx.get(), sh.T, sh.K, dsum.get());
    column_abs_sum_cuda(dx.get(), sh.T, sh.K, again.get());
    QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<double> got = dsum.download(), got2 = again.download();
    EXPECT_EQ(got[sh.K], guard) << "T " << sh.T << " K " << sh.K << ": wrote past sum[K]";
    EXPECT_EQ(std::memcmp(got.data(), got2.data(), got.size() * sizeof(double)), 0)
        << "T " << sh.T << " K " << sh.K << ": two runs differ";
    int bad = 0;
    for (int64_t k = 0; k < sh.K; ++k) {
      if (std::fabs(got[k] - want[k]) > kSumReduceRelTol(sh.T + 1) * want[k] && ++bad <= 3) {
        ADD_FAILURE() << "T " << sh.T << " K " << sh.K << " k " << k << ": " << got[k] << " vs " << want[k];
      }
    }
    EXPECT_EQ(bad, 0) << "T " << sh.T << " K " << sh.K;
  }
  // T = 0 leaves the sums untouched.
  DeviceBuffer<double> dsum(std::vector<double>{1.0, 2.0});
  DeviceBuffer<float> dx(std::vector<float>{1.f, 2.f});
  column_abs_sum_cuda(dx.get(), 0, 2, dsum.get());
  QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(dsum.download(), (std::vector<double>{1.0, 2.0}));
}

}  // namespace
}  // namespace qwenq
