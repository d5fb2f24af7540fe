#include "core/process_group.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>

#include "core/env_switch.h"
#include "core/error.h"
#include "core/files.h"

namespace qwenq {

namespace {

constexpr uint32_t kMagic = 0x50445751;  // "QWDP"
constexpr uint32_t kFloat = 1, kDouble = 2, kCheck = 3, kBarrier = 4;

struct Header {
  uint32_t magic, type;
  uint64_t call;
  int64_t n;
};

const char* type_name(uint32_t t) {
  return t == kFloat ? "fp32" : t == kDouble ? "fp64" : t == kCheck ? "check" : t == kBarrier ? "barrier" : "?";
}

// Removes a shared-memory name when it goes out of scope (rank 0's segment, however its set-up ends).
struct ShmName {
  const char* name = nullptr;
  ~ShmName() {
    if (name != nullptr && name[0] != '\0') shm_unlink(name);
  }
};

// Chunk c of n values cut into `world` pieces: [c·n/world, (c+1)·n/world).
int64_t chunk_begin(int64_t n, int world, int c) { return n * c / world; }

int mod(int a, int m) { return ((a % m) + m) % m; }

}  // namespace

double dp_timeout_seconds() { return static_cast<double>(env_int("QWENQ_DP_TIMEOUT_S", 1800, 0, 604800)); }

std::string dp_timeout_message(int rank, const std::string& waited, double seconds, const std::string& what) {
  std::ostringstream os;
  os << "data-parallel rank " << rank << ": " << waited << " for " << seconds << " s during " << what
     << " (it, or a rank it waits for, hangs: a stopped process, a stuck GPU, a much slower load; "
     << "QWENQ_DP_TIMEOUT_S sets this limit in seconds, 0 for none)";
  return os.str();
}

ProcessGroup::ProcessGroup(int rank, int world, int left_fd, int right_fd)
    : rank_(rank), world_(world), left_fd_(left_fd), right_fd_(right_fd), timeout_s_(dp_timeout_seconds()) {
  QWENQ_CHECK(world >= 1 && rank >= 0 && rank < world, "process group: rank " << rank << " of " << world);
  QWENQ_CHECK(world == 1 || (left_fd >= 0 && right_fd >= 0 && left_fd != right_fd),
              "process group: rank " << rank << " of " << world << " needs two sockets, got " << left_fd << ", "
                                     << right_fd);
  for (int fd : {left_fd_, right_fd_}) {
    if (fd < 0) continue;
    const int flags = fcntl(fd, F_GETFL);
    QWENQ_CHECK(flags >= 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0,
                "process group: rank " << rank << ": socket " << fd << " is not usable (" << std::strerror(errno) << ")");
  }
}

ProcessGroup::~ProcessGroup() noexcept {
  if (shm_ != nullptr) munmap(shm_, shm_bytes_);
  for (int fd : {left_fd_, right_fd_})
    if (fd >= 0) close(fd);
}

void ProcessGroup::set_shared_piece_bytes(size_t bytes) {
  QWENQ_CHECK(shm_state_ == 0 && bytes >= 8 && bytes % 8 == 0,
              "process group: the shared piece size must be a positive multiple of 8 bytes, set before the first large "
              "sum (got " << bytes << ")");
  shm_piece_ = bytes;
}

void ProcessGroup::barrier() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  double one = 1.0;
  ring_all_reduce(&one, 1, kBarrier);  // below kSharedSumMinBytes: the ring, which needs every rank's value
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

// Collective (every rank calls it at the same large sum): maps the shared segment, or settles on the ring.
bool ProcessGroup::shared_sums_ready() {
  if (shm_state_ != 0) return shm_state_ > 0;
  shm_state_ = -1;
  const bool want = env_switch("QWENQ_DP_SHM") != 0;
  check_same(want ? shm_piece_ : 0, "QWENQ_DP_SHM and the piece size (the large sums' transport)");
  if (!want) return false;
  const size_t bytes = shm_piece_ * static_cast<size_t>(world_ + 1);
  char name[64] = {};
  ShmName unlink_at_exit;  // rank 0's name is removed however this ends (an error on the ring included)
  std::string why;
  int fd = -1;
  if (rank_ == 0) {
    std::random_device rd;
    std::snprintf(name, sizeof name, "/qwenq-dp-%d-%08x%08x", static_cast<int>(getpid()), rd(), rd());
    fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) {
      why = std::string("shm_open: ") + std::strerror(errno);
      name[0] = '\0';
    } else {
      unlink_at_exit.name = name;
      if (const int e = posix_fallocate(fd, 0, static_cast<off_t>(bytes)); e != 0) {
        why = "reserving " + std::to_string(bytes >> 20) + " MiB in /dev/shm: " + std::strerror(e) +
              "; in a container, docker run --shm-size gives it more; QWENQ_DP_SHM=0 keeps the sockets without this line";
      }
    }
  }
  broadcast(name, sizeof name);  // empty: rank 0 has none
  if (rank_ != 0 && name[0] != '\0') {
    fd = shm_open(name, O_RDWR, 0);
    if (fd < 0) why = std::string("shm_open: ") + std::strerror(errno);
  }
  void* map = MAP_FAILED;
  if (fd >= 0 && why.empty()) {
    map = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) why = std::string("mmap: ") + std::strerror(errno);
  }
  if (fd >= 0) close(fd);
  double ok = map != MAP_FAILED ? 1.0 : 0.0;
  ring_all_reduce(&ok, 1, kDouble);  // also the point after which every rank has opened the name (unlinked at return)
  if (ok != static_cast<double>(world_)) {
    if (map != MAP_FAILED) munmap(map, bytes);
    if (rank_ == 0) {
      std::fprintf(stderr, "data parallel: the large sums go through the sockets (%s)\n",
                   why.empty() ? "another rank could not map the shared memory; it says why" : why.c_str());
    } else if (!why.empty()) {
      std::fprintf(stderr, "data parallel: rank %d cannot map the shared memory for the large sums (%s)\n", rank_,
                   why.c_str());
    }
    return false;
  }
  shm_ = map;
  shm_bytes_ = bytes;
  shm_state_ = 1;
  return true;
}

