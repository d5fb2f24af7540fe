// core/process_group.h's ring all-reduce, its ranks as threads of this process on make_ring_sockets' sockets:
//   - the sums against a sequential model of the documented order (each chunk summed from its own rank around the
//     ring, in the element type): equal bit for bit, and the same bits on every rank; a double sum bounds the
//     float ones (kSumTol), so a model sharing a mistake with the ring would still be caught; over 1..5 ranks and
//     sizes from 0 to more than a socket buffer holds (the poll loop's partial sends);
//   - ranks whose calls disagree (n, type) and ranks that stopped get an error naming the other rank, not a hang;
//   - the shared-memory sums (large ones): rank order bit for bit on every rank over 2-5 ranks and piece boundaries,
//     many in a row beside small ring sums, the ring when /dev/shm cannot reserve the segment, a rank lost mid-sum;
//   - a rank alive but silent: the others stop after the timeout, each naming the rank it waited for; the timeout
//     is per wait (a rank late to every call by less than it passes); QWENQ_DP_TIMEOUT_S parsed strictly;
//   - broadcast: every rank ends with rank 0's bytes;
//   - check_same: equal values pass, a differing rank stops every rank, the one that saw it naming both values;
//   - process_group_from_env: absent variables give no group, malformed ones a clear error;
//   - spawn_process_group with this test binary as the started rank (ProcessGroupSpawn.StartedRank, which runs only
//     with QWENQ_DP_RANK set): a rank that finds rank 0's environment (QWENQ_DP_NCCL included), agrees, sums and
//     exits 0; ranks given the r-th GPU of CUDA_VISIBLE_DEVICES, or rank 0's with QWENQ_DP_SHARE_GPU=1; one that exits 3 (wait_all names it); one that
//     closes its sockets and takes 0.3 s to finish: rank 0's launch, destroyed at once, still lets it finish.
#include <gtest/gtest.h>

#include <poll.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/files.h"
#include "core/process_group.h"
#include "core/rng.h"
#include "tests/support/scoped_env.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_paths.h"

