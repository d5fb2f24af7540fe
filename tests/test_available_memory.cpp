// available_memory_bytes (core/progress.h), the bound that refuses work which cannot fit in host memory, on fake
// /proc and /sys trees laid out as the kernel lays them out (cgroup v1 and v2, in and out of a container): the
// expected numbers are worked out by hand from the files' values.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "core/files.h"
#include "core/progress.h"
#include "tests/support/test_paths.h"

namespace qwenq {
namespace {

constexpr uint64_t kKiB = 1024, kMiB = 1024 * 1024;

// A file under root, its directories made.
void put(const std::string& root, const std::string& path, const std::string& text) {
  const std::string full = root + path;
  ASSERT_EQ(std::system(("mkdir -p '" + full.substr(0, full.find_last_of('/')) + "'").c_str()), 0);
  write_file_atomic(full, text);
}

// /proc/meminfo with MemAvailable 8 GiB and SwapFree 1 GiB.
void meminfo(const std::string& root) {
  put(root, "/proc/meminfo",
      "MemTotal:       16777216 kB\nMemFree:         1048576 kB\nMemAvailable:    8388608 kB\n"
      "SwapTotal:       2097152 kB\nSwapFree:        1048576 kB\n");
}
constexpr uint64_t kMeminfoBytes = (8388608 + 1048576) * kKiB;

// A cgroup v2 level: memory.max, memory.current and memory.stat's inactive_file.
void v2_level(const std::string& root, const std::string& dir, const std::string& max, uint64_t current,
              uint64_t inactive_file) {
  const std::string d = "/sys/fs/cgroup" + dir;
  put(root, d + "/memory.max", max + "\n");
  put(root, d + "/memory.current", std::to_string(current) + "\n");
  put(root, d + "/memory.stat", "anon 1000\nfile 5000\nactive_file 7\ninactive_file " + std::to_string(inactive_file) +
                                    "\nslab 3\n");
}

// A cgroup v1 memory level.
void v1_level(const std::string& root, const std::string& dir, uint64_t limit, uint64_t usage,
              uint64_t total_inactive_file) {
  const std::string d = "/sys/fs/cgroup/memory" + dir;
  put(root, d + "/memory.limit_in_bytes", std::to_string(limit) + "\n");
  put(root, d + "/memory.usage_in_bytes", std::to_string(usage) + "\n");
  put(root, d + "/memory.stat", "cache 10\ninactive_file 99\ntotal_inactive_file " +
                                    std::to_string(total_inactive_file) + "\n");
}

constexpr uint64_t kV1NoLimit = 9223372036854771712ull;  // what cgroup v1 reports without a limit

TEST(AvailableMemory, MeminfoAloneIsAvailablePlusFreeSwap) {
  const std::string root = test::scratch_dir();
  meminfo(root);
  std::string from;
  EXPECT_EQ(available_memory_bytes_under(root, &from), kMeminfoBytes);
  EXPECT_EQ(from, "MemAvailable + SwapFree");
  // Nothing known: 0 and no source.
  EXPECT_EQ(available_memory_bytes_under(root + "/nothing", &from), 0u);
  EXPECT_EQ(from, "");
}

TEST(AvailableMemory, CgroupV2InAContainerLowersTheBound) {
  const std::string root = test::scratch_dir();
  meminfo(root);
  put(root, "/sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n");
  put(root, "/proc/self/cgroup", "0::/\n");  // a cgroup namespace: the container's cgroup is the root
  // 2 GiB limit, 1.5 GiB in use of which 0.75 GiB inactive page cache: 2 - 0.75 = 1.25 GiB left.
  v2_level(root, "", std::to_string(2048 * kMiB), 1536 * kMiB, 768 * kMiB);
  std::string from;
  EXPECT_EQ(available_memory_bytes_under(root, &from), 1280 * kMiB);
  EXPECT_EQ(from, "the cgroup's memory limit");
  // "max": no limit, the meminfo bound stays.
  v2_level(root, "", "max", 1536 * kMiB, 768 * kMiB);
  EXPECT_EQ(available_memory_bytes_under(root, &from), kMeminfoBytes);
  EXPECT_EQ(from, "MemAvailable + SwapFree");
  // Over the limit (usage past it after the page cache): nothing left.
  v2_level(root, "", std::to_string(1024 * kMiB), 1536 * kMiB, 256 * kMiB);
  EXPECT_EQ(available_memory_bytes_under(root, &from), 0u);
  EXPECT_EQ(from, "the cgroup's memory limit");
}

// Without a cgroup namespace (a Slurm job, a systemd unit with MemoryMax) the limit sits on the process's own cgroup
// or one above it, not on the hierarchy's root: the tightest level counts.
TEST(AvailableMemory, CgroupV2LimitOnTheProcesssCgroupOrAnAncestor) {
  const std::string root = test::scratch_dir();
  meminfo(root);
  put(root, "/sys/fs/cgroup/cgroup.controllers", "cpu memory pids\n");
  put(root, "/proc/self/cgroup", "0::/system.slice/slurmstepd.scope/job_42/step_0/user/task_0\n");
  put(root, "/sys/fs/cgroup/memory.stat", "inactive_file 0\n");  // the root has no memory.max
  const std::string job = "/system.slice/slurmstepd.scope/job_42", task = job + "/step_0/user/task_0";
  v2_level(root, task, "max", 100 * kMiB, 0);
  v2_level(root, job + "/step_0", "max", 100 * kMiB, 0);
  v2_level(root, job, std::to_string(4096 * kMiB), 1024 * kMiB, 512 * kMiB);  // 4 - (1 - 0.5) = 3.5 GiB
  std::string from;
  EXPECT_EQ(available_memory_bytes_under(root, &from), 3584 * kMiB);
  EXPECT_EQ(from, "the cgroup's memory limit");
  // A tighter limit further down wins: the task's 1 GiB with 0.25 GiB in use.
  v2_level(root, task, std::to_string(1024 * kMiB), 256 * kMiB, 0);
  EXPECT_EQ(available_memory_bytes_under(root, &from), 768 * kMiB);
  // The memory controller not in the unified hierarchy (cgroup.controllers without it): v2 files are not read.
  put(root, "/sys/fs/cgroup/cgroup.controllers", "cpu pids\n");
  EXPECT_EQ(available_memory_bytes_under(root, &from), kMeminfoBytes);
}

TEST(AvailableMemory, CgroupV1AtTheProcesssCgroupOrTheContainersRoot) {
  const std::string root = test::scratch_dir();
  meminfo(root);
  // A hybrid host (no unified memory controller), the process in memory cgroup /slurm/uid_1000/job_7.
  put(root, "/proc/self/cgroup", "12:pids:/\n4:memory:/slurm/uid_1000/job_7\n1:name=systemd:/\n0::/\n");
  v1_level(root, "", kV1NoLimit, 9000 * kMiB, 0);
  v1_level(root, "/slurm", kV1NoLimit, 5000 * kMiB, 0);
  v1_level(root, "/slurm/uid_1000/job_7", 2048 * kMiB, 1024 * kMiB, 256 * kMiB);  // 2 - (1 - 0.25) = 1.25 GiB
  std::string from;
  EXPECT_EQ(available_memory_bytes_under(root, &from), 1280 * kMiB);
  EXPECT_EQ(from, "the cgroup's memory limit");
  // Inside a container: /proc/self/cgroup names the host's path (with the controller among others), which is not
  // there; the container's cgroup is mounted as the hierarchy's root.
  const std::string box = test::scratch_dir() + "/box";
  meminfo(box);
  put(box, "/proc/self/cgroup", "9:cpu,memory:/docker/0123abcd\n");
  v1_level(box, "", 512 * kMiB, 128 * kMiB, 0);
  EXPECT_EQ(available_memory_bytes_under(box, &from), 384 * kMiB);
  EXPECT_EQ(from, "the cgroup's memory limit");
  // A cgroup outside this cgroup namespace ("/../.."): the namespace's root, which is what is mounted.
  put(box, "/proc/self/cgroup", "9:memory:/../../user.slice\n");
  EXPECT_EQ(available_memory_bytes_under(box, &from), 384 * kMiB);
  // No /proc/self/cgroup at all: the root's files, as before.
  const std::string old = test::scratch_dir() + "/old";
  meminfo(old);
  v1_level(old, "", 512 * kMiB, 0, 0);
  EXPECT_EQ(available_memory_bytes_under(old, &from), 512 * kMiB);
}

}  // namespace
}  // namespace qwenq