template <typename T>
void ProcessGroup::shared_all_reduce(T* x, int64_t n) {
  const int64_t per_piece = static_cast<int64_t>(shm_piece_ / sizeof(T));
  // Slot q (rank q's values) of the segment; slot world_ holds the result.
  const auto slot = [&](int q) { return static_cast<T*>(shm_) + static_cast<size_t>(per_piece) * static_cast<size_t>(q); };
  T* result = slot(world_);
  for (int64_t p0 = 0; p0 < n; p0 += per_piece) {
    const int64_t len = std::min(per_piece, n - p0);
    std::memcpy(slot(rank_), x + p0, static_cast<size_t>(len) * sizeof(T));
    barrier();
    const int64_t c0 = chunk_begin(len, world_, rank_), c1 = chunk_begin(len, world_, rank_ + 1);
    for (int64_t i = c0; i < c1; ++i) {
      T acc = slot(0)[i];
      for (int q = 1; q < world_; ++q) acc = acc + slot(q)[i];
      result[i] = acc;
    }
    barrier();  // every chunk summed: the slots may be written again once the result is copied out
    std::memcpy(x + p0, result, static_cast<size_t>(len) * sizeof(T));
    if (after_shared_piece_) after_shared_piece_(p0 / per_piece);
    // The next piece's (or call's) first barrier keeps its result writes after every rank's copy above.
  }
}

