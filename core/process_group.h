// Data parallelism across processes on one machine: R processes (ranks 0..R-1) in a ring, rank r joined to rank
// r + 1 (mod R) by a Unix socket pair, and the sum all-reduce a data-parallel trainer needs for its gradients.
//
// all_reduce_sum(x, n): every rank ends with Σ_r x_r, the same bits on every rank. Ring algorithm, x cut into R
// chunks, chunk c = [c·n/R, (c+1)·n/R) (integer division):
//   reduce-scatter, steps s = 0..R-2: rank r sends chunk (r − s) mod R to rank r + 1 and adds chunk (r − s − 1) mod R,
//     received from rank r − 1, into its own. After R − 1 steps rank r holds chunk (r + 1) mod R summed over every
//     rank, added in ring order starting at the chunk's own rank: ((x_c + x_{c+1}) + x_{c+2}) + ... (ranks mod R);
//   all-gather, steps s = 0..R-2: rank r sends chunk (r + 1 − s) mod R and overwrites chunk (r − s) mod R with what
//     it receives, so every rank ends with the bits of the rank that summed each chunk.
// Each rank sends and receives about 2·(R − 1)/R · n values whatever R is, and the additions are in a fixed order for
// a given R: a run is reproducible, and its sums differ from one process's sequential ones only in their order.
// Large sums (n values of at least kSharedSumMinBytes) go through shared memory instead, when every rank could map
// it (the ranks are on one machine; QWENQ_DP_SHM=0 keeps the ring): a segment of R + 1 pieces of P bytes
// (shared_piece_bytes, 32 MiB), set up at the first large sum (rank 0 creates it under a random name, reserves its
// pages with posix_fallocate, passes the name along the ring and unlinks it once every rank has it mapped). Per piece
// of x: every rank writes its values into its slot; barrier; rank r sums chunk r of the piece over the slots in rank
// order, ((x_0 + x_1) + x_2) + ..., into the result piece; barrier; every rank copies the result out. The barriers are
// ring sums of one value, so a stopped or stuck rank is named as below. The ranks check that they agree on
// QWENQ_DP_SHM and the piece size first. Which transport a sum took changes its bits: a run and its resume agree
// only if both had the segment. Each rank moves about 3·n values through memory instead of 2·n through sockets:
// several times the ring's speed (benchmarks/bench_all_reduce_cpu). Every rank again ends with the same bits, in a
// fixed order (rank order); if some rank cannot map the segment (no /dev/shm, too small), rank 0 says why once and
// every rank keeps the ring.
// Every call first passes a header around the ring (a sequence number, the element type and n): ranks whose calls
// disagree (a diverged run) get an error naming both, not mixed-up data. A rank that stopped (its sockets closed)
// makes its neighbours' next call throw, naming it, instead of hanging; so does a rank killed outright. A rank that
// hangs while alive (a stopped process, a hung GPU) holds the others at their next call until the timeout: a wait
// with no byte moving for QWENQ_DP_TIMEOUT_S seconds (default 1800, as torch's gloo; 0: no limit) throws, naming the
// neighbour it waited for. That neighbour may itself be waiting for the hung rank further round the ring; the first
// rank to give up names it, and its exit then stops the others ("has stopped").
// check_same compares a value across the ranks (what each rank decided on its own: the device, the data, the start
// of the adapter), so that ranks which would silently train different things stop with the difference named.
//
// Starting the ranks (spawn_process_group): the program starts ranks 1..R-1 as copies of itself (/proc/self/exe,
// the same arguments), each told its rank and its two sockets by the environment (QWENQ_DP_RANK, QWENQ_DP_WORLD,
// QWENQ_DP_FDS "left,right") and, with assign_gpus, its own GPU (CUDA_VISIBLE_DEVICES = the r-th entry of the
// caller's list, or r; with QWENQ_DP_SHARE_GPU=1 rank 0's GPU, for checking the GPU path on a one-GPU machine); the
// caller goes on as rank 0 (GPU 0 of its own list). A started rank finds its group with
// process_group_from_env(). Each started rank dies with the thread that started it (PR_SET_PDEATHSIG: call
// spawn_process_group from the main thread), so a failed or killed rank 0 leaves no orphan. ProcessGroupLaunch's
// destructor closes rank 0's sockets, gives the started ranks a few seconds to notice, print their own error and
// exit, then stops (SIGTERM, later SIGKILL) and reaps those still running.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace qwenq {

class ProcessGroup {
 public:
  // A rank of a ring: left_fd is the socket to rank − 1, right_fd to rank + 1 (both owned: closed by the
  // destructor). world == 1 takes no sockets (-1, -1): every all-reduce returns at once.
  ProcessGroup(int rank, int world, int left_fd, int right_fd);
  ~ProcessGroup() noexcept;
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const { return rank_; }
  int world() const { return world_; }

