// kernels/kld_rows.h's CPU twins over many rows at once: each row exactly what the one-row calls of trainer/kld_file
// write and score (tests/test_kld_file.cpp holds the numpy and torch goldens of those), the padding value of an odd
// vocabulary, a constant row (scale 0: every code 0), and the refusals (the CUDA twins check with the same function).
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "kernels/kld_rows.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_random.h"
#include "trainer/kld_file.h"

namespace qwenq {
namespace {

TEST(KldRows, ManyRowsAreTheOneRowCalls) {
  const int64_t V = 513, rows = 9, nv = kld_row_width(V);
  ASSERT_EQ(nv, kld_row_values(V));
  std::vector<float> z = test::normal_vector(rows * V, 3, 5.f), q = test::normal_vector(rows * V, 4, 5.f);
  for (int64_t v = 0; v < V; ++v) z[4 * V + v] = 1.25f;  // row 4 constant: scale 0
  std::vector<int32_t> t(rows);
  for (int64_t r = 0; r < rows; ++r) t[r] = static_cast<int32_t>((r * 101) % V);
  std::vector<uint16_t> enc(rows * nv, 0xFFFF), one(nv, 0xFFFF);
  std::vector<float> nll(rows);
  kld_encode_rows_ref(z.data(), rows, V, t.data(), enc.data(), nll.data());
  std::vector<KlRow> scored(rows);
  kld_score_rows_ref(enc.data(), q.data(), rows, V, t.data(), scored.data());
  for (int64_t r = 0; r < rows; ++r) {
    SCOPED_TRACE(r);
    const double n1 = kld_encode_row(z.data() + r * V, V, t[r], one.data());
    EXPECT_EQ(std::memcmp(one.data(), enc.data() + r * nv, nv * sizeof(uint16_t)), 0);
    EXPECT_EQ(static_cast<double>(nll[r]), n1);
    EXPECT_EQ(enc[r * nv + nv - 1], 0) << "the padding value of an odd vocabulary";
    const KlPosition p = kl_position_vs_row(enc.data() + r * nv, q.data() + r * V, V, t[r]);
    const KlPosition s = kl_position_of(scored[r], t[r]);
    EXPECT_EQ(s.kld, p.kld);
    EXPECT_EQ(s.nll, p.nll);
    EXPECT_EQ(s.nll_base, p.nll_base);
    EXPECT_EQ(s.same_top1, p.same_top1);
  }
  float scale;
  std::memcpy(&scale, enc.data() + 4 * nv, sizeof scale);
  EXPECT_EQ(scale, 0.f);
  for (int64_t v = 0; v < V; ++v) EXPECT_EQ(enc[4 * nv + 4 + v], 0);
}

TEST(KldRows, RefusesTargetsOutsideTheVocabulary) {
  const std::vector<float> z(8, 0.f);
  std::vector<uint16_t> rows(2 * kld_row_width(4));
  std::vector<float> nll(2);
  std::vector<KlRow> out(2);
  const std::vector<int32_t> bad = {0, 4};
  test::expect_error([&] { kld_encode_rows_ref(z.data(), 2, 4, bad.data(), rows.data(), nll.data()); },
                     {"kld_encode_rows_ref", "target 4 of row 1", "[0, 4)"});
  test::expect_error([&] { kld_score_rows_ref(rows.data(), z.data(), 2, 4, bad.data(), out.data()); },
                     {"kld_score_rows_ref", "target 4 of row 1"});
  test::expect_error([&] { kld_encode_rows_ref(z.data(), 2, 0, bad.data(), rows.data(), nll.data()); },
                     {"kld_encode_rows_ref", "bad shape"});
}

}  // namespace
}  // namespace qwenq
