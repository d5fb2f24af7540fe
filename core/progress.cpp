// Progress bar on stderr with rate and ETA; plain decile lines when stderr is not a terminal; peak RSS.
//
// Terminal:  "\rlabel [#########           ] 512/2048 25% 1234 tok/s ETA 0:00:42 extra" redrawn <= 10x/s.
// Log file:  the same text as separate lines at 10%, 20%, ... 90%, then the final line from finish().
#include "core/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace qwenq {

namespace {

constexpr int kBarWidth = 30;
constexpr double kRedrawSeconds = 0.1;

std::string format_duration(double seconds) {
  if (!(seconds >= 0) || seconds > 359999999) return "?:??:??";
  const long long s = static_cast<long long>(seconds + 0.5);
  char buf[48];
  std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, (s / 60) % 60, s % 60);
  return buf;
}

std::string format_rate(double rate) {
  char buf[48];
  if (rate >= 100)
    std::snprintf(buf, sizeof buf, "%.0f", rate);
  else if (rate >= 1)
    std::snprintf(buf, sizeof buf, "%.1f", rate);
  else
    std::snprintf(buf, sizeof buf, "%.3f", rate);
  return buf;
}

}  // namespace

Progress::Progress(std::string label, int64_t total, std::string unit, bool quiet)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), quiet_(quiet), tty_(isatty(2) == 1) {
  start_ = std::chrono::steady_clock::now();
  last_draw_ = start_ - std::chrono::seconds(1);
}

Progress::~Progress() {
  // Leave the terminal on a fresh line if the work was abandoned (e.g. an exception) mid-bar.
  if (!quiet_ && tty_ && !finished_ && done_ > 0) std::fputs("\n", stderr);
}

double Progress::elapsed_s() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::update(int64_t done, const std::string& extra) {
  done_ = done;
  if (quiet_ || finished_) return;
  if (tty_) {
    const auto now = std::chrono::steady_clock::now();
    if (std::chrono::duration<double>(now - last_draw_).count() < kRedrawSeconds) return;
    last_draw_ = now;
    draw(false, extra);
    return;
  }
  if (total_ <= 0) return;
  const int decile = static_cast<int>(std::min<int64_t>(done, total_) * 10 / total_);
  if (decile > last_decile_ && decile >= 1 && decile <= 9) {
    last_decile_ = decile;
    draw(false, extra);
  }
}

void Progress::finish(const std::string& extra) {
  if (finished_) return;
  if (total_ > 0 && done_ < total_) done_ = total_;
  if (!quiet_) draw(true, extra);
  finished_ = true;
}

void Progress::draw(bool final_line, const std::string& extra) {
  const double elapsed = elapsed_s();
  const double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;
  std::ostringstream os;
  os << label_;
  if (total_ > 0) {
    const double frac = std::min(1.0, std::max(0.0, static_cast<double>(done_) / static_cast<double>(total_)));
    const int filled = static_cast<int>(frac * kBarWidth);
    os << " [" << std::string(filled, '#') << std::string(kBarWidth - filled, ' ') << "] " << done_ << "/"
       << total_ << " " << static_cast<int>(frac * 100) << "%";
  } else {
    os << " " << done_ << " " << unit_;
  }
  if (elapsed > 0 && done_ > 0) os << " " << format_rate(rate) << " " << unit_ << "/s";
  if (final_line)
    os << " in " << format_duration(elapsed);
  else if (total_ > 0 && rate > 0)
    os << " ETA " << format_duration(static_cast<double>(total_ - done_) / rate);
  if (!extra.empty()) os << " " << extra;
  const std::string line = os.str();
  if (tty_)
    std::fprintf(stderr, "\r%s\033[K%s", line.c_str(), final_line ? "\n" : "");
  else
    std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

uint64_t peak_rss_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, 6, "VmHWM:") != 0) continue;
    std::istringstream fields(line.substr(6));
    uint64_t kib = 0;
    std::string unit;
    if (fields >> kib >> unit && unit == "kB") return kib * 1024;
    return 0;
  }
  return 0;
}

