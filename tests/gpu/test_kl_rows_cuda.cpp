// kernels/kl_rows.h: the CUDA twin against the CPU twin over a sweep of widths (1, 3, 17, one either side of the
// 512-thread block, 4097, Qwen's 151936 and 152064) and row counts (1, 5, 64, and 512: a perplexity window), rows
// where the model is the base plus noise. The arg-maxima are exact (the same rule on the same values), so top_base and
// top must be equal; kld and the NLLs differ by the order of the double sums: within kl_tol (below). Also ties and
// NaN rows, two runs give the same bits (fixed order), the refusals with the ref's messages, rows = 0.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cuda_check.cuh"
#include "kernels/kl_rows.h"
#include "kernels/loss.h"
#include "tests/gpu/gpu_test.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_random.h"

namespace qwenq {
namespace {

using test::DeviceBuffer;

// Both twins sum V double terms, in different orders: each sum within about V·2⁻⁵³ relative of the exact one, and
// kld and the NLLs are differences of terms of the log-sum-exps' size.
double kl_tol(int64_t V, double magnitude) { return 8.0 * static_cast<double>(V) * 0x1p-53 * (1.0 + magnitude); }

std::vector<KlRow> run_cuda(const std::vector<float>& b, const std::vector<float>& q, int64_t rows, int64_t V,
                            const std::vector<int32_t>& t) {
  DeviceBuffer<float> db(b), dq(q);
  DeviceBuffer<int32_t> dt(t);
  DeviceBuffer<KlRow> dout(static_cast<size_t>(rows));
  kl_rows_cuda(db.get(), dq.get(), rows, V, dt.get(), dout.get());
  QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
  return dout.download();
}

TEST(KlRowsCuda, MatchesTheTwinOverWidthsAndRows) {
  QWENQ_REQUIRE_GPU();
  for (int64_t V : {int64_t{1}, int64_t{3}, int64_t{17}, int64_t{511}, int64_t{512}, int64_t{513}, int64_t{4097},
                    int64_t{151936}, int64_t{152064}}) {
    for (int64_t rows : {int64_t{1}, int64_t{5}, int64_t{64}, int64_t{512}}) {
      if (rows == 512 && V != 152064) continue;  // one window at Qwen2.5's width
      SCOPED_TRACE(::testing::Message() << "V " << V << " rows " << rows);
      std::vector<float> b = test::normal_vector(rows * V, 3 + V + rows, 3.f), q = b;
      const std::vector<float> noise = test::normal_vector(rows * V, 5 + V + rows, 0.3f);
      for (size_t i = 0; i < q.size(); ++i) q[i] += noise[i];
      std::vector<int32_t> t(static_cast<size_t>(rows));
      for (int64_t r = 0; r < rows; ++r) t[r] = r % 4 == 3 ? kIgnoreIndex : static_cast<int32_t>((r * 7919 + 1) % V);
      std::vector<KlRow> want(static_cast<size_t>(rows));
      kl_rows_ref(b.data(), q.data(), rows, V, t.data(), want.data());
      const std::vector<KlRow> got = run_cuda(b, q, rows, V, t);
      int bad = 0;
      for (int64_t r = 0; r < rows && bad < 5; ++r) {
        const float* br = b.data() + r * V;
        const float* qr = q.data() + r * V;
        const double mag = std::fabs(br[want[r].top_base]) + std::fabs(qr[want[r].top]) + 2 * std::log(double(V));
        const double tol = kl_tol(V, mag);
        const bool ok = got[r].top_base == want[r].top_base && got[r].top == want[r].top &&
                        std::fabs(got[r].kld - want[r].kld) <= tol &&
                        std::fabs(got[r].nll_base - want[r].nll_base) <= tol &&
                        std::fabs(got[r].nll - want[r].nll) <= tol;
        if (!ok) {
          ++bad;
          ADD_FAILURE() << "row " << r << ": top " << got[r].top_base << "/" << got[r].top << " want "
                        << want[r].top_base << "/" << want[r].top << ", kld " << got[r].kld << " want " << want[r].kld
                        << ", nll " << got[r].nll_base << "/" << got[r].nll << " want " << want[r].nll_base << "/"
                        << want[r].nll << " (tol " << tol << ")";
        }
      }
      if (V == 152064 && rows == 64) {  // fixed order: the same bits twice
        const std::vector<KlRow> again = run_cuda(b, q, rows, V, t);
        EXPECT_EQ(std::memcmp(again.data(), got.data(), got.size() * sizeof(KlRow)), 0);
      }
    }
  }
}

TEST(KlRowsCuda, TiesNanRowsAndRefusalsAreTheTwins) {
  QWENQ_REQUIRE_GPU();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // Ties and NaN at a width where the tied values sit in different threads' columns (0, 700, 1300 of 2000).
  const int64_t V = 2000;
  std::vector<float> b(3 * V, -1.f), q(3 * V, -2.f);
  b[0] = b[700] = b[1300] = 4.f;
  q[1300] = q[700] = 4.f;
  b[V + 0] = nan;
  b[V + 5] = 9.f;
  q[V + 999] = nan;
  for (int64_t v = 0; v < V; ++v) b[2 * V + v] = q[2 * V + v] = nan;
  const std::vector<int32_t> t = {700, kIgnoreIndex, 3};
  std::vector<KlRow> want(3);
  kl_rows_ref(b.data(), q.data(), 3, V, t.data(), want.data());
  const std::vector<KlRow> got = run_cuda(b, q, 3, V, t);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(got[r].top_base, want[r].top_base) << r;
    EXPECT_EQ(got[r].top, want[r].top) << r;
  }
  EXPECT_EQ(got[0].top_base, 0);
  EXPECT_EQ(got[0].top, 700);
  EXPECT_NEAR(got[0].kld, want[0].kld, kl_tol(V, 20));
  EXPECT_EQ(got[1].top_base, 5);
  EXPECT_TRUE(std::isnan(got[1].kld) && std::isnan(got[2].kld));

  DeviceBuffer<float> db(b), dq(q);
  DeviceBuffer<int32_t> bad(std::vector<int32_t>{0, static_cast<int32_t>(V), 1});
  DeviceBuffer<KlRow> dout(3);
  test::expect_error([&] { kl_rows_cuda(db.get(), dq.get(), 3, V, bad.get(), dout.get()); },
                     {"kl_rows_cuda", "target 2000 of row 1", "[0, 2000)"});
  test::expect_error([&] { kl_rows_cuda(db.get(), dq.get(), 3, 0, bad.get(), dout.get()); },
                     {"kl_rows_cuda", "bad shape"});
  kl_rows_cuda(nullptr, nullptr, 0, V, nullptr, nullptr);  // no rows: no launch
}

}  // namespace
}  // namespace qwenq