// Sends send_bytes to the right neighbour while receiving recv_bytes from the left one, interleaved through poll so
// that a ring of ranks all sending at once cannot deadlock on full socket buffers. Throws when no byte has moved
// for timeout_s_ seconds.
void ProcessGroup::exchange(const void* send, size_t send_bytes, void* recv, size_t recv_bytes, const std::string& what) {
  const char* sp = static_cast<const char*>(send);
  char* rp = static_cast<char*>(recv);
  size_t sent = 0, got = 0;
  const int left = mod(rank_ - 1, world_), right = mod(rank_ + 1, world_);
  using Clock = std::chrono::steady_clock;
  auto last_progress = Clock::now();
  // What one recv or send of k bytes from or to rank `peer` did: false when it would have blocked (poll again), else
  // its bytes added to *done; a closed or failed connection throws, naming the rank.
  const auto moved = [&](ssize_t k, int peer, size_t* done) {
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return false;
    QWENQ_CHECK(k > 0, "data-parallel rank " << rank_ << ": rank " << peer << " has stopped (its connection "
                                             << (k == 0 ? std::string("closed") : std::string("failed: ") + std::strerror(errno)) << " during " << what
                                             << "; it prints its own error, if any)");
    *done += static_cast<size_t>(k);
    last_progress = Clock::now();
    return true;
  };
  while (sent < send_bytes || got < recv_bytes) {
    pollfd fds[2];
    int nfds = 0, si = -1, ri = -1;
    if (sent < send_bytes) {
      si = nfds;
      fds[nfds++] = pollfd{right_fd_, POLLOUT, 0};
    }
    if (got < recv_bytes) {
      ri = nfds;
      fds[nfds++] = pollfd{left_fd_, POLLIN, 0};
    }
    int wait_ms = -1;
    if (timeout_s_ > 0) {
      const double left_s = timeout_s_ - std::chrono::duration<double>(Clock::now() - last_progress).count();
      if (left_s <= 0) {
        QWENQ_FAIL(dp_timeout_message(rank_, got < recv_bytes ? "nothing came from rank " + std::to_string(left)
                                                              : "rank " + std::to_string(right) + " took nothing",
                                      timeout_s_, what));
      }
      wait_ms = static_cast<int>(std::min(std::ceil(left_s * 1000.0), 3.6e6));
    }
    const int pr = poll(fds, static_cast<nfds_t>(nfds), wait_ms);
    if (pr < 0 && errno == EINTR) continue;
    if (pr == 0) continue;  // the deadline, checked above
    QWENQ_CHECK(pr > 0, "data-parallel rank " << rank_ << ": poll failed during " << what << " (" << std::strerror(errno) << ")");
    for (int i = 0; i < nfds; ++i) {
      QWENQ_CHECK(!(fds[i].revents & POLLNVAL), "data-parallel rank " << rank_ << ": socket " << fds[i].fd
                                                                     << " is not open (during " << what << ")");
    }
    if (ri >= 0 && (fds[ri].revents & (POLLIN | POLLHUP | POLLERR)) &&
        !moved(::recv(left_fd_, rp + got, recv_bytes - got, 0), left, &got)) {
      continue;
    }
    if (si >= 0 && (fds[si].revents & (POLLOUT | POLLHUP | POLLERR)))
      moved(::send(right_fd_, sp + sent, send_bytes - sent, MSG_NOSIGNAL), right, &sent);
  }
}

template <typename T>
void ProcessGroup::ring_all_reduce(T* x, int64_t n, uint32_t type_code) {
  QWENQ_CHECK(n >= 0 && (n == 0 || x != nullptr), "all_reduce_sum: " << n << " values at " << x);
  const uint64_t call = ++calls_;
  if (world_ == 1) return;
  // The header goes round once: each rank checks that its left neighbour makes the same call.
  const Header mine{kMagic, type_code, call, n};
  Header theirs{};
  exchange(&mine, sizeof mine, &theirs, sizeof theirs, "the call header");
  const int left = mod(rank_ - 1, world_);
  QWENQ_CHECK(theirs.magic == kMagic, "data-parallel rank " << rank_ << ": rank " << left
                                                            << " sent something that is not a call header");
  QWENQ_CHECK(theirs.call == call && theirs.type == type_code && theirs.n == n,
              "data-parallel rank " << rank_ << ": its all-reduce #" << call << " of " << n << " " << type_name(type_code)
                                    << " values meets rank " << left << "'s #" << theirs.call << " of " << theirs.n << " "
                                    << type_name(theirs.type) << " values (the ranks' runs have diverged)");
  if (n == 0) return;
  if (static_cast<size_t>(n) * sizeof(T) >= kSharedSumMinBytes && shared_sums_ready()) {
    shared_all_reduce(x, n);
    return;
  }
  std::vector<T> in(static_cast<size_t>(n / world_ + 1));
  // Reduce-scatter.
  for (int s = 0; s < world_ - 1; ++s) {
    const int cs = mod(rank_ - s, world_), cr = mod(rank_ - s - 1, world_);
    const int64_t s0 = chunk_begin(n, world_, cs), s1 = chunk_begin(n, world_, cs + 1);
    const int64_t r0 = chunk_begin(n, world_, cr), r1 = chunk_begin(n, world_, cr + 1);
    exchange(x + s0, static_cast<size_t>(s1 - s0) * sizeof(T), in.data(), static_cast<size_t>(r1 - r0) * sizeof(T),
             "the reduce-scatter");
    // The running sum arrives from the left and this rank's values join it: (sum so far) + x_rank.
    for (int64_t i = r0; i < r1; ++i) x[i] = in[static_cast<size_t>(i - r0)] + x[i];
  }
  // All-gather.
  for (int s = 0; s < world_ - 1; ++s) {
    const int cs = mod(rank_ + 1 - s, world_), cr = mod(rank_ - s, world_);
    const int64_t s0 = chunk_begin(n, world_, cs), s1 = chunk_begin(n, world_, cs + 1);
    const int64_t r0 = chunk_begin(n, world_, cr), r1 = chunk_begin(n, world_, cr + 1);
    exchange(x + s0, static_cast<size_t>(s1 - s0) * sizeof(T), x + r0, static_cast<size_t>(r1 - r0) * sizeof(T),
             "the all-gather");
  }
}

