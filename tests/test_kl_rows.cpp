// kernels/kl_rows.h's CPU twin against the definition summed in long double (log-softmax of each row, then
// Σ P (log P − log Q)), over widths from 1 to Qwen's vocabularies; the arg-max rules (first index of ties, NaN
// skipped); ignored targets; the refusals. The GPU twin is compared with this one in tests/gpu/test_kl_rows_cuda.cpp.
// (trainer/kl_divergence's kl_position is this on one row: tests/test_kl_divergence.cpp checks it against torch.)
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/kl_rows.h"
#include "kernels/loss.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_random.h"

namespace qwenq {
namespace {

// Double sums of V terms in index order against long double: each sum within about V·2⁻⁵³ relative, and kld and
// the NLLs are differences of terms of size `magnitude` (the log-sum-exps): a few times V·2⁻⁵³·magnitude.
double kl_tol(int64_t V, double magnitude) { return 4.0 * static_cast<double>(V) * 0x1p-53 * (1.0 + magnitude); }

struct Exact {
  long double kld, nll_base, nll, lse_b, lse_q;
};

Exact exact_row(const float* b, const float* q, int64_t V, int32_t t) {
  long double mb = b[0], mq = q[0];
  for (int64_t v = 0; v < V; ++v) {
    mb = std::max<long double>(mb, b[v]);
    mq = std::max<long double>(mq, q[v]);
  }
  long double sb = 0, sq = 0;
  for (int64_t v = 0; v < V; ++v) {
    sb += std::exp(static_cast<long double>(b[v]) - mb);
    sq += std::exp(static_cast<long double>(q[v]) - mq);
  }
  Exact e{};
  e.lse_b = mb + std::log(sb);
  e.lse_q = mq + std::log(sq);
  for (int64_t v = 0; v < V; ++v) {
    const long double lp = b[v] - e.lse_b, lq = q[v] - e.lse_q;
    e.kld += std::exp(lp) * (lp - lq);
  }
  if (t != kIgnoreIndex) {
    e.nll_base = e.lse_b - b[t];
    e.nll = e.lse_q - q[t];
  }
  return e;
}

TEST(KlRows, RefEqualsTheDefinitionInLongDouble) {
  for (int64_t V : {int64_t{1}, int64_t{2}, int64_t{7}, int64_t{512}, int64_t{513}, int64_t{32000}, int64_t{151936},
                    int64_t{152064}}) {
    const int64_t rows = V > 100000 ? 3 : 9;
    std::vector<float> b = test::normal_vector(rows * V, 7 + V, 3.f), q = b;
    const std::vector<float> noise = test::normal_vector(rows * V, 11 + V, 0.3f);
    for (size_t i = 0; i < q.size(); ++i) q[i] += noise[i];
    std::vector<int32_t> targets(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) targets[r] = r % 3 == 2 ? kIgnoreIndex : static_cast<int32_t>((r * 7919) % V);
    std::vector<KlRow> out(static_cast<size_t>(rows));
    kl_rows_ref(b.data(), q.data(), rows, V, targets.data(), out.data());
    for (int64_t r = 0; r < rows; ++r) {
      SCOPED_TRACE(::testing::Message() << "V " << V << " row " << r);
      const float* br = b.data() + r * V;
      const float* qr = q.data() + r * V;
      const Exact e = exact_row(br, qr, V, targets[r]);
      const double tol = kl_tol(V, std::fabs(static_cast<double>(e.lse_b)) + std::fabs(static_cast<double>(e.lse_q)));
      EXPECT_NEAR(out[r].kld, static_cast<double>(e.kld), tol);
      EXPECT_GE(out[r].kld, -tol);
      EXPECT_NEAR(out[r].nll_base, static_cast<double>(e.nll_base), tol);
      EXPECT_NEAR(out[r].nll, static_cast<double>(e.nll), tol);
      if (targets[r] == kIgnoreIndex) {
        EXPECT_TRUE(out[r].nll == 0.0 && out[r].nll_base == 0.0);
      }
      EXPECT_EQ(out[r].top_base, std::max_element(br, br + V) - br);  // no ties in random normals
      EXPECT_EQ(out[r].top, std::max_element(qr, qr + V) - qr);
    }
  }
}

TEST(KlRows, ArgMaxTakesTheFirstOfTiesAndSkipsNan) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // Row 0: ties at 1 and 2 (base), 0 and 2 (model). Row 1: a NaN first, then the largest at 2. Row 2: all NaN.
  const std::vector<float> b = {1, 3, 3, nan, 0, 5, nan, nan, nan};
  const std::vector<float> q = {3, 1, 3, nan, 2, 1, nan, nan, nan};
  const std::vector<int32_t> t = {0, kIgnoreIndex, 1};
  std::vector<KlRow> out(3);
  kl_rows_ref(b.data(), q.data(), 3, 3, t.data(), out.data());
  EXPECT_EQ(out[0].top_base, 1);
  EXPECT_EQ(out[0].top, 0);
  EXPECT_EQ(out[1].top_base, 2);
  EXPECT_EQ(out[1].top, 1);
  EXPECT_TRUE(std::isnan(out[1].kld));  // the NaN reaches the sums
  EXPECT_EQ(out[2].top_base, 0);
  EXPECT_EQ(out[2].top, 0);
  EXPECT_TRUE(std::isnan(out[2].kld) && std::isnan(out[2].nll));
  // A row against itself: exactly 0.
  kl_rows_ref(b.data(), b.data(), 1, 3, t.data(), out.data());
  EXPECT_EQ(out[0].kld, 0.0);
}

TEST(KlRows, RefusesBadTargetsAndShapes) {
  const std::vector<float> x(8, 0.f);
  std::vector<KlRow> out(2);
  const std::vector<int32_t> bad = {0, 4};
  test::expect_error([&] { kl_rows_ref(x.data(), x.data(), 2, 4, bad.data(), out.data()); },
                     {"kl_rows_ref", "target 4 of row 1", "[0, 4)"});
  const std::vector<int32_t> neg = {-1, 0};
  test::expect_error([&] { kl_rows_ref(x.data(), x.data(), 2, 4, neg.data(), out.data()); },
                     {"kl_rows_ref", "target -1 of row 0"});
  test::expect_error([&] { kl_rows_ref(x.data(), x.data(), 2, 0, bad.data(), out.data()); },
                     {"kl_rows_ref", "bad shape"});
  test::expect_error([&] { kl_rows_ref(x.data(), x.data(), -1, 4, bad.data(), out.data()); },
                     {"kl_rows_ref", "bad shape"});
  kl_rows_ref(nullptr, nullptr, 0, 4, nullptr, nullptr);  // no rows: nothing read or written
}

}  // namespace
}  // namespace qwenq
