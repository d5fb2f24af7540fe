// The tensor-core decode product's launch plan (kernels/qgemm_decode_plan.h): how many K splits, their word-rows and
// the block's shared memory, for an SM occupancy the launcher gets from the runtime. The GPU cannot be asked here,
// so the tests model an H200 SM: 228 KB of shared memory (1 KB reserved per block) and the kernel's registers
// (123 per thread at MT = 1: 4 blocks of 128 threads; 163 at MT = 2: 3; 229 at MT = 4: 2; ptxas for sm_90a).
//
// Oracles:
//   - the layout arithmetic, independent of the plan: every split non-empty and together covering K, shared memory
//     within the kernel's 64 KB, at least the fewest splits that fit (a linear scan here);
//   - the wave count: the extra splits never add a wave to what the fewest splits that fit need;
//   - the rule it replaced (a fixed 4 blocks per SM, the most splits of one wave, rounded down, then more while
//     shared memory did not fit): where that rule's one wave is right, the same split count;
//   - the worked cases the header gives (72B gate/up at M = 1 and 16, 7B q_proj at M = 1 and 32, 72B down_proj at
//     M = 5), computed by hand from the layout.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "kernels/qgemm_decode_plan.h"
#include "tests/support/test_errors.h"

namespace qwenq {
namespace {

using decode_mma::kMaxSmem;
using decode_mma::kRowsPerIt;

constexpr int64_t kSmBytes = 228 * 1024, kReservedPerBlock = 1024;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The modelled SM: registers, then shared memory.
int resident_model(int mt, int64_t smem) {
  const int regs = mt == 1 ? 4 : (mt == 2 ? 3 : 2);
  return static_cast<int>(std::min<int64_t>(regs, kSmBytes / (smem + kReservedPerBlock)));
}

// A launch as qgemm_int4_decode_mma_cuda sets it up: Mk kernel rows (3M for F32 activations' pieces).
struct Launch {
  int64_t K, N, Mk, group;
  int mt() const { return Mk <= 16 ? 1 : (Mk <= 32 ? 2 : 4); }
  int64_t quads() const { return ceil_div(K / 8, kRowsPerIt); }
  int64_t tiles() const { return ceil_div(N, 128) * ceil_div(Mk, 16 * mt()); }
  int x_rows() const { return static_cast<int>(std::min<int64_t>(Mk, 16 * mt())); }
  int64_t groups() const { return ceil_div(K, group); }
  std::string name() const {
    return "K=" + std::to_string(K) + " N=" + std::to_string(N) + " Mk=" + std::to_string(Mk) +
           " group=" + std::to_string(group);
  }
};

int64_t smem_of(const Launch& l, int64_t rps) {
  return decode_mma::smem_bytes(l.x_rows(), rps, decode_mma::meta_rows_of(rps, l.group, l.groups()));
}

decode_mma::Plan plan_of(const Launch& l, int64_t sms, int fixed_resident = 0) {
  return decode_mma::plan(l.quads(), l.tiles(), sms, l.x_rows(), l.group, l.groups(), [&](int64_t smem) {
    return fixed_resident > 0 ? fixed_resident : resident_model(l.mt(), smem);
  });
}

// The rule before the occupancy: 4 blocks per SM assumed.
int64_t fixed_four_splits(const Launch& l, int64_t sms) {
  const int64_t quads = l.quads();
  int64_t s = std::clamp<int64_t>(4 * sms / l.tiles(), 1, std::max<int64_t>(1, quads / 2));
  int64_t rps = 0;
  for (;; ++s) {
    rps = ceil_div(quads, s) * kRowsPerIt;
    if (smem_of(l, rps) <= kMaxSmem || rps == kRowsPerIt) break;
  }
  return ceil_div(quads * kRowsPerIt, rps);
}

TEST(QgemmDecodePlan, WorkedCases) {
  struct Case {
    Launch l;
    int64_t splits, smem;
  };
  const Case cases[] = {
      {{8192, 29568, 1, 128}, 2, 33808},    // 72B gate/up, one token: one wave of 462 blocks in 528 places
      {{8192, 29568, 16, 128}, 6, 50304},   // 16 tokens: 5 splits fit at 61 KB (3 per SM); 6 at 50 KB (4 per SM)
      {{3584, 3584, 1, 128}, 16, 2448},     // 7B q_proj: 18 splits of 7 quads cover K in 16
      {{3584, 3584, 32, 128}, 14, 18688},   // 32 rows: MT = 2, 3 blocks per SM, 392 of 396 places
      {{29568, 8192, 5, 128}, 16, 45392},   // 72B down_proj, 5 rows: 12 splits fit at 3 per SM, 16 at 4 per SM
  };
  for (const Case& c : cases) {
    const decode_mma::Plan p = plan_of(c.l, 132);
    EXPECT_EQ(p.splits, c.splits) << c.l.name();
    EXPECT_EQ(p.smem, c.smem) << c.l.name();
  }
  // The fixed-four rule on the same launches: 5 splits at 16 tokens (2.9 waves of the 396 places there are), 16
  // at 32 rows (18 planned, K covered in 16: 448 blocks, 1.13 waves of 396), 12 for the down_proj.
  EXPECT_EQ(fixed_four_splits(cases[1].l, 132), 5);
  EXPECT_EQ(fixed_four_splits(cases[3].l, 132), 16);
  EXPECT_EQ(fixed_four_splits(cases[4].l, 132), 12);
}

TEST(QgemmDecodePlan, SweepKeepsTheLayoutTheWavesAndTheOneWaveRule) {
  const int64_t dims[][2] = {{896, 4864},  {4864, 896},  {3584, 3584}, {3584, 512},  {3584, 18944}, {18944, 3584},
                             {8192, 8192}, {8192, 1024}, {8192, 29568}, {29568, 8192}, {128, 40},   {4104, 264}};
  int checked = 0, same_as_fixed_four = 0;
  for (const auto& d : dims) {
    for (int64_t M : {1, 2, 5, 8, 16, 17, 21, 32, 33, 48, 64}) {
      for (const bool pieces : {false, true}) {
        for (int64_t group : {int64_t{32}, int64_t{128}, d[0]}) {
          for (int64_t sms : {int64_t{132}, int64_t{114}, int64_t{16}}) {
            const Launch l{d[0], d[1], pieces ? 3 * M : M, group};
            const std::string at = l.name() + " sms=" + std::to_string(sms);
            const decode_mma::Plan p = plan_of(l, sms);
            const int64_t quads = l.quads();
            // The layout: whole iterations, every split non-empty, K covered, the shared memory the kernel has.
            ASSERT_EQ(p.rps % kRowsPerIt, 0) << at;
            ASSERT_GE(p.splits * p.rps, quads * kRowsPerIt) << at;
            ASSERT_LT((p.splits - 1) * p.rps, quads * kRowsPerIt) << at;
            ASSERT_EQ(p.smem, smem_of(l, p.rps)) << at;
            ASSERT_LE(p.smem, kMaxSmem) << at;
            // At least the fewest splits that fit, and no more waves than those need.
            int64_t s_min = 1;
            while (smem_of(l, ceil_div(quads, s_min) * kRowsPerIt) > kMaxSmem) ++s_min;
            const int64_t min_rps = ceil_div(quads, s_min) * kRowsPerIt;
            ASSERT_LE(p.rps, min_rps) << at;
            const auto waves = [&](int64_t splits, int64_t smem) {
              return ceil_div(l.tiles() * splits, resident_model(l.mt(), smem) * sms);
            };
            const int64_t w_min = waves(ceil_div(quads * kRowsPerIt, min_rps), smem_of(l, min_rps));
            EXPECT_LE(waves(p.splits, p.smem), w_min) << at;
            // Where the old rule's assumption holds (4 resident blocks) and one wave suffices, its split count.
            const decode_mma::Plan four = plan_of(l, sms, 4);
            if (ceil_div(l.tiles() * ceil_div(quads * kRowsPerIt, min_rps), 4 * sms) == 1) {
              EXPECT_EQ(four.splits, fixed_four_splits(l, sms)) << at;
              ++same_as_fixed_four;
            }
            EXPECT_EQ(plan_of(l, sms).splits, p.splits) << at;  // deterministic
            ++checked;
          }
        }
      }
    }
  }
  EXPECT_GT(same_as_fixed_four, checked / 4);  // the comparison ran, not only the general checks
}

TEST(QgemmDecodePlan, RefusesEmptyShapes) {
  const auto four = [](int64_t) { return 4; };
  test::expect_error([&] { decode_mma::plan(0, 1, 132, 1, 128, 1, four); }, "quads=0");
  test::expect_error([&] { decode_mma::plan(8, 0, 132, 1, 128, 1, four); }, "tiles=0");
  test::expect_error([&] { decode_mma::plan(8, 1, 0, 1, 128, 1, four); }, "sms=0");
}

}  // namespace
}  // namespace qwenq