namespace qwenq {
namespace {

constexpr uint64_t kSeed = 20261205;
// |float ring sum − double sum| <= kSumTol · Σ|x| · R: R − 1 roundings of at most 2^-24 each.
constexpr double kSumTol = 1.0 / (1 << 23);

std::vector<std::unique_ptr<ProcessGroup>> ring(int world) {
  std::vector<std::unique_ptr<ProcessGroup>> g;
  if (world == 1) {
    g.push_back(std::make_unique<ProcessGroup>(0, 1, -1, -1));
    return g;
  }
  const auto fds = make_ring_sockets(world);
  for (int r = 0; r < world; ++r) g.push_back(std::make_unique<ProcessGroup>(r, world, fds[r].first, fds[r].second));
  return g;
}

// Runs fn(rank) on one thread per rank; returns each rank's error message ("" when none).
template <typename F>
std::vector<std::string> on_ranks(int world, F fn) {
  std::vector<std::string> err(static_cast<size_t>(world));
  std::vector<std::thread> th;
  for (int r = 0; r < world; ++r) {
    th.emplace_back([&, r] {
      try {
        fn(r);
      } catch (const Error& e) {
        err[static_cast<size_t>(r)] = e.what();
      }
    });
  }
  for (auto& t : th) t.join();
  return err;
}

// piece 0: the ring (QWENQ_DP_SHM=0), its documented order; else the shared-memory sums with pieces of `piece`
// bytes, each value summed in rank order.
template <typename T>
void check_sums(int world, int64_t n, size_t piece = 0) {
  const test::ScopedEnv transport("QWENQ_DP_SHM", piece == 0 ? "0" : nullptr);
  auto g = ring(world);
  if (piece > 0)
    for (auto& r : g) r->set_shared_piece_bytes(piece);
  std::vector<std::vector<T>> x(static_cast<size_t>(world)), in;
  Rng rng(kSeed + static_cast<uint64_t>(world * 1000003 + n));
  for (auto& v : x) {
    v.resize(static_cast<size_t>(n));
    for (auto& e : v) e = static_cast<T>(rng.normal());
  }
  in = x;
  const auto err = on_ranks(world, [&](int r) { g[r]->all_reduce_sum(x[r].data(), n); });
  for (int r = 0; r < world; ++r) ASSERT_EQ(err[r], "") << "rank " << r;
  const bool shared = piece > 0 && world > 1 && static_cast<size_t>(n) * sizeof(T) >= ProcessGroup::kSharedSumMinBytes;
  for (int r = 0; r < world; ++r) ASSERT_EQ(g[r]->shared_sums(), shared) << "world " << world << " n " << n << " rank " << r;
  for (int64_t i = 0; i < n; ++i) {
    // The ring's order: chunk c = the c with c·n/R <= i < (c+1)·n/R, summed from rank c around the ring. Shared: from
    // rank 0 up.
    int c = 0;
    while (!shared && n * (c + 1) / world <= i) ++c;
    T model = in[static_cast<size_t>(c)][i];
    double exact = 0, mag = 0;
    for (int k = 1; k < world; ++k) model = model + in[static_cast<size_t>((c + k) % world)][i];
    for (int k = 0; k < world; ++k) exact += static_cast<double>(in[k][i]), mag += std::fabs(static_cast<double>(in[k][i]));
    for (int r = 0; r < world; ++r) {
      ASSERT_EQ(std::memcmp(&x[r][i], &model, sizeof(T)), 0)
          << "world " << world << " n " << n << " element " << i << " rank " << r << ": " << x[r][i] << " vs " << model;
    }
    ASSERT_LE(std::fabs(static_cast<double>(model) - exact), kSumTol * mag * world + 1e-300)
        << "world " << world << " n " << n << " element " << i;
  }
}

TEST(ProcessGroup, RingSumIsTheDocumentedOrderOnEveryRank) {
  for (int world : {1, 2, 3, 4, 5}) {
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{2}, int64_t{3}, int64_t{7}, int64_t{1000}, int64_t{300001}}) {
      check_sums<float>(world, n);
      if (n <= 1000) check_sums<double>(world, n);
    }
  }
}

// Whether /dev/shm has `bytes` free: a container's default 64 MB cannot hold the default pieces of 5 ranks.
bool shm_room(size_t bytes) {
  struct statvfs v {};
  return statvfs("/dev/shm", &v) == 0 && static_cast<size_t>(v.f_bavail) * v.f_frsize >= bytes;
}

TEST(ProcessGroup, SharedMemorySumIsRankOrderOnEveryRank) {
  // Sizes below kSharedSumMinBytes keep the ring; above it, pieces of 96 KiB (24576 floats) cut the sums into one
  // piece, several, and several with a short last one whose chunks are uneven.
  for (int world : {2, 3, 4, 5}) {
    for (int64_t n : {int64_t{65535}, int64_t{65536}, int64_t{100003}, int64_t{300001}}) {
      check_sums<float>(world, n, size_t{96} << 10);
    }
    check_sums<double>(world, 40000, size_t{96} << 10);
  }
  if (!shm_room(size_t{6} * (size_t{32} << 20))) GTEST_SKIP() << "/dev/shm has no 192 MiB free for the default pieces";
  for (int world : {2, 5}) check_sums<float>(world, 300001, size_t{32} << 20);  // the default piece: one, mostly empty
}