void ProcessGroup::all_reduce_sum(float* x, int64_t n) { ring_all_reduce(x, n, kFloat); }
void ProcessGroup::all_reduce_sum(double* x, int64_t n) { ring_all_reduce(x, n, kDouble); }

void ProcessGroup::broadcast(void* data, size_t bytes) {
  check_same(bytes, "the size of a broadcast");
  if (world_ == 1 || bytes == 0) return;
  if (rank_ > 0) exchange(nullptr, 0, data, bytes, "a broadcast");           // from the left
  if (rank_ < world_ - 1) exchange(data, bytes, nullptr, 0, "a broadcast");  // to the right
}

bool ProcessGroup::neighbour_stopped() const {
  if (world_ == 1) return false;
  pollfd fds[2] = {{left_fd_, 0, 0}, {right_fd_, 0, 0}};  // POLLHUP and POLLERR are always reported
  if (poll(fds, 2, 0) <= 0) return false;
  return ((fds[0].revents | fds[1].revents) & (POLLHUP | POLLERR | POLLNVAL)) != 0;
}

void ProcessGroup::check_same(uint64_t value, const std::string& what) {
  const uint64_t call = ++calls_;
  if (world_ == 1) return;
  const Header mine{kMagic, kCheck, call, static_cast<int64_t>(value)};
  Header theirs{};
  exchange(&mine, sizeof mine, &theirs, sizeof theirs, "the check of " + what);
  const int left = mod(rank_ - 1, world_);
  QWENQ_CHECK(theirs.magic == kMagic && theirs.call == call && theirs.type == kCheck,
              "data-parallel rank " << rank_ << ": its check #" << call << " of " << what << " meets rank " << left
                                    << "'s call #" << theirs.call << " (" << type_name(theirs.type)
                                    << "; the ranks' runs have diverged)");
  // Every rank learns whether any pair differed, so that all stop, not only the one that saw it.
  const bool differs = theirs.n != static_cast<int64_t>(value);
  double any = differs ? 1.0 : 0.0;
  ring_all_reduce(&any, 1, kDouble);
  QWENQ_CHECK(!differs, "data-parallel rank " << rank_ << " and rank " << left << " differ in " << what
                                              << " (fingerprints " << std::hex << value << " and "
                                              << static_cast<uint64_t>(theirs.n) << std::dec << ")");
  QWENQ_CHECK(any == 0.0, "data-parallel rank " << rank_ << ": the ranks differ in " << what
                                                << " (the rank that saw it names the two)");
}

