// kernels/kld_rows.h: the CUDA twins of llama.cpp's base-file encoding and scoring against the CPU twins, over widths
// 1, 3, 17, 511..513, 4097 and Qwen's 151936 / 152064 (odd widths: the padding value), 1 to 110 rows (a logits
// block at Qwen's vocabulary), logits with a tail more than 16 below the top (codes 0) and ties:
//   encode  codes and scale bit for bit; min_log_prob and the nll within kLseUlps float ulps of their terms' size
//           (|lo − m| + |lse|, |m| + |lse|: lse moves with the exponentials' sum order and expf's last bits, and a
//           difference like m + lse − z_t keeps that absolute error however small it is); the padding 0;
//   score   (against the CPU's encoding) the arg-maxima exact, kld and the NLLs within the double reordering bound.
// Also the refusals with the refs' messages.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cuda_check.cuh"
#include "kernels/kld_rows.h"
#include "tests/gpu/gpu_test.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_random.h"

namespace qwenq {
namespace {

using test::DeviceBuffer;

constexpr int kLseUlps = 4;

float field(const uint16_t* row, int k) {
  float f;
  std::memcpy(&f, row + 2 * k, sizeof f);
  return f;
}

// One float ulp at magnitude x (> 0).
double ulp_at(double x) { return std::ldexp(1.0, std::ilogb(x) - 23); }

TEST(KldRowsCuda, EncodeAndScoreMatchTheTwins) {
  QWENQ_REQUIRE_GPU();
  for (int64_t V : {int64_t{1}, int64_t{3}, int64_t{17}, int64_t{511}, int64_t{512}, int64_t{513}, int64_t{4097},
                    int64_t{151936}, int64_t{152064}}) {
    for (int64_t rows : {int64_t{1}, int64_t{7}, int64_t{110}}) {
      if (rows == 110 && V < 151936) continue;
      SCOPED_TRACE(::testing::Message() << "V " << V << " rows " << rows);
      std::vector<float> z = test::normal_vector(rows * V, 7 + V + rows, 4.f), q = z;
      const std::vector<float> noise = test::normal_vector(rows * V, 8 + V, 0.2f);
      for (size_t i = 0; i < q.size(); ++i) q[i] += noise[i];
      for (int64_t r = 0; r < rows; ++r) {  // a top 30 above the rest in every other row: a tail of code 0
        if (r % 2 == 1) z[r * V + (r % V)] += 30.f;
      }
      std::vector<int32_t> t(static_cast<size_t>(rows));
      for (int64_t r = 0; r < rows; ++r) t[r] = static_cast<int32_t>((r * 7919 + 3) % V);
      const int64_t nv = kld_row_width(V);
      std::vector<uint16_t> want(static_cast<size_t>(rows * nv), 0xFFFF);
      std::vector<float> nll_want(static_cast<size_t>(rows));
      kld_encode_rows_ref(z.data(), rows, V, t.data(), want.data(), nll_want.data());
      DeviceBuffer<float> dz(z), dq(q), dnll(static_cast<size_t>(rows));
      DeviceBuffer<int32_t> dt(t);
      DeviceBuffer<uint16_t> drows(std::vector<uint16_t>(want.size(), 0xFFFF));
      kld_encode_rows_cuda(dz.get(), rows, V, dt.get(), drows.get(), dnll.get());
      QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
      const std::vector<uint16_t> got = drows.download();
      const std::vector<float> nll_got = dnll.download();
      int64_t bad_codes = 0;
      for (int64_t r = 0; r < rows; ++r) {
        const uint16_t* a = want.data() + r * nv;
        const uint16_t* b = got.data() + r * nv;
        const float* zr = z.data() + r * V;
        const double m = *std::max_element(zr, zr + V);
        const double lse = double(nll_want[r]) - m + zr[t[r]];  // the CPU's lse, to the size of its terms
        const double lo_m = std::fabs(double(field(a, 1)) + lse);  // |lo − m|
        EXPECT_EQ(field(b, 0), field(a, 0)) << "scale of row " << r;
        EXPECT_LE(std::fabs(double(field(b, 1)) - field(a, 1)), kLseUlps * ulp_at(lo_m + std::fabs(lse) + 1e-30))
            << "min_log_prob of row " << r;
        EXPECT_LE(std::fabs(double(nll_got[r]) - nll_want[r]), kLseUlps * ulp_at(std::fabs(m) + std::fabs(lse) + 1e-30))
            << "nll of row " << r;
        for (int64_t v = 4; v < nv; ++v) bad_codes += a[v] != b[v];
      }
      EXPECT_EQ(bad_codes, 0) << "codes (and padding) differ";
      // Scoring q against the CPU's encoding.
      std::vector<KlRow> sw(static_cast<size_t>(rows));
      kld_score_rows_ref(want.data(), q.data(), rows, V, t.data(), sw.data());
      DeviceBuffer<uint16_t> dbase(want);
      DeviceBuffer<KlRow> dout(static_cast<size_t>(rows));
      kld_score_rows_cuda(dbase.get(), dq.get(), rows, V, dt.get(), dout.get());
      QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
      const std::vector<KlRow> sg = dout.download();
      for (int64_t r = 0; r < rows; ++r) {
        const double tol = 8.0 * double(V) * 0x1p-53 * (1.0 + std::fabs(sw[r].nll) + 2 * std::log(double(V)) + 60);
        EXPECT_EQ(sg[r].top, sw[r].top) << r;
        EXPECT_EQ(sg[r].top_base, sw[r].top_base) << r;
        EXPECT_NEAR(sg[r].kld, sw[r].kld, tol) << r;
        EXPECT_EQ(sg[r].nll_base, sw[r].nll_base) << r;  // one decoded float, widened
        EXPECT_NEAR(sg[r].nll, sw[r].nll, tol) << r;
      }
    }
  }
}

TEST(KldRowsCuda, RefusesTargetsOutsideTheVocabulary) {
  QWENQ_REQUIRE_GPU();
  DeviceBuffer<float> z(std::vector<float>(8, 0.f));
  DeviceBuffer<int32_t> t(std::vector<int32_t>{1, -100});
  DeviceBuffer<uint16_t> rows(2 * kld_row_width(4));
  DeviceBuffer<float> nll(2);
  DeviceBuffer<KlRow> out(2);
  test::expect_error([&] { kld_encode_rows_cuda(z.get(), 2, 4, t.get(), rows.get(), nll.get()); },
                     {"kld_encode_rows_cuda", "target -100 of row 1", "[0, 4)"});
  test::expect_error([&] { kld_score_rows_cuda(rows.get(), z.get(), 2, 4, t.get(), out.get()); },
                     {"kld_score_rows_cuda", "target -100 of row 1"});
}

}  // namespace
}  // namespace qwenq