TEST(ProcessGroup, SharedSumsInARowAndBesideSmallOnes) {
  auto g = ring(3);
  for (auto& r : g) r->set_shared_piece_bytes(size_t{64} << 10);
  const int64_t n = 100000;  // 400 KB: shared, 7 pieces of 16384 floats
  std::vector<std::vector<float>> x(3, std::vector<float>(static_cast<size_t>(n)));
  const auto err = on_ranks(3, [&](int r) {
    for (int call = 0; call < 20; ++call) {
      for (size_t i = 0; i < x[r].size(); ++i) x[r][i] = static_cast<float>((r + 1) * (call + 1)) + static_cast<float>(i % 7);
      g[r]->all_reduce_sum(x[r].data(), n);
      double d = r;
      g[r]->all_reduce_sum(&d, 1);
      for (size_t i = 0; i < x[r].size(); i += 997)
        QWENQ_CHECK(x[r][i] == static_cast<float>(6 * (call + 1)) + 3.f * static_cast<float>(i % 7) && d == 3.0,
                    "call " << call << " element " << i << ": " << x[r][i] << ", " << d);
    }
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(err[r], "") << "rank " << r;
    EXPECT_TRUE(g[r]->shared_sums());
  }
  EXPECT_THROW(g[0]->set_shared_piece_bytes(size_t{1} << 20), Error);  // fixed once set up
}

TEST(ProcessGroup, SharedSumsFallBackToTheRingWhenTheSegmentCannotBeHad) {
  auto g = ring(3);
  for (auto& r : g) r->set_shared_piece_bytes(size_t{1} << 42);  // 4 TiB a piece: /dev/shm cannot reserve it
  std::vector<std::vector<float>> x(3, std::vector<float>(100000));
  for (int r = 0; r < 3; ++r)
    for (auto& e : x[r]) e = static_cast<float>(r + 1);
  const auto err = on_ranks(3, [&](int r) { g[r]->all_reduce_sum(x[r].data(), 100000); });
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(err[r], "") << "rank " << r;
    EXPECT_FALSE(g[r]->shared_sums());
    EXPECT_EQ(x[r].front(), 6.f);
    EXPECT_EQ(x[r].back(), 6.f);
  }
}

TEST(ProcessGroup, ARankLostInTheMiddleOfASharedSumIsNamed) {
  // 1000 pieces of 2048 floats; once rank 2 has copied its first piece's sum out, its sockets are shut down under
  // it, as a killed process's would be: the others stop at the next barrier, naming it, with later pieces not summed.
  // (The cut is made on rank 2's own thread between two pieces: a thread watching x for the first sum came too late
  // about once in hundreds of runs under load, when the whole sum, ~0.15 s, had finished first.)
  const auto fds = make_ring_sockets(3);
  std::vector<std::unique_ptr<ProcessGroup>> g;
  for (int r = 0; r < 3; ++r) g.push_back(std::make_unique<ProcessGroup>(r, 3, fds[r].first, fds[r].second));
  for (auto& r : g) r->set_shared_piece_bytes(size_t{8} << 10);
  std::vector<int64_t> rank2_pieces;
  g[2]->set_after_shared_piece([&](int64_t piece) {
    rank2_pieces.push_back(piece);
    if (piece == 0)
      for (int fd : {fds[2].first, fds[2].second}) shutdown(fd, SHUT_RDWR);
  });
  constexpr int64_t kN = 2048 * 1000;
  std::vector<std::vector<float>> x(3, std::vector<float>(static_cast<size_t>(kN), 1.f));
  bool shared[3] = {false, false, false};
  // Rank 1 closes its sockets on its error (as its process would) only once rank 0 has stopped: rank 0 sends to
  // rank 1 and receives from rank 2, so a rank 1 gone first could be named instead of rank 2 (both have stopped;
  // which one rank 0 meets first is a race that made this test fail about once in 30 runs under load).
  std::atomic<bool> rank0_done{false};
  const auto err = on_ranks(3, [&](int r) {
    try {
      g[r]->all_reduce_sum(x[r].data(), kN);
      if (r == 0) rank0_done = true;
    } catch (const Error&) {
      shared[r] = g[r]->shared_sums();
      if (r == 0) rank0_done = true;
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (r == 1 && !rank0_done && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
      g[r].reset();  // as the process would on its error: the next rank then sees it stop too
      throw;
    }
  });
  EXPECT_TRUE(shared[0] && shared[1]) << "the sum did not take the shared segment";
  EXPECT_EQ(rank2_pieces, std::vector<int64_t>{0}) << "rank 2 went on past its cut";
  EXPECT_NE(err[0].find("data-parallel rank 0: rank 2 has stopped"), std::string::npos) << err[0];
  EXPECT_NE(err[1].find("has stopped"), std::string::npos) << err[1];
  EXPECT_NE(err[2], "");
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(x[r].front(), 3.f) << "rank " << r << ": the first piece was summed";
    EXPECT_EQ(x[r][2048], 1.f) << "rank " << r << ": the second piece was not";
    EXPECT_EQ(x[r].back(), 1.f) << "rank " << r;
  }
}