uint64_t fingerprint(uint64_t h, const void* data, size_t bytes) {
  const unsigned char* b = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

std::vector<std::pair<int, int>> make_ring_sockets(int world) {
  QWENQ_CHECK(world >= 2, "a ring needs at least 2 ranks, not " << world);
  std::vector<std::pair<int, int>> fds(static_cast<size_t>(world), {-1, -1});
  for (int r = 0; r < world; ++r) {  // pair r joins rank r's right to rank r + 1's left
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
      const int err = errno;
      for (auto& [l, rr] : fds) {
        if (l >= 0) close(l);
        if (rr >= 0) close(rr);
      }
      QWENQ_FAIL("cannot make the data-parallel sockets: " << std::strerror(err));
    }
    // Never 0, 1 or 2 (a rank 0 started with those closed): what a rank prints must not go into the ring.
    int move_err = 0;
    for (int& fd : sv) {
      if (fd > 2) continue;
      const int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
      if (moved < 0) move_err = errno;
      close(fd);
      fd = moved;
    }
    if (move_err != 0) {
      for (int fd : sv)
        if (fd >= 0) close(fd);
      for (auto& [l, rr] : fds) {
        if (l >= 0) close(l);
        if (rr >= 0) close(rr);
      }
      QWENQ_FAIL("cannot move the data-parallel sockets past fd 2: " << std::strerror(move_err));
    }
    // A larger send buffer means fewer wake-ups per call (2 ranks, 7B gradients: 201 -> ~140 ms on the build VM).
    // The kernel caps it at net.core.wmem_max; a refusal only costs speed.
    const int bytes = 4 << 20;
    for (int fd : sv) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
    fds[static_cast<size_t>(r)].second = sv[0];
    fds[static_cast<size_t>((r + 1) % world)].first = sv[1];
  }
  return fds;
}

namespace {

int env_int(const char* name, const char* value) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(value, &end, 10);
  QWENQ_CHECK(errno == 0 && end != value && *end == '\0' && v >= 0 && v < (1L << 20),
              name << "=" << value << " is not a rank number (set by qwen-qlora train --nproc for the processes it starts)");
  return static_cast<int>(v);
}

// The entries of a comma-separated CUDA_VISIBLE_DEVICES (empty when unset).
std::vector<std::string> visible_devices() {
  std::vector<std::string> out;
  const char* v = std::getenv("CUDA_VISIBLE_DEVICES");
  if (v == nullptr) return out;
  std::string item;
  for (const char* p = v;; ++p) {
    if (*p == ',' || *p == '\0') {
      out.push_back(item);
      item.clear();
      if (*p == '\0') break;
    } else {
      item += *p;
    }
  }
  return out;
}

}  // namespace

std::unique_ptr<ProcessGroup> process_group_from_env() {
  const char* rank = std::getenv("QWENQ_DP_RANK");
  const char* world = std::getenv("QWENQ_DP_WORLD");
  const char* fds = std::getenv("QWENQ_DP_FDS");
  if (rank == nullptr && world == nullptr && fds == nullptr) return nullptr;
  QWENQ_CHECK(rank != nullptr && world != nullptr && fds != nullptr,
              "QWENQ_DP_RANK, QWENQ_DP_WORLD and QWENQ_DP_FDS come together (set by qwen-qlora train --nproc)");
  const int r = env_int("QWENQ_DP_RANK", rank), w = env_int("QWENQ_DP_WORLD", world);
  const std::string f = fds;
  const size_t comma = f.find(',');
  QWENQ_CHECK(comma != std::string::npos, "QWENQ_DP_FDS=" << f << " is not \"left,right\"");
  const int left = env_int("QWENQ_DP_FDS", f.substr(0, comma).c_str());
  const int right = env_int("QWENQ_DP_FDS", f.substr(comma + 1).c_str());
  QWENQ_CHECK(w >= 2 && r >= 1 && r < w, "QWENQ_DP_RANK=" << r << " of QWENQ_DP_WORLD=" << w
                                                          << ": a started rank is 1..world-1");
  const auto is_socket = [](int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
  };
  QWENQ_CHECK(is_socket(left) && is_socket(right),
              "QWENQ_DP_FDS=" << f << ": this process has no such sockets (it was not started by its rank 0)");
  fcntl(left, F_SETFD, FD_CLOEXEC);  // not for what this rank may start in turn
  fcntl(right, F_SETFD, FD_CLOEXEC);
  return std::make_unique<ProcessGroup>(r, w, left, right);
}