namespace {

// The first number in `path` (a /proc or /sys file), or false where it is absent or not a number ("max").
bool read_number(const std::string& path, uint64_t* value) {
  std::ifstream in(path);
  std::string word;
  if (!(in >> word) || word.empty() || word.size() > 19 || word.find_first_not_of("0123456789") != std::string::npos)
    return false;
  *value = std::stoull(word);
  return true;
}

// The value of `key` in a "key value" per line file (memory.stat), 0 where absent.
uint64_t read_key(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  std::string k;
  uint64_t v = 0;
  while (in >> k >> v) {
    if (k == key) return v;
  }
  return 0;
}

// Whether the whitespace-separated words of `path` include `word` (cgroup.controllers).
bool has_word(const std::string& path, const std::string& word) {
  std::ifstream in(path);
  for (std::string w; in >> w;) {
    if (w == word) return true;
  }
  return false;
}

// The cgroup of this process for the memory controller: cgroup v2's "0::PATH" line of /proc/self/cgroup, or v1's
// "N:...memory...:PATH"; "/" where the file says nothing (no cgroups, or an older kernel) or names a cgroup outside
// this cgroup namespace ("/.."): the namespace's root is what is mounted.
std::string memory_cgroup_path(const std::string& root, bool v2) {
  std::ifstream in(root + "/proc/self/cgroup");
  for (std::string line; std::getline(in, line);) {
    const size_t a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    const bool memory = v2 ? line.compare(0, a, "0") == 0 && controllers.empty()
                           : ("," + controllers + ",").find(",memory,") != std::string::npos;
    if (memory) return path.empty() || path[0] != '/' || path.find("/..") != std::string::npos ? "/" : path;
  }
  return "/";
}

}  // namespace

uint64_t available_memory_bytes_under(const std::string& root, std::string* source) {
  // MemAvailable (what the kernel can give without swapping) plus free swap: a run that would swap is slow, not
  // impossible, and this bound is for refusing what cannot run at all.
  uint64_t avail = 0, swap = 0;
  bool have_avail = false;
  std::ifstream in(root + "/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    const bool is_avail = line.compare(0, 13, "MemAvailable:") == 0, is_swap = line.compare(0, 9, "SwapFree:") == 0;
    if (!is_avail && !is_swap) continue;
    std::istringstream fields(line.substr(line.find(':') + 1));
    uint64_t kib = 0;
    std::string unit;
    if (!(fields >> kib >> unit) || unit != "kB") continue;
    if (is_avail) avail = kib * 1024, have_avail = true;
    else swap = kib * 1024;
  }
  uint64_t best = have_avail ? avail + swap : 0;
  std::string from = have_avail ? "MemAvailable + SwapFree" : "";
  // A cgroup limit (containers, Slurm jobs, systemd units): at each level from this process's cgroup up to the
  // hierarchy's root, the limit less what is in use there, page cache that can be dropped (inactive files, e.g. a
  // memory-mapped model read earlier) not counted as in use; the tightest level bounds the process. A level whose
  // directory is not there is skipped: inside a container the cgroup file names the host's path, and the
  // container's own cgroup is mounted as the root. cgroup v2 (memory.max / memory.current) where the unified
  // hierarchy has the memory controller, else v1 (memory.limit_in_bytes / memory.usage_in_bytes).
  const std::string v2_root = root + "/sys/fs/cgroup", v1_root = root + "/sys/fs/cgroup/memory";
  const bool v2 = has_word(v2_root + "/cgroup.controllers", "memory");
  const std::string base = v2 ? v2_root : v1_root;
  std::string path = memory_cgroup_path(root, v2);
  while (true) {
    const std::string dir = base + (path == "/" ? "" : path);
    uint64_t limit = 0, usage = 0;
    const bool known = v2 ? read_number(dir + "/memory.max", &limit) && read_number(dir + "/memory.current", &usage)
                          : read_number(dir + "/memory.limit_in_bytes", &limit) &&
                                read_number(dir + "/memory.usage_in_bytes", &usage);
    // cgroup v1 writes a huge number (about 2^63) for "no limit"; anything above 2^60 is taken as none.
    if (known && limit < (uint64_t{1} << 60)) {
      usage -= std::min(usage, read_key(dir + "/memory.stat", v2 ? "inactive_file" : "total_inactive_file"));
      const uint64_t left = limit > usage ? limit - usage : 0;
      if (from.empty() || left < best) best = left, from = "the cgroup's memory limit";
    }
    if (path == "/") break;
    const size_t slash = path.find_last_of('/');  // memory_cgroup_path's paths start with '/'
    path = slash == 0 ? "/" : path.substr(0, slash);
  }
  if (source) *source = from;
  return best;
}

uint64_t available_memory_bytes(std::string* source) { return available_memory_bytes_under("", source); }

std::string format_bytes(uint64_t bytes) {
  static const char* const kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double v = static_cast<double>(bytes) / 1024.0;
  int u = 0;
  while (v >= 1024.0 && u < 4) v /= 1024.0, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f %s", v, kUnits[u]);
  return buf;
}

}  // namespace qwenq