TEST(ProcessGroup, ManyCallsInARowStayInStep) {
  auto g = ring(3);
  std::vector<std::vector<float>> x(3, std::vector<float>(5));
  const auto err = on_ranks(3, [&](int r) {
    for (int call = 0; call < 50; ++call) {
      for (auto& e : x[r]) e = static_cast<float>(r + 1);
      g[r]->all_reduce_sum(x[r].data(), 5);
      double d = r;
      g[r]->all_reduce_sum(&d, 1);
      QWENQ_CHECK(x[r][4] == 6.f && d == 3.0, "call " << call << ": " << x[r][4] << ", " << d);
    }
  });
  for (int r = 0; r < 3; ++r) EXPECT_EQ(err[r], "") << "rank " << r;
}

TEST(ProcessGroup, DisagreeingCallsNameBothRanks) {
  auto g = ring(2);
  std::vector<float> a(5), b(6);
  const auto err = on_ranks(2, [&](int r) {
    if (r == 0) g[0]->all_reduce_sum(a.data(), 5);
    else g[1]->all_reduce_sum(b.data(), 6);
  });
  EXPECT_NE(err[0].find("of 5 fp32 values meets rank 1's #1 of 6 fp32 values (the ranks' runs have diverged)"),
            std::string::npos) << err[0];
  EXPECT_NE(err[1].find("of 6 fp32 values meets rank 0's #1 of 5 fp32 values"), std::string::npos) << err[1];
  auto h = ring(2);
  float f = 0;
  double d = 0;
  const auto err2 = on_ranks(2, [&](int r) {
    if (r == 0) h[0]->all_reduce_sum(&f, 1);
    else h[1]->all_reduce_sum(&d, 1);
  });
  EXPECT_NE(err2[0].find("of 1 fp32 values meets rank 1's #1 of 1 fp64 values"), std::string::npos) << err2[0];
}

TEST(ProcessGroup, AStoppedRankIsNamedInsteadOfAHang) {
  auto g = ring(3);
  g[2].reset();  // rank 2 stopped before its first call: its sockets are closed
  std::vector<std::vector<float>> x(2, std::vector<float>(100000, 1.f));
  const auto err = on_ranks(2, [&](int r) {
    g[r]->all_reduce_sum(x[r].data(), 100000);
    g[r].reset();  // as the process would on its error: the next rank then sees it stop too
  });
  EXPECT_NE(err[0].find("data-parallel rank 0: rank 2 has stopped (its connection closed"), std::string::npos) << err[0];
  // Rank 1 sees rank 2's socket fail, or rank 0's close first (rank 0 gave up): either names a stopped rank.
  EXPECT_TRUE(err[1].find("data-parallel rank 1: rank 2 has stopped (its connection failed: Broken pipe") == 0 ||
              err[1].find("data-parallel rank 1: rank 0 has stopped (its connection closed") == 0)
      << err[1];
}