  // x[0, n) <- Σ over the ranks (the ring above). Every rank must make the same calls with the same n, in the same
  // order. Throws qwenq::Error naming this rank and the neighbour when a neighbour stopped or disagrees.
  void all_reduce_sum(float* x, int64_t n);
  void all_reduce_sum(double* x, int64_t n);
  // Throws on every rank unless every rank passes the same value (a fingerprint of `what`, e.g. "the training
  // data"); the rank that sees its left neighbour differ names both values, the others point to it.
  void check_same(uint64_t value, const std::string& what);
  // data[0, bytes) <- rank 0's, passed along the ring (every rank calls it with the same bytes: checked).
  void broadcast(void* data, size_t bytes);
  // True when a neighbour's socket says that rank has stopped (closed or failed), without waiting: for a wait outside
  // the ring (an NCCL collective) to notice it. Data waiting to be read is not a stop.
  bool neighbour_stopped() const;
  // The longest wait without progress before a call throws (seconds; 0: none). From QWENQ_DP_TIMEOUT_S at
  // construction (dp_timeout_seconds); tests set shorter ones.
  double timeout_seconds() const { return timeout_s_; }
  void set_timeout_seconds(double s) { timeout_s_ = s; }
  // Large sums' transport (above): true once the shared segment is set up, false before or when the ring is kept.
  bool shared_sums() const { return shm_state_ > 0; }
  // The piece size P of the shared sums (a multiple of 8 bytes), before the first large sum; the same on every rank.
  void set_shared_piece_bytes(size_t bytes);
  // Called on this rank after each piece of a shared sum is copied out, with the piece's index (0, 1, ...): a seam
  // for tests that stop a rank at a known point of a sum (a thread watching memory could come too late under load).
  void set_after_shared_piece(std::function<void(int64_t piece)> f) { after_shared_piece_ = std::move(f); }
  static constexpr size_t kSharedSumMinBytes = size_t{256} << 10;
  static constexpr size_t kSharedPieceBytes = size_t{32} << 20;  // P by default

 private:
  template <typename T>
  void ring_all_reduce(T* x, int64_t n, uint32_t type_code);
  template <typename T>
  void shared_all_reduce(T* x, int64_t n);
  bool shared_sums_ready();
  void barrier();
  void exchange(const void* send, size_t send_bytes, void* recv, size_t recv_bytes, const std::string& what);

  int rank_, world_;
  int left_fd_, right_fd_;
  uint64_t calls_ = 0;
  double timeout_s_;
  int shm_state_ = 0;  // 0: not tried yet, 1: the shared segment is mapped, -1: the ring for every sum
  size_t shm_piece_ = kSharedPieceBytes;
  void* shm_ = nullptr;
  size_t shm_bytes_ = 0;
  std::function<void(int64_t)> after_shared_piece_;
};

// QWENQ_DP_TIMEOUT_S: whole seconds in [0, 604800], default 1800; anything else throws naming the variable.
double dp_timeout_seconds();
// The message of a wait that timed out: "data-parallel rank <rank>: <waited> for <s> s during <what> (...)", with
// the advice every transport gives (the ring, NCCL).
std::string dp_timeout_message(int rank, const std::string& waited, double seconds, const std::string& what);

// FNV-1a over bytes, continuing from h (start from kFingerprintStart): the fingerprints check_same compares (of the
// command line, the examples, the adapter's state), not a security hash. fingerprint(h, v) mixes in one integer.
constexpr uint64_t kFingerprintStart = 1469598103934665603ull;
uint64_t fingerprint(uint64_t h, const void* data, size_t bytes);
inline uint64_t fingerprint(uint64_t h, uint64_t v) { return fingerprint(h, &v, sizeof v); }

// Makes the sockets of a ring of `world` ranks: fds[r] = {left, right} of rank r (close-on-exec). world >= 2.
std::vector<std::pair<int, int>> make_ring_sockets(int world);

// The group of a rank started by spawn_process_group (the QWENQ_DP_* variables), or null when this process was
// not started so. Malformed variables throw.
std::unique_ptr<ProcessGroup> process_group_from_env();

// Rank 0's side of a spawned group: the ranks it started, stopped (SIGTERM) and reaped by the destructor if they
// are still running then.
class ProcessGroupLaunch {
 public:
  ProcessGroupLaunch() = default;
  ~ProcessGroupLaunch();
  ProcessGroupLaunch(const ProcessGroupLaunch&) = delete;
  ProcessGroupLaunch& operator=(const ProcessGroupLaunch&) = delete;

  std::unique_ptr<ProcessGroup> group;  // rank 0's
  std::vector<pid_t> pids;              // ranks 1..R-1

  // Waits for every started rank to exit; throws naming the ranks that failed (exit status or signal).
  void wait_all();
};

// This process's command line as it was started (/proc/self/cmdline): what the started ranks are given.
std::vector<std::string> this_program_args();

// Starts ranks 1..world-1 as copies of this program with `args` (args[0] is the program's name as shown) and
// returns rank 0's launch. world >= 2. With assign_gpus, started rank r gets CUDA_VISIBLE_DEVICES as described above
// (the caller's own CUDA state does not matter: the started ranks are new programs).
std::unique_ptr<ProcessGroupLaunch> spawn_process_group(int world, const std::vector<std::string>& args,
                                                        bool assign_gpus);

}  // namespace qwenq