namespace {

// Reaps the pids (set to -1 once reaped) until all are, or `seconds` have passed.
void reap_within(std::vector<pid_t>* pids, double seconds) {
  for (int tick = 0;; ++tick) {
    bool running = false;
    for (pid_t& p : *pids) {
      if (p <= 0) continue;
      int status = 0;
      const pid_t w = waitpid(p, &status, WNOHANG);
      if (w == p || (w < 0 && errno == ECHILD)) p = -1;
      else running = true;
    }
    if (!running || tick * 0.02 >= seconds) return;
    usleep(20000);
  }
}

}  // namespace

ProcessGroupLaunch::~ProcessGroupLaunch() {
  group.reset();  // closing rank 0's sockets tells the ranks blocked in a call that it stopped
  reap_within(&pids, 5.0);  // time for them to print their own error and exit
  for (pid_t p : pids)
    if (p > 0) kill(p, SIGTERM);
  reap_within(&pids, 2.0);
  for (pid_t p : pids)
    if (p > 0) kill(p, SIGKILL);
  reap_within(&pids, 1.0);
}

void ProcessGroupLaunch::wait_all() {
  // The ranks end with rank 0's last exchange; one still running a minute later is stuck: killed, and named.
  enum : char { kRunning, kExited, kLost };
  std::vector<char> state(pids.size(), kRunning);
  std::vector<int> status(pids.size(), 0), err(pids.size(), 0);
  for (int tick = 0;; ++tick) {
    bool running = false;
    for (size_t i = 0; i < pids.size(); ++i) {
      if (state[i] != kRunning) continue;
      if (pids[i] <= 0) {
        state[i] = kExited;
        continue;
      }
      const pid_t w = waitpid(pids[i], &status[i], WNOHANG);
      if (w == pids[i]) state[i] = kExited;
      else if (w < 0 && errno != EINTR) state[i] = kLost, err[i] = errno;
      else running = true;
    }
    if (!running || tick >= 3000) break;
    usleep(20000);
  }
  std::ostringstream failed;
  const auto add = [&](size_t i) -> std::ostringstream& {
    failed << (failed.tellp() > 0 ? ", " : "") << "rank " << i + 1;
    return failed;
  };
  for (size_t i = 0; i < pids.size(); ++i) {
    const pid_t p = pids[i];
    pids[i] = -1;
    if (state[i] == kRunning) {
      kill(p, SIGKILL);
      waitpid(p, &status[i], 0);
      add(i) << " did not exit within 60 s of the end (killed)";
    } else if (state[i] == kLost) {
      add(i) << " could not be waited for (" << std::strerror(err[i]) << ")";
    } else if (p > 0 && !(WIFEXITED(status[i]) && WEXITSTATUS(status[i]) == 0)) {
      if (WIFEXITED(status[i])) add(i) << " exited with status " << WEXITSTATUS(status[i]);
      else if (WIFSIGNALED(status[i])) add(i) << " was killed by signal " << WTERMSIG(status[i]);
    }
  }
  QWENQ_CHECK(failed.tellp() == 0, "data-parallel ranks failed: " << failed.str() << " (their errors are above)");
}

std::vector<std::string> this_program_args() {
  const std::string raw = read_file("/proc/self/cmdline");
  std::vector<std::string> args;
  size_t b = 0;
  while (b < raw.size()) {
    const size_t e = raw.find('\0', b);
    args.push_back(raw.substr(b, e == std::string::npos ? std::string::npos : e - b));
    if (e == std::string::npos) break;
    b = e + 1;
  }
  QWENQ_CHECK(!args.empty(), "/proc/self/cmdline is empty: cannot start the data-parallel ranks");
  return args;
}

