// The tensor-core decode product's split choice (kernels/qgemm_decode_plan.h has the layout and the rule).
#include "kernels/qgemm_decode_plan.h"

#include <algorithm>

#include "core/error.h"

namespace qwenq::decode_mma {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

Plan plan(int64_t quads, int64_t tiles, int64_t sms, int x_rows, int64_t group, int64_t num_groups,
          const std::function<int(int64_t)>& resident) {
  QWENQ_CHECK(quads >= 1 && tiles >= 1 && sms >= 1 && x_rows >= 1 && group >= 1 && num_groups >= 1,
              "qgemm decode plan: quads=" << quads << " tiles=" << tiles << " sms=" << sms << " x_rows=" << x_rows
                                          << " group=" << group << " num_groups=" << num_groups
                                          << " (all must be at least 1)");
  // The plan of s splits: rps word-rows each, then as many splits as those rows need (no empty trailing split).
  const auto at = [&](int64_t s) {
    Plan p{};
    p.rps = ceil_div(quads, s) * kRowsPerIt;
    p.splits = ceil_div(quads * kRowsPerIt, p.rps);
    p.meta_rows = meta_rows_of(p.rps, group, num_groups);
    p.smem = smem_bytes(x_rows, p.rps, p.meta_rows);
    return p;
  };
  // The fewest splits that fit (shared memory shrinks as splits grow).
  if (at(quads).smem > kMaxSmem) return at(quads);  // the launcher refuses it, naming the bytes
  int64_t lo = 1, hi = quads;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (at(mid).smem <= kMaxSmem) hi = mid;
    else lo = mid + 1;
  }
  const int64_t s_min = lo;
  const int64_t cap = std::max(s_min, quads / kMinItPerSplit);
  const auto places = [&](int64_t s) { return int64_t{std::max(1, resident(at(s).smem))} * sms; };
  const auto waves = [&](int64_t s) { return ceil_div(tiles * s, places(s)); };
  const int64_t w = waves(s_min);
  // places(s) >= places(s_min) for s >= s_min, so this s takes at most w waves.
  int64_t s = std::clamp<int64_t>(w * places(s_min) / tiles, s_min, cap);
  while (s < cap && waves(s + 1) <= w) ++s;  // blocks that shrank enough for more of them per SM
  return at(s);
}

}  // namespace qwenq::decode_mma
