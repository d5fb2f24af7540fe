// A progress bar for long work, on stderr: "label [#####     ] 512/2048 25% 1234 tok/s ETA 0:42".
// Redraws at most 10 times a second; prints plain lines instead when stderr is not a terminal (CI logs),
// at most every 10%. Quiet mode prints nothing.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace qwenq {

class Progress {
 public:
  Progress(std::string label, int64_t total, std::string unit, bool quiet = false);
  ~Progress();
  void update(int64_t done, const std::string& extra = "");
  void finish(const std::string& extra = "");
  double elapsed_s() const;

 private:
  void draw(bool final_line, const std::string& extra);
  std::string label_, unit_;
  int64_t total_, done_ = 0;
  bool quiet_, tty_, finished_ = false;
  int last_decile_ = -1;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

// Peak resident set size of this process in bytes (VmHWM), 0 where unknown.
uint64_t peak_rss_bytes();
std::string format_bytes(uint64_t bytes);  // "1.23 GiB"

// Host memory this process may still take, in bytes: MemAvailable + SwapFree of /proc/meminfo, lowered to what a
// cgroup memory limit leaves (v2 memory.max - memory.current, or v1 limit - usage; droppable page cache, the
// inactive files, not counted as used) at the process's cgroup (/proc/self/cgroup: a Slurm job's, a systemd unit's)
// or any cgroup above it, the tightest; 0 where nothing is known. Sets *source to which bound it is
// ("MemAvailable + SwapFree" or "the cgroup's memory limit") when given. For refusing work that cannot fit.
uint64_t available_memory_bytes(std::string* source = nullptr);
// The same from the files under `root` (root + "/proc/meminfo", root + "/sys/fs/cgroup/..."): for tests.
uint64_t available_memory_bytes_under(const std::string& root, std::string* source = nullptr);

}  // namespace qwenq