std::unique_ptr<ProcessGroupLaunch> spawn_process_group(int world, const std::vector<std::string>& args,
                                                        bool assign_gpus) {
  QWENQ_CHECK(world >= 2, "spawn_process_group: " << world << " ranks");
  QWENQ_CHECK(!args.empty(), "spawn_process_group: no arguments");
  dp_timeout_seconds();  // a bad QWENQ_DP_TIMEOUT_S is refused once, here, not by every rank it would start
  auto launch = std::make_unique<ProcessGroupLaunch>();
  const std::vector<std::string> gpus = visible_devices();
  const bool have_list = std::getenv("CUDA_VISIBLE_DEVICES") != nullptr;
  const bool share_gpu = env_switch("QWENQ_DP_SHARE_GPU") == 1;
  // Everything a child needs is built before the sockets and fork: between fork and exec it only makes
  // async-signal-safe calls, and nothing between the sockets and the end can throw but a failed fork.
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<std::string> base_env;
  for (char** e = ::environ; *e != nullptr; ++e) {
    const std::string kv = *e;
    // This group's own variables are set below; others (QWENQ_DP_NCCL, ...) pass on like the rest.
    if (kv.rfind("QWENQ_DP_RANK=", 0) == 0 || kv.rfind("QWENQ_DP_WORLD=", 0) == 0 || kv.rfind("QWENQ_DP_FDS=", 0) == 0)
      continue;
    if (assign_gpus && kv.rfind("CUDA_VISIBLE_DEVICES=", 0) == 0) continue;
    base_env.push_back(kv);
  }
  std::vector<std::vector<std::string>> env(static_cast<size_t>(world));
  std::vector<std::vector<char*>> envp(static_cast<size_t>(world));
  const std::vector<std::pair<int, int>> fds = make_ring_sockets(world);
  for (int r = 1; r < world; ++r) {
    std::vector<std::string>& e = env[static_cast<size_t>(r)];
    e = base_env;
    e.push_back("QWENQ_DP_RANK=" + std::to_string(r));
    e.push_back("QWENQ_DP_WORLD=" + std::to_string(world));
    e.push_back("QWENQ_DP_FDS=" + std::to_string(fds[static_cast<size_t>(r)].first) + "," +
                std::to_string(fds[static_cast<size_t>(r)].second));
    if (assign_gpus) {
      // The r-th GPU of the caller's view; past the end of a list, none (its GPU check then says so). With
      // QWENQ_DP_SHARE_GPU=1 every rank takes rank 0's (a check of the GPU path on a one-GPU machine).
      const size_t g = share_gpu ? 0 : static_cast<size_t>(r);
      const std::string dev = have_list ? (g < gpus.size() ? gpus[g] : "") : std::to_string(g);
      e.push_back("CUDA_VISIBLE_DEVICES=" + dev);
    }
    for (auto& kv : e) envp[static_cast<size_t>(r)].push_back(kv.data());
    envp[static_cast<size_t>(r)].push_back(nullptr);
  }
  launch->pids.reserve(static_cast<size_t>(world - 1));
  // Ranks are reaped by waitpid: an inherited "ignore SIGCHLD" would reap them unseen and lose their exit status.
  signal(SIGCHLD, SIG_DFL);
  const pid_t parent = getpid();
  for (int r = 1; r < world; ++r) {
    const auto [left, right] = fds[static_cast<size_t>(r)];
    const pid_t pid = fork();
    if (pid < 0) {
      const int err = errno;
      for (const auto& [l, rr] : fds) {  // the ranks started so far are stopped by launch's destructor
        close(l);
        close(rr);
      }
      QWENQ_FAIL("cannot start data-parallel rank " << r << ": fork failed (" << std::strerror(err) << ")");
    }
    if (pid == 0) {
      // The child: die with rank 0, keep its own two sockets across exec (the others are close-on-exec).
      // SIGTERM at its default and unblocked: an ignored or blocked one (inherited) would make PDEATHSIG void.
      struct sigaction dfl {};
      dfl.sa_handler = SIG_DFL;
      sigaction(SIGTERM, &dfl, nullptr);
      sigset_t term;
      sigemptyset(&term);
      sigaddset(&term, SIGTERM);
      sigprocmask(SIG_UNBLOCK, &term, nullptr);
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (getppid() != parent) _exit(125);
      fcntl(left, F_SETFD, 0);
      fcntl(right, F_SETFD, 0);
      execve("/proc/self/exe", argv.data(), envp[static_cast<size_t>(r)].data());
      _exit(127);
    }
    launch->pids.push_back(pid);
  }
  // Rank 0 keeps its own sockets; the started ranks' ends are theirs now.
  for (int r = 1; r < world; ++r) {
    close(fds[static_cast<size_t>(r)].first);
    close(fds[static_cast<size_t>(r)].second);
  }
  launch->group = std::make_unique<ProcessGroup>(0, world, fds[0].first, fds[0].second);
  return launch;
}

}  // namespace qwenq
