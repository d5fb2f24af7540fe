// core/threads.h's parallel_find_first and first_nonfinite against a sequential scan (exact: an index), over
// sizes below, at and across the chunk size, grains from 1 up, and 1, 2 and 4 threads; hits are seeded, several
// per run so that later chunks find some before earlier ones do.
#include <gtest/gtest.h>

#include <cmath>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "core/rng.h"
#include "core/threads.h"
#include "tests/support/scoped_threads.h"

namespace qwenq {
namespace {

constexpr uint64_t kSeed = 20261201;

TEST(ParallelFindFirst, IsTheSequentialScansAnswerAtAnyThreadCount) {
  for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{17}, int64_t{65536}, int64_t{3 * 65536 + 5}}) {
    for (int hits : {0, 1, 5}) {
      Rng rng(kSeed + n + hits);
      std::vector<char> hit(n, 0);
      int64_t expect = -1;
      for (int h = 0; n > 0 && h < hits; ++h) {
        const int64_t i = static_cast<int64_t>(rng.below(static_cast<uint64_t>(n)));
        hit[i] = 1;
        if (expect < 0 || i < expect) expect = i;
      }
      for (int64_t grain : {int64_t{1}, int64_t{1000}, int64_t{1} << 16}) {
        for (int threads : {1, 2, 4}) {
          test::ScopedThreads scoped(threads);
          const int64_t got = parallel_find_first(n, grain, [&](int64_t b, int64_t e) -> int64_t {
            for (int64_t i = b; i < e; ++i)
              if (hit[i]) return i;
            return -1;
          });
          ASSERT_EQ(got, expect) << "n " << n << " hits " << hits << " grain " << grain << " threads " << threads
                                 << " seed " << kSeed + n + hits;
        }
      }
    }
  }
}

TEST(ParallelFindFirst, FirstNonfiniteFindsNanAndBothInfinities) {
  const int64_t n = 5 * 65536 + 3;  // several chunks of first_nonfinite's 64K grain
  std::vector<float> x(n);
  Rng rng(kSeed);
  for (auto& v : x) v = static_cast<float>(rng.normal());
  for (int threads : {1, 2, 4}) {
    test::ScopedThreads scoped(threads);
    EXPECT_EQ(first_nonfinite(x.data(), n), -1) << "threads " << threads;
    EXPECT_EQ(first_nonfinite(x.data(), 0), -1);
  }
  const float bad[3] = {NAN, INFINITY, -INFINITY};
  for (int b = 0; b < 3; ++b) {
    std::vector<float> y = x;
    y[4 * 65536 + 11] = bad[(b + 1) % 3];  // a later chunk's hit must not win
    y[n - 1] = bad[(b + 2) % 3];
    y[65536 + 7] = bad[b];
    for (int threads : {1, 2, 4}) {
      test::ScopedThreads scoped(threads);
      EXPECT_EQ(first_nonfinite(y.data(), n), 65536 + 7) << "kind " << b << " threads " << threads;
    }
  }
  std::vector<float> last = x;
  last[n - 1] = -INFINITY;
  EXPECT_EQ(first_nonfinite(last.data(), n), n - 1);
}

// set_num_threads is process-wide: a thread started afterwards (quantize's host-half helper, the GPU upload
// threads) splits parallel_for into the chosen count, not OpenMP's per-thread default. Chunks of parallel_for(n,
// grain 1) = min(n, threads), counted from inside a fresh std::thread.
TEST(NumThreads, ASettingReachesThreadsStartedLater) {
  for (int threads : {1, 3}) {
    test::ScopedThreads scoped(threads);
    if (num_threads() == 1 && threads > 1) GTEST_SKIP() << "built without OpenMP: one thread";
    int chunks = 0, seen = 0;
    std::thread t([&] {
      seen = num_threads();
      std::mutex m;
      parallel_for(8, 1, [&](int64_t, int64_t) {
        std::lock_guard<std::mutex> lock(m);
        ++chunks;
      });
    });
    t.join();
    EXPECT_EQ(seen, threads);
    EXPECT_EQ(chunks, threads);
  }
}

}  // namespace
}  // namespace qwenq