TEST(ProcessGroup, AHungRankIsNamedAfterTheTimeout) {
  auto g = ring(3);
  for (auto& r : g) r->set_timeout_seconds(0.3);
  // Rank 2 lives (its sockets open) but never calls: a stopped process, a stuck GPU. Ranks 0 and 1 keep their
  // sockets open after the error, so each names the rank it waited for.
  std::vector<std::vector<float>> x(2, std::vector<float>(1000, 1.f));
  const auto start = std::chrono::steady_clock::now();
  const auto err = on_ranks(2, [&](int r) { g[r]->all_reduce_sum(x[r].data(), 1000); });
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // Rank 0 waits for rank 2's header; rank 1 has rank 0's header and waits for its first chunk.
  EXPECT_NE(err[0].find("data-parallel rank 0: nothing came from rank 2 for 0.3 s during the call header (it, or a "
                        "rank it waits for, hangs"),
            std::string::npos)
      << err[0];
  EXPECT_NE(err[1].find("data-parallel rank 1: nothing came from rank 0 for 0.3 s during the reduce-scatter"),
            std::string::npos)
      << err[1];
  EXPECT_NE(err[0].find("QWENQ_DP_TIMEOUT_S sets this limit"), std::string::npos) << err[0];
  EXPECT_GE(took, 0.3);
  EXPECT_LT(took, 10.0);
}

TEST(ProcessGroup, TheTimeoutIsPerWaitNotPerRun) {
  // A rank 0.2 s late to each of 6 calls: 1.2 s in all, each wait under the 0.5 s limit.
  auto g = ring(2);
  for (auto& r : g) r->set_timeout_seconds(0.5);
  std::vector<float> x(2);
  const auto err = on_ranks(2, [&](int r) {
    for (int call = 0; call < 6; ++call) {
      if (r == 1) std::this_thread::sleep_for(std::chrono::milliseconds(200));
      x[static_cast<size_t>(r)] = static_cast<float>(r + call);
      g[r]->all_reduce_sum(&x[static_cast<size_t>(r)], 1);
      if (x[static_cast<size_t>(r)] != static_cast<float>(1 + 2 * call)) throw Error("wrong sum");
    }
  });
  EXPECT_EQ(err[0], "");
  EXPECT_EQ(err[1], "");
}

TEST(ProcessGroup, TheTimeoutRestartsWithEveryByteMoved) {
  // Rank 0 broadcasts 64 MiB to a rank 1 that this thread plays by hand after the size check: it reads 4 MiB every
  // 40 ms, so rank 0's one exchange lasts at least (64 − 8) / 4 · 40 ms = 0.56 s (8 MiB fit in the socket's buffer)
  // while no wait between two moves of its bytes is near its 0.4 s limit.
  const auto fds = make_ring_sockets(2);
  ProcessGroup g0(0, 2, fds[0].first, fds[0].second), g1(1, 2, fds[1].first, fds[1].second);
  g0.set_timeout_seconds(0.4);
  constexpr size_t kBytes = size_t{64} << 20, kPiece = size_t{4} << 20;
  std::vector<char> sent(kBytes, 'q'), got(kBytes, 0);
  std::string error;
  const auto start = std::chrono::steady_clock::now();
  std::thread rank0([&] {
    try {
      g0.broadcast(sent.data(), kBytes);
    } catch (const Error& e) {
      error = e.what();
    }
  });
  g1.check_same(kBytes, "the size of a broadcast");  // what broadcast does first
  size_t have = 0;
  while (have < kBytes && error.empty()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(40));
    const size_t until = std::min(kBytes, have + kPiece);
    while (have < until) {
      pollfd p{fds[1].first, POLLIN, 0};
      if (poll(&p, 1, 1000) <= 0) break;
      const ssize_t k = read(fds[1].first, got.data() + have, until - have);
      if (k <= 0) break;
      have += static_cast<size_t>(k);
    }
  }
  rank0.join();
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(error, "");
  EXPECT_EQ(have, kBytes);
  EXPECT_TRUE(got == sent);
  EXPECT_GT(took, 0.4) << "the broadcast took less than the limit: this test showed nothing";
}

TEST(ProcessGroup, TimeoutFromTheEnvironment) {
  {
    test::ScopedEnv t("QWENQ_DP_TIMEOUT_S", nullptr);
    EXPECT_EQ(dp_timeout_seconds(), 1800.0);
    EXPECT_EQ(ProcessGroup(0, 1, -1, -1).timeout_seconds(), 1800.0);
  }
  {
    test::ScopedEnv t("QWENQ_DP_TIMEOUT_S", "20");
    EXPECT_EQ(ProcessGroup(0, 1, -1, -1).timeout_seconds(), 20.0);
  }
  {
    test::ScopedEnv t("QWENQ_DP_TIMEOUT_S", "0");  // no limit
    EXPECT_EQ(dp_timeout_seconds(), 0.0);
  }
  for (const char* bad : {"-1", "1h", "604801"}) {
    test::ScopedEnv t("QWENQ_DP_TIMEOUT_S", bad);
    test::expect_error([] { dp_timeout_seconds(); }, {std::string("QWENQ_DP_TIMEOUT_S=") + bad});
  }
}

TEST(ProcessGroup, FromEnvironment) {
  {
    test::ScopedEnv a("QWENQ_DP_RANK", nullptr), b("QWENQ_DP_WORLD", nullptr), c("QWENQ_DP_FDS", nullptr);
    EXPECT_EQ(process_group_from_env(), nullptr);
  }
  const auto refused = [](const char* rank, const char* world, const char* fds) {
    test::ScopedEnv a("QWENQ_DP_RANK", rank), b("QWENQ_DP_WORLD", world), c("QWENQ_DP_FDS", fds);
    try {
      process_group_from_env();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(refused("1", nullptr, "3,4").find("come together"), std::string::npos);
  EXPECT_NE(refused("x", "2", "3,4").find("QWENQ_DP_RANK=x is not a rank number"), std::string::npos);
  EXPECT_NE(refused("0", "2", "3,4").find("a started rank is 1..world-1"), std::string::npos);
  EXPECT_NE(refused("2", "2", "3,4").find("a started rank is 1..world-1"), std::string::npos);
  EXPECT_NE(refused("1", "2", "34").find("is not \"left,right\""), std::string::npos);
  EXPECT_NE(refused("1", "2", "900001,900002").find("this process has no such sockets"), std::string::npos);
  // Real sockets: a group of rank 1 of 2.
  const auto fds = make_ring_sockets(2);
  const std::string f = std::to_string(fds[1].first) + "," + std::to_string(fds[1].second);
  test::ScopedEnv a("QWENQ_DP_RANK", "1"), b("QWENQ_DP_WORLD", "2"), c("QWENQ_DP_FDS", f.c_str());
  auto g1 = process_group_from_env();
  ASSERT_NE(g1, nullptr);
  EXPECT_EQ(g1->rank(), 1);
  EXPECT_EQ(g1->world(), 2);
  ProcessGroup g0(0, 2, fds[0].first, fds[0].second);
  float x0 = 1.5f, x1 = 2.25f;
  std::thread t([&] { g0.all_reduce_sum(&x0, 1); });
  g1->all_reduce_sum(&x1, 1);
  t.join();
  EXPECT_EQ(x0, 3.75f);
  EXPECT_EQ(x1, 3.75f);
}

TEST(ProcessGroup, CheckSameStopsEveryRankOnADifference) {
  auto g = ring(3);
  auto err = on_ranks(3, [&](int r) { g[r]->check_same(42, "the answer"); });
  for (int r = 0; r < 3; ++r) EXPECT_EQ(err[r], "") << "rank " << r;
  err = on_ranks(3, [&](int r) { g[r]->check_same(r == 1 ? 7 : 42, "the answer"); });
  // Rank 1's left is rank 0 (42 vs 7), rank 2's left is rank 1 (7 vs 42): both name the pair; rank 0 is told.
  EXPECT_NE(err[1].find("data-parallel rank 1 and rank 0 differ in the answer (fingerprints 7 and 2a)"), std::string::npos)
      << err[1];
  EXPECT_NE(err[2].find("data-parallel rank 2 and rank 1 differ in the answer (fingerprints 2a and 7)"), std::string::npos)
      << err[2];
  EXPECT_NE(err[0].find("data-parallel rank 0: the ranks differ in the answer"), std::string::npos) << err[0];
}

TEST(ProcessGroup, BroadcastGivesEveryRankRankZerosBytes) {
  for (int world : {1, 2, 4}) {
    auto g = ring(world);
    std::vector<std::vector<char>> data(static_cast<size_t>(world));
    for (int r = 0; r < world; ++r) data[r].assign(300000, static_cast<char>('a' + r));  // past a socket buffer
    const auto err = on_ranks(world, [&](int r) { g[r]->broadcast(data[r].data(), data[r].size()); });
    for (int r = 0; r < world; ++r) {
      EXPECT_EQ(err[r], "") << "rank " << r;
      EXPECT_EQ(data[r], data[0]) << "world " << world << " rank " << r;
    }
  }
}

// neighbour_stopped (what the NCCL wait polls, kernels/nccl_comm.cu): false while both neighbours live, also with a
// neighbour's bytes waiting unread; true on both neighbours of a rank whose sockets closed, not on the others.
TEST(ProcessGroup, NeighbourStoppedSeesAClosedSocketNotUnreadData) {
  EXPECT_FALSE(ring(1)[0]->neighbour_stopped());
  auto g = ring(4);
  for (int r = 0; r < 4; ++r) EXPECT_FALSE(g[r]->neighbour_stopped()) << "rank " << r;
  // Rank 0 starts a broadcast alone: its first bytes reach a neighbour that has not called yet.
  std::vector<std::vector<char>> data(4, std::vector<char>(64, 'x'));
  std::thread lead([&] { g[0]->broadcast(data[0].data(), data[0].size()); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  for (int r = 1; r < 4; ++r) EXPECT_FALSE(g[r]->neighbour_stopped()) << "rank " << r << " with bytes to read";
  std::vector<std::thread> rest;
  for (int r = 1; r < 4; ++r) rest.emplace_back([&, r] { g[r]->broadcast(data[r].data(), data[r].size()); });
  lead.join();
  for (auto& t : rest) t.join();
  g[2].reset();  // rank 2 stops: ranks 1 and 3 are its neighbours, rank 0 is not
  EXPECT_TRUE(g[1]->neighbour_stopped());
  EXPECT_TRUE(g[3]->neighbour_stopped());
  EXPECT_FALSE(g[0]->neighbour_stopped());
}

// The started side of the spawn tests below: runs only in a process spawn_process_group started (this binary,
// filtered to this test), doing what QWENQ_TEST_DP_MODE says, then leaves without gtest's exit.
TEST(ProcessGroupSpawn, StartedRank) {
  if (std::getenv("QWENQ_DP_RANK") == nullptr) GTEST_SKIP() << "runs only as a rank started by the spawn tests";
  const std::string mode = std::getenv("QWENQ_TEST_DP_MODE") ? std::getenv("QWENQ_TEST_DP_MODE") : "";
  try {
    auto g = process_group_from_env();
    if (mode == "ok") {
      // Rank 0's environment came along, QWENQ_DP_ variables that are not the group's own included.
      const char* pass = std::getenv("QWENQ_DP_NCCL");
      if (pass == nullptr || std::string(pass) != "passed on") std::_Exit(7);
      g->check_same(5, "the start");
      float x = static_cast<float>(g->rank());
      g->all_reduce_sum(&x, 1);
      std::_Exit(x == 1.f ? 0 : 4);
    }
    if (mode == "exit3") std::_Exit(3);
    if (mode == "gpu") {  // the GPU its rank was given
      const char* got = std::getenv("CUDA_VISIBLE_DEVICES");
      const char* want = std::getenv("QWENQ_TEST_DP_WANT_GPU");
      std::_Exit(got != nullptr && want != nullptr && std::string(got) == want ? 0 : 8);
    }
    if (mode == "slow") {
      g.reset();  // rank 0 sees it stop now
      usleep(300000);
      std::ofstream(std::getenv("QWENQ_TEST_DP_MARKER")) << "finished\n";
      std::_Exit(0);
    }
  } catch (const Error&) {
    std::_Exit(5);
  }
  std::_Exit(6);
}

std::vector<std::string> started_rank_args() {
  return {"qwenq_tests", "--gtest_filter=ProcessGroupSpawn.StartedRank"};
}

// What the started test binary must not inherit from a sharded or reporting run of this one: it would run no test.
struct NoGtestSharding {
  test::ScopedEnv shards{"GTEST_TOTAL_SHARDS", nullptr}, index{"GTEST_SHARD_INDEX", nullptr}, out{"GTEST_OUTPUT", nullptr};
};

TEST(ProcessGroupSpawn, StartedRanksAgreeSumAndExit) {
  NoGtestSharding plain;
  test::ScopedEnv mode("QWENQ_TEST_DP_MODE", "ok"), pass("QWENQ_DP_NCCL", "passed on");
  auto launch = spawn_process_group(2, started_rank_args(), false);
  launch->group->check_same(5, "the start");
  float x = 0.f;
  launch->group->all_reduce_sum(&x, 1);
  EXPECT_EQ(x, 1.f);
  EXPECT_NO_THROW(launch->wait_all());
}

TEST(ProcessGroupSpawn, WaitAllNamesARankThatFailed) {
  NoGtestSharding plain;
  test::ScopedEnv mode("QWENQ_TEST_DP_MODE", "exit3");
  auto launch = spawn_process_group(3, started_rank_args(), false);
  try {
    launch->wait_all();
    ADD_FAILURE() << "wait_all accepted ranks that exited with 3";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1 exited with status 3, rank 2 exited with status 3"), std::string::npos)
        << e.what();
  }
}

TEST(ProcessGroupSpawn, EachRankGetsItsGpuOrRankZerosWhenShared) {
  NoGtestSharding plain;
  test::ScopedEnv mode("QWENQ_TEST_DP_MODE", "gpu"), list("CUDA_VISIBLE_DEVICES", "5,6");
  {
    test::ScopedEnv want("QWENQ_TEST_DP_WANT_GPU", "6"), share("QWENQ_DP_SHARE_GPU", nullptr);
    EXPECT_NO_THROW(spawn_process_group(2, started_rank_args(), true)->wait_all());
  }
  {
    test::ScopedEnv want("QWENQ_TEST_DP_WANT_GPU", "5"), share("QWENQ_DP_SHARE_GPU", "1");
    EXPECT_NO_THROW(spawn_process_group(2, started_rank_args(), true)->wait_all());
  }
}

TEST(ProcessGroupSpawn, AStoppingRankMayFinishBeforeItIsStopped) {
  const std::string marker = test::scratch_dir() + "/dp_marker";
  std::remove(marker.c_str());
  NoGtestSharding plain;
  test::ScopedEnv mode("QWENQ_TEST_DP_MODE", "slow"), where("QWENQ_TEST_DP_MARKER", marker.c_str());
  auto launch = spawn_process_group(2, started_rank_args(), false);
  try {
    launch->group->check_same(5, "the start");
    ADD_FAILURE() << "a stopped rank passed the check";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1 has stopped"), std::string::npos) << e.what();
  }
  launch.reset();  // as rank 0's error unwinds: the started rank has 0.3 s of work left
  EXPECT_TRUE(file_exists(marker)) << "the started rank was stopped before it could finish";
}

}  // namespace
}  // namespace qwenq
